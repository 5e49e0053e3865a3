"""`-V`: say in words how the configuration is understood, in fetchmail's phrasing.

Users compare this output with fetchmail's when they switch, so the sentences are fetchmail's
own, with pyfetch's name where fetchmail names itself.
"""

from __future__ import annotations

import platform
import ssl
import sys

from fetcher import FETCHMAIL_COMPAT, __version__
from fetcher.model import Config, ServerOptions, UserOptions

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
    "external": "External authentication will be forced.",
}


def version_banner() -> str:
    python = platform.python_version()
    return (
        f"This is pyfetch release {__version__} (fetchmail {FETCHMAIL_COMPAT} compatible).\n"
        f"Python {python}, {ssl.OPENSSL_VERSION}\n"
        f"{platform.system()} {platform.release()} {platform.machine()}\n"
    )


def describe(config: Config, verbose: int = 0, command_line_only: bool = False) -> str:
    lines: list[str] = []
    source = config.rcfile if config.rcfile is not None else None
    if source is None or command_line_only:
        lines.append("Taking options from command line")
    else:
        lines.append(f"Taking options from command line and {source}")
    g = config.globals
    if g.poll_interval:
        lines.append(f"Poll interval is {g.poll_interval} seconds")
    if g.logfile:
        lines.append(f"Logfile is {g.logfile}")
    lines.append(f"Idfile is {g.idfile}")
    if g.syslog:
        lines.append("Progress messages will be logged via syslog")
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


def _describe_account(
    server: ServerOptions, user: UserOptions, config: Config, verbose: int
) -> list[str]:
    out = [f"Options for retrieving from {user.remote}@{server.pollname}:"]
    add = out.append
    if server.via:
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
    if user.password is None and server.auth not in ("ssh", "external", "gssapi", "otp"):
        add("  Password will be prompted for.")
    elif verbose:
        add("  Password = *.")  # never the password itself
    service = f" (using service {server.service})" if server.service else ""
    add(f"  Protocol is {server.protocol}{service}.")
    add(f"  {_AUTH_SENTENCES.get(server.auth, server.auth)}")
    if server.principal:
        add(f"  Mail service principal is: {server.principal}")
    if user.ssl:
        add("  SSL encrypted sessions enabled.")
    if user.sslproto is not None:
        add(f"  SSL protocol: {user.sslproto}.")
    add(
        "  SSL server certificate checking enabled."
        if user.sslcertck
        else "  SSL server certificate checking disabled."
    )
    paths = ssl.get_default_verify_paths()
    add(f"  SSL default trusted certificate file: {paths.openssl_cafile}")
    if user.sslcertfile:
        add(f"  SSL trusted certificate file: {user.sslcertfile}")
    add(f"  SSL default trusted certificate directory: {paths.openssl_capath}")
    if user.sslcertpath:
        add(f"  SSL trusted certificate directory: {user.sslcertpath}")
    if user.sslcommonname:
        add(f"  SSL server CommonName: {user.sslcommonname}")
    if user.sslfingerprint:
        add(f"  SSL key fingerprint (checked against the server key): {user.sslfingerprint}")
    if server.timeout > 0:
        default = " (default)" if server.timeout == 300 else ""
        add(f"  Server nonresponse timeout is {server.timeout} seconds{default}.")
    if user.mailboxes:
        add("  Selected mailboxes are: " + " ".join(user.mailboxes))
    else:
        add("  Default mailbox selected.")
    add(_onoff(user.fetchall, "  All messages will be retrieved (--all on).",
               "  Only new messages will be retrieved (--all off)."))
    add(_onoff(user.keep, "  Fetched messages will be kept on the server (--keep on).",
               "  Fetched messages will not be kept on the server (--keep off)."))
    add(_onoff(user.flush, "  Old messages will be flushed before message retrieval (--flush on).",
               "  Old messages will not be flushed before message retrieval (--flush off)."))
    add(_onoff(user.limitflush,
               "  Oversized messages will be flushed before message retrieval (--limitflush on).",
               "  Oversized messages will not be flushed before message retrieval"
               " (--limitflush off)."))
    add(_onoff(user.rewrite, "  Rewrite of server-local addresses is enabled (--norewrite off).",
               "  Rewrite of server-local addresses is disabled (--norewrite on)."))
    add(_onoff(user.stripcr, "  Carriage-return stripping is enabled (stripcr on).",
               "  Carriage-return stripping is disabled (stripcr off)."))
    add(_onoff(user.forcecr, "  Carriage-return forcing is enabled (forcecr on).",
               "  Carriage-return forcing is disabled (forcecr off)."))
    add(_onoff(user.pass8bits,
               "  Interpretation of Content-Transfer-Encoding is disabled (pass8bits on).",
               "  Interpretation of Content-Transfer-Encoding is enabled (pass8bits off)."))
    add(_onoff(user.mimedecode, "  MIME decoding is enabled (mimedecode on).",
               "  MIME decoding is disabled (mimedecode off)."))
    add(_onoff(user.idle, "  Idle after poll is enabled (idle on).",
               "  Idle after poll is disabled (idle off)."))
    add(_onoff(user.dropstatus, "  Nonempty Status lines will be discarded (dropstatus on)",
               "  Nonempty Status lines will be kept (dropstatus off)"))
    add(_onoff(user.dropdelivered, "  Delivered-To lines will be discarded (dropdelivered on)",
               "  Delivered-To lines will be kept (dropdelivered off)"))
    if user.limit:
        add(f"  Message size limit is {user.limit} octets (--limit {user.limit}).")
        if config.globals.poll_interval > 0:
            add(f"  Message size warning interval is {user.warnings} seconds"
                f" (--warnings {user.warnings}).")
    if user.fetchlimit:
        add(f"  Received-message limit is {user.fetchlimit} (--fetchlimit {user.fetchlimit}).")
    add(f"  Fetch message size limit is {user.fetchsizelimit}"
        f" (--fetchsizelimit {user.fetchsizelimit}).")
    if user.fastuidl:
        add(f"  Do binary search of UIDs during {user.fastuidl - 1} out of {user.fastuidl}"
            f" polls (--fastuidl {user.fastuidl}).")
    if user.batchlimit:
        add(f"  SMTP message batch limit is {user.batchlimit}.")
    if user.expunge:
        add(f"  Deletion interval between expunges forced to {user.expunge}"
            f" (--expunge {user.expunge}).")
    if user.bsmtp:
        add(f"  Messages will be appended to {user.bsmtp} as BSMTP")
    elif user.mda:
        add(f'  Messages will be delivered with "{user.mda}".')
    else:
        listener = "LMTP" if user.lmtp else "SMTP"
        hosts = " ".join(user.smtphunt)
        default = " (default)" if user.smtphunt == ["localhost"] else ""
        add(f"  Messages will be {listener}-forwarded to: {hosts}{default}")
        if user.smtpaddress:
            add(f"  Host part of MAIL FROM line will be {user.smtpaddress}")
        if user.smtpname:
            add(f"  Address to be put in RCPT TO lines shipped to SMTP will be {user.smtpname}")
    if user.antispam:
        add("  Recognized listener spam block responses are: "
            + " ".join(str(code) for code in user.antispam))
    if user.preconnect:
        add(f"  Server connection will be brought up with \"{user.preconnect}\".")
    if user.postconnect:
        add(f"  Server connection will be taken down with \"{user.postconnect}\".")
    count = len(user.localnames)
    if not user.multidrop:
        add(f"  Single-drop mode: {count} local name recognized.")
    else:
        noun = "name" if count == 1 else "names"
        add(f"  Multi-drop mode: {count} local {noun} recognized.")
        if user.wildcard:
            add("  Unrecognized users will be passed through (wildcard).")
        add(_onoff(server.dns, "  DNS lookup for multidrop addresses is enabled.",
                   "  DNS lookup for multidrop addresses is disabled."))
        add("  Server aliases will be compared with multidrop addresses by "
            + ("IP address." if server.checkalias else "name."))
        if server.envelope is None:
            add("  No envelope address checking.")
        else:
            add(f"  Envelope header is assumed to be: {server.envelope}")
    if server.plugin:
        add(f'  Server connections will be made via plugin {server.plugin}'
            ' (--plugin "' + server.plugin + '").')
    if server.plugout:
        add(f'  Listener connections will be made via plugout {server.plugout}'
            ' (--plugout "' + server.plugout + '").')
    if server.interface:
        add(f"  Connection must be through interface {server.interface}.")
    if server.monitor:
        add(f"  Polling loop will monitor {server.monitor}.")
    if server.tracepolls:
        add("  Poll trace information will be added to the Received header.")
    if user.properties:
        add(f"  Pass-through properties \"{user.properties}\".")
    return out


def write_version(config: Config | None, verbose: int = 0) -> None:
    sys.stdout.write(version_banner())
    if config is not None:
        for warning in config.warnings:
            sys.stderr.write(f"{warning}\n")
        sys.stdout.write(describe(config, verbose))
