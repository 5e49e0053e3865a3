"""A throw-away test CA and the certificates the private servers present.

Made with the ``openssl`` command line (already needed for the servers) rather than a Python
package, so the test extra stays small.  Keys are EC P-256: an RSA key costs ~0.35 s to generate
here, an EC key a few milliseconds, and every client under test (Python's ssl, fetchmail's
OpenSSL) accepts ECDSA certificates.

Files written into the directory given to :func:`make_test_ca`:

* ``ca.pem`` / ``ca.key``  - the test CA; a client that trusts only ``ca.pem`` verifies the server.
* ``server.pem`` / ``server.key`` - CN=localhost, SAN DNS:localhost, IP:127.0.0.1, IP:::1,
  signed by the CA.
* ``untrusted.pem`` / ``untrusted.key`` - self-signed with the *same* names, so a client checking
  against ``ca.pem`` fails on trust alone and not on the host name.
"""

from __future__ import annotations

import hashlib
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVER_NAMES = "DNS:localhost,IP:127.0.0.1,IP:::1"
_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_DAYS = "30"

# Extensions for a leaf that also passes Python's VERIFY_X509_STRICT (default from 3.13):
# key identifiers present, CA:FALSE, and an EKU for TLS servers.
_LEAF_EXT = f"""\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {SERVER_NAMES}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


class CertError(RuntimeError):
    """openssl is missing or refused to make a certificate."""


@dataclass(frozen=True)
class TestCA:
    """Paths of the test PKI; all PEM files."""

    __test__ = False  # a dataclass named Test* is not a pytest test class

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    untrusted_cert: Path
    untrusted_key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only the test CA, with host name checks on."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_cert))
        return ctx

    def server_context(self, *, untrusted: bool = False) -> ssl.SSLContext:
        """A server context presenting the CA-signed (or the untrusted) certificate."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if untrusted:
            ctx.load_cert_chain(str(self.untrusted_cert), str(self.untrusted_key))
        else:
            ctx.load_cert_chain(str(self.server_cert), str(self.server_key))
        return ctx

    @property
    def server_md5(self) -> str:
        """fetchmail's ``sslfingerprint`` form of the server certificate (MD5, ``AA:BB:..``)."""
        return fingerprint(self.server_cert, "md5")

    @property
    def server_sha256(self) -> str:
        """SHA-256 fingerprint of the server certificate, ``AA:BB:..`` form."""
        return fingerprint(self.server_cert, "sha256")


def fingerprint(cert_pem: Path, algorithm: str = "md5") -> str:
    """Digest of the DER certificate as upper-case hex pairs joined by ``:`` (fetchmail's form).

    fetchmail hashes the DER encoding (X509_digest), which is what ``openssl x509 -fingerprint``
    prints too; hashing the PEM text would give a different, useless value.
    """
    der = ssl.PEM_cert_to_DER_cert(cert_pem.read_text())
    digest = hashlib.new(algorithm, der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=30
    )
    if proc.returncode != 0:
        raise CertError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def make_test_ca(directory: Path) -> TestCA:
    """Create the CA, the server certificate and the untrusted one in ``directory``."""
    if shutil.which("openssl") is None:
        raise CertError("the openssl command is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "leaf.ext").write_text(_LEAF_EXT)
    _openssl(
        "req", "-x509", *_EC_KEY, "-days", _DAYS,
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/O=pyfetch tests/CN=pyfetch test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-new", *_EC_KEY, "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/O=pyfetch tests/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", _DAYS, "-extfile", "leaf.ext", "-out", "server.pem",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-x509", *_EC_KEY, "-days", _DAYS,
        "-keyout", "untrusted.key", "-out", "untrusted.pem",
        "-subj", "/O=somebody else/CN=localhost",
        "-addext", f"subjectAltName={SERVER_NAMES}",
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "extendedKeyUsage=serverAuth",
        cwd=directory,
    )  # fmt: skip
    # The servers drop privileges before some of them read these files (Dovecot's config process
    # reads as root, but Postfix's smtpd and any helper may not): world-readable is fine for
    # throw-away test keys.
    for name in ("ca.pem", "server.pem", "server.key", "untrusted.pem", "untrusted.key"):
        (directory / name).chmod(0o644)
    return TestCA(
        directory=directory,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        untrusted_cert=directory / "untrusted.pem",
        untrusted_key=directory / "untrusted.key",
    )
