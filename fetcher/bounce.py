"""The bounce sent before a refused message is dropped (`set no softbounce`).

An RFC 3464 delivery status notification from the null sender, holding the listener's reply
and the original header, as fetchmail sends one. Pure: building it does no I/O.
"""

from __future__ import annotations

import io
import secrets

from fetcher import __version__
from fetcher.message import rfc822_timestamp
from fetcher.sinks.base import Delivery, Envelope, Message


def bounce_recipient(sender: str, *, bouncemail: bool, postmaster: str | None) -> str | None:
    """Who is told: the sender, or the postmaster with `no bouncemail`; nobody for the null
    sender (a bounce must never cause another bounce)."""
    if not sender:
        return None
    if bouncemail:
        return sender
    return postmaster or None


def build_bounce(
    *,
    to: str,
    recipients: list[str],
    delivery: Delivery,
    original_header: bytes,
    local_host: str,
) -> tuple[Envelope, Message]:
    """The notice for `recipients`: each with the reply the listener refused it with (a
    recipient refused at RCPT TO), else the message's."""
    boundary = f"pyfetch-{secrets.token_hex(8)}"
    reply = _one_line(delivery.reply)
    replies = {rcpt: _one_line(delivery.refused.get(rcpt, delivery.reply)) for rcpt in recipients}
    per_recipient = "".join(
        f"\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.0.0\r\n"
        f"Diagnostic-Code: smtp; {replies[rcpt]}\r\n"
        for rcpt in recipients
    )
    if len(set(replies.values())) > 1:
        reply = "; ".join(f"{rcpt}: {text}" for rcpt, text in replies.items())
    text = (
        f"From: MAILER-DAEMON@{local_host}\r\n"
        f"To: {to}\r\n"
        f"Subject: Undeliverable mail\r\n"
        f"Date: {rfc822_timestamp()}\r\n"
        f"MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        f"\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: text/plain\r\n"
        f"\r\n"
        f"This message was created automatically by pyfetch {__version__} on {local_host}.\r\n"
        f"\r\n"
        f"The local mail system refused a message for {', '.join(recipients)}:\r\n"
        f"  {reply}\r\n"
        f"\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: message/delivery-status\r\n"
        f"\r\n"
        f"Reporting-MTA: dns; {local_host}\r\n"
        f"{per_recipient}"
        f"\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: text/rfc822-headers\r\n"
        f"\r\n"
    ).encode("utf-8", "surrogateescape")
    closing = f"\r\n--{boundary}--\r\n".encode()
    header, _, body_start = text.partition(b"\r\n\r\n")
    body = body_start + original_header.rstrip(b"\r\n") + b"\r\n" + closing
    envelope = Envelope(sender="", recipients=[to], size=len(header) + 4 + len(body))
    return envelope, Message(header + b"\r\n\r\n", io.BytesIO(body))


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")
