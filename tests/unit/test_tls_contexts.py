"""TLS contexts and development certificates: real files, real handshakes on 127.0.0.1 on both loops."""
import asyncio
import os
import ssl
import stat
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dynafast.cli import main as cli_main
from dynafast.config import NodeConfig
from dynafast.errors import Unavailable
from dynafast.net import loop as netloop
from dynafast.net.blocking import BlockingConnection
from dynafast.net.connection import Connection, PeerPool
from dynafast.net.messages import Msg
from dynafast.net.server import start_server
from dynafast.security.certs import write_dev_certs
from dynafast.security.tls import TLSFileError, client_context, node_contexts, server_context

pytestmark = pytest.mark.timeout(60)
LOOPS = ["asyncio"] + (["uvloop"] if netloop.uvloop is not None else [])
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    assert cli_main(["certs", str(directory), "--hosts", "127.0.0.1,localhost,db.example", "--nodes", "a,b"]) == 0
    return directory


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("other")
    write_dev_certs(directory, nodes=["a"])
    return directory


def files(directory, name):
    return str(directory / f"{name}.pem"), str(directory / f"{name}-key.pem")


@pytest.fixture(params=LOOPS)
def serve(request):
    """serve(ssl, **options) -> (port, server) of a native-protocol server (PING only) run by an event loop of
    each kind in its own thread; fails the test if the loop's exception handler fired."""
    loop = netloop.new_event_loop(request.param)
    fired = []
    loop.set_exception_handler(lambda _loop, context: fired.append(context))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers = []

    def refuse(conn, msg_type, request_id, fields):
        raise ValueError("only PING here")

    def start(context, **options):
        server = asyncio.run_coroutine_threadsafe(start_server(refuse, HOST, 0, ssl=context, **options), loop)
        servers.append(server.result(10))
        return servers[-1].port, servers[-1]

    start.loop = loop
    yield start

    async def close_all():
        for server in servers:
            server.close()
            await server.wait_closed()
        await asyncio.sleep(0.05)

    asyncio.run_coroutine_threadsafe(close_all(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
    assert not fired, fired


def ping_async(port, context, host=HOST):
    async def main():
        conn = await Connection.open(host, port, ssl=context, timeout=5.0)
        try:
            reply = await conn.call(Msg.PING, (b"hi",), 5.0)
            return reply, conn._protocol.transport.get_extra_info("ssl_object").version()
        finally:
            await conn.close()
    return asyncio.run(main())


# -- dynafast certs ------------------------------------------------------------------------------------------

def test_certs_writes_a_ca_node_and_client_certificates_with_private_keys(certs):
    names = sorted(p.name for p in certs.iterdir())
    assert names == sorted(["ca.pem", "ca-key.pem", "a.pem", "a-key.pem", "b.pem", "b-key.pem",
                            "client.pem", "client-key.pem"])
    for name in names:
        mode = stat.S_IMODE(os.stat(certs / name).st_mode)
        assert mode == (0o600 if name.endswith("-key.pem") else 0o644), name
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    node = x509.load_pem_x509_certificate((certs / "a.pem").read_bytes())
    key = serialization.load_pem_private_key((certs / "a-key.pem").read_bytes(), password=None)
    assert key.curve.name == "secp256r1"
    node.verify_directly_issued_by(ca)
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "db.example", "a"]


def test_certs_refuses_to_replace_a_ca_unless_forced(tmp_path):
    write_dev_certs(tmp_path, nodes=["a"])
    before = (tmp_path / "ca.pem").read_bytes()
    assert cli_main(["certs", str(tmp_path), "--nodes", "a"]) == 1
    assert (tmp_path / "ca.pem").read_bytes() == before
    assert cli_main(["certs", str(tmp_path), "--nodes", "a", "--force"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() != before
    for bad in (["../x"], ["ca"], ["a", "a"], []):
        with pytest.raises(ValueError):
            write_dev_certs(tmp_path / "bad", nodes=bad)


# -- handshakes ----------------------------------------------------------------------------------------------

def test_asyncio_and_blocking_connections_speak_tls_with_the_generated_certificates(certs, serve):
    ca = str(certs / "ca.pem")
    port, _ = serve(server_context(*files(certs, "a"), ca=ca))
    reply, version = ping_async(port, client_context(ca))
    assert reply == (Msg.PONG, (b"hi",)) and version in ("TLSv1.2", "TLSv1.3")
    # By name too: "localhost" is among the certificate's names.
    assert ping_async(port, client_context(ca), host="localhost")[0] == (Msg.PONG, (b"hi",))
    with BlockingConnection(HOST, port, 5.0, ssl=client_context(ca)) as conn:
        assert conn.call(Msg.PING, (b"x",)) == (Msg.PONG, (b"x",))
    # A peer presents its node certificate; the server checks it against the CA.
    assert ping_async(port, client_context(ca, *files(certs, "b")))[0] == (Msg.PONG, (b"hi",))


def test_the_server_certificate_must_verify_and_name_the_host(certs, other_certs, serve):
    port, _ = serve(server_context(*files(certs, "a")))
    with pytest.raises(Unavailable, match=rf"{HOST}:{port}.*certificate verify failed"):
        ping_async(port, client_context(str(other_certs / "ca.pem")))
    with pytest.raises(Unavailable, match=rf"{HOST}:{port}.*certificate verify failed"):
        BlockingConnection(HOST, port, 5.0, ssl=client_context(str(other_certs / "ca.pem")))
    # The right CA, but a name the certificate does not carry.
    wrong_name = client_context(str(certs / "ca.pem"))
    with pytest.raises(Unavailable, match="certificate verify failed"):
        asyncio.run(_open(port, wrong_name, server_hostname="elsewhere.example"))


async def _open(port, context, server_hostname):
    conn = await Connection.open(HOST, port, ssl=context, server_hostname=server_hostname, timeout=5.0)
    await conn.close()


def test_a_client_certificate_from_another_ca_is_refused(certs, other_certs, serve):
    port, _ = serve(server_context(*files(certs, "a"), ca=str(certs / "ca.pem")))
    stranger = client_context(str(certs / "ca.pem"), *files(other_certs, "a"))
    with pytest.raises(Unavailable):
        ping_async(port, stranger)


def test_a_peer_pool_dials_with_tls(certs, serve):
    port, _ = serve(server_context(*files(certs, "a")))

    async def main():
        async with PeerPool(ssl=client_context(str(certs / "ca.pem"))) as pool:
            return await pool.call(f"{HOST}:{port}", Msg.PING, (b"p",), 5.0)

    assert asyncio.run(main()) == (Msg.PONG, (b"p",))


def test_a_blocking_tls_connection_closed_while_idle_reconnects(certs, serve):
    # The server closes idle connections; the blocking connection notices before its next request (a TLS
    # socket cannot be peeked at) and opens a new one instead of failing the request.
    port, server = serve(server_context(*files(certs, "a")), idle_timeout=0.4)
    with BlockingConnection(HOST, port, 5.0, ssl=client_context(str(certs / "ca.pem"))) as conn:
        assert conn.call(Msg.PING, (b"1",)) == (Msg.PONG, (b"1",))
        deadline = time.monotonic() + 20
        while server.stats.idle_closed == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.stats.idle_closed == 1
        time.sleep(1.1)  # past the connection's idle check
        assert conn.call(Msg.PING, (b"2",)) == (Msg.PONG, (b"2",))
    assert server.stats.connections_total == 2


def test_contexts_require_tls_1_2(certs):
    ca = str(certs / "ca.pem")
    assert server_context(*files(certs, "a"), ca=ca).minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_context(ca).minimum_version == ssl.TLSVersion.TLSv1_2
    server = server_context(*files(certs, "a"), ca=ca)
    assert server.verify_mode == ssl.CERT_OPTIONAL
    client = client_context(ca)
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


# -- file problems -------------------------------------------------------------------------------------------

def test_file_problems_name_the_file(certs, tmp_path):
    cert, key = files(certs, "a")
    _, other_key = files(certs, "b")
    cases = [
        ((str(tmp_path / "none.pem"), key), "none.pem does not exist"),
        ((str(tmp_path), key), "is a directory"),
        ((cert, other_key), f"{other_key} does not match the certificate in {cert}"),
        ((key, key), f"{key} holds no PEM certificate"),
        ((cert, cert), f"{cert} holds no PEM private key"),
    ]
    private = serialization.load_pem_private_key(open(key, "rb").read(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.BestAvailableEncryption(b"secret")))
    cases.append(((cert, str(encrypted)), f"{encrypted} is encrypted"))
    for args, message in cases:
        with pytest.raises(TLSFileError) as caught:
            server_context(*args)
        assert message in str(caught.value), (args, str(caught.value))
    with pytest.raises(TLSFileError, match=f"TLS CA file {key} holds no usable PEM certificate"):
        client_context(key)
    with pytest.raises(TLSFileError, match="give both or neither"):
        client_context(str(certs / "ca.pem"), cert)


def test_config_checks_the_tls_options(certs, tmp_path):
    cert, key = files(certs, "a")
    ca = str(certs / "ca.pem")
    for bad in ({"tls_cert": cert}, {"tls_key": key}, {"tls_ca": ca},
                {"tls_cert": cert, "tls_key": str(tmp_path / "missing.pem")}):
        with pytest.raises(ValueError):
            NodeConfig(**bad)
    assert node_contexts(NodeConfig()) == (None, None)
    served, dialled = node_contexts(NodeConfig(tls_cert=cert, tls_key=key, tls_ca=ca))
    assert served.verify_mode == ssl.CERT_OPTIONAL and dialled.check_hostname
