"""Who a connection is, and what it may send: the handshake (HELLO, AUTH) and the grants it leads to.

A connection starts with the anonymous grant and may log in once it said HELLO:

- **peer**: a node of the cluster proves it holds the cluster secret with an HMAC over both nonces of this
  connection (so a proof seen on one connection is worth nothing on another) and its name; the node answers
  with its own HMAC, so the peer knows it talks to a member too. A peer may send every message.
- **user**: a name and password checked against the users file; the user's role (read, readwrite, admin)
  decides which client messages it may send. Passwords cross the network as they are: use TLS beyond loopback.

The anonymous grant follows the node's settings, as Redis's protected mode does: with neither a secret nor
users, everything (a development node on loopback, or one started with ``--insecure``); with a secret only,
client reads and writes, admin verbs from loopback only, and no cluster-internal message; with users,
nothing until a login.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
from pathlib import Path

from dynafast.address import parse_address
from dynafast.errors import AuthenticationFailed, NotPermitted
from dynafast.net.messages import Auth, AuthReply, Hello, HelloReply, Msg, Overloaded, parse

log = logging.getLogger("dynafast.security")


def _types(*types) -> frozenset:
    return frozenset(int(t) for t in types)  # plain ints: what the decoder hands the gate


READ = _types(Msg.GET, Msg.RING_GET, Msg.STATUS, Msg.SCAN_PAGE)
READWRITE = READ | _types(Msg.PUT, Msg.DELETE, Msg.CAS, Msg.LOCK)
ADMIN = READWRITE | _types(Msg.LEAVE, Msg.COMPACT, Msg.BACKUP, Msg.RESTORE, Msg.REPAIR)
# Everything a node sends another: what an outsider must never be able to send.
INTERNAL = _types(Msg.REPLICA_GET, Msg.REPLICA_PUT, Msg.REAP, Msg.JOIN, Msg.RING_PUSH, Msg.GOSSIP,
                  Msg.HINT_PUSH, Msg.TRANSFER, Msg.TRANSFER_DONE, Msg.MERKLE_GET, Msg.KEYS_GET,
                  Msg.PAXOS_PREPARE, Msg.PAXOS_PROPOSE, Msg.PAXOS_COMMIT, Msg.PAXOS_SNAPSHOT, Msg.PAXOS_INSTALL)
PEER = ADMIN | INTERNAL
GRANTS = {"read": READ, "readwrite": READWRITE, "admin": ADMIN, "peer": PEER}
# The handshake's own messages are in no grant: the connection layer hands them to ``Access.handle``.
HANDSHAKE = _types(Msg.HELLO, Msg.AUTH)
# Request types the gate decides on; others (unknown types) go on to the handler, which says it knows none.
KNOWN = PEER | HANDSHAKE

NONCE_MIN, NONCE_MAX = 16, 64
SECRET_MIN = 16  # bytes
MAX_AUTH_FAILURES = 5  # per connection: then it must reconnect (each try costs a password hash)
MAX_CONCURRENT_VERIFIES = 2  # password hashes at once, node-wide: each takes tens of ms and MiBs of memory

_PEER_CONTEXT = b"dynafast peer proof v1\0"
_NODE_CONTEXT = b"dynafast node proof v1\0"


def peer_proof(secret: bytes, server_nonce: bytes, client_nonce: bytes, name: str) -> bytes:
    """What a peer sends to prove it holds ``secret``, bound to this connection's two nonces."""
    return hmac.new(secret, _PEER_CONTEXT + server_nonce + client_nonce + name.encode(), hashlib.sha256).digest()


def node_proof(secret: bytes, client_nonce: bytes, server_nonce: bytes, node_id: str) -> bytes:
    """What the node answers a peer with, so the peer knows the node holds the secret too."""
    return hmac.new(secret, _NODE_CONTEXT + client_nonce + server_nonce + node_id.encode(), hashlib.sha256).digest()


def read_secrets(path: str | os.PathLike) -> list[bytes]:
    """The cluster secrets in ``path``: one per line, the first the one this node proves with; the others are
    still accepted (to rotate the secret without stopping the cluster). Each at least 16 bytes."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the cluster secret file {path}: {exc.strerror or exc}") from None
    secrets = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(b"#")]
    if not secrets:
        raise ValueError(f"the cluster secret file {path} holds no secret")
    for secret in secrets:
        if len(secret) < SECRET_MIN:
            raise ValueError(f"a secret in {path} is {len(secret)} bytes; at least {SECRET_MIN} are needed "
                             f"(make one with: python3 -c 'import secrets; print(secrets.token_hex(32))')")
    try:
        if path.stat().st_mode & 0o077:
            log.warning("the cluster secret file %s can be read by other users than its owner (chmod 600 it)",
                        path)
    except OSError:
        pass
    return secrets


def write_secret(path: str | os.PathLike) -> bytes:
    """Create a new random cluster secret at ``path`` (mode 0600); returns it."""
    secret = os.urandom(32).hex().encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return secret


class Access:
    """The node's side of the handshake. ``secrets``: the cluster secrets (the first proves; any is accepted);
    ``users``: a users file (``security.users.Users``) or None."""

    def __init__(self, node_id: str, *, secrets: list[bytes] | None = None, users=None):
        self.node_id = node_id
        self.secrets = list(secrets or [])
        self.users = users
        self.secured = bool(self.secrets) or users is not None
        self.known = KNOWN
        self._verifying = None  # a semaphore, made on first use inside the running loop
        self.logins = 0
        self.failures = 0
        self.refused = 0

    def anonymous(self, peername=None) -> frozenset:
        """What a connection from ``peername`` may send before it logs in."""
        if self.users is not None:
            return frozenset()
        if not self.secrets:
            return PEER
        # A secret but no users: clients read and write; admin verbs (leave, compact) only from this machine.
        host = peername[0] if isinstance(peername, tuple) and peername else ""
        return ADMIN if is_loopback(host) else READWRITE

    # -- the gate ------------------------------------------------------------------------------------------
    def handle(self, conn, msg_type: int, fields):
        """A request ``conn`` may not send as it is: the handshake's, or one refused with NotPermitted."""
        if msg_type == Msg.HELLO:
            return self._hello(conn, parse(msg_type, fields))
        if msg_type == Msg.AUTH:
            return self._auth(conn, parse(msg_type, fields))
        self.refused += 1
        if conn.reserved and conn.role is None:
            raise Overloaded("the node is at its connection limit; the connections left are for cluster peers")
        if not getattr(conn, "refusal_logged", False):
            conn.refusal_logged = True  # once per connection: a flood of refusals must not flood the log
            log.warning("refused %s from %s: %s", _name(msg_type), conn.peername, _who(conn))
        if msg_type in INTERNAL:
            raise NotPermitted(f"{_name(msg_type)} is for cluster nodes: log in with the cluster secret")
        if conn.role is None and self.users is not None:
            raise NotPermitted(f"{_name(msg_type)} needs a login: this node has users "
                               "(Client(..., username=, password=), or --user on the command line)")
        raise NotPermitted(f"{_name(msg_type)} is not allowed for {_who(conn)}")

    def _hello(self, conn, hello: Hello):
        if not NONCE_MIN <= len(hello.nonce) <= NONCE_MAX:
            raise AuthenticationFailed(f"a HELLO nonce must be {NONCE_MIN} to {NONCE_MAX} bytes")
        conn.nonces = (hello.nonce, os.urandom(32))
        return Msg.HELLO_REPLY, HelloReply(conn.nonces[1], self.node_id, self.secured)

    def _auth(self, conn, auth: Auth):
        nonces = getattr(conn, "nonces", None)
        conn.nonces = None  # one try per HELLO: a proof is worth one attempt on one connection
        if conn.auth_failures >= MAX_AUTH_FAILURES:
            raise AuthenticationFailed(f"{MAX_AUTH_FAILURES} failed logins on this connection: reconnect")
        if nonces is None:
            return self._failed(conn, auth, "send HELLO first")
        client_nonce, server_nonce = nonces
        if auth.kind == "peer":
            if not self.secrets:
                return self._failed(conn, auth, "this node has no cluster secret")
            for secret in self.secrets:
                if hmac.compare_digest(auth.proof, peer_proof(secret, server_nonce, client_nonce, auth.name)):
                    proof = node_proof(self.secrets[0], client_nonce, server_nonce, self.node_id)
                    return self._granted(conn, "peer", auth.name, proof)
            return self._failed(conn, auth, "wrong cluster secret")
        if auth.kind == "user":
            if self.users is None:
                return self._failed(conn, auth, "this node has no users")
            return self._verify_user(conn, auth)
        return self._failed(conn, auth, f"unknown login kind {auth.kind!r}")

    async def _verify_user(self, conn, auth: Auth):
        if self._verifying is None:
            self._verifying = asyncio.Semaphore(MAX_CONCURRENT_VERIFIES)
        try:
            password = auth.proof.decode()
        except UnicodeDecodeError:
            return self._failed(conn, auth, "wrong user name or password")
        async with self._verifying:
            # Hashing the password takes tens of milliseconds: off the event loop, which serves everyone else.
            try:
                role = await asyncio.get_running_loop().run_in_executor(None, self.users.verify, auth.name,
                                                                        password)
            except ValueError as exc:  # the users file is damaged or gone: nobody logs in until it is back
                log.error("cannot check a login: %s", exc)
                return self._failed(conn, auth, "the node cannot read its users file")
        if role is None:
            return self._failed(conn, auth, "wrong user name or password")
        return self._granted(conn, role, auth.name, b"")

    def _granted(self, conn, role: str, name: str, proof: bytes):
        if conn.reserved and role != "peer":
            raise Overloaded("the node is at its connection limit; the connections left are for cluster peers")
        conn.allowed = GRANTS[role]
        conn.role = role
        conn.principal = name
        self.logins += 1
        log.debug("%s logged in from %s as %s", name, conn.peername, role)
        return Msg.AUTH_REPLY, AuthReply(role, proof)

    def _failed(self, conn, auth: Auth, reason: str):
        conn.auth_failures += 1
        self.failures += 1
        log.warning("failed %s login as %r from %s: %s", auth.kind, auth.name[:64], conn.peername, reason)
        raise AuthenticationFailed(reason)

    def stats(self) -> dict:
        return {"logins": self.logins, "login_failures": self.failures, "refused": self.refused}


def _name(msg_type: int) -> str:
    try:
        return Msg(msg_type).name
    except ValueError:
        return f"message type {msg_type}"


def _who(conn) -> str:
    if conn.role is None:
        return "an anonymous connection"
    return f"{conn.principal!r} ({conn.role})"


# -- the connecting side ----------------------------------------------------------------------------------
def hello() -> Hello:
    return Hello(os.urandom(32))


def peer_auth(secret: bytes, name: str, sent: Hello, reply) -> tuple[Auth, HelloReply]:
    """The AUTH a node sends after ``sent`` was answered with ``reply`` (HELLO_REPLY fields), and that answer."""
    answer = parse(Msg.HELLO_REPLY, reply)
    return Auth("peer", name, peer_proof(secret, answer.nonce, sent.nonce, name)), answer


def check_node_proof(secrets: list[bytes], sent: Hello, answer: HelloReply, reply) -> None:
    """Raise AuthenticationFailed unless the node proved it holds one of ``secrets``."""
    granted = parse(Msg.AUTH_REPLY, reply)
    for secret in secrets:
        if hmac.compare_digest(granted.proof, node_proof(secret, sent.nonce, answer.nonce, answer.node_id)):
            return
    raise AuthenticationFailed(f"{answer.node_id} did not prove it holds the cluster secret")


async def login_peer(conn, name: str, secrets: list[bytes], timeout: float) -> None:
    """Log ``conn`` (a net.connection.Connection) in as the cluster node ``name``; mutual."""
    sent = hello()
    _, reply = await conn.call(Msg.HELLO, sent, timeout)
    auth, answer = peer_auth(secrets[0], name, sent, reply)
    _, granted = await conn.call(Msg.AUTH, auth, timeout)
    check_node_proof(secrets, sent, answer, granted)


def peer_login(name: str, secrets: list[bytes]):
    """``login(connection, timeout)`` for a PeerPool of the node ``name``."""
    async def login(conn, timeout: float) -> None:
        await login_peer(conn, name, secrets, timeout)
    return login


async def login_user(conn, name: str, password: str, timeout: float) -> str:
    """Log ``conn`` in as user ``name``; returns the role."""
    _, reply = await conn.call(Msg.HELLO, hello(), timeout)
    parse(Msg.HELLO_REPLY, reply)
    _, granted = await conn.call(Msg.AUTH, Auth("user", name, password.encode()), timeout)
    return parse(Msg.AUTH_REPLY, granted).role


# -- protected mode ---------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def protected_mode(config) -> None:
    """Refuse to serve beyond loopback with neither a cluster secret nor users, unless told ``insecure``:
    anyone who can reach the port could then rewrite the ring, read every key, or stop the node."""
    if config.insecure or config.secret_file or getattr(config, "users_file", ""):
        return
    exposed = [address for address in (config.listen, config.http, getattr(config, "resp", "")) if address
               and not is_loopback(parse_address(address)[0])]
    if exposed:
        raise ValueError(
            f"refusing to listen on {', '.join(exposed)} (beyond loopback) with no cluster secret and no users: "
            "anyone who can reach it could rewrite the ring, read every key or stop the node. Give "
            "--secret-file (and --users-file for clients), or --insecure on a network you trust entirely")


__all__ = ["Access", "GRANTS", "KNOWN", "HANDSHAKE", "read_secrets", "write_secret", "login_peer", "login_user",
           "peer_login", "protected_mode", "is_loopback",
           "peer_proof", "node_proof"]
