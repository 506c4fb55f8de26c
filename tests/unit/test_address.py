"""dynafast.address: the one HOST:PORT parser and its inverse."""
import pytest

from dynafast.address import format_address, parse_address


@pytest.mark.parametrize("text, default_port, expected", [
    ("127.0.0.1:7101", None, ("127.0.0.1", 7101)),
    ("node-1.example:1", None, ("node-1.example", 1)),
    ("localhost:65535", None, ("localhost", 65535)),
    ("  127.0.0.1:7101\n", None, ("127.0.0.1", 7101)),
    ("[::1]:7000", None, ("::1", 7000)),
    ("[fe80::1%eth0]:7000", None, ("fe80::1%eth0", 7000)),
    ("[localhost]:7000", None, ("localhost", 7000)),
    ("redis.local", 6379, ("redis.local", 6379)),
    (" redis.local ", 6379, ("redis.local", 6379)),
    ("redis.local:6380", 6379, ("redis.local", 6380)),
    ("[::1]", 6379, ("::1", 6379)),
    ("::1", 6379, ("::1", 6379)),  # several colons, no brackets: all of it is the host
    ("2001:db8::7", 6379, ("2001:db8::7", 6379)),
])
def test_parses(text, default_port, expected):
    assert parse_address(text, default_port) == expected


@pytest.mark.parametrize("text, default_port", [
    ("", None),
    ("   ", 6379),
    ("nohost", None),
    (":7000", None),
    (":7000", 6379),
    ("host:", None),
    ("host:", 6379),
    ("host:0", None),
    ("host:65536", None),
    ("host:99999", None),
    ("host:-1", None),
    ("host:+80", None),
    ("host:80a", None),
    ("host:８０", None),  # full-width digits
    ("ho st:80", None),
    ("[::1]", None),
    ("[::1]:", None),
    ("[::1]7000", None),
    ("[::1:7000", None),
    ("[]:7000", None),
    ("[not v6:x]:7000", None),
    ("::1:7000", None),  # an IPv6 host with a port needs brackets
    ("a:b:c", 6379),
    ("host", 0),
])
def test_rejects_garbage_with_a_clear_message(text, default_port):
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_address(text, default_port)


@pytest.mark.parametrize("host, port, text", [
    ("127.0.0.1", 7101, "127.0.0.1:7101"),
    ("node-1", 80, "node-1:80"),
    ("::1", 7000, "[::1]:7000"),
    ("fe80::1%eth0", 1, "[fe80::1%eth0]:1"),
])
def test_format_brackets_ipv6_and_round_trips(host, port, text):
    assert format_address(host, port) == text
    assert parse_address(text) == (host, port)
