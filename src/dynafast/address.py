"""Network addresses as text: ``HOST:PORT``, with IPv6 hosts in brackets (``[::1]:7000``)."""
from __future__ import annotations

import ipaddress


def parse_address(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``(host, port)`` from ``host:port``, ``[v6 host]:port``, or a bare host when ``default_port`` is given.

    The host comes back without brackets, ready for socket calls. An IPv6 host needs brackets to carry a
    port: without them all of the text is the host. Raises ValueError for anything else, such as an empty
    host or a port that is not a number in 1..65535.
    """
    address = text.strip()
    port: int | str | None
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _bad(text)
        port = rest[1:] if rest else default_port
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        # No colon: a bare name. Several: a bare IPv6 address (with a port it would need brackets).
        host, port = address, default_port
    if not host or any(c.isspace() for c in host) or port is None:
        raise _bad(text)
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad(text) from None
    if isinstance(port, str):
        if not port.isdigit() or not port.isascii():
            raise _bad(text)
        port = int(port)
    if not 1 <= port <= 65535:
        raise _bad(text)
    return host, port


def format_address(host: str, port: int) -> str:
    """The text ``parse_address`` reads back as ``(host, port)``: IPv6 hosts get brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bad(text) -> ValueError:
    return ValueError(f"{text!r} is not HOST:PORT (an IPv6 host in brackets: [::1]:7000)")
