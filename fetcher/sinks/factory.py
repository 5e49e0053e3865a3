"""Which sink an account delivers through, by fetchmail's precedence: BSMTP, then an MDA,
then SMTP/LMTP to the smtphost hunt list."""

from __future__ import annotations

from fetcher.config import local_hostname
from fetcher.model import GlobalOptions, ServerOptions, UserOptions
from fetcher.sinks.base import Sink
from fetcher.sinks.bsmtp import BsmtpSink
from fetcher.sinks.mda import MdaSink
from fetcher.sinks.smtp import SmtpSink


def sink_for(server: ServerOptions, user: UserOptions, globals_: GlobalOptions) -> Sink:
    if user.bsmtp is not None:
        return BsmtpSink(user.bsmtp)
    if user.mda is not None:
        return MdaSink(user.mda, stripcr=user.stripcr, forcecr=user.forcecr)
    # `invisible` makes the greeting carry the mail server's name, as fetchmail does
    helo = server.queryname if globals_.invisible else local_hostname()
    authenticate = server.esmtppassword is not None
    return SmtpSink(
        user.smtphunt,
        lmtp=user.lmtp,
        helo_name=helo,
        esmtp_name=server.esmtpname if authenticate else None,
        esmtp_password=server.esmtppassword,
        antispam=user.antispam,
        plugout=server.plugout,
    )
