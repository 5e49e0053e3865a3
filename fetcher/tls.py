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
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
import socket
import ssl
import warnings

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


class ClientContext(ssl.SSLContext):
    """An SSLContext bound to one server: it knows the name to check and the pin to enforce.

    Binding it keeps the checks in one place. poplib and imaplib pass their own host name to
    `wrap_socket()`, and a `via` name or `sslcommonname` must win over that name. A pin must be
    checked on every socket the context makes, not only where a driver remembers to do it.
    """

    expected_name: str  # sslcommonname, else the server name: SNI and the hostname check
    label: str  # the server name, for messages
    pin: str | None  # sslfingerprint

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
            context.check_peer(self.getpeercert(binary_form=True))


class _CheckedObject(ssl.SSLObject):
    """The same check for memory-BIO TLS (asyncio), so the context is safe wherever it goes."""

    def do_handshake(self) -> None:
        super().do_handshake()
        context = self.context
        if isinstance(context, ClientContext):
            context.check_peer(self.getpeercert(binary_form=True))


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
    user: UserOptions, server_name: str, *, verify: bool | None = None
) -> ClientContext:
    """The SSLContext for connecting to `server_name` (the `via` name, else the poll name).

    `verify=True` checks the chain and the name whatever `sslcertck` says (see
    `checks_only_to_warn`); None checks as the options say. A context with `verify` given is a
    second one for the same options: the warnings about them were given with the first.

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
    context.label = server_name
    context.pin = user.sslfingerprint or None
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
