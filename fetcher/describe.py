"""`-V`: say in words how the configuration is understood, in fetchmail's phrasing.

Users compare this output with fetchmail's when they switch, so the sentences are fetchmail's
own, with pyfetch's name where fetchmail names itself.
"""

from __future__ import annotations

import os
import platform
import ssl
import sys

from fetcher import FETCHMAIL_COMPAT, __version__
from fetcher.credentials import needs_password
from fetcher.logsetup import Outputs
from fetcher.model import Config, ServerOptions, UserOptions
from fetcher.rcfile.parser import KPOP_SERVICE

_AUTH_SENTENCES = {
    "any": "All available authentication methods will be tried.",
    "password": "Password authentication will be forced.",
    "msn": "MSN authentication will be forced.",
    "ntlm": "NTLM authentication will be forced.",
    "otp": "OTP authentication will be forced.",
    "cram-md5": "CRAM-MD5 authentication will be forced.",
    "gssapi": "GSSAPI authentication will be forced.",
    "kerberos_v4": "Kerberos V4 authentication will be forced.",
    "kerberos_v5": "Kerberos V5 authentication will be forced.",
    "ssh": "End-to-end encryption assumed.",
    "xoauth2": "OAuth2 (XOAUTH2) authentication will be forced.",
    "oauthbearer": "OAuth2 (OAUTHBEARER) authentication will be forced.",
}


def visible(text: str) -> str:
    """Control characters made visible, as fetchmail's visbuf() shows them in -V."""
    out = []
    for ch in text:
        if ch in _VISIBLE_ESCAPES:
            out.append(_VISIBLE_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\0x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


_VISIBLE_ESCAPES = {
    "\\": "\\\\", '"': '\\"', "\a": "\\a", "\b": "\\b", "\f": "\\f",
    "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
}


def version_banner() -> str:
    python = platform.python_version()
    return (
        f"This is pyfetch release {__version__} (fetchmail {FETCHMAIL_COMPAT} compatible).\n"
        f"Python {python}, {ssl.OPENSSL_VERSION}\n"
        f"{platform.system()} {platform.release()} {platform.machine()}\n"
    )


def describe(
    config: Config, verbose: int = 0, command_line_only: bool = False,
    outputs: Outputs | None = None,
) -> str:
    """fetchmail's dump_params(); with `outputs`, also where a run's lines would go beyond
    what fetchmail says (see fetcher.logsetup)."""
    lines: list[str] = []
    source = config.rcfile if config.rcfile is not None else None
    if source is None or command_line_only:
        lines.append("Taking options from command line")
    else:
        lines.append(f"Taking options from command line and {source}")
    if not config.servers:  # fetchmail explains nothing more without a server
        return "\n".join(lines) + "\n"
    g = config.globals
    if g.poll_interval:
        lines.append(f"Poll interval is {g.poll_interval} seconds")
    if g.logfile:
        lines.append(f"Logfile is {g.logfile}")
    lines.append(f"Idfile is {g.idfile}")
    if g.syslog:
        lines.append("Progress messages will be logged via syslog")
    if outputs is not None:
        lines.extend(outputs.describe())
    if g.invisible:
        lines.append("pyfetch will masquerade and will not generate Received")
    if g.showdots:
        lines.append("pyfetch will show progress dots even in logfiles.")
    if g.postmaster:
        lines.append(f"pyfetch will forward misaddressed multidrop messages to {g.postmaster}.")
    if not g.bouncemail:
        lines.append("pyfetch will direct error mail to the postmaster.")
    elif verbose:
        lines.append("pyfetch will direct error mail to the sender.")
    if not g.softbounce:
        lines.append("pyfetch will treat permanent errors as permanent (drop messages).")
    elif verbose:
        lines.append("pyfetch will treat permanent errors as temporary (keep messages).")
    for server in config.servers:
        if not server.selected:
            continue
        for user in server.users:
            lines.extend(_describe_account(server, user, config, verbose))
    return "\n".join(lines) + "\n"


def _onoff(flag: bool, on: str, off: str) -> str:
    return on if flag else off


# (field, sentence when on, sentence when off), in fetchmail's order.
_USER_FLAG_SENTENCES = [
    ("fetchall", "  All messages will be retrieved (--all on).",
     "  Only new messages will be retrieved (--all off)."),
    ("keep", "  Fetched messages will be kept on the server (--keep on).",
     "  Fetched messages will not be kept on the server (--keep off)."),
    ("flush", "  Old messages will be flushed before message retrieval (--flush on).",
     "  Old messages will not be flushed before message retrieval (--flush off)."),
    ("limitflush",
     "  Oversized messages will be flushed before message retrieval (--limitflush on).",
     "  Oversized messages will not be flushed before message retrieval (--limitflush off)."),
    ("rewrite", "  Rewrite of server-local addresses is enabled (--norewrite off).",
     "  Rewrite of server-local addresses is disabled (--norewrite on)."),
    ("stripcr", "  Carriage-return stripping is enabled (stripcr on).",
     "  Carriage-return stripping is disabled (stripcr off)."),
    ("forcecr", "  Carriage-return forcing is enabled (forcecr on).",
     "  Carriage-return forcing is disabled (forcecr off)."),
    ("pass8bits", "  Interpretation of Content-Transfer-Encoding is disabled (pass8bits on).",
     "  Interpretation of Content-Transfer-Encoding is enabled (pass8bits off)."),
    ("mimedecode", "  MIME decoding is enabled (mimedecode on).",
     "  MIME decoding is disabled (mimedecode off)."),
    ("idle", "  Idle after poll is enabled (idle on).",
     "  Idle after poll is disabled (idle off)."),
    ("dropstatus", "  Nonempty Status lines will be discarded (dropstatus on)",
     "  Nonempty Status lines will be kept (dropstatus off)"),
    ("dropdelivered", "  Delivered-To lines will be discarded (dropdelivered on)",
     "  Delivered-To lines will be kept (dropdelivered off)"),
]


def _describe_account(
    server: ServerOptions, user: UserOptions, config: Config, verbose: int
) -> list[str]:
    """One account, sentence for sentence in the order of fetchmail's dump_params()."""
    mailbox = server.protocol not in ("ETRN", "ODMR")
    out = [f"Options for retrieving from {user.remote}@{visible(server.pollname)}:"]
    add = out.append
    if server.via is not None and mailbox:
        add(f"  Mail will be retrieved via {server.via}")
    if server.interval:
        plural = "interval" if server.interval == 1 else "intervals"
        add(f"  Poll of this server will occur every {server.interval} {plural}.")
    add(f"  True name of server is {server.queryname}.")
    if server.skip or verbose:
        add(
            "  This host will not be queried when no host is specified."
            if server.skip
            else "  This host will be queried when no host is specified."
        )
    if user.passwordeval is not None:
        add("  Password will be taken from a command (passwordeval).")
    elif needs_password(server):
        if user.password is None:
            add("  Password will be prompted for.")
        elif verbose:
            add('  Password = "*".')  # never the password itself
    service = f" (using service {server.service})" if server.service else ""
    if not service and verbose:
        service = " (using default port)"
    uidl = " (forcing UIDL use)" if server.uidl else ""
    if server.protocol == "POP3" and server.service == KPOP_SERVICE and (
        server.auth == "kerberos_v5"
    ):
        add(f"  Protocol is KPOP with Kerberos V authentication{service}{uidl}.")
    else:
        add(f"  Protocol is {server.protocol}{service}{uidl}.")
    if server.auth in _AUTH_SENTENCES:  # fetchmail says nothing for `external`
        add(f"  {_AUTH_SENTENCES[server.auth]}")
    if server.principal:
        add(f"  Mail service principal is: {server.principal}")
    out.extend(_describe_tls(user))
    if server.timeout > 0:
        default = " (default)" if server.timeout == 300 else ""
        add(f"  Server nonresponse timeout is {server.timeout} seconds{default}.")
    if mailbox:
        out.extend(_describe_retrieval(user, config, verbose))
    else:
        default = " (default)" if user.fetchdomains_default else ""
        add("  Domains for which mail will be fetched are: "
            + " ".join(user.fetchdomains) + default)
    if user.bsmtp is not None:
        add(f"  Messages will be appended to {visible(user.bsmtp)} as BSMTP")
    elif user.mda is not None and mailbox:
        add(f'  Messages will be delivered with "{visible(user.mda)}".')
    else:
        listener = "L" if user.lmtp else "S"
        hosts = " ".join(user.smtphunt)
        default = " (default)" if user.smtphunt_default else ""
        add(f"  Messages will be {listener}MTP-forwarded to: {hosts}{default}")
        if user.smtpaddress:
            add(f"  Host part of MAIL FROM line will be {user.smtpaddress}")
        if user.smtpname:
            add(f"  Address to be put in RCPT TO lines shipped to SMTP will be {user.smtpname}")
    if mailbox and user.antispam:
        add("  Recognized listener spam block responses are: "
            + " ".join(str(code) for code in user.antispam))
    elif mailbox and verbose:
        add("  Spam-blocking disabled")
    if user.preconnect is not None:
        add(f'  Server connection will be brought up with "{visible(user.preconnect)}".')
    elif verbose:
        add("  No pre-connection command.")
    if user.postconnect is not None:
        add(f'  Server connection will be taken down with "{visible(user.postconnect)}".')
    elif verbose:
        add("  No post-connection command.")
    if mailbox:
        out.extend(_describe_local_names(server, user, verbose))
    if server.interface:
        add(f"  Connection must be through interface {server.interface}.")
    elif verbose:
        add("  No interface requirement specified.")
    if server.monitor:
        add(f"  Polling loop will monitor {server.monitor}.")
    elif verbose:
        add("  No monitor interface specified.")
    if server.plugin:
        add(f"  Server connections will be made via plugin {server.plugin}"
            f" (--plugin {server.plugin}).")
    elif verbose:
        add("  No plugin command specified.")
    if server.plugout:
        add(f"  Listener connections will be made via plugout {server.plugout}"
            f" (--plugout {server.plugout}).")
    elif verbose:
        add("  No plugout command specified.")
    if mailbox and server.protocol not in ("auto", "POP2"):
        add("  No UIDs saved from this host.")  # the UID store comes with retrieval
    if server.tracepolls:
        add("  Poll trace information will be added to the Received header.")
    elif verbose:
        add("  No poll trace information will be added to the Received header.")
    if server.badheader:
        add("  Messages with bad headers will be passed on.")
    elif verbose:
        add("  Messages with bad headers will be rejected.")
    if user.properties is not None:
        add(f'  Pass-through properties "{visible(user.properties)}".')
    return out


def _describe_tls(user: UserOptions) -> list[str]:
    out: list[str] = []
    if user.ssl:
        out.append("  SSL encrypted sessions enabled.")
    if user.sslproto is not None:
        out.append(f"  SSL protocol: {user.sslproto}.")
    out.append(
        "  SSL server certificate checking enabled."
        if user.sslcertck
        else "  SSL server certificate checking disabled."
    )
    # what OpenSSL will use: its environment variables, else its built-in paths
    paths = ssl.get_default_verify_paths()
    default_file = os.environ.get(paths.openssl_cafile_env) or paths.openssl_cafile
    default_dir = os.environ.get(paths.openssl_capath_env) or paths.openssl_capath
    out.append(f"  SSL default trusted certificate file: {default_file}")
    if user.sslcertfile:
        out.append(f"  SSL trusted certificate file: {user.sslcertfile}")
    out.append(f"  SSL default trusted certificate directory: {default_dir}")
    if user.sslcertpath:
        out.append(f"  SSL trusted certificate directory: {user.sslcertpath}")
    if user.sslcommonname:
        out.append(f"  SSL server CommonName: {user.sslcommonname}")
    if user.sslfingerprint:
        out.append(
            f"  SSL key fingerprint (checked against the server key): {user.sslfingerprint}"
        )
    return out


def _describe_retrieval(user: UserOptions, config: Config, verbose: int) -> list[str]:
    out: list[str] = []
    add = out.append
    if user.mailboxes:
        add("  Selected mailboxes are: " + " ".join(user.mailboxes))
    else:
        add("  Default mailbox selected.")
    for flag, on, off in _USER_FLAG_SENTENCES:
        add(on if getattr(user, flag) else off)
    if user.limit:
        add(f"  Message size limit is {user.limit} octets (--limit {user.limit}).")
        if config.globals.poll_interval > 0:
            add(f"  Message size warning interval is {user.warnings} seconds"
                f" (--warnings {user.warnings}).")
        elif verbose:
            add("  Size warnings on every poll (--warnings 0).")
    for field, when_set, when_unset in _LIMIT_SENTENCES:
        value = getattr(user, field)
        if field == "fastuidl" and value == 1:
            add("  Do binary search of UIDs during each poll (--fastuidl 1).")
        elif value:
            add(when_set.format(v=value, fewer=value - 1))
        elif verbose:
            add(when_unset)
    return out


# (field, sentence when set, sentence in verbose mode when 0), in fetchmail's order
_LIMIT_SENTENCES = [
    ("fetchlimit", "  Received-message limit is {v} (--fetchlimit {v}).",
     "  No received-message limit (--fetchlimit 0)."),
    ("fetchsizelimit", "  Fetch message size limit is {v} (--fetchsizelimit {v}).",
     "  No fetch message size limit (--fetchsizelimit 0)."),
    ("fastuidl", "  Do binary search of UIDs during {fewer} out of {v} polls (--fastuidl {v}).",
     "   Do linear search of UIDs during each poll (--fastuidl 0)."),
    ("batchlimit", "  SMTP message batch limit is {v}.",
     "  No SMTP message batch limit (--batchlimit 0)."),
    ("expunge", "  Deletion interval between expunges forced to {v} (--expunge {v}).",
     "  No forced expunges (--expunge 0)."),
]


def _describe_local_names(server: ServerOptions, user: UserOptions, verbose: int) -> list[str]:
    count = len(user.localnames)
    mode = "Multi-drop" if user.multidrop else "Single-drop"
    noun = "name" if count == 1 else "names"
    out = [f"  {mode} mode: {count} local {noun} recognized."]
    if verbose:
        out += [f"\t{name} -> {mapped}" if mapped else f"\t{name}" for name, mapped in
                user.localnames]
        if user.wildcard:
            out.append("\t*")
    if not user.multidrop:
        return out
    out.append(_onoff(server.dns, "  DNS lookup for multidrop addresses is enabled.",
                      "  DNS lookup for multidrop addresses is disabled."))
    if server.dns:
        out.append("  Server aliases will be compared with multidrop addresses by "
                   + ("IP address." if server.checkalias else "name."))
    if server.envelope is None:
        out.append("  Envelope-address routing is disabled")
    else:
        out.append(f"  Envelope header is assumed to be: {server.envelope}")
        if server.envskip or verbose:
            out.append(f"  Number of envelope headers to be skipped over: {server.envskip}")
        if server.qvirtual:
            out.append(f"  Prefix {server.qvirtual} will be removed from user id")
        elif verbose:
            out.append("  No prefix stripping")
    if server.aka:
        out.append("  Predeclared mailserver aliases: " + " ".join(server.aka))
    if server.localdomains:
        out.append("  Local domains: " + " ".join(server.localdomains))
    return out


def write_version(
    config: Config | None, verbose: int = 0, outputs: Outputs | None = None
) -> None:
    sys.stdout.write(version_banner())
    if config is not None:
        for warning in config.warnings:
            sys.stderr.write(f"{warning}\n")
        sys.stdout.write(describe(config, verbose, outputs=outputs))
