"""What pyfetch parses but will not do, so that a run refuses it instead of ignoring it.

fetchmail's rcfile grammar carries legacy protocols and authentication schemes. pyfetch reads
every one of them (so that `--configdump` and `-V` work on any rcfile), but polling with one
must stop with a message saying what is not supported, never silently do something else.
"""

from __future__ import annotations

from fetcher.model import ServerOptions, UserOptions

_PROTOCOLS = {
    "POP2": "POP2 is obsolete; use POP3 or IMAP",
    "RPOP": "RPOP trusts privileged ports and is obsolete; use POP3 or IMAP",
    "ETRN": "ETRN (asking an SMTP server to flush its queue) is not supported",
    "ODMR": "ODMR (on-demand mail relay) is not supported",
}
_AUTH = {
    "kerberos_v4": "Kerberos IV authentication is not supported",
    "kerberos_v5": "Kerberos V authentication is not supported",
    "gssapi": "GSSAPI authentication is not supported",
    "otp": "OTP (one-time password) authentication is not supported",
    "ntlm": "NTLM authentication is not supported",
    "msn": "MSN authentication is not supported",
}


def unsupported(server: ServerOptions, user: UserOptions) -> list[str]:
    """Reasons this account cannot be polled by pyfetch; empty if it can."""
    reasons: list[str] = []
    if server.protocol in _PROTOCOLS:
        reasons.append(_PROTOCOLS[server.protocol])
    if server.sdps:
        reasons.append("SDPS (Demon Internet's POP3 extension) is not supported")
    if server.auth in _AUTH:
        reasons.append(_AUTH[server.auth])
    if server.principal is not None:
        reasons.append("'principal' is for Kerberos, which is not supported")
    return [f"{server.pollname}: {reason}" for reason in reasons]
