"""Development certificates: a private CA, one certificate per node and one for clients (``dynafast certs``).

Keys are EC P-256. Node certificates carry subject alternative names for every host and IP address the nodes
are reached at (clients and peers check them) and serve as TLS client certificates too, since a node dials
its peers with the same certificate it serves with. Private keys are written with mode 0600.

This is for development and tests: a production cluster takes its certificates from the organisation's CA.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_NODES = ("n1", "n2", "n3")
DEFAULT_DAYS = 365
CLIENT_NAME = "client"
# A node name becomes file names and a DNS name: keep it to what is safe as both.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dynafast development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _subject_alt_names(hosts) -> list[x509.GeneralName]:
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _builder(subject: x509.Name, issuer: x509.Name, public_key, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            # An hour of slack: a peer whose clock is a little behind still accepts a certificate made now.
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def make_ca(days: int = DEFAULT_DAYS, name: str = "dynafast development CA"):
    """A self-signed CA: (certificate, key)."""
    key = _new_key()
    subject = _name(name)
    cert = (_builder(subject, subject, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_leaf(ca_cert, ca_key, common_name: str, *, hosts=(), server: bool = True, days: int = DEFAULT_DAYS):
    """A certificate signed by the CA: (certificate, key). ``server``: usable to serve (and to dial peers);
    otherwise a client certificate only."""
    key = _new_key()
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (_builder(_name(common_name), ca_cert.subject, key.public_key(), days)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write through a temporary file: a reader never sees half a key, and a key is never readable by others,
    not even for a moment."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask, and an old tmp file kept its own
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_pair(directory: Path, stem: str, cert, key) -> list[Path]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return [cert_path, key_path]


def write_dev_certs(directory, *, hosts=DEFAULT_HOSTS, nodes=DEFAULT_NODES, days: int = DEFAULT_DAYS,
                    force: bool = False) -> list[Path]:
    """Write ca.pem, ca-key.pem, NODE.pem and NODE-key.pem for each node (with ``hosts`` and the node's name
    as subject alternative names) and client.pem, client-key.pem into ``directory``; return the paths.

    An existing CA is not replaced unless ``force``: every certificate it signed would stop verifying.
    """
    directory = Path(directory)
    nodes = list(nodes)
    hosts = [h.strip() for h in hosts if h.strip()]
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    if not nodes:
        raise ValueError("at least one node name is needed")
    for name in nodes:
        if not _NAME.match(name) or name in ("ca", CLIENT_NAME):
            raise ValueError(f"bad node name {name!r}: letters, digits and '-', and not 'ca' or '{CLIENT_NAME}'")
    if len(set(nodes)) != len(nodes):
        raise ValueError("node names must differ")
    if not force:
        for existing in (directory / "ca.pem", directory / "ca-key.pem"):
            if existing.exists():
                raise FileExistsError(f"{existing} exists: use --force to replace the CA (the certificates it "
                                      f"signed then no longer verify)")
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca(days)
    written = _write_pair(directory, "ca", ca_cert, ca_key)
    for name in nodes:
        written += _write_pair(directory, name, *make_leaf(ca_cert, ca_key, name, hosts=[*hosts, name], days=days))
    written += _write_pair(directory, CLIENT_NAME,
                           *make_leaf(ca_cert, ca_key, f"dynafast {CLIENT_NAME}", server=False, days=days))
    return written


__all__ = ["write_dev_certs", "make_ca", "make_leaf", "DEFAULT_HOSTS", "DEFAULT_NODES", "DEFAULT_DAYS"]
