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
