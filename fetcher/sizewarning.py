"""The mail a daemon sends about messages over `limit`, as fetchmail's send_size_warnings().

A message over `limit` stays on the server (or is deleted, with `limitflush`), and a daemon
nobody watches would keep that to itself: fetchmail mails the account's local user (the
postmaster, for a multidrop account) a list of them, by size, and sends it again at most
every `warnings` seconds (every poll with `warnings 0`). It does so only in a daemon that went
into the background: not for a single run, not with `-N`, not with `-c`.

fetchmail 6.4 counts `warnings` in polls and keeps a count per size that only moves on when
a mail goes out, so in practice it warns once per size for the daemon's whole life (measured:
`warnings 2` in a daemon polling every second sent one mail in seven polls). pyfetch does what
fetchmail's manual says: per mailbox, again once `warnings` seconds have passed, listing what
the poll that sends it found. The mail is fetchmail's, From and Subject included, so that
filters written for it still match. Building it is pure; the session delivers it through the
account's own sink.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from fetcher.message import recipient_addresses, rfc822_timestamp
from fetcher.model import GlobalOptions, UserOptions
from fetcher.sinks.base import Envelope, Message

SUBJECT = "Fetchmail oversized-messages warning"
SENDER = "FETCHMAIL-DAEMON"


@dataclass
class SizeWarnings:
    """When each mailbox was last warned about, in a daemon's lifetime (monotonic seconds)."""

    last: dict[str, float] = field(default_factory=dict)

    def due(self, mailbox: str, now: float, every: int) -> bool:
        last = self.last.get(mailbox)
        return last is None or now - last >= every

    def sent(self, mailbox: str, now: float) -> None:
        self.last[mailbox] = now


def warning_recipients(user: UserOptions, globals_: GlobalOptions) -> list[str]:
    """Who is told, addressed as the account's sink addresses its messages: the first local
    name of a single-drop account, the postmaster for a multidrop one (fetchmail's choice)."""
    if user.localnames and not user.multidrop:
        name = user.localnames[0][0]
    else:
        name = globals_.postmaster or user.remote
    if user.mda is not None:
        return recipient_addresses([name], smtpname=user.smtpname)
    if user.bsmtp is not None:
        return recipient_addresses([name], smtpaddress=user.smtpaddress, smtpname=user.smtpname)
    return recipient_addresses(
        [name],
        smtpaddress=user.smtpaddress,
        smtpname=user.smtpname,
        smtphost=user.smtphunt[0] if user.smtphunt else None,
    )


def build_size_warning(
    *,
    sizes: Sequence[int],
    deleted: bool,
    server: str,
    account: str,
    recipients: list[str],
    sender_domain: str,
    date: str | None = None,
) -> tuple[Envelope, Message]:
    """The warning about the messages of `sizes` octets (one entry per message), left on
    `server` for `account`, or `deleted` there (limitflush)."""
    fate = "were deleted" if deleted else "remain"
    done = "deleted" if deleted else "skipped"
    lines = [f"The following oversized messages {fate} on server {server} account {account}:", ""]
    for size, count in Counter(sizes).items():  # in the order first met, as fetchmail lists
        if count == 1:
            lines.append(f"  {count} message  {size} octets long {done} by pyfetch.")
        else:
            lines.append(f"  {count} messages {size} octets long {done} by pyfetch.")
    lines += ["", "-- ", "The pyfetch daemon"]  # fetchmail signs as "The Fetchmail Daemon"
    text = "\r\n".join(lines) + "\r\n"
    charset = "US-ASCII" if text.isascii() else "UTF-8"
    header = (
        f"From: {SENDER}@{sender_domain}\r\n"
        f"Date: {date or rfc822_timestamp()}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        f'Content-Type: text/plain; charset="{charset}"\r\n'
        f"Subject: {SUBJECT}\r\n"
        "\r\n"
    ).encode("utf-8", "surrogateescape")
    body = text.encode("utf-8", "surrogateescape")
    envelope = Envelope(
        sender=f"{SENDER}@{sender_domain}",
        recipients=recipients,
        size=len(header) + len(body),
        body="" if text.isascii() else "8BITMIME",
    )
    return envelope, Message(header, io.BytesIO(body))
