"""TLS policy: the one place an SSLContext is built, and the STARTTLS decision.

The stdlib's poplib and imaplib verify nothing unless handed a context, so every driver takes
its context from `client_context()` and never builds one itself.

When TLS is used (fetchmail 6.4, `man fetchmail`, sections --ssl, --sslproto, --sslcertck and
"Secure Socket Layers"):

    ssl   sslproto        sslcertck  sslfingerprint   TlsMode
    ----  --------------  ---------  ---------------  ------------------------------------------
    yes   anything        any        any              IMPLICIT (with sslproto '' fetchmail "logs
                                                      an error and pretends 'auto'"; so do we)
    no    ''              any        any              NONE: "Disable STARTTLS", even though
                                                      sslcertck is on by default
    no    not given       on         any              STARTTLS ("--sslcertck causes fetchmail to
                                                      require that SSL/TLS be used"; the 6.4
                                                      default, so plain servers fail)
    no    non-empty       any        any              STARTTLS (auto, tls1.2+ ... all "Require
                                                      TLS"; 6.4.0 NEWS: "all non-empty protocol
                                                      versions do")
    no    not given       off        given            STARTTLS ("the connection will also fail if
                                                      fetchmail cannot obtain an SSL certificate")
    no    not given       off        not given        OPPORTUNISTIC: "Only if this option and
                                                      --ssl are both missing ... there will be
                                                      opportunistic TLS"

Like fetchmail since 6.3.19, a required STARTTLS is attempted even when CAPA does not list STLS,
so stripping STLS from CAPA alone downgrades nothing; a refusal then fails the poll before any
credential is sent (CVE-2006-5867, CVE-2021-39272).

Certificate checks, by the options:

- default (`sslcertck`): the chain must verify against the trust store and the certificate must
  match `sslcommonname` if given, else the name we connect to. That name also goes out as SNI,
  as in fetchmail. Unlike fetchmail, an IP address is matched against the IP SANs.
- `sslcertfile`/`sslcertpath` replace the system trust store, unless the environment variable
  FETCHMAIL_INCLUDE_DEFAULT_X509_CA_CERTS is non-empty, in which case they are added to it.
- `no sslcertck`: the traffic is still encrypted and a certificate that does not verify is
  accepted, but with fetchmail's warning before any credential is sent (see
  `checks_only_to_warn`).
- `sslfingerprint`: the certificate's digest must match: fetchmail's MD5 `AA:BB:...` form, or
  SHA-1 or SHA-256 (colon-separated or plain hex, any case). A mismatch always refuses. A match
  is enough on its own: the pin stands in for the CA and the name check. fetchmail 6.4 also
  demands a verifying chain unless `no sslcertck` is given, so pyfetch accepts a pinned
  self-signed certificate that fetchmail would refuse. An exact pin proves more than a CA does.

What the user is shown:

- with -v, after each handshake, fetchmail 6.4.37's lines about the certificate (its issuer's
  organization and common name, its subject's common name and DNS names, the MD5 fingerprint
  fetchmail prints), then the SHA-256 fingerprint in the form `sslfingerprint` takes, then the
  protocol and cipher (`certificate_lines`, `session_line`). The names are read from the DER
  certificate (`certificate_names`): `getpeercert()` gives them only when the chain was
  checked, and a pinned or `no sslcertck` session is not.
- when a certificate does not verify, how to trust it (`trust_advice`): the CA certificate to
  name in `sslcertfile`, or the `sslfingerprint` to paste for that very certificate. Python
  does not expose the certificate of a failed handshake, so a driver reads it on a connection
  of its own that checks nothing and sends nothing but the protocol's request for TLS
  (`certificate_reader`).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
import socket
import ssl
import unicodedata
import warnings
from dataclasses import dataclass

from fetcher import trace
from fetcher.errors import ConfigError, TLSError
from fetcher.model import UserOptions

# fetchmail 6.4.37's words (on stderr, with or without -v) after a handshake under `no sslcertck`
# whose certificate did not verify.
INSECURE_WARNING = (
    "Warning: the connection is insecure, continuing anyways. (Better use --sslcertck!)"
)

INCLUDE_DEFAULT_CAS_ENV = "FETCHMAIL_INCLUDE_DEFAULT_X509_CA_CERTS"


class TlsMode(enum.Enum):
    """How a POP3 or IMAP session gets its TLS layer."""

    IMPLICIT = "implicit"  # `ssl`: TLS from the first byte (ports 995, 993)
    STARTTLS = "starttls"  # STLS/STARTTLS must succeed before anything else is sent
    OPPORTUNISTIC = "opportunistic"  # STLS if offered; carry on in plaintext if it fails
    NONE = "none"  # `sslproto ''`: no TLS at all

    @property
    def required(self) -> bool:
        """True when the session must not go on without TLS."""
        return self in (TlsMode.IMPLICIT, TlsMode.STARTTLS)


def tls_mode(user: UserOptions) -> TlsMode:
    """The TLS mode fetchmail 6.4 uses for these options (the table in the module docstring)."""
    if user.ssl:
        return TlsMode.IMPLICIT
    if user.sslproto == "":
        return TlsMode.NONE
    if user.sslcertck or user.sslfingerprint or user.sslproto:
        return TlsMode.STARTTLS
    return TlsMode.OPPORTUNISTIC


# sslproto value (compared case-insensitively, as fetchmail does since 6.3.x) -> (lowest,
# highest) version; None: no upper bound. The bounds are fetchmail's. The library's security
# level still applies on top: OpenSSL 3 refuses TLS 1.0 and 1.1 at its default level.
_V = ssl.TLSVersion
SSLPROTO_VERSIONS: dict[str, tuple[ssl.TLSVersion, ssl.TLSVersion | None]] = {
    "auto": (_V.TLSv1, None),
    "ssl23": (_V.TLSv1, None),  # the man page: "see 'auto'" (6.3 configs said ssl23)
    "tls1+": (_V.TLSv1, None),
    "tls1": (_V.TLSv1, _V.TLSv1),
    "tls1.1": (_V.TLSv1_1, _V.TLSv1_1),
    "tls1.1+": (_V.TLSv1_1, None),
    "tls1.2": (_V.TLSv1_2, _V.TLSv1_2),
    "tls1.2+": (_V.TLSv1_2, None),
    "tls1.3": (_V.TLSv1_3, _V.TLSv1_3),
    "tls1.3+": (_V.TLSv1_3, None),
}
# fetchmail still offers these with an old OpenSSL. No current TLS library speaks SSLv2 or SSLv3,
# so asking for them is an error rather than a silent upgrade.
_REFUSED_SSLPROTO = frozenset({"ssl2", "ssl3", "ssl3+"})


def sslproto_bounds(
    sslproto: str | None, *, quiet: bool = False
) -> tuple[ssl.TLSVersion, ssl.TLSVersion | None]:
    """The (minimum, maximum) TLS version for an `sslproto` value; None and '' mean `auto`.

    SSLv2/SSLv3 raise ConfigError. Any other unknown value is treated as `auto` with a warning,
    as fetchmail does ("Invalid SSL protocol '%s' specified, using default autoselect (auto).").
    TLS is still required then, so only the version floor is affected.
    """
    key = (sslproto or "auto").lower()
    if key in _REFUSED_SSLPROTO:
        raise ConfigError(
            f"sslproto '{sslproto}': SSLv2 and SSLv3 are broken and not supported; "
            "use 'tls1.2+' or 'auto'"
        )
    bounds = SSLPROTO_VERSIONS.get(key)
    if bounds is None:
        if not quiet:
            trace.warning(f"Invalid SSL protocol '{key}' specified, using default autoselect "
                          "(auto).")
        bounds = SSLPROTO_VERSIONS["auto"]
    return bounds


_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*")
_HEX_PLAIN = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_DIGESTS_BY_SIZE = {16: "md5", 20: "sha1", 32: "sha256"}


def parse_fingerprint(text: str) -> tuple[str, bytes]:
    """`sslfingerprint` as (hashlib algorithm name, digest). ConfigError if it is malformed."""
    cleaned = text.strip()
    if not (_HEX_PAIRS.fullmatch(cleaned) or _HEX_PLAIN.fullmatch(cleaned)):
        raise ConfigError(
            f"sslfingerprint '{text}' is not a hex fingerprint like AA:BB:...:FF (MD5 or SHA-256)"
        )
    digest = bytes.fromhex(cleaned.replace(":", ""))
    algorithm = _DIGESTS_BY_SIZE.get(len(digest))
    if algorithm is None:
        raise ConfigError(
            f"sslfingerprint '{text}' has {len(digest)} bytes; expected 16 (MD5) or 32 (SHA-256)"
        )
    return algorithm, digest


def check_fingerprint(der: bytes, expected: str) -> bool:
    """Whether a DER certificate has the `sslfingerprint` given (MD5, SHA-1 or SHA-256).

    The digest is of the whole certificate, as `openssl x509 -noout -md5 -fingerprint` prints
    it: fetchmail's man page calls it the key's, but fetchmail hashes the certificate.
    """
    algorithm, digest = parse_fingerprint(expected)
    return hmac.compare_digest(hashlib.new(algorithm, der).digest(), digest)


def fingerprint(der: bytes, algorithm: str = "sha256") -> str:
    """A certificate's fingerprint in fetchmail's upper-case colon form, for messages."""
    return ":".join(f"{b:02X}" for b in hashlib.new(algorithm, der).digest())


# -- reading the names in a certificate (DER) --------------------------------------------------
#
# Only what the -v lines and the advice need: the issuer's O and CN, the subject's CN and the
# subjectAltName's DNS names (RFC 5280, section 4.1). OpenSSL has parsed the certificate
# during the handshake, so it is well-formed DER; still, a server chooses these bytes, so the
# reader checks every length against its bounds and gives up (None) on anything unexpected.

_OID_COMMON_NAME = bytes([0x55, 0x04, 0x03])  # 2.5.4.3
_OID_ORGANIZATION = bytes([0x55, 0x04, 0x0A])  # 2.5.4.10
_OID_SUBJECT_ALT_NAME = bytes([0x55, 0x1D, 0x11])  # 2.5.29.17
_SEQUENCE, _SET, _OID, _OCTET_STRING = 0x30, 0x31, 0x06, 0x04
_VERSION, _EXTENSIONS, _DNS_NAME = 0xA0, 0xA3, 0x82  # [0], [3] constructed; [2] primitive
# The string types of X.520 names, and how their octets read.
_STRING_CODECS = {
    0x0C: "utf-8",  # UTF8String
    0x12: "latin-1",  # NumericString
    0x13: "latin-1",  # PrintableString
    0x14: "latin-1",  # TeletexString (T61): mostly Latin-1 in practice, as OpenSSL prints it
    0x16: "latin-1",  # IA5String
    0x1A: "latin-1",  # VisibleString
    0x1C: "utf-32-be",  # UniversalString
    0x1E: "utf-16-be",  # BMPString
}
_MAX_SHOWN = 256  # characters of one name shown; fetchmail's buffer holds 256 too
_MAX_DNS_NAMES_SHOWN = 100  # a certificate may list thousands; -v shows this many


class _BadDer(ValueError):
    """The bytes are not the DER this reader expects."""


_Element = tuple[int, int, int]  # tag (its first octet), content start, content end


def _element(der: bytes, pos: int, end: int) -> _Element:
    """The DER element at der[pos:end]."""
    if end - pos < 2:
        raise _BadDer("truncated")
    tag = der[pos]
    pos += 1
    if tag & 0x1F == 0x1F:  # a tag number above 30 follows in base 128; none is read here
        while True:
            if pos >= end:
                raise _BadDer("truncated tag")
            pos += 1
            if not der[pos - 1] & 0x80:
                break
    if pos >= end:
        raise _BadDer("truncated")
    length = der[pos]
    pos += 1
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or end - pos < count:  # 0: BER's indefinite length, not DER
            raise _BadDer("bad length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    if length > end - pos:
        raise _BadDer("length past the end")
    return tag, pos, pos + length


def _children(der: bytes, parent: _Element, tag: int) -> list[_Element]:
    """The elements inside `parent`, which must have the tag given."""
    if parent[0] != tag:
        raise _BadDer(f"tag {parent[0]:#x} where {tag:#x} was expected")
    children = []
    pos, end = parent[1], parent[2]
    while pos < end:
        child = _element(der, pos, end)
        children.append(child)
        pos = child[2]
    return children


def _attributes(der: bytes, name: _Element) -> dict[bytes, str]:
    """A Name's attributes by OID, the first of each kind (as OpenSSL's
    X509_NAME_get_text_by_NID finds it); values of other than string types are left out."""
    found: dict[bytes, str] = {}
    for rdn in _children(der, name, _SEQUENCE):
        for pair in _children(der, rdn, _SET):
            parts = _children(der, pair, _SEQUENCE)
            if len(parts) != 2 or parts[0][0] != _OID:
                raise _BadDer("bad attribute")
            oid = der[parts[0][1] : parts[0][2]]
            tag, start, end = parts[1]
            codec = _STRING_CODECS.get(tag)
            if codec is not None and oid not in found:
                found[oid] = der[start:end].decode(codec, "replace")
    return found


def _dns_names(der: bytes, extensions: _Element) -> tuple[str, ...]:
    for extension in _children(der, _children(der, extensions, _EXTENSIONS)[0], _SEQUENCE):
        parts = _children(der, extension, _SEQUENCE)
        if len(parts) < 2 or parts[0][0] != _OID:
            raise _BadDer("bad extension")
        if der[parts[0][1] : parts[0][2]] != _OID_SUBJECT_ALT_NAME:
            continue
        value = parts[-1]
        if value[0] != _OCTET_STRING:
            raise _BadDer("bad extension value")
        general_names = _element(der, value[1], value[2])
        return tuple(
            der[start:end].decode("ascii", "replace")
            for tag, start, end in _children(der, general_names, _SEQUENCE)
            if tag == _DNS_NAME
        )
    return ()


@dataclass(frozen=True)
class CertificateNames:
    """The names in a certificate that fetchmail shows with -v; None where there is none."""

    issuer_organization: str | None
    issuer_common_name: str | None
    subject_common_name: str | None
    dns_names: tuple[str, ...]  # the subjectAltName's dNSName entries, in order


def certificate_names(der: bytes) -> CertificateNames | None:
    """The names in a DER certificate; None if it cannot be read."""
    try:
        certificate = _element(der, 0, len(der))
        tbs = _children(der, _children(der, certificate, _SEQUENCE)[0], _SEQUENCE)
        # version [0] (optional), serialNumber, signature, issuer, validity, subject,
        # subjectPublicKeyInfo, then the optional [1], [2] and [3] (extensions)
        first = 1 if tbs[0][0] == _VERSION else 0
        issuer = _attributes(der, tbs[first + 2])
        subject = _attributes(der, tbs[first + 4])
        dns_names: tuple[str, ...] = ()
        for element in tbs[first + 6 :]:
            if element[0] == _EXTENSIONS:
                dns_names = _dns_names(der, element)
    except (_BadDer, IndexError):
        return None
    return CertificateNames(
        issuer_organization=issuer.get(_OID_ORGANIZATION),
        issuer_common_name=issuer.get(_OID_COMMON_NAME),
        subject_common_name=subject.get(_OID_COMMON_NAME),
        dns_names=dns_names,
    )


_UNREADABLE = CertificateNames(None, None, None, ())
# What a server put in its certificate reaches the terminal or the log: control characters
# (ESC, NUL, C1), and the format characters that reorder text (U+202E) or hide it, are shown as
# "?", as trace shows control characters in a server's replies.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _shown(text: str) -> str:
    text = "".join(
        "?" if unicodedata.category(char) in _HIDDEN_CATEGORIES else char
        for char in text[: _MAX_SHOWN + 1]
    )
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def certificate_lines(der: bytes, label: str) -> list[str]:
    """fetchmail 6.4.37's -v lines about the server's certificate, then its SHA-256
    fingerprint in the form `sslfingerprint` takes (fetchmail shows only the MD5 one)."""
    names = certificate_names(der) or _UNREADABLE
    lines = ["Server certificate:"]
    if names.issuer_organization is not None:
        lines.append(f"Issuer Organization: {_shown(names.issuer_organization)}")
    else:
        lines.append("Unknown Organization")
    if names.issuer_common_name is not None:
        lines.append(f"Issuer CommonName: {_shown(names.issuer_common_name)}")
    else:
        lines.append("Unknown Issuer CommonName")
    if names.subject_common_name is not None:
        lines.append(f"Subject CommonName: {_shown(names.subject_common_name)}")
    else:
        lines.append("Unknown Server CommonName")
    shown = names.dns_names[:_MAX_DNS_NAMES_SHOWN]
    lines += [f"Subject Alternative Name: {_shown(name)}" for name in shown]
    if len(names.dns_names) > len(shown):
        lines.append(f"({len(names.dns_names) - len(shown)} more Subject Alternative Names)")
    lines.append(f"{label} key fingerprint: {fingerprint(der, 'md5')}")
    lines.append(f"{label} key fingerprint (SHA-256): {fingerprint(der, 'sha256')}")
    return lines


def session_line(peer: ssl.SSLSocket | ssl.SSLObject) -> str | None:
    """fetchmail's -v line about the protocol and cipher a handshake agreed on."""
    cipher, version = peer.cipher(), peer.version()
    if cipher is None or version is None:
        return None
    name, _, secret_bits = cipher
    # fetchmail prints OpenSSL's SSL_CIPHER_get_bits(): the secret bits, and the bits the
    # algorithm processes (more than the secret ones for export ciphers of old).
    processed = next(
        (c["alg_bits"] for c in peer.context.get_ciphers() if c["name"] == name), secret_bits
    )
    return (
        f"SSL/TLS: using protocol {version}, cipher {name}, "
        f"{secret_bits}/{processed} secret/processed bits"
    )


class ClientContext(ssl.SSLContext):
    """An SSLContext bound to one server: it knows the name to check and the pin to enforce.

    Binding it keeps the checks in one place. poplib and imaplib pass their own host name to
    `wrap_socket()`, and a `via` name or `sslcommonname` must win over that name. A pin must be
    checked on every socket the context makes, not only where a driver remembers to do it.
    """

    expected_name: str  # sslcommonname, else the server name: SNI and the hostname check
    label: str  # the poll name, for messages
    pin: str | None  # sslfingerprint
    show_peer: bool  # -v shows the certificate and the cipher after each handshake

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        # Whatever name the caller passes (poplib passes its host), check the configured one.
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=self.expected_name,
            session=session,
        )

    def after_handshake(self, peer: ssl.SSLSocket | ssl.SSLObject) -> None:
        """Show the certificate with -v, then enforce the pin (TLSError on a mismatch): in
        this order, so that -v shows which certificate a mismatch was about, as in fetchmail.
        """
        der = peer.getpeercert(binary_form=True)
        show = self.show_peer and trace.enabled()
        if show and der is not None:
            for line in certificate_lines(der, self.label):
                trace.note(line)
        self.check_peer(der)
        if show:
            if self.pin is not None:
                trace.note(f"{self.label} fingerprints match.")
            agreed = session_line(peer)
            if agreed is not None:
                trace.note(agreed)

    def check_peer(self, der: bytes | None) -> None:
        """Enforce the pin once the handshake is done. TLSError on a mismatch."""
        if self.pin is None:
            return
        if der is None:
            raise TLSError(f"{self.label}: the server sent no certificate to check the fingerprint")
        if not check_fingerprint(der, self.pin):
            algorithm, _ = parse_fingerprint(self.pin)
            raise TLSError(
                f"{self.label} fingerprints do not match! "
                f"(server certificate {algorithm.upper()} {fingerprint(der, algorithm)})"
            )


class _CheckedSocket(ssl.SSLSocket):
    """An SSLSocket that applies its ClientContext's pin as part of the handshake.

    A TLSError raised here is an OSError, so SSLSocket closes the socket before re-raising.
    """

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        context = self.context
        if isinstance(context, ClientContext):
            context.after_handshake(self)


class _CheckedObject(ssl.SSLObject):
    """The same check for memory-BIO TLS (asyncio), so the context is safe wherever it goes."""

    def do_handshake(self) -> None:
        super().do_handshake()
        context = self.context
        if isinstance(context, ClientContext):
            context.after_handshake(self)


def expected_hostname(user: UserOptions, server_name: str) -> str:
    """The name the certificate must carry, also sent as SNI: fetchmail's `servercname`."""
    return user.sslcommonname or server_name


def checks_only_to_warn(user: UserOptions) -> bool:
    """`no sslcertck` and no `sslfingerprint`: the certificate is accepted whatever it is, but
    fetchmail checks it all the same and warns (INSECURE_WARNING) when it does not verify.

    Python's ssl module cannot tell after the handshake whether an unchecked certificate would
    have verified, so a driver first tries a context that checks (`client_context(...,
    verify=True)`), and only when that handshake fails on the certificate connects again with
    the unchecked one and calls `warn_unverified()`. A certificate that verifies costs nothing
    more; one that does not costs a second connection.
    """
    return not user.sslcertck and not user.sslfingerprint


def warn_unverified(err: ssl.SSLCertVerificationError, label: str) -> None:
    """fetchmail's warning for a connection made although its certificate did not verify: why
    it did not (fetchmail's first line, in the words of a refused `sslcertck`), then the
    warning itself. Call it once per connection, before any credential is sent."""
    trace.warning(describe_handshake_error(err, label))
    trace.warning(INSECURE_WARNING)


def client_context(
    user: UserOptions, server_name: str, *, verify: bool | None = None, label: str | None = None
) -> ClientContext:
    """The SSLContext for connecting to `server_name` (the `via` name, else the poll name).

    `verify=True` checks the chain and the name whatever `sslcertck` says (see
    `checks_only_to_warn`); None checks as the options say. A context with `verify` given is a
    second one for the same options: the warnings about them were given with the first.
    `label` names the server in messages (the poll name); `server_name` if not given.

    Raises ConfigError for an impossible `sslproto` or a malformed `sslfingerprint`, and
    TLSError (exit 2, as fetchmail) when a certificate, key or CA file cannot be loaded.
    """
    second = verify is not None
    if verify is None:
        verify = user.sslcertck
    if user.ssl and user.sslproto == "" and not second:
        trace.warning(f"sslproto '' cannot be used with ssl; using 'auto' for {server_name}")
    minimum, maximum = sslproto_bounds(user.sslproto, quiet=second)
    if user.sslfingerprint:
        parse_fingerprint(user.sslfingerprint)  # a bad pin is a configuration error, now

    context = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    context.expected_name = expected_hostname(user, server_name)
    context.label = label or server_name
    context.pin = user.sslfingerprint or None
    context.show_peer = True
    context.sslsocket_class = _CheckedSocket
    context.sslobject_class = _CheckedObject

    with warnings.catch_warnings():
        # Python deprecates TLS 1.0/1.1 bounds; the user asked for them by name (tls1, tls1.1),
        # and `auto` is fetchmail's "TLSv1 or newer".
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = minimum
        if maximum is not None:
            context.maximum_version = maximum

    _load_trust_store(context, user)
    _load_client_certificate(context, user)

    if context.pin is not None or not verify:
        # With a pin, the pin is the check (see _CheckedSocket). With `no sslcertck` any
        # certificate is accepted (a driver tries a checking context first, only to warn: see
        # checks_only_to_warn). The chain check and name check are switched off together.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
    return context


def certificate_reader(user: UserOptions, server_name: str) -> ClientContext:
    """A context only for reading the certificate a server presents, after a checked handshake
    failed on it (see `trust_advice`): it checks nothing, enforces no pin and shows nothing; the
    TLS versions, SNI and client certificate are those of the options, so that the server
    presents the same certificate. Nothing but the request for TLS may be sent on it."""
    context = client_context(user, server_name, verify=False)
    context.pin = None
    context.show_peer = False
    return context


def _load_trust_store(context: ssl.SSLContext, user: UserOptions) -> None:
    if not (user.sslcertfile or user.sslcertpath):
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return
    # OpenSSL reads a CA directory lazily, so a missing one would only show up as an unknown CA.
    if user.sslcertpath and not os.path.isdir(user.sslcertpath):
        raise TLSError(f"sslcertpath {user.sslcertpath}: not a directory")
    try:
        context.load_verify_locations(cafile=user.sslcertfile, capath=user.sslcertpath)
    except OSError as err:  # ssl.SSLError is an OSError
        which = user.sslcertfile or user.sslcertpath
        raise TLSError(f"cannot load trusted certificates from {which}: {_reason(err)}") from err
    if os.environ.get(INCLUDE_DEFAULT_CAS_ENV):
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)


def _load_client_certificate(context: ssl.SSLContext, user: UserOptions) -> None:
    if not (user.sslcert or user.sslkey):
        return
    # fetchmail: "If he does NOT have a separate certificate and private key file then assume
    # that it's a combined key and certificate file."
    certfile = user.sslcert or user.sslkey
    keyfile = user.sslkey or user.sslcert
    assert certfile is not None
    try:
        context.load_cert_chain(certfile, keyfile)
    except OSError as err:  # ssl.SSLError is an OSError
        raise TLSError(
            f"cannot load the client certificate {certfile} (key {keyfile}): {_reason(err)}"
        ) from err


def _reason(err: OSError) -> str:
    if isinstance(err, ssl.SSLError) and err.reason:
        return str(err.reason)
    return err.strerror or str(err)


def describe_handshake_error(err: ssl.SSLError, label: str) -> str:
    """A one-line reason for a failed handshake, with fetchmail's wording for bad certificates."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"Server certificate verification error: {err.verify_message}"
    reason = err.reason or err.strerror or str(err)
    return f"SSL connection to {label} failed: {reason}"


# OpenSSL's X509_V_ERR_* codes (SSLCertVerificationError.verify_code) that the advice tells
# apart: nothing pyfetch trusts vouches for the certificate; its dates; the name on it.
_UNTRUSTED_ISSUER = frozenset({2, 18, 19, 20, 21})  # ..._ISSUER_CERT, ..._SELF_SIGNED_...
_SELF_SIGNED = 18  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
_NOT_YET_VALID, _EXPIRED = 9, 10
_NAME_MISMATCH = frozenset({62, 64})  # X509_V_ERR_HOSTNAME_MISMATCH, ..._IP_ADDRESS_MISMATCH


def trust_advice(
    err: ssl.SSLCertVerificationError, label: str, expected_name: str, der: bytes | None
) -> list[str]:
    """How to make pyfetch accept a certificate that did not verify, in lines that follow the
    error: the `sslcertfile` with the CA, the `sslcommonname` the certificate carries, and the
    `sslfingerprint` of this very certificate (`der`; None if it could not be read). Each
    option is a line of its own, ready to paste into the poll entry."""
    names = (certificate_names(der) if der is not None else None) or _UNREADABLE
    subject = names.subject_common_name or (names.dns_names[0] if names.dns_names else None)
    made_out = f" for {_shown(subject)}" if subject else ""
    options: list[tuple[str, str]] = []  # (what it is, the option to paste)
    code = err.verify_code
    if code in _UNTRUSTED_ISSUER:
        if code == _SELF_SIGNED:
            lines = [f"{label} presented a self-signed certificate{made_out}, which pyfetch "
                     "does not trust."]
            options.append(("a copy of that certificate (a PEM file)",
                            "sslcertfile /path/to/its-certificate.pem"))
        else:
            issuer = names.issuer_common_name or names.issuer_organization
            by = f' issued by "{_shown(issuer)}"' if issuer else ""
            lines = [f"{label} presented a certificate{made_out}{by}, which pyfetch does not "
                     "trust."]
            options.append(("the certificate of the CA that issued it (a PEM file)",
                            "sslcertfile /path/to/ca.pem"))
    elif code in _NAME_MISMATCH:
        carried = names.dns_names or ((subject,) if subject else ())
        if carried:
            shown = ", ".join(_shown(name) for name in carried[:5])
            lines = [f"The certificate of {label} is made out to {shown}, not to "
                     f"{expected_name}."]
            options.append(("the name it carries, if this is the right server",
                            f"sslcommonname {_shown(carried[0])}"))
        else:
            lines = [f"The certificate of {label} is not made out to {expected_name}."]
    elif code in (_NOT_YET_VALID, _EXPIRED):
        when = "has expired" if code == _EXPIRED else "is not valid yet"
        lines = [f"The certificate of {label} {when}: whoever runs {label} must renew it "
                 "(or this computer's clock is wrong)."]
    else:
        lines = []
    if der is not None:
        options.append((f"this very certificate, once whoever runs {label} has confirmed its "
                        "SHA-256 fingerprint", f'sslfingerprint "{fingerprint(der)}"'))
    accept = "To trust it" if code in _UNTRUSTED_ISSUER else "To accept it all the same"
    for number, (what, option) in enumerate(options):
        if number == 0:
            either = "either " if len(options) > 1 else ""
            lines.append(f"{accept}, add to the poll entry of {label} {either}{what}:")
        else:
            lines.append(f"or {what}:")
        lines.append(f"  {option}")
    if der is None:
        lines.append(f"(pyfetch could not read the certificate of {label} again to show the "
                     "sslfingerprint that would accept it.)")
    return lines
