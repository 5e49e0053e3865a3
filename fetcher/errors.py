"""The exception hierarchy. Every error carries the fetchmail exit code it leads to.

Local errors (our configuration or environment is wrong) are kept apart from remote ones (a
server misbehaved), as h11 does. Where a builtin fits, the class inherits it too, so callers
that catch `ConnectionError` or `TimeoutError` keep working.
"""

from __future__ import annotations

from fetcher.exitcodes import ExitCode


class PyfetchError(Exception):
    """Base class. `str(err)` is the whole user-facing message, without the `pyfetch:` prefix."""

    exit_code: ExitCode = ExitCode.UNDEFINED

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class LocalError(PyfetchError):
    """Something on our side is wrong: configuration, files, arguments."""


class ConfigError(LocalError):
    """The rcfile, the TOML file or the command line is invalid (exit 5)."""

    exit_code = ExitCode.SYNTAX


class RcSyntaxError(ConfigError):
    """A syntax error at a known place in the rcfile: `FILE:LINE: MESSAGE at TOKEN`."""

    def __init__(self, path: str, line: int, message: str, token: str | None) -> None:
        self.path = path
        self.line = line
        self.reason = message
        self.token = token
        where = token if token is not None else "end of input"
        super().__init__(f"{path}:{line}: {message} at {where}")


class PermissionsError(LocalError):
    """The rcfile (or the idfile) may be read or changed by others (exit 6)."""

    exit_code = ExitCode.IOERR


class CredentialsError(LocalError):
    """No password could be found or asked for (exit 3)."""

    exit_code = ExitCode.AUTHFAIL


class UnsupportedFeatureError(ConfigError):
    """The rcfile asks for a fetchmail feature pyfetch parses but does not implement."""


class RemoteError(PyfetchError):
    """A server did something wrong or refused us."""


class ServerConnectionError(RemoteError, ConnectionError):
    exit_code = ExitCode.SOCKET


class ServerTimeoutError(ServerConnectionError, TimeoutError):
    """The server stopped answering (exit 2): fetchmail 6.4 reports every timeout as a socket
    error (PS_SOCKET), whether it waited for the greeting, a reply or a message's text."""


class DNSError(ServerConnectionError):
    """The server's name does not resolve (exit 11). fetchmail 6.4 looks the name up before it
    connects, unless `no dns` is given, and ends the poll with PS_DNS when that fails; with
    `no dns` the failed connect is a socket error (exit 2), which ServerConnectionError is."""

    exit_code = ExitCode.DNS


class AuthenticationError(RemoteError):
    exit_code = ExitCode.AUTHFAIL


class ProtocolError(RemoteError):
    exit_code = ExitCode.PROTOCOL


class LockBusyError(RemoteError):
    """The server says the mailbox is locked by another session (exit 9)."""

    exit_code = ExitCode.LOCKBUSY


class TLSError(ServerConnectionError):
    """TLS could not be set up as required, or the certificate did not verify (exit 2)."""


class ListenerUnavailableError(LocalError, ConnectionError):
    """No SMTP/LMTP listener of the hunt list answered (exit 10)."""

    exit_code = ExitCode.SMTP


class BsmtpError(LocalError):
    """The BSMTP file could not be opened or written (exit 12)."""

    exit_code = ExitCode.BSMTP


class HookError(LocalError):
    """A preconnect or postconnect command failed (exit 5)."""

    exit_code = ExitCode.SYNTAX
