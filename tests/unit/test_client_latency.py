"""When a client counts a node as hung (set aside for seconds) rather than slow (left for one request only)."""
from dynafast.client import _Latency


def test_a_node_that_answers_another_request_meanwhile_is_slow():
    latency = _Latency(0.05, 1.0)
    latency.add(0.01, 10.2)  # a reply to another request after this try went out at 10.0
    assert not latency.hung(10.0, 12.0)


def test_a_silence_shorter_than_the_cap_is_a_slow_moment():
    latency = _Latency(0.05, 1.0)
    latency.add(0.01, 9.99)
    assert not latency.hung(10.0, 10.06)  # one try's budget of 50 ms ran out
    assert not latency.hung(10.1, 10.9)  # the next request's too: silent for 0.9 s since the first


def test_several_tries_out_of_budget_with_no_reply_meanwhile_are_a_hung_node():
    """A loaded client has many requests in flight: when three of them run out of budget and the node answered
    none of its requests meanwhile, it is set aside at once, not after a whole second of silence."""
    latency = _Latency(0.05, 1.0)
    latency.add(0.01, 9.99)
    assert not latency.hung(10.0, 10.05)
    assert not latency.hung(10.001, 10.051)
    assert latency.hung(10.002, 10.052)
    latency.add(0.01, 10.3)  # it answers again: a new silence counts from zero
    assert not latency.hung(10.4, 10.45) and not latency.hung(10.41, 10.46)


def test_a_node_silent_for_the_cap_over_several_tries_is_hung():
    latency = _Latency(0.05, 1.0)
    latency.add(0.01, 9.99)
    assert not latency.hung(10.0, 10.06)
    assert latency.hung(10.95, 11.01)  # asked since 10.0, nothing since 9.99: a second, over two tries


def test_a_reply_ends_the_silence():
    latency = _Latency(0.05, 1.0)
    latency.add(0.01, 9.99)
    assert not latency.hung(10.0, 10.06)
    latency.add(0.2, 10.2)
    assert not latency.hung(10.9, 10.96)  # silent since 10.9 only, not since 10.0
    assert latency.hung(11.0, 12.0)


def test_a_node_that_never_answered_is_hung_after_one_try_of_the_cap():
    latency = _Latency(0.05, 1.0)
    assert latency.hung(10.0, 11.0)


def _routing():
    from dynafast import _impl
    from dynafast.client import _Routing

    routing = _Routing(["127.0.0.1:7101"], ring_refresh=60.0)
    routing.adopt(_impl.ring.Ring(16, ["n1", "n2", "n3"], n=3),
                  {"n1": "127.0.0.1:7101", "n2": "127.0.0.1:7102", "n3": "127.0.0.1:7103"})
    return routing


def test_a_failed_node_is_probed_by_one_request_when_its_time_out_ends(monkeypatch):
    """When a hung node's time out ends, one request tries it first; the others keep going elsewhere until it
    answers, so a node still hung holds up one request, not every request for its keys."""
    from dynafast import client

    now = [100.0]
    monkeypatch.setattr(client.time, "monotonic", lambda: now[0])
    routing = _routing()
    routing.failed("127.0.0.1:7103", timed_out=True)
    assert all(routing.candidates(b"k%d" % i)[-1] == "127.0.0.1:7103" for i in range(20))  # tried last
    now[0] += 2.5  # the 2 s time out is over
    assert routing.candidates(b"a")[0] == "127.0.0.1:7103"  # the probe
    assert all(routing.candidates(b"k%d" % i)[-1] == "127.0.0.1:7103" for i in range(20))  # the others: last
    routing.failed("127.0.0.1:7103", timed_out=True)  # the probe got nothing either: a longer time out (4 s)
    now[0] += 3.0
    assert all(routing.candidates(b"k%d" % i)[-1] == "127.0.0.1:7103" for i in range(20))
    now[0] += 1.5
    assert routing.candidates(b"b")[0] == "127.0.0.1:7103"  # probed again
    routing.answered("127.0.0.1:7103")  # and it answers: healthy to everyone at once
    assert any(routing.candidates(b"k%d" % i)[0] == "127.0.0.1:7103" for i in range(20))
    assert not routing.bad
