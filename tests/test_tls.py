"""fetcher.tls: the sslproto table, the TLS mode decision, fingerprints, and real handshakes
against a loopback TLS server presenting the test CA's certificates."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from servers.certs import TestCA, fingerprint, make_test_ca

from fetcher import tls
from fetcher.errors import ConfigError, TLSError
from fetcher.exitcodes import ExitCode
from fetcher.model import UserOptions

V = ssl.TLSVersion

# -- the sslproto table (man fetchmail, --sslproto) -------------------------------------------


@pytest.mark.parametrize(
    ("sslproto", "expected"),
    [
        (None, (V.TLSv1, None)),
        ("", (V.TLSv1, None)),  # only reaches the table with `ssl`: fetchmail uses auto then
        ("auto", (V.TLSv1, None)),
        ("AUTO", (V.TLSv1, None)),
        ("ssl23", (V.TLSv1, None)),
        ("SSL23", (V.TLSv1, None)),
        ("tls1+", (V.TLSv1, None)),
        ("tls1", (V.TLSv1, V.TLSv1)),
        ("TLS1", (V.TLSv1, V.TLSv1)),
        ("tls1.1", (V.TLSv1_1, V.TLSv1_1)),
        ("tls1.1+", (V.TLSv1_1, None)),
        ("tls1.2", (V.TLSv1_2, V.TLSv1_2)),
        ("tls1.2+", (V.TLSv1_2, None)),
        ("TLS1.2+", (V.TLSv1_2, None)),  # the man page's spelling
        ("tls1.3", (V.TLSv1_3, V.TLSv1_3)),
        ("tls1.3+", (V.TLSv1_3, None)),
        ("Tls1.3+", (V.TLSv1_3, None)),
    ],
)
def test_sslproto_bounds(
    sslproto: str | None, expected: tuple[ssl.TLSVersion, ssl.TLSVersion | None]
) -> None:
    assert tls.sslproto_bounds(sslproto) == expected


@pytest.mark.parametrize("sslproto", ["ssl3", "SSL3", "ssl3+", "ssl2"])
def test_sslv3_and_older_are_refused(sslproto: str) -> None:
    with pytest.raises(ConfigError, match="SSLv2 and SSLv3") as info:
        tls.sslproto_bounds(sslproto)
    assert info.value.exit_code == ExitCode.SYNTAX


def test_unknown_sslproto_is_auto_with_fetchmails_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fetcher.tls"):
        assert tls.sslproto_bounds("tlsv1.2") == (V.TLSv1, None)
    assert "Invalid SSL protocol 'tlsv1.2' specified, using default autoselect (auto)." in (
        caplog.text
    )


@pytest.mark.parametrize(
    ("sslproto", "minimum", "maximum"),
    [
        ("tls1.2+", V.TLSv1_2, V.MAXIMUM_SUPPORTED),
        ("tls1.3", V.TLSv1_3, V.TLSv1_3),
        ("tls1.2", V.TLSv1_2, V.TLSv1_2),
    ],
)
def test_context_applies_the_bounds(
    sslproto: str, minimum: ssl.TLSVersion, maximum: ssl.TLSVersion
) -> None:
    ctx = tls.client_context(UserOptions(sslproto=sslproto), "mail.isp.net")
    assert ctx.minimum_version == minimum
    assert ctx.maximum_version == maximum


# -- the mode decision (module docstring of fetcher.tls) ---------------------------------------


@pytest.mark.parametrize(
    ("options", "mode"),
    [
        ({}, tls.TlsMode.STARTTLS),  # 6.4 default: sslcertck on, so STLS is mandatory
        ({"ssl": True}, tls.TlsMode.IMPLICIT),
        ({"ssl": True, "sslproto": ""}, tls.TlsMode.IMPLICIT),  # '' with ssl = auto
        ({"ssl": True, "sslcertck": False}, tls.TlsMode.IMPLICIT),
        ({"sslproto": ""}, tls.TlsMode.NONE),
        ({"sslproto": "", "sslfingerprint": "AA:BB"}, tls.TlsMode.NONE),
        ({"sslproto": "auto"}, tls.TlsMode.STARTTLS),
        ({"sslproto": "tls1.2+", "sslcertck": False}, tls.TlsMode.STARTTLS),
        ({"sslcertck": False, "sslfingerprint": "AA:BB"}, tls.TlsMode.STARTTLS),
        ({"sslcertck": False}, tls.TlsMode.OPPORTUNISTIC),
    ],
)
def test_tls_mode(options: dict[str, object], mode: tls.TlsMode) -> None:
    assert tls.tls_mode(UserOptions(**options)) is mode  # type: ignore[arg-type]


def test_required_modes() -> None:
    assert tls.TlsMode.IMPLICIT.required and tls.TlsMode.STARTTLS.required
    assert not tls.TlsMode.OPPORTUNISTIC.required and not tls.TlsMode.NONE.required


# -- fingerprints ------------------------------------------------------------------------------

DER = b"not really a certificate, but any bytes hash the same way"
MD5 = hashlib.md5(DER).hexdigest()
SHA256 = hashlib.sha256(DER).hexdigest()


def colons(hexdigest: str) -> str:
    return ":".join(hexdigest[i : i + 2] for i in range(0, len(hexdigest), 2))


@pytest.mark.parametrize(
    "expected",
    [
        colons(MD5).upper(),  # fetchmail's documented form
        colons(MD5).lower(),  # fetchmail compares case-insensitively since 6.3.x
        MD5,
        colons(SHA256).upper(),
        colons(SHA256).lower(),
        SHA256.upper(),
        colons(hashlib.sha1(DER).hexdigest()).upper(),  # `openssl x509 -fingerprint`'s default
        f"  {colons(MD5).upper()}\n",
    ],
)
def test_fingerprint_matches(expected: str) -> None:
    assert tls.check_fingerprint(DER, expected)


@pytest.mark.parametrize(
    "expected",
    [
        colons(hashlib.md5(b"other").hexdigest()).upper(),
        colons(hashlib.sha256(b"other").hexdigest()),
    ],
)
def test_fingerprint_mismatch(expected: str) -> None:
    assert not tls.check_fingerprint(DER, expected)


@pytest.mark.parametrize(
    "expected",
    ["", "AA:BB:CC", "zz" * 16, "AA:BB" + ":CC" * 31, colons(MD5)[:-1], "AA::BB" + "CC" * 14],
)
def test_malformed_fingerprint_is_a_config_error(expected: str) -> None:
    with pytest.raises(ConfigError):
        tls.check_fingerprint(DER, expected)


def test_fingerprint_format() -> None:
    assert tls.fingerprint(DER, "md5") == colons(MD5).upper()


# -- real handshakes ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_test_ca(tmp_path_factory.mktemp("pki"))


class TlsServer:
    """Accepts TLS connections on 127.0.0.1 and records the client certificate it saw."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.client_certs: list[dict[str, object] | None] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(sock, server_side=True) as tls_sock:
                    self.client_certs.append(tls_sock.getpeercert())  # type: ignore[arg-type]
                    tls_sock.sendall(b"hello\r\n")
                    tls_sock.recv(1)
            except (OSError, ValueError):
                pass
            finally:
                sock.close()

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would not on Linux.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(timeout=5)


@pytest.fixture
def trusted(pki: TestCA) -> Iterator[TlsServer]:
    server = TlsServer(pki.server_context())
    yield server
    server.close()


@pytest.fixture
def self_signed(pki: TestCA) -> Iterator[TlsServer]:
    server = TlsServer(pki.server_context(untrusted=True))
    yield server
    server.close()


def handshake(server: TlsServer, user: UserOptions, name: str = "127.0.0.1") -> bytes:
    """Connect with the context fetcher.tls builds; return what the server said."""
    context = tls.client_context(user, name)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    # poplib passes its own host name; the context must check its own, so pass a wrong one.
    with context.wrap_socket(sock, server_hostname="wrong.example") as tls_sock:
        return tls_sock.recv(100)


def with_ca(pki: TestCA, **options: object) -> UserOptions:
    return replace(UserOptions(sslcertfile=str(pki.ca_cert)), **options)  # type: ignore[arg-type]


def test_ca_signed_certificate_verifies(pki: TestCA, trusted: TlsServer) -> None:
    assert handshake(trusted, with_ca(pki)) == b"hello\r\n"
    assert handshake(trusted, with_ca(pki), "localhost") == b"hello\r\n"


def test_ip_address_is_matched_against_ip_sans(pki: TestCA, trusted: TlsServer) -> None:
    # fetchmail would only compare the CN "localhost" with "127.0.0.1"; we read the IP SAN.
    assert handshake(trusted, with_ca(pki), "127.0.0.1") == b"hello\r\n"


def test_verification_is_on_by_default(self_signed: TlsServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="self-signed"):
        handshake(self_signed, UserOptions())


def test_system_store_does_not_trust_the_test_ca(trusted: TlsServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(trusted, UserOptions())


def test_sslcertfile_replaces_the_system_store(
    pki: TestCA, self_signed: TlsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(tls.INCLUDE_DEFAULT_CAS_ENV, raising=False)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(self_signed, with_ca(pki))
    own = tls.client_context(with_ca(pki), "h").cert_store_stats()["x509_ca"]
    assert own == 1  # only the test CA


def test_include_default_cas_adds_the_system_store(
    pki: TestCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The "system store" is made known here: OpenSSL's default paths honour SSL_CERT_FILE and
    # SSL_CERT_DIR, so it holds exactly one other CA, whatever the machine has installed.
    other = make_test_ca(tmp_path / "other-ca")
    empty = tmp_path / "no-certs"
    empty.mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(other.ca_cert))
    monkeypatch.setenv("SSL_CERT_DIR", str(empty))
    monkeypatch.setenv(tls.INCLUDE_DEFAULT_CAS_ENV, "1")
    assert tls.client_context(UserOptions(), "h").cert_store_stats()["x509_ca"] == 1
    assert tls.client_context(with_ca(pki), "h").cert_store_stats()["x509_ca"] == 2
    server = TlsServer(other.server_context())  # signed by the "system" CA only
    try:
        assert handshake(server, with_ca(pki)) == b"hello\r\n"
        monkeypatch.setenv(tls.INCLUDE_DEFAULT_CAS_ENV, "")  # empty means unset, as in fetchmail
        assert tls.client_context(with_ca(pki), "h").cert_store_stats()["x509_ca"] == 1
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(server, with_ca(pki))
    finally:
        server.close()


def test_sslcertpath(pki: TestCA, trusted: TlsServer, tmp_path: Path) -> None:
    subject_hash = subprocess.run(
        ["openssl", "x509", "-noout", "-subject_hash", "-in", str(pki.ca_cert)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (tmp_path / f"{subject_hash}.0").write_bytes(pki.ca_cert.read_bytes())
    assert handshake(trusted, UserOptions(sslcertpath=str(tmp_path))) == b"hello\r\n"


def test_no_sslcertck_accepts_a_self_signed_certificate(self_signed: TlsServer) -> None:
    assert handshake(self_signed, UserOptions(sslcertck=False)) == b"hello\r\n"


def test_no_sslcertck_ignores_the_name_too(pki: TestCA, trusted: TlsServer) -> None:
    assert handshake(trusted, UserOptions(sslcertck=False), "mail.example.org") == b"hello\r\n"


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_matching_fingerprint_accepts_a_self_signed_certificate(
    pki: TestCA, self_signed: TlsServer, algorithm: str
) -> None:
    pin = fingerprint(pki.untrusted_cert, algorithm)
    assert handshake(self_signed, UserOptions(sslfingerprint=pin)) == b"hello\r\n"
    assert handshake(self_signed, UserOptions(sslfingerprint=pin.lower())) == b"hello\r\n"


def test_matching_fingerprint_stands_in_for_the_name(pki: TestCA, self_signed: TlsServer) -> None:
    pin = fingerprint(pki.untrusted_cert, "sha256")
    assert handshake(self_signed, UserOptions(sslfingerprint=pin), "mail.example.org")


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_mismatching_fingerprint_refuses_even_a_valid_certificate(
    pki: TestCA, trusted: TlsServer, algorithm: str
) -> None:
    pin = fingerprint(pki.untrusted_cert, algorithm)  # the wrong certificate's
    for options in (
        with_ca(pki, sslfingerprint=pin),
        UserOptions(sslfingerprint=pin, sslcertck=False),
    ):
        with pytest.raises(TLSError, match=r"127\.0\.0\.1 fingerprints do not match!") as info:
            handshake(trusted, options)
        assert info.value.exit_code == ExitCode.SOCKET
        assert fingerprint(pki.server_cert, algorithm) in str(info.value)


def test_sslcommonname_replaces_the_server_name(pki: TestCA, trusted: TlsServer) -> None:
    # Connecting by a name the certificate lacks works when sslcommonname names what it has.
    assert handshake(trusted, with_ca(pki, sslcommonname="localhost"), "mail.example.org")
    with pytest.raises(ssl.SSLCertVerificationError, match=r"mail\.example\.org"):
        handshake(trusted, with_ca(pki), "mail.example.org")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(trusted, with_ca(pki, sslcommonname="other.example"), "localhost")


def test_tls_version_bounds_are_enforced(pki: TestCA) -> None:
    server_ctx = pki.server_context()
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    server = TlsServer(server_ctx)
    try:
        assert handshake(server, with_ca(pki, sslproto="tls1.2+")) == b"hello\r\n"
        with pytest.raises(ssl.SSLError):
            handshake(server, with_ca(pki, sslproto="tls1.3+"))
    finally:
        server.close()


@pytest.fixture(scope="session")
def client_cert(pki: TestCA) -> tuple[Path, Path]:
    """A client certificate (clientAuth) from the test CA."""
    directory = pki.directory
    ext = directory / "client.ext"
    ext.write_text("basicConstraints = critical, CA:FALSE\nextendedKeyUsage = clientAuth\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, capture_output=True, check=True)

    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=bob",
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "30", "-extfile", "client.ext", "-out", "client.pem",
    )  # fmt: skip
    return directory / "client.pem", directory / "client.key"


@pytest.mark.parametrize("combined", [False, True])
def test_client_certificate_is_presented(
    pki: TestCA, client_cert: tuple[Path, Path], tmp_path: Path, combined: bool
) -> None:
    server_ctx = pki.server_context()
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cafile=str(pki.ca_cert))
    server = TlsServer(server_ctx)
    cert, key = client_cert
    if combined:
        # fetchmail: with only one of sslcert/sslkey, the file holds both.
        both = tmp_path / "both.pem"
        both.write_bytes(key.read_bytes() + cert.read_bytes())
        options = with_ca(pki, sslkey=str(both))
    else:
        options = with_ca(pki, sslcert=str(cert), sslkey=str(key))
    try:
        assert handshake(server, options) == b"hello\r\n"
    finally:
        server.close()
    seen = server.client_certs[0]
    assert seen is not None
    assert seen["subject"] == ((("commonName", "bob"),),)


def test_unreadable_files_are_tls_errors(pki: TestCA, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    for options in (
        UserOptions(sslcertfile=missing),
        UserOptions(sslcertpath=missing),
        UserOptions(sslcert=missing, sslkey=missing),
        UserOptions(sslcert=str(pki.server_cert), sslkey=str(pki.untrusted_key)),  # not a pair
    ):
        with pytest.raises(TLSError) as info:
            tls.client_context(options, "mail.isp.net")
        assert info.value.exit_code == ExitCode.SOCKET


def test_bad_pin_is_refused_before_connecting() -> None:
    with pytest.raises(ConfigError, match="sslfingerprint"):
        tls.client_context(UserOptions(sslfingerprint="hello"), "mail.isp.net")


def test_a_nul_in_a_certificate_name_does_not_pass_for_the_name_before_it(
    pki: TestCA, tmp_path: Path
) -> None:
    """fetchmail's CVE-2009-2666: a CA-signed name `localhost\\0.evil.example` must not be
    taken for `localhost`, as a C string comparison would."""
    name = b"localhost\x00.evil.example"
    general_names = bytes([0x82, len(name)]) + name  # dNSName [2] IMPLICIT IA5String
    san = bytes([0x30, len(general_names)]) + general_names
    (tmp_path / "nul.ext").write_text(
        f"subjectAltName=DER:{san.hex()}\nbasicConstraints=critical,CA:FALSE\n"
        "extendedKeyUsage=serverAuth\n"
    )
    for args in (
        ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", "nul.key", "-out", "nul.csr", "-subj", "/O=somebody else/CN=nobody"],
        ["x509", "-req", "-in", "nul.csr", "-CA", str(pki.ca_cert), "-CAkey", str(pki.ca_key),
         "-CAcreateserial", "-days", "2", "-extfile", "nul.ext", "-out", "nul.pem"],
    ):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "nul.pem", tmp_path / "nul.key")
    server = TlsServer(context)
    try:
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            handshake(server, with_ca(pki), "localhost")
        assert "Hostname mismatch" in str(info.value)  # the chain itself is good
    finally:
        server.close()
