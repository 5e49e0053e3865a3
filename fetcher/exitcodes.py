"""fetchmail's exit codes (man fetchmail, EXIT CODES), kept number for number.

Scripts around fetchmail test these numbers (`fetchmail || [ $? -eq 1 ]`), so they are part of
the interface, not an implementation detail.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    SUCCESS = 0  # one or more messages were retrieved (with -c: found waiting)
    NOMAIL = 1  # no mail waiting
    SOCKET = 2  # error opening a socket, or a TLS upgrade failure
    AUTHFAIL = 3  # authentication failed, or no way to get a password
    PROTOCOL = 4  # fatal protocol error
    SYNTAX = 5  # syntax error in the arguments or the rcfile; pre/postconnect failed
    IOERR = 6  # the rcfile has bad permissions (fetchmail's "PS_IOERR")
    ERROR = 7  # error reported by the server (a timeout is a socket error, 2, in 6.4)
    EXCLUDE = 8  # client-side exclusion: another instance runs, or we cannot tell
    LOCKBUSY = 9  # the server answered "lock busy"
    SMTP = 10  # SMTP port open or transaction failed
    DNS = 11  # fatal DNS error at startup
    BSMTP = 12  # the BSMTP file could not be opened
    MAXFETCH = 13  # the poll was ended by fetchlimit
    SERVBUSY = 14  # server busy
    UNDEFINED = 23  # internal error

    @property
    def label(self) -> str:
        """The status name fetchmail prints in `Query status=N (NAME)`."""
        return _LABELS[self]


_LABELS = {
    ExitCode.SUCCESS: "SUCCESS",
    ExitCode.NOMAIL: "NOMAIL",
    ExitCode.SOCKET: "SOCKET",
    ExitCode.AUTHFAIL: "AUTHFAIL",
    ExitCode.PROTOCOL: "PROTOCOL",
    ExitCode.SYNTAX: "SYNTAX",
    ExitCode.IOERR: "IOERR",
    ExitCode.ERROR: "ERROR",
    ExitCode.EXCLUDE: "EXCLUDE",
    ExitCode.LOCKBUSY: "LOCKBUSY",
    ExitCode.SMTP: "SMTP",
    ExitCode.DNS: "DNS",
    ExitCode.BSMTP: "BSMTP",
    ExitCode.MAXFETCH: "MAXFETCH",
    ExitCode.SERVBUSY: "SERVBUSY",
    ExitCode.UNDEFINED: "UNDEFINED",
}
