"""Parse tree + `defaults` entry + command line + fetchmail's built-in defaults -> Config.

The merge follows fetchmail 6.4's `load_params()` and `optmerge()`:

1. every account of an entry starts from what the rcfile set for it and for its server;
2. the `defaults` entry fills what is still unset: scalars one by one, a list only where the
   account's list is empty;
3. command-line options override: scalars are replaced, lists are appended to (so `-S host`
   adds a host to the rcfile's smtphost list);
4. fetchmail's wired-in defaults fill the rest.

A few numbers are "unset" when zero, because fetchmail stores them raw and tests them for
non-zero (`timeout 0` means the default 300); the per-account numbers (`limit 0`) are stored
so that an explicit 0 still counts as set. `ZERO_IS_UNSET` lists the former.
"""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from fetcher.errors import ConfigError, LocalError, PermissionsError
from fetcher.exitcodes import ExitCode
from fetcher.model import Config, GlobalOptions, LocalName, ServerOptions, UserOptions

__all__ = [
    "Config", "Environment", "Overrides", "build", "is_toml_path", "resolve_paths", "service_port",
]
from fetcher.rcfile.parser import (
    KPOP_SERVICE,
    LIST_FIELDS,
    RELATIVE_TO_RCFILE,
    Entry,
    Options,
    RcFile,
    UserBlock,
    Value,
)

ZERO_IS_UNSET = frozenset({"timeout", "interval", "envskip"})
# `defaults` passes on every field but `aka` (fetchmail's optmerge() leaves the alias list out).
NOT_INHERITED = frozenset({"aka"})
# Authentication that uses no password; fetchmail then puts the login name in the password
# field so that nothing ever prompts for one (and --configdump shows it there).
PASSWORDLESS_AUTH = frozenset({"ssh", "external", "gssapi", "kerberos_v4", "kerberos_v5", "otp"})
DEFAULT_TIMEOUT = 300
# What an rcfile record can set on the model; the rest is filled in by build().
_SERVER_OPTIONS = frozenset(f.name for f in fields(ServerOptions)) - {
    "pollname", "active", "users", "selected", "line"
}
_USER_FIELDS = frozenset(f.name for f in fields(UserOptions))


@dataclass(frozen=True)
class Environment:
    """Who runs us and where their files are: fetchmail's `envquery()`.

    `home` is $HOME_ETC if set, else $HOME, else the password database's directory, made
    absolute with symbolic links resolved; it holds .fetchmailrc, .fetchids and .netrc.
    $FETCHMAILHOME, if set, holds fetchmailrc (no dot), .fetchids and fetchmail.pid instead.
    """

    user: str
    home: str
    fetchmailhome: str | None
    is_root: bool

    @classmethod
    def from_os(cls, environ: Mapping[str, str] | None = None) -> Environment:
        env = os.environ if environ is None else environ
        try:
            entry: pwd.struct_passwd | None = pwd.getpwuid(os.getuid())
        except KeyError:
            entry = None
        # fetchmail 6.4 takes the login name from the password database only; FETCHMAILUSER,
        # LOGNAME and USER do not change it (checked against 6.4.37)
        if entry is not None:
            user = entry.pw_name
        else:
            user = env.get("LOGNAME") or env.get("USER") or ""
            if not user:
                raise ConfigError("You don't exist.  Go away.")
        home = env.get("HOME_ETC") or env.get("HOME") or (entry.pw_dir if entry else "/")
        fetchmailhome = env.get("FETCHMAILHOME") or None
        return cls(
            user=user,
            home=_existing_directory(home, "user's home directory"),
            fetchmailhome=(
                _existing_directory(fetchmailhome, "fetchmail's home directory")
                if fetchmailhome
                else None
            ),
            is_root=os.getuid() == 0,
        )

    @property
    def default_rcfile(self) -> str:
        if self.fetchmailhome:
            return os.path.join(self.fetchmailhome, "fetchmailrc")
        return os.path.join(self.home, ".fetchmailrc")

    @property
    def default_idfile(self) -> str:
        return os.path.join(self.fetchmailhome or self.home, ".fetchids")

    @property
    def default_pidfile(self) -> str:
        """fetchmail's lock: root's is always /var/run/fetchmail.pid, $FETCHMAILHOME or not
        (checked against 6.4.37), so that pyfetch and fetchmail find each other's."""
        if self.is_root:
            return "/var/run/fetchmail.pid"
        if self.fetchmailhome:
            return os.path.join(self.fetchmailhome, "fetchmail.pid")
        return os.path.join(self.home, ".fetchmail.pid")

    @property
    def netrc_path(self) -> str:
        return os.path.join(self.home, ".netrc")


def _existing_directory(path: str, what: str) -> str:
    try:
        return os.path.realpath(path, strict=True)
    except OSError:
        raise LocalError(f"Cannot find absolute path for {what}.", ExitCode.UNDEFINED) from None


@dataclass
class Overrides:
    """What the command line sets, keyed like the configdump. Lists are appended."""

    globals: dict[str, object]
    server: dict[str, object]
    user: dict[str, object]

    @classmethod
    def none(cls) -> Overrides:
        return cls({}, {}, {})


def is_toml_path(path: str) -> bool:
    """A configuration file in TOML (fetcher.tomlconfig) rather than an rcfile. Decided here,
    from the name alone, so that reading an rcfile never loads the TOML reader."""
    return path.endswith(".toml")


def resolve_paths(options: Options, rcfile: str | None) -> None:
    """Make relative paths absolute against the rcfile's directory, as fetchmail does."""
    if rcfile is None or rcfile == "-":
        base = os.getcwd()
    else:
        base = os.path.dirname(os.path.abspath(rcfile))
    for key in RELATIVE_TO_RCFILE & options.keys():
        value = options[key]
        if isinstance(value, str) and value and value != "-" and not value.startswith("/"):
            options[key] = os.path.join(base, value)


def _is_set(options: Mapping[str, object], key: str) -> bool:
    if key not in options:
        return False
    value = options[key]
    if key in ZERO_IS_UNSET and value == 0:
        return False
    if key in LIST_FIELDS:
        return bool(value)
    return True


def _fill_unset(target: Options, source: Mapping[str, object]) -> None:
    """fetchmail's optmerge(force=FALSE): take from `source` what `target` leaves unset."""
    for key, value in source.items():
        if key not in NOT_INHERITED and not _is_set(target, key) and _is_set(source, key):
            target[key] = _copy(value)


def _force(target: Options, source: Mapping[str, object]) -> None:
    """fetchmail's optmerge(force=TRUE): command-line values win; lists are appended."""
    for key, value in source.items():
        current = target.get(key)
        if key in LIST_FIELDS and isinstance(current, list) and isinstance(value, list):
            target[key] = [*current, *value]
        else:
            target[key] = _copy(value)


def _copy(value: object) -> Value:
    return list(value) if isinstance(value, list) else value  # type: ignore[return-value]


def _account_records(entry: Entry) -> list[tuple[Options, int]]:
    """fetchmail keeps one record per account, each with its own copy of the server part."""
    return [({**entry.server, **block.options}, block.line) for block in entry.users]


def build(
    rc: RcFile | None,
    env: Environment,
    overrides: Overrides | None = None,
    servers: Iterable[str] = (),
    check_only: bool = False,
    nodetach: bool = False,
    dumping: bool = False,
    silent: bool = False,
) -> Config:
    """Apply defaults, the `defaults` entry and the command line; select the entries to poll.
    `silent` (-s) leaves out the warnings fetchmail leaves out with it."""
    overrides = overrides or Overrides.none()
    rcpath = rc.path if rc else None
    entries = list(rc.entries) if rc else []

    defaults_record: Options = {}
    if entries and entries[0].is_defaults:
        head = entries.pop(0)
        defaults_record = _account_records(head)[0][0]
        resolve_paths(defaults_record, rcpath)
        if len(head.users) > 1:  # fetchmail keeps the other accounts as an entry of their own
            rest = Entry(head.name, head.line, head.skip, dict(head.server), head.users[1:])
            entries.insert(0, rest)
    # Like fetchmail, a second `defaults` right after the first is an ordinary entry (named
    # "defaults"); anywhere else it is an error.
    if any(e.is_defaults for e in entries[1:]):
        raise _multiple_defaults()

    named = list(servers)
    for name in named:
        if not any(e.name == name or name in _aka(e) for e in entries):
            synthesized = Entry(name, 0)
            synthesized.server["via"] = name
            synthesized.users.append(UserBlock(0, explicit=False))
            entries.append(synthesized)

    warnings: list[str] = []
    global_options = _build_globals(
        rc.globals if rc else {}, overrides, env, rcpath, check_only, nodetach, silent, warnings
    )

    built: list[ServerOptions] = []
    for entry in entries:
        selected = (entry.name in named or any(n in _aka(entry) for n in named)) if named else (
            not entry.skip
        )
        lead: ServerOptions | None = None
        for record, line in _account_records(entry):
            resolve_paths(record, rcpath)
            _fill_unset(record, defaults_record)
            _force(record, overrides.server)
            _force(record, overrides.user)
            _apply_wired_defaults(record, env)
            account = _make_user(record)
            account.line = line
            if lead is None:
                lead = _make_server(record, entry, selected)
                built.append(lead)
            lead.users.append(account)
            if account.multidrop and "envelope" not in record:
                warnings.append(
                    f"pyfetch: warning: multidrop for {entry.name} requires envelope option!"
                )
                warnings.append(
                    "pyfetch: warning: Do not ask for support if all mail goes to postmaster!"
                )
    _check(built, dumping, warnings)
    if not dumping:
        _warn_refetching(built, global_options.poll_interval, warnings)
    return Config(global_options, built, rcfile=rcpath, warnings=warnings)


def _multiple_defaults() -> ConfigError:
    return ConfigError(
        'Error: multiple "defaults" records in config file, or "defaults" is not the first record.'
    )


def _aka(entry: Entry) -> list[str]:
    value = entry.server.get("aka")
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _build_globals(
    rc_globals: Options,
    overrides: Overrides,
    env: Environment,
    rcpath: str | None,
    check_only: bool,
    nodetach: bool,
    silent: bool,
    warnings: list[str],
) -> GlobalOptions:
    values: Options = dict(rc_globals)
    resolve_paths(values, rcpath)
    values.update({k: _copy(v) for k, v in overrides.globals.items()})
    options = GlobalOptions(**values)  # type: ignore[arg-type]
    if options.logfile is not None:
        options.logfile = _usable_logfile(options.logfile, nodetach, [] if silent else warnings)
    if options.logfile is not None:
        options.syslog = False  # a logfile replaces syslog (and --configdump says so)
    options.poll_interval = max(options.poll_interval, 0)
    if options.idfile is None:
        options.idfile = env.default_idfile
    if options.pidfile is None:
        options.pidfile = env.default_pidfile
    if options.postmaster is None:
        options.postmaster = "postmaster" if env.is_root else env.user
    if check_only:
        options.poll_interval = 0  # -c and daemon mode don't mix
    return options


def _usable_logfile(path: str, nodetach: bool, warnings: list[str]) -> str | None:
    """The logfile the run will append to, after fetchmail 6.4.37's checks in its order (and
    before -V and --configdump, as there): -N keeps the run's lines on stdout and stderr for
    whatever started it (a unit file); only an existing file is appended to, so that a typo
    cannot create files; one that cannot be written ends the run."""
    if nodetach:
        warnings.append("The nodetach option is in effect, ignoring logfile option.")
        return None
    if not os.path.exists(path):
        warnings.append(f'Logfile "{path}" does not exist, ignoring logfile option.')
        return None
    if not os.access(path, os.W_OK):
        # fetchmail's words, without its name, and its exit code
        raise PermissionsError(f'Logfile "{path}" is not writable, aborting.', ExitCode.UNDEFINED)
    return path


def _apply_wired_defaults(record: Options, env: Environment) -> None:
    record.setdefault("remote", env.user)
    record.setdefault("esmtpname", env.user)
    if not record.get("localnames"):
        default_name: list[LocalName] = [(env.user, None)]
        record["localnames"] = default_name
    if not record.get("smtphunt"):
        record["smtphunt"] = ["localhost"]
        record["smtphunt_default"] = True
    if "stripcr" not in record:
        record["stripcr"] = record.get("mda") is not None
    for key in ZERO_IS_UNSET:
        if not _is_set(record, key):
            record.pop(key, None)
    if record.get("password") is None and (
        record.get("auth") in PASSWORDLESS_AUTH or record.get("protocol") == "ETRN"
    ):
        record["password"] = record["remote"]
    if record.get("protocol") in ("ETRN", "ODMR") and not record.get("fetchdomains"):
        record["fetchdomains"] = [local_hostname()]
        record["fetchdomains_default"] = True
    for key, value in record.items():
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            # fetchmail treats a negative number as none at all; `timeout -1` is its
            # "use the default" marker
            record[key] = DEFAULT_TIMEOUT if (key, value) == ("timeout", -1) else 0


def _make_user(record: Options) -> UserOptions:
    values = {k: v for k, v in record.items() if k in _USER_FIELDS}
    return UserOptions(**values)  # type: ignore[arg-type]


def _make_server(record: Options, entry: Entry, selected: bool) -> ServerOptions:
    values = {k: v for k, v in record.items() if k in _SERVER_OPTIONS}
    server = ServerOptions(**values)  # type: ignore[arg-type]
    server.pollname = entry.name
    server.active = not entry.skip
    server.selected = selected
    server.line = entry.line
    return server


_TLS_PORTS = {"POP3": {995: "pop3s"}, "IMAP": {993: "imaps"}}


def local_hostname() -> str:
    """This machine's name as fetchmail's host_fqdn() finds it: canonical name, else short."""
    name = socket.gethostname()
    try:
        info = socket.getaddrinfo(name, None, flags=socket.AI_CANONNAME)
    except OSError:
        return name
    canonical = info[0][3] if info else ""
    return canonical or name


def _check(servers: list[ServerOptions], dumping: bool, warnings: list[str]) -> None:
    """The checks fetchmail makes after merging, which end the run with exit 5.

    fetchmail also refuses `idle` with more than one folder or account ("idle mode does not
    work for multiple folders or accounts!"): its IDLE takes over the process. pyfetch watches
    every idle folder on a connection of its own, so it accepts them.
    """
    for server in servers:
        port = service_port(server.service) if server.service is not None else None
        if port is not None and not 0 < port <= 65535:
            raise ConfigError(
                f"{server.pollname} configuration invalid, specify positive port number for "
                "service or port"
            )
        if server.protocol == "RPOP" and port is not None and port >= 1024:
            raise ConfigError(
                f"{server.pollname} configuration invalid, RPOP requires a privileged port"
            )
        considered = dumping or server.selected
        if considered and server.auth == "kerberos_v4":
            # fetchmail 6.4 is built without Kerberos IV and refuses the file for it
            raise ConfigError("KERBEROS v4 support is configured, but not compiled in.")
        for user in server.users:
            if port in _TLS_PORTS.get(server.protocol, {}) and not user.ssl:
                service = _TLS_PORTS[server.protocol][port]
                warnings.append(
                    f"pyfetch: WARNING: {server.pollname} configuration invalid, you normally "
                    f"need --ssl for port {port}/service {service}."
                )
            if user.lmtp and any(_is_smtp_port(host) for host in user.smtphunt):
                raise ConfigError(
                    f"{server.pollname} configuration invalid, LMTP can't use default SMTP port"
                )


def _warn_refetching(servers: list[ServerOptions], interval: int, warnings: list[str]) -> None:
    """fetchmail's warning: `keep` with `fetchall` fetches every message again at each poll,
    which a daemon or an IDLE watch repeats without end."""
    for server in servers:
        for user in server.users:
            if server.selected and user.keep and user.fetchall and (interval or user.idle):
                warnings.append("Both fetchall and keep on in daemon or idle mode is a mistake!")
                return


def _is_smtp_port(host: str) -> bool:
    """True if an smtphost entry would reach port 25: no `/port`, or `/25`, or `/smtp`."""
    if host.startswith("/"):  # a socket path
        return False
    _, slash, port = host.rpartition("/")
    return not slash or port in ("smtp", "25") or service_port(port) == 25


def service_port(service: str) -> int:
    """The port a service name or number stands for; -1 if it names none."""
    if service.lstrip("-").isdigit():
        return int(service)
    if service == KPOP_SERVICE:  # fetchmail knows it even where /etc/services does not
        return 1109
    try:
        return socket.getservbyname(service, "tcp")
    except (OSError, UnicodeError):  # unknown name, or bytes that are not text
        return -1


