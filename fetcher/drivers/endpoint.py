"""What every driver needs before it speaks its protocol: where to connect (a TCP connection,
or a `plugin` command's pipe), how long to wait, and the TLS mode and context (built only by
fetcher.tls)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from typing import ClassVar, Literal

from fetcher import plugin, tls, trace
from fetcher.config import DEFAULT_TIMEOUT, service_port
from fetcher.errors import (
    ConfigError,
    DNSError,
    PyfetchError,
    ServerConnectionError,
    ServerTimeoutError,
    TLSError,
)
from fetcher.model import ServerOptions, UserOptions

MAX_TLS_REQUEST_LINE = 8192  # longest line read while asking for TLS only to read a certificate

# Makes the connected stream a driver speaks over, given the timeout: what the drivers' socket
# classes call instead of socket.create_connection().
SocketOpener = Callable[[float], socket.socket]


def read_line(sock: socket.socket, deadline: float) -> bytes:
    """One line from `sock`, read an octet at a time so that nothing after it is taken from
    the socket (the TLS handshake comes next), by `deadline` (time.monotonic()) or
    TimeoutError. At most MAX_TLS_REQUEST_LINE octets; b"" if the server closed."""
    line = bytearray()
    while len(line) < MAX_TLS_REQUEST_LINE and not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete line in time")
        sock.settimeout(remaining)
        octet = sock.recv(1)
        if not octet:
            break
        line += octet
    return bytes(line)


def peer_address(sock: object) -> str | None:
    """The server's IP address, for the Received header; None where there is none (a
    plugin's pipe, whose peer is the command, or a factory's socket that cannot say)."""
    try:
        address = sock.getpeername()  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        return None
    if not isinstance(address, tuple) or not address:
        return None  # AF_UNIX: a path, or "" for a socketpair
    return str(address[0])


class Endpoint:
    """Base of the POP3 and IMAP drivers: the server, the account and the TLS settings."""

    DEFAULT_PORT: ClassVar[int]
    DEFAULT_SSL_PORT: ClassVar[int]
    SERVICE: ClassVar[str]  # fetchmail's service names, what `%p` of a plugin stands for
    SSL_SERVICE: ClassVar[str]

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
        self._plugins: list[plugin.PluginProcess] = []  # the commands of this driver's plugin
        self._ended_plugin: plugin.PluginProcess | None = None  # the last one made to end

    @property
    def connected(self) -> bool:
        """Whether the session is still up: a driver drops the connection after a reply it
        cannot read (nothing more can be sent in step), but not after a plain refusal."""
        return getattr(self, "_conn", None) is not None

    def _resolve_port(self) -> int:
        """The `service`/`port` option as a number or a name, else the protocol's default.
        Through a plugin nothing connects to it: a name that resolves to no port is passed
        on as `%p` all the same, as fetchmail does, and the default stands for it here."""
        service = self.server.service
        implicit = self.tls_mode is tls.TlsMode.IMPLICIT
        default = self.DEFAULT_SSL_PORT if implicit else self.DEFAULT_PORT
        if not service:
            return default
        port = service_port(service)  # the one lookup config validated with
        if 0 < port < 65536:
            return port
        if self.server.plugin is not None:
            return default
        if service.lstrip("-").isdigit():
            raise ConfigError(f"{self.label}: service {service} is not a valid port number")
        raise ServerConnectionError(
            f"connection to {self.host}:{service} failed: unknown service"
        )

    # -- the connection: TCP, or a plugin command ----------------------------------------------

    def _connect_socket(self, port: int, timeout: float) -> socket.socket:
        """The stream this driver's session speaks over: a TCP connection to the server, or
        with `plugin` the pipe of the command, which makes the connection itself. A connect
        that times out raises TimeoutError; a plugin that cannot be run, ServerConnectionError
        naming it."""
        if self.server.plugin is None:
            sock = socket.create_connection((self.host, port), timeout)
            try:
                # Commands are short and each waits for its reply: Nagle only adds latency.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except BaseException:
                sock.close()
                raise
            return sock
        # A driver has one session at a time: the commands of the ones before are done.
        self._end_plugins()
        sock, process = self._start_plugin()
        self._plugins.append(process)
        sock.settimeout(timeout)
        return sock

    def _start_plugin(self) -> tuple[socket.socket, plugin.PluginProcess]:
        command = self.server.plugin
        assert command is not None
        service = self._plugin_service()
        trace.note(plugin.describe(command, self.host, service))
        try:
            return plugin.start("plugin", command, self.host, service)
        except OSError as err:
            raise ServerConnectionError(f"{self.label}: {err}") from None

    def _plugin_service(self) -> str:
        """What `%p` stands for: the `service` as written, else fetchmail's name for the
        protocol's (pop3/pop3s, imap/imaps), as it passes them."""
        if self.server.service:
            return self.server.service
        return self.SSL_SERVICE if self.tls_mode is tls.TlsMode.IMPLICIT else self.SERVICE

    def _end_plugins(self) -> None:
        """Let the commands of closed sessions end (fetcher.plugin: a moment, then signals)."""
        plugins, self._plugins = self._plugins, []
        for process in plugins:
            process.finish()
            self._ended_plugin = process

    def abandon(self) -> None:
        """The run gave up on this connection, whose thread may be stuck in a read: end its
        plugin command now rather than let it outlive the run (the read then sees the end of
        the connection, and the thread goes). Never raises."""
        for process in self._plugins:
            with contextlib.suppress(OSError):
                process.process.terminate()

    def _where(self, port: int | None) -> str:
        """The connection, as messages name it: `host:port`, or the host and the command."""
        if self.server.plugin is not None:
            return f'{self.host} through plugin "{self.server.plugin}"'
        return f"{self.host}:{port}"

    def _lost_note(self) -> str:
        """After the connection was closed under us: how the plugin command ended, if it did
        (it usually closes the connection by exiting). Empty without a plugin."""
        process = self._plugins[-1] if self._plugins else self._ended_plugin
        return process.exit_note() if process is not None else ""

    def _plugin_tls_hint(self) -> str:
        """Added where STARTTLS was required and impossible: through a plugin, the command's
        own connection may be the secure one (ssh), which fetchmail's message points out too."""
        if self.server.plugin is None:
            return ""
        return (
            " (if the plugin's own connection is secure, as ssh's is, sslproto '' turns "
            "STARTTLS off)"
        )

    def _tls_context(self) -> tls.ClientContext:
        if self._context is None:
            self._context = tls.client_context(self.user, self.host, label=self.label)
        return self._context

    def _unresolved(self, err: socket.gaierror, port: int) -> ServerConnectionError:
        """The server's name does not resolve: fetchmail 6.4.37's words and exit 11 (it looks the
        name up before connecting), or with `no dns` a failed connect (exit 2), as fetchmail."""
        reason = err.strerror or str(err)
        if self.server.dns:
            return DNSError(
                f"couldn't find canonical DNS name of {self.label} ({self.host}): {reason}"
            )
        return ServerConnectionError(f"connection to {self._where(port)} failed: {reason}")

    def _tls_failure(self, message: str, err: BaseException, port: int) -> TLSError:
        """A TLSError for a handshake that failed with `err`. When the certificate did not
        verify, the message goes on with how to trust it (tls.trust_advice), for which the
        certificate is read on a connection of its own; with -v its details are shown as
        after a handshake, as fetchmail shows them before it says why it refused."""
        if not isinstance(err, ssl.SSLCertVerificationError):
            return TLSError(message)
        der = self._read_certificate(port)
        if der is not None and trace.enabled():
            for line in tls.certificate_lines(der, self.label):
                trace.note(line)
        advice = tls.trust_advice(err, self.label, self._tls_context().expected_name, der)
        # Each line its own, prefixed as the run's report prefixes the lines it adds.
        return TLSError("\npyfetch: ".join([message, *advice]))

    def _read_certificate(self, port: int) -> bytes | None:
        """The certificate the server presents, read on a new connection after a checked
        handshake failed on it, only to show how to trust it: nothing is checked on it and
        nothing is sent but the protocol's request for TLS, no credential; it is closed at
        once. None if that does not work out. The whole exchange is bounded by the timeout."""
        trace.note(f"{self.label}: connecting again only to read the certificate it presents")
        deadline = time.monotonic() + self.timeout
        process: plugin.PluginProcess | None = None
        try:
            context = tls.certificate_reader(self.user, self.host)
            if self.server.plugin is not None:
                sock, process = self._start_plugin()
                sock.settimeout(self.timeout)
            else:
                sock = socket.create_connection((self.host, port), timeout=self.timeout)
            with sock:
                if self.tls_mode is not tls.TlsMode.IMPLICIT and not self._ask_for_tls(
                    sock, deadline
                ):
                    return None
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                with context.wrap_socket(sock) as tls_sock:
                    return tls_sock.getpeercert(binary_form=True)
        except (OSError, ValueError, PyfetchError):  # ssl.SSLError and timeouts included
            return None
        finally:
            if process is not None:
                process.finish()

    def _ask_for_tls(self, sock: socket.socket, deadline: float) -> bool:
        """Read the greeting and ask for TLS (STLS, STARTTLS) on a connection made only to
        read the certificate; whether the server agreed. Each driver's."""
        raise NotImplementedError

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
            try:
                self._open(port, self._tls_context())
            except TLSError as err:
                cause = err.__cause__
                if not isinstance(cause, ssl.SSLCertVerificationError):
                    raise
                raise self._tls_failure(err.message, cause, port) from cause
        self.tls_active = True

    def _checking_context(self) -> tls.ClientContext | None:
        """With `no sslcertck` and no pin, a context that checks the certificate as `sslcertck`
        would, tried first only to learn whether to warn (see tls.checks_only_to_warn); None
        otherwise."""
        if not tls.checks_only_to_warn(self.user):
            return None
        if self._verifying is None:
            self._tls_context()  # the configured one first: its warnings are said once, by it
            self._verifying = tls.client_context(
                self.user, self.host, verify=True, label=self.label
            )
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
