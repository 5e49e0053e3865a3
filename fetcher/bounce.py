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
    boundary = f"pyfetch-{secrets.token_hex(8)}"
    reply = delivery.reply.replace("\r", " ").replace("\n", " ")
    per_recipient = "".join(
        f"\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.0.0\r\n"
        f"Diagnostic-Code: smtp; {reply}\r\n"
        for rcpt in recipients
    )
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
