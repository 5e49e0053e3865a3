"""SASL pieces shared by the POP3 and IMAP drivers: the OAuth2 bearer-token mechanisms, and
the redaction of every secret a driver sent from what the server says back.

Kept apart from both drivers so that neither imports the other's protocol library.
"""

from __future__ import annotations

import base64
import json
import re

from fetcher import trace
from fetcher.errors import ConfigError

# `auth` values (fetcher.rcfile.lexer) -> SASL mechanism sending an OAuth2 bearer token.
OAUTH_MECHANISMS = {"xoauth2": "XOAUTH2", "oauthbearer": "OAUTHBEARER"}


def oauth_response(mechanism: str, user: str, token: str, host: str, port: int) -> bytes:
    """The client response of SASL XOAUTH2 or OAUTHBEARER (RFC 7628), before base64.

    Raises ConfigError when the user name or token would break the \\x01-separated framing.
    """
    for value in (user, token):
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ConfigError(
                f"{host}: refusing to send a user name or OAuth2 token with a control character "
                "in it"
            )
    if mechanism == "XOAUTH2":
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    if mechanism == "OAUTHBEARER":
        # RFC 5801 saslname: "," and "=" are escaped in the authorization identity.
        saslname = user.replace("=", "=3D").replace(",", "=2C")
        return (
            f"n,a={saslname},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"
        ).encode()
    raise ValueError(f"not an OAuth2 SASL mechanism: {mechanism}")


def oauth_error_status(challenge: bytes) -> str | None:
    """The `status` of an RFC 7628 error challenge (JSON, already base64-decoded), if any."""
    try:
        error = json.loads(challenge.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    status = error.get("status") if isinstance(error, dict) else None
    if not isinstance(status, (str, int)) or isinstance(status, bool):
        return None
    text = "".join(c for c in str(status) if c.isprintable())[:40]
    return text or None


def oauth_refused(label: str, account: str, mechanism: str, text: str, status: str | None) -> str:
    """The message of an AuthenticationError for a refused OAuth2 login (never the token)."""
    message = f"{label}: OAuth2 login ({mechanism}) of {account} refused"
    if text:
        message += f": {text}"
    if status:
        message += f" (error status {status})"
    return message


# A run of base64, base64url or hex characters in a server's text. A run this long that is part
# of a secret we sent is a piece of it: a server that cuts its echo of `AUTH PLAIN <base64>`
# short still shows most of the password.
_ENCODED_RUN = re.compile(r"[A-Za-z0-9+/=_-]{8,}")


class Secrets:
    """Everything secret a driver has sent on one connection (the password, an OAuth2 token, an
    APOP digest, a CRAM-MD5 HMAC, each base64 response), to be cut out of whatever the server
    sends back before it reaches an error or a trace line: a server may echo any of it, in any
    reply."""

    def __init__(self, *secrets: str | None) -> None:
        self._forms: list[str] = []  # longest first, so that no shorter one splits a longer
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        """Remember each secret, and its base64 form (what an echo of a SASL response holds)."""
        for secret in secrets:
            if not secret:
                continue
            for form in (secret, base64.b64encode(secret.encode("utf-8")).decode("ascii")):
                if form not in self._forms:
                    self._forms.append(form)
        self._forms.sort(key=len, reverse=True)

    def redact(self, text: str) -> str:
        """`text` with every secret, its base64 form, and any long piece of them, as `*`."""
        text = trace.redact(text, *self._forms)
        return _ENCODED_RUN.sub(
            lambda m: "*" if any(m[0] in form for form in self._forms) else m[0], text
        )
