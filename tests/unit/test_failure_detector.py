"""Phi-accrual failure detection on a deterministic clock."""
import pytest

from dynafast.cluster.failure import FailureDetector, PhiAccrualDetector


def beat(detector, start, count, interval):
    t = start
    for _ in range(count):
        detector.heartbeat(t)
        t += interval
    return t - interval


def test_regular_heartbeats_keep_phi_low():
    d = PhiAccrualDetector()
    last = beat(d, 0.0, 30, 1.0)
    assert d.phi(last + 1.0) < 1.0
    assert d.available(last + 1.0)


def test_silence_is_suspected_within_a_few_seconds():
    d = PhiAccrualDetector(threshold=8.0)
    last = beat(d, 0.0, 30, 1.0)
    assert d.available(last + 2.0)
    assert not d.available(last + 5.0)
    # phi grows monotonically with silence
    phis = [d.phi(last + s / 10) for s in range(10, 60)]
    assert phis == sorted(phis)


def test_one_late_heartbeat_does_not_flap():
    d = PhiAccrualDetector(threshold=8.0)
    last = beat(d, 0.0, 30, 1.0)
    assert d.available(last + 2.5)
    d.heartbeat(last + 2.5)
    assert d.available(last + 3.5)


def test_irregular_peer_gets_more_slack():
    steady = PhiAccrualDetector()
    jittery = PhiAccrualDetector()
    beat(steady, 0.0, 50, 1.0)
    t = 0.0
    for i in range(50):
        jittery.heartbeat(t)
        t += 0.5 if i % 2 else 1.5
    last_steady = 49.0
    last_jittery = t - (0.5 if 49 % 2 else 1.5)
    assert jittery.phi(last_jittery + 3.0) < steady.phi(last_steady + 3.0)


def test_unknown_peer_is_available_and_recovers_after_heartbeat():
    fd = FailureDetector()
    assert fd.available("x", 100.0)
    beat_times = [0.0, 1.0, 2.0, 3.0]
    for t in beat_times:
        fd.heartbeat("x", t)
    assert not fd.available("x", 20.0)
    fd.heartbeat("x", 20.0)
    assert fd.available("x", 20.5)
    fd.forget("x")
    assert fd.phi("x", 100.0) == 0.0


def test_threshold_must_be_positive():
    with pytest.raises(ValueError):
        PhiAccrualDetector(threshold=0)


def test_an_outage_does_not_slow_down_the_next_detection():
    d = PhiAccrualDetector(threshold=8.0)
    last = beat(d, 0.0, 30, 1.0)

    def first_suspected(after):
        t = after
        while d.available(t):
            t += 0.1
        return t - after

    before = first_suspected(last)
    # a 20-second outage, then regular heartbeats again
    last = beat(d, last + 20.0, 30, 1.0)
    assert abs(first_suspected(last) - before) < 0.3


# -- a stall of our own ---------------------------------------------------------------------------------------
class _Clock:
    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def wall(self):
        return 1_800_000_000.0 + self.now


def _membership(tmp_path, clock):
    import random

    from dynafast._impl import ring as rings
    from dynafast.cluster.membership import ClusterMembership, ClusterState, Member
    from dynafast.cluster.ports import DirectoryFiles
    from dynafast.config import NodeConfig

    config = NodeConfig(node_id="a", listen="127.0.0.1:7001", data_dir=str(tmp_path))
    m = ClusterMembership(config, None, clock=clock, rng=random.Random(0), files=DirectoryFiles(tmp_path))
    members = {i: Member(i, f"127.0.0.1:700{n}") for n, i in enumerate("abc", 1)}
    m._adopt(ClusterState(1, members, rings.Ring(16, list(members), n=3)), force=True)
    return m


def _run(m, clock, seconds, beating=("b", "c")):
    """Check liveness five times a second for ``seconds``, the peers in ``beating`` beating once a second."""
    for step in range(int(seconds * 5)):
        clock.now += 0.2
        if step % 5 == 0:
            for peer in beating:
                m.gossip.detector.heartbeat(peer, clock.now)
        m._refresh_liveness()


def test_peers_are_not_marked_down_for_a_stall_of_our_own(tmp_path):
    """Stopped for 10 s (SIGSTOP), a node found every peer silent for 10 s on waking, marked all of them down, and
    routed around them until gossip brought their heartbeats 0.2 s later."""
    clock = _Clock()
    m = _membership(tmp_path, clock)
    _run(m, clock, 20)
    _run(m, clock, 5, beating=("b",))
    assert m.down() == {"c"}  # c fell silent: marked down as before
    clock.now += 10.0  # stopped
    m._refresh_liveness()
    assert m.down() == {"c"}  # b is silent only because we were; c stays down
    _run(m, clock, 1, beating=("b",))
    assert m.down() == {"c"}
    _run(m, clock, 10, beating=())  # b falls silent after the stall: the detector is back on duty
    assert m.down() == {"b", "c"}


def test_local_pause_excuses_silence_for_its_grace_only():
    from dynafast.cluster.failure import LocalPause

    pause = LocalPause(2.0, 3.0)
    assert pause.check(0.0) == 0.0 and not pause.excused(0.0)
    assert pause.check(1.5) == 0.0 and not pause.excused(1.5)
    assert pause.check(11.5) == 10.0
    assert pause.excused(11.5) and pause.excused(14.4) and not pause.excused(14.5)
