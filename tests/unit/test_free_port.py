"""The test harness's port picker: the ports it gives one process never repeat, so the ports picked for one
cluster before any of its nodes binds cannot collide (a console test's node got --http on the port another node
was about to listen on, and failed to start three times)."""
from dynafast.testing.cluster import free_port


def test_free_port_never_gives_a_port_twice():
    ports = [free_port() for _ in range(3000)]
    assert len(set(ports)) == len(ports)
