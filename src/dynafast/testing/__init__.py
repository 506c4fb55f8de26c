"""Test tooling: real node processes on loopback (cluster) and a fault-injecting TCP proxy (proxy)."""
from dynafast.testing.cluster import LocalCluster, NodeProcess, NodeStartError, free_port, wait_until
from dynafast.testing.proxy import FaultProxy

__all__ = ["FaultProxy", "LocalCluster", "NodeProcess", "NodeStartError", "free_port", "wait_until"]
