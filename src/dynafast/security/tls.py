"""TLS contexts for the native port and the HTTP side, built from PEM files; TLS 1.2 at least.

What TLS gives here: confidentiality and integrity on the wire, and the server's identity (a client or a peer
checks the node's certificate against the CA and the address it dialled against the certificate's subject
alternative names). What it does not decide: who a peer is. A node asks for client certificates and checks
those that are presented against its CA (peers present theirs, ordinary clients need none), but peers are
authenticated by the cluster secret and clients by their user name and password, not by certificates.

Every file problem is a ``TLSFileError`` (a ValueError) naming the file: a node refuses to start with one,
rather than serving without the protection it was configured for.
"""
from __future__ import annotations

import ssl

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TLSFileError(ValueError):
    """A certificate, key or CA file is missing, unreadable, malformed, or does not fit its partner."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TLSFileError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise TLSFileError(f"{what} file {path} is a directory") from None
    except OSError as exc:
        raise TLSFileError(f"{what} file {path} cannot be read: {exc.strerror or exc}") from None


def _no_password():
    # Without a callback OpenSSL would prompt on the terminal for the password of an encrypted key, and a node
    # started by a service manager would hang there.
    raise TLSFileError("encrypted")


def _explain(cert: str, key: str, exc: Exception) -> str:
    """Why load_cert_chain failed, in terms of the two files (OpenSSL only says "PEM lib")."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = x509.load_pem_x509_certificate(_read(cert, "TLS certificate"))
    except ValueError:
        return f"TLS certificate file {cert} holds no PEM certificate"
    try:
        private = serialization.load_pem_private_key(_read(key, "TLS key"), password=None)
    except TypeError:
        return f"TLS key file {key} is encrypted: give the node an unencrypted key (readable by it alone)"
    except ValueError:
        return f"TLS key file {key} holds no PEM private key"
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*raw) != private.public_key().public_bytes(*raw):
        return f"TLS key file {key} does not match the certificate in {cert}"
    return f"TLS certificate {cert} with key {key} cannot be used: {exc}"


def _load_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    if not cert or not key:
        raise TLSFileError("a TLS certificate and its key go together: give both or neither")
    _read(cert, "TLS certificate")
    _read(key, "TLS key")
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, TLSFileError) as exc:
        raise TLSFileError(_explain(cert, key, exc)) from None


def _load_ca(context: ssl.SSLContext, ca: str) -> None:
    _read(ca, "TLS CA")
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise TLSFileError(f"TLS CA file {ca} holds no usable PEM certificate: {exc.reason or exc}") from None


def server_context(cert: str, key: str, ca: str | None = None) -> ssl.SSLContext:
    """A context to serve with ``cert`` and ``key``. With ``ca``, client certificates are asked for and those
    presented must verify against it (CERT_OPTIONAL: a client without one is still served, and authenticates
    by other means)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_chain(context, cert, key)
    if ca:
        _load_ca(context, ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(ca: str | None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A context to dial nodes with: their certificate must verify against ``ca`` (the system's trusted CAs
    when None) and name the host dialled. ``cert`` and ``key``: a certificate to present (nodes present
    theirs to their peers)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = MINIMUM_VERSION
    if ca:
        _load_ca(context, ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert or key:
        _load_chain(context, cert, key)
    return context


def node_contexts(config) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(server context, context to dial peers with) for a node's config; (None, None) without TLS."""
    if not config.tls_cert:
        return None, None
    ca = config.tls_ca or None
    return (server_context(config.tls_cert, config.tls_key, ca),
            client_context(ca, config.tls_cert, config.tls_key))


__all__ = ["server_context", "client_context", "node_contexts", "TLSFileError"]
