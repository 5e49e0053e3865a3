"""What pyfetch does with every setting of fetchmail's: the one declaration, per setting, that
it is honoured or refused, never read and then ignored.

Every rcfile keyword and command-line option ends up in a field of fetcher.model (the keys of
`--configdump`); `SUPPORT` says, for each field, one of:

- `Honoured`: pyfetch does what it asks, and `test` names a test that shows it;
- `Equivalent`: pyfetch gets what it is for with the same result another way, or fetchmail
  itself does nothing with it where pyfetch accepts it (`why` says which), shown by `test`;
- `Refused`: pyfetch will not do it, and a poll that would use it is refused with `reason`
  (exit 5) before anything is fetched.

Values of `protocol` and `auth` that pyfetch will not speak are refused the same way
(`_PROTOCOLS`, `_AUTH`). tests/test_keywords.py walks the lexer's keyword table and the
command-line options, and fails for any that lands in a field with no declaration here, in an
`Honoured` field no code reads, or in a `Refused` one that does not refuse.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields

from fetcher.model import ServerOptions, UserOptions


@dataclass(frozen=True)
class Honoured:
    test: str  # "test_file.py::test_name", in tests/


@dataclass(frozen=True)
class Equivalent:
    why: str
    test: str


@dataclass(frozen=True)
class Refused:
    reason: str
    # Whether the account uses it: by default, the field differs from its default value.
    used: Callable[[ServerOptions, UserOptions], bool] | None = None


Support = Honoured | Equivalent | Refused


def _on_linux_only(what: str) -> Refused:
    # fetchmail compiles `interface` and `monitor` in on Linux and FreeBSD only; pyfetch reads
    # the link the way Linux shows it.
    return Refused(
        f"'{what}' needs Linux's view of network links, which this system does not have",
        used=lambda server, user: getattr(server, what) is not None
        and not sys.platform.startswith("linux"),
    )


# Keyed "global.NAME", "server.NAME", "user.NAME" after the model's three records. A test
# named as a whole reads better than one cut to fit a line:
# ruff: noqa: E501
SUPPORT: dict[str, Support] = {
    # -- set ... ------------------------------------------------------------------------------
    "global.poll_interval": Honoured("test_e2e_daemon.py::test_daemon_polls_every_interval_until_q_stops_it"),
    "global.logfile": Honoured("test_logging.py::test_a_single_run_writes_to_the_logfile_and_not_to_the_terminal_as_fetchmail"),
    "global.idfile": Honoured("test_cli.py::test_relative_paths_resolve_against_the_rcfile_directory"),
    "global.postmaster": Honoured("test_keywords.py::test_bounces_go_to_the_sender_or_the_postmaster"),
    "global.bouncemail": Honoured("test_keywords.py::test_bounces_go_to_the_sender_or_the_postmaster"),
    "global.spambounce": Honoured("test_plan.py::test_after_delivery"),
    "global.softbounce": Honoured("test_e2e_pop3.py::test_permanent_refusal_is_bounced_then_deleted_without_softbounce"),
    "global.properties": Equivalent(
        "fetchmail keeps it only for fetchmailconf and shows it in --configdump, as pyfetch does",
        "test_configdump_differential.py::test_good_files_dump_like_fetchmail",
    ),
    "global.invisible": Honoured("test_message.py::test_prepare_invisible"),
    "global.showdots": Honoured("test_keywords.py::test_showdots_puts_fetchmails_progress_marks_in_the_log"),
    "global.syslog": Honoured("test_logging.py::test_syslog_on_and_off_and_the_logfile_winning"),
    "global.pidfile": Honoured("test_e2e_daemon.py::test_a_stale_pidfile_is_removed_with_a_message"),
    # -- poll NAME ... (the server's options) -------------------------------------------------
    "server.pollname": Honoured("test_e2e_pop3.py::test_seed_setup_delivers_everything_and_empties_the_mailbox"),
    "server.selected": Honoured("test_keywords.py::test_a_skip_entry_is_polled_only_when_named"),
    "server.via": Honoured("test_diagnostics.py::test_a_via_name_that_does_not_resolve_is_exit_11"),
    "server.protocol": Honoured("test_e2e_imap.py::test_auto_tries_imap_then_pop3"),
    "server.service": Honoured("test_e2e_pop3.py::test_implicit_tls_on_the_pop3s_port"),
    "server.timeout": Honoured("test_plugin.py::test_a_plugin_that_never_answers_times_out_and_is_ended"),
    "server.interval": Honoured("test_e2e_daemon.py::test_a_servers_interval_polls_it_every_nth_time"),
    "server.envelope": Honoured("test_e2e_multidrop.py::test_routes_as_fetchmail_does_where_fetchmail_is_right"),
    "server.envskip": Honoured("test_recipients.py::test_route"),
    "server.qvirtual": Honoured("test_recipients.py::test_route"),
    "server.auth": Honoured("test_plugin.py::test_mail_comes_through_a_preauth_tunnel_as_with_fetchmail"),
    "server.dns": Honoured("test_diagnostics.py::test_with_no_dns_it_is_a_failed_connect_as_in_fetchmail"),
    "server.uidl": Honoured("test_e2e_pop3.py::test_keep_with_uidl_fetches_each_message_once"),
    "server.aka": Honoured("test_recipients.py::test_route"),
    "server.localdomains": Honoured("test_e2e_multidrop.py::test_each_message_reaches_exactly_its_recipients"),
    "server.interface": Honoured("test_keywords.py::test_interface_skips_the_poll_unless_the_link_is_up_with_the_address"),
    "server.monitor": Honoured("test_keywords.py::test_monitor_skips_the_poll_while_the_link_is_idle"),
    "server.plugin": Honoured("test_plugin.py::test_mail_comes_through_a_preauth_tunnel_as_with_fetchmail"),
    "server.plugout": Honoured("test_plugin.py::test_mail_goes_to_the_listener_through_a_plugout_as_with_fetchmail"),
    "server.principal": Refused("'principal' is for Kerberos, which is not supported"),
    "server.esmtpname": Honoured("test_sinks.py::test_auth_plain_is_traced_without_the_secret"),
    "server.esmtppassword": Honoured("test_sinks.py::test_auth_plain_is_traced_without_the_secret"),
    "server.tracepolls": Honoured("test_message.py::test_prepare_options"),
    "server.badheader": Honoured("test_message.py::test_prepare_accepts_a_bad_header_when_told"),
    "server.checkalias": Honoured("test_e2e_multidrop.py::test_dns_says_which_names_are_the_servers"),
    "server.sdps": Refused("SDPS (Demon Internet's POP3 extension) is not supported"),
    # -- user ... (the account's options) -----------------------------------------------------
    "user.remote": Honoured("test_e2e_pop3.py::test_wrong_password_exits_3"),
    "user.password": Honoured("test_e2e_pop3.py::test_wrong_password_exits_3"),
    "user.localnames": Honoured("test_message.py::test_prepare_recipients"),
    "user.fetchall": Honoured("test_e2e_pop3.py::test_seed_setup_delivers_everything_and_empties_the_mailbox"),
    "user.keep": Honoured("test_e2e_pop3.py::test_keep_with_uidl_fetches_each_message_once"),
    "user.flush": Honoured("test_plan.py::test_plan"),
    "user.limitflush": Honoured("test_plan.py::test_plan"),
    "user.rewrite": Honoured("test_message.py::test_prepare_options"),
    "user.stripcr": Honoured("test_sinks.py::test_mda_gets_the_message_with_crs_stripped"),
    "user.forcecr": Honoured("test_sinks.py::test_mda_with_forcecr_gets_crlf_for_every_bare_lf"),
    "user.pass8bits": Honoured("test_message.py::test_prepare_options"),
    "user.dropstatus": Honoured("test_message.py::test_prepare_options"),
    "user.dropdelivered": Honoured("test_keywords.py::test_dropdelivered_drops_delivered_to"),
    "user.mimedecode": Honoured("test_message.py::test_body_type"),
    "user.idle": Honoured("test_e2e_idle.py::test_three_folders_on_two_accounts_are_watched_at_once"),
    "user.mda": Honoured("test_e2e_pop3.py::test_mda_gets_the_message_and_a_hostile_sender_runs_nothing"),
    "user.bsmtp": Honoured("test_e2e_pop3.py::test_bsmtp_file"),
    "user.lmtp": Honoured("test_e2e_pop3.py::test_lmtp_delivery_into_dovecot"),
    "user.preconnect": Honoured("test_e2e_pop3.py::test_failing_preconnect_aborts_the_poll_with_exit_5"),
    "user.postconnect": Honoured("test_e2e_pop3.py::test_postconnect_runs_after_the_poll"),
    "user.limit": Honoured("test_e2e_pop3.py::test_limit_skips_big_messages"),
    "user.warnings": Honoured("test_keywords.py::test_a_daemon_warns_of_oversized_messages_by_mail"),
    "user.fetchlimit": Honoured("test_e2e_pop3.py::test_fetchlimit_exits_13_and_leaves_the_rest"),
    "user.fetchsizelimit": Honoured("test_imap.py::test_small_fetch_blocks"),
    "user.fastuidl": Equivalent(
        "fetchmail's binary search for the first new POP3 UID saves time only; pyfetch reads "
        "every UID in one command, which finds the same new messages",
        "test_keywords.py::test_fastuidl_finds_the_same_new_messages",
    ),
    "user.batchlimit": Honoured("test_e2e_pop3.py::test_batchlimit_reconnects_to_the_listener"),
    "user.ssl": Honoured("test_e2e_pop3.py::test_implicit_tls_on_the_pop3s_port"),
    "user.sslkey": Honoured("test_tls.py::test_client_certificate_is_presented"),
    "user.sslcert": Honoured("test_tls.py::test_client_certificate_is_presented"),
    "user.sslproto": Honoured("test_imap.py::test_preauth_without_tls_required_skips_login"),
    "user.sslcertck": Honoured("test_e2e_pop3.py::test_no_sslcertck_accepts_an_unverifiable_certificate"),
    "user.sslcertfile": Honoured("test_diagnostics.py::test_verbose_tls_lines_are_fetchmails_plus_the_sha256_fingerprint"),
    "user.sslcertpath": Honoured("test_tls.py::test_sslcertpath"),
    "user.sslcommonname": Honoured("test_diagnostics.py::test_a_name_mismatch_says_which_name_the_certificate_carries"),
    "user.sslfingerprint": Honoured("test_e2e_pop3.py::test_fingerprint_pins_the_certificate"),
    "user.expunge": Honoured("test_e2e_pop3.py::test_expunge_quits_and_logs_in_again_every_n_deletions"),
    "user.properties": Equivalent(
        "fetchmail keeps it only for fetchmailconf and shows it in --configdump, as pyfetch does",
        "test_configdump_differential.py::test_good_files_dump_like_fetchmail",
    ),
    "user.smtphunt": Honoured("test_sinks.py::test_message_arrives_byte_for_byte"),
    "user.fetchdomains": Equivalent(
        "fetchmail uses it only with ETRN and ODMR, which pyfetch refuses",
        "test_cli.py::test_unsupported_protocol_is_refused_when_polling",
    ),
    "user.smtpaddress": Honoured("test_message.py::test_recipient_addresses"),
    "user.smtpname": Honoured("test_message.py::test_recipient_addresses"),
    "user.antispam": Honoured("test_e2e_pop3.py::test_antispam_code_is_kept_with_softbounce"),
    "user.mailboxes": Honoured("test_e2e_imap.py::test_several_folders_are_polled_in_turn"),
    "user.passwordeval": Honoured("test_e2e_pop3.py::test_passwordeval_logs_in_and_is_never_shown"),
    "user.wildcard": Honoured("test_recipients.py::test_route"),
    "user.smtphunt_default": Honoured("test_e2e_pop3.py::test_sample_rcfile_delivers_byte_for_byte_through_postfix"),
    "user.fetchdomains_default": Equivalent(
        "fetchmail uses it only with ETRN and ODMR, which pyfetch refuses",
        "test_cli.py::test_unsupported_protocol_is_refused_when_polling",
    ),
}  # fmt: skip

# Fields that no setting sets: where the rcfile said it, the accounts of an entry, and how
# --configdump shows `skip` (which `selected` acts on).
NOT_SETTINGS = frozenset({"server.users", "server.active", "server.line", "user.line"})

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
    "external": "SASL EXTERNAL authentication (by TLS client certificate) is not supported",
}
# Read when `interface` or `monitor` is set on a system that is not Linux.
_LINUX_ONLY = {"server.interface": _on_linux_only("interface"),
               "server.monitor": _on_linux_only("monitor")}  # fmt: skip


def supported_protocols() -> frozenset[str]:
    """The `protocol` values that pyfetch polls with (the others are refused)."""
    return frozenset({"auto", "POP3", "APOP", "IMAP"})


def _default(record: object, name: str) -> object:
    for field in fields(record):  # type: ignore[arg-type]
        if field.name == name:
            if field.default is not MISSING:
                return field.default
            if field.default_factory is not MISSING:
                return field.default_factory()
    raise KeyError(name)


def unsupported(server: ServerOptions, user: UserOptions) -> list[str]:
    """Why this account cannot be polled by pyfetch, one reason a line; empty if it can."""
    reasons: list[str] = []
    if server.protocol in _PROTOCOLS:
        reasons.append(_PROTOCOLS[server.protocol])
    if server.auth in _AUTH:
        reasons.append(_AUTH[server.auth])
    for key, support in (*SUPPORT.items(), *_LINUX_ONLY.items()):
        if not isinstance(support, Refused):
            continue
        scope, name = key.split(".", 1)
        record: ServerOptions | UserOptions = server if scope == "server" else user
        if support.used is not None:
            used = support.used(server, user)
        else:
            used = getattr(record, name) != _default(record, name)
        if used and support.reason not in reasons:
            reasons.append(support.reason)
    return reasons
