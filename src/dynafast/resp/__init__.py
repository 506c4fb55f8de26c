"""Redis's protocol (RESP2 and RESP3) in front of a node: every Redis client and tool can use a cluster.

``protocol``: request parsers and the reply encoder; ``server``: the listener and its connections (limits, flow
control, login); ``commands``: the command table and what each command does with the node's request
coordinator; ``keyspace``: SCAN, KEYS, DBSIZE, RANDOMKEY and FLUSHALL over every partition of the cluster.
docs/resp.md says what each command means on a Dynamo store.
"""
