"""What every driver needs before it speaks its protocol: where to connect, how long to wait,
and the TLS mode and context (built only by fetcher.tls)."""

from __future__ import annotations

import ssl
from typing import ClassVar, Literal

from fetcher import tls
from fetcher.config import DEFAULT_TIMEOUT, service_port
from fetcher.errors import ConfigError, ServerConnectionError, ServerTimeoutError, TLSError
from fetcher.model import ServerOptions, UserOptions


class Endpoint:
    """Base of the POP3 and IMAP drivers: the server, the account and the TLS settings."""

    DEFAULT_PORT: ClassVar[int]
    DEFAULT_SSL_PORT: ClassVar[int]

    def __init__(self, server: ServerOptions, user: UserOptions) -> None:
        self.server = server
        self.user = user
        self.host = server.queryname  # where we connect, and the name the certificate must carry
        self.label = server.pollname or self.host  # how fetchmail names the server in messages
        # `timeout 0` must not mean "wait forever": that was fetchmail's CVE-2011-1947
        self.timeout = server.timeout if server.timeout > 0 else DEFAULT_TIMEOUT
        self.tls_mode = tls.tls_mode(user)
        self.peer_address: str | None = None
        self.port: int | None = None
        self.tls_active = False
        self._context: tls.ClientContext | None = None
        self._verifying: tls.ClientContext | None = None

    @property
    def connected(self) -> bool:
        """Whether the session is still up: a driver drops the connection after a reply it
        cannot read (nothing more can be sent in step), but not after a plain refusal."""
        return getattr(self, "_conn", None) is not None

    def _resolve_port(self) -> int:
        """The `service`/`port` option as a number or a name, else the protocol's default."""
        service = self.server.service
        if not service:
            implicit = self.tls_mode is tls.TlsMode.IMPLICIT
            return self.DEFAULT_SSL_PORT if implicit else self.DEFAULT_PORT
        port = service_port(service)  # the one lookup config validated with
        if 0 < port < 65536:
            return port
        if service.lstrip("-").isdigit():
            raise ConfigError(f"{self.label}: service {service} is not a valid port number")
        raise ServerConnectionError(
            f"connection to {self.host}:{service} failed: unknown service"
        )

    def _tls_context(self) -> tls.ClientContext:
        if self._context is None:
            self._context = tls.client_context(self.user, self.host)
        return self._context

    def _open(self, port: int, context: ssl.SSLContext | None) -> None:
        """Connect and read the greeting (TLS first when `context` is given); each driver's."""
        raise NotImplementedError

    def _open_implicit(self, port: int) -> None:
        """Connect with TLS from the first octet. Under `no sslcertck` the certificate is
        checked all the same, only to warn as fetchmail does (tls.checks_only_to_warn): if it
        does not verify, the connection is made again without the check, and the warning said
        before any credential goes out."""
        checking = self._checking_context()
        if checking is not None:
            try:
                self._open(port, checking)
            except TLSError as err:
                if not isinstance(err.__cause__, ssl.SSLCertVerificationError):
                    raise
                self._open(port, self._tls_context())
                self.tls_active = True
                tls.warn_unverified(err.__cause__, self.label)
                return
        else:
            self._open(port, self._tls_context())
        self.tls_active = True

    def _checking_context(self) -> tls.ClientContext | None:
        """With `no sslcertck` and no pin, a context that checks the certificate as `sslcertck`
        would, tried first only to learn whether to warn (see tls.checks_only_to_warn); None
        otherwise."""
        if not tls.checks_only_to_warn(self.user):
            return None
        if self._verifying is None:
            self._tls_context()  # the configured one first: its warnings are said once, by it
            self._verifying = tls.client_context(self.user, self.host, verify=True)
        return self._verifying

    def _timeout_error(
        self, waiting: Literal["connect", "server"] | None = "server"
    ) -> ServerTimeoutError:
        """fetchmail's words for a timeout, by what it waited for. Checked against fetchmail
        6.4.37 (`timeout 3`, a scripted POP3 server), every case exit 2:
        - "connect": a TCP connect that never completes, a stalled implicit-TLS handshake
          ("timeout after 3 seconds waiting to connect to server H.");
        - "server": no greeting, no reply to a command (CAPA, USER, PASS, STAT, LIST, UIDL,
          TOP, RETR, DELE, QUIT) or a listing cut short ("... waiting for server H.");
        - None: a message's text that stops after its +OK line, in the header or the body,
          and a stalled STLS handshake ("timeout after 3 seconds.", without the server's name;
          fetchmail names the account on the next line, as the run's report does).
        """
        if waiting == "connect":
            where = f" waiting to connect to server {self.label}"
        elif waiting == "server":
            where = f" waiting for server {self.label}"
        else:
            where = ""
        return ServerTimeoutError(f"timeout after {self.timeout} seconds{where}.")
