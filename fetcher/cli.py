"""The `pyfetch` command: arguments in, exit code out.

Everything that can go wrong before polling (bad options, rcfile syntax, permissions, missing
passwords) ends here with fetchmail's message shape and exit code.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fetcher import logsetup, rcfile
from fetcher.config import Config, Environment, Overrides, build, is_toml_path
from fetcher.errors import ConfigError, PermissionsError, PyfetchError, RcSyntaxError
from fetcher.exitcodes import ExitCode
from fetcher.gcpause import paused_gc
from fetcher.options import HELP_TEXT, CommandLine, UsageError, parse_args

if TYPE_CHECKING:
    from fetcher import lock

# What only some runs need is imported where it is used, not here: `pyfetch -V` and a
# configuration error need neither the run loop, nor the drivers and sinks (IMAP and SMTP
# libraries, asyncio, TLS), nor the lock; a POP3-only poll needs no TOML parser; nothing but
# --configdump needs its writer. Starting the interpreter and importing are most of what a
# short run costs (cron, ip-up hooks).

PROG = "pyfetch"


def _report(message: str) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")


def _rcfile_path(cmd: CommandLine, env: Environment) -> str:
    path = cmd.rcfile or env.default_rcfile
    if path != "-" and not os.path.isabs(path):
        # as fetchmail does: messages then name the file unambiguously, and a daemon that
        # changes directory still finds it
        path = os.path.join(os.getcwd(), path)
    return path


def _load_config(cmd: CommandLine, env: Environment) -> Config:
    path = _rcfile_path(cmd, env)
    secure = not cmd.version
    if is_toml_path(path):
        from fetcher import tomlconfig

        tree = tomlconfig.load(path, secure=secure)
    else:
        # -y: fetchmail traces its parser; pyfetch says what each token was read as
        trace = (lambda line: _report(f"yydebug: {line}")) if cmd.yydebug else None
        tree = rcfile.load(path, secure=secure, trace=trace)
    overrides = Overrides(cmd.global_overrides, cmd.server_overrides, cmd.user_overrides)
    return build(
        tree,
        env,
        overrides,
        servers=cmd.servers,
        check_only=cmd.check,
        nodetach=cmd.nodetach,
        dumping=cmd.configdump,
        silent=cmd.silent and not cmd.verbose,
    )


def _outputs(cmd: CommandLine, config: Config) -> logsetup.Outputs:
    detached = config.globals.poll_interval > 0 and not cmd.nodetach
    return logsetup.plan(config.globals, detached=detached)


def run(cmd: CommandLine) -> ExitCode:
    env = Environment.from_os()
    if cmd.version:
        with paused_gc():
            config = _load_config(cmd, env)
        from fetcher.describe import write_version

        write_version(config, cmd.verbose, _outputs(cmd, config))
        return ExitCode.SUCCESS
    if cmd.quit:
        return _quit(cmd, env)
    with paused_gc():
        config = _load_config(cmd, env)
    for warning in config.warnings:
        sys.stderr.write(f"{warning}\n")
    if cmd.configdump:
        if cmd.dump_format == "toml":
            from fetcher import tomlconfig

            sys.stdout.write(tomlconfig.dumps_config_source(_rcfile_path(cmd, env)))
        else:
            from fetcher.configdump import configdump_json

            sys.stdout.write(configdump_json(config))
        return ExitCode.SUCCESS
    _check_pollable(config)
    return _poll(cmd, env, config)


def _poll(cmd: CommandLine, env: Environment, config: Config) -> ExitCode:
    """Take the lock, ask for passwords, detach a daemon, and run."""
    from fetcher import lock, trace
    from fetcher.credentials import resolve_passwords
    from fetcher.daemon import detach
    from fetcher.report import Reporter
    from fetcher.run import Run

    interval = config.globals.poll_interval
    claimed = lock.claim(
        config.globals.pidfile or env.default_pidfile, _lock_request(cmd), interval,
        report=_report,
    )
    if not isinstance(claimed, lock.PidLock):
        return claimed
    with claimed:
        resolve_passwords(config, env.netrc_path)
        os.umask(0o077)  # fetchmail's: what a run creates (idfile, spool, BSMTP) is private
        outputs = _outputs(cmd, config)
        if outputs.detached:
            for warning in outputs.warnings_before_detaching():
                sys.stderr.write(f"{warning}\n")
            detach(claimed, interval, outputs.logfile)
        console = logsetup.open_console(outputs)
        reporter = Reporter(
            verbose=cmd.verbose, silent=cmd.silent, daemon=interval > 0, console=console,
            showdots=config.globals.showdots and not outputs.syslog,
        )
        trace.setup(cmd.verbose, console)
        try:
            return Run(
                config, reporter, check_only=cmd.check,
                parallel=cmd.parallel,
                reload=functools.partial(_reload, cmd, env),
                warn_sizes=outputs.detached,
            ).execute()
        except Exception as err:  # what ends the run is said where its other lines went
            text, code = _failure(err)
            console.write("err", f"{text}\n")
            return code
        finally:
            console.close()


def _check_pollable(config: Config) -> None:
    """Refuse a configuration with nothing to poll, or with a feature pyfetch will not do."""
    from fetcher.features import unsupported

    accounts = config.selected_accounts()
    if not accounts:
        raise ConfigError("no mailservers have been specified.")
    problems: list[str] = []
    for server, user in accounts:
        # Where to look: the poll entry's line in the rcfile (none for a server named only
        # on the command line), and its name.
        where = f"{config.rcfile}:{server.line}: " if config.rcfile and server.line else ""
        for reason in unsupported(server, user):
            problem = f"{where}{server.pollname}: {reason}"
            if problem not in problems:  # said once for an entry with several accounts
                problems.append(problem)
    if problems:
        raise ConfigError("\npyfetch: ".join(problems))


def _lock_request(cmd: CommandLine) -> lock.Request:
    """What the pidfile lock weighs: -v and -s alone still wake a daemon, as in fetchmail."""
    from fetcher import lock

    return lock.Request(
        quit=cmd.quit,
        check=cmd.check,
        named_servers=bool(cmd.servers),
        other_options=bool(cmd.given - _HARMLESS_OPTIONS),
        silent=cmd.silent,
    )


_HARMLESS_OPTIONS = frozenset({"v", "s", "q"})


def _quit(cmd: CommandLine, env: Environment) -> ExitCode:
    """`-q`: stop the pyfetch (or fetchmail) holding the pidfile. Never polls. The rcfile is
    read only for its `set pidfile`; a broken one does not keep a daemon from being stopped."""
    from fetcher import lock

    path = cmd.global_overrides.get("pidfile")
    if not isinstance(path, str):
        try:
            with paused_gc():
                path = _load_config(cmd, env).globals.pidfile
        except PyfetchError:
            path = None
    claimed = lock.claim(path or env.default_pidfile, _lock_request(cmd), 0, report=_report)
    assert not isinstance(claimed, lock.PidLock)  # -q never runs
    return claimed


def _reload(cmd: CommandLine, env: Environment, previous: Config) -> Config:
    """The rcfile read again for a running daemon: the same command line, no prompting
    (passwords asked for at the start are kept). Raises PyfetchError if it cannot be used."""
    from fetcher.credentials import resolve_passwords

    with paused_gc():
        config = _load_config(cmd, env)
    _check_pollable(config)
    asked = {
        (server.pollname, user.remote): user.password
        for server, user in previous.selected_accounts()
        if user.password is not None and user.passwordeval is None
    }
    for server, user in config.selected_accounts():
        if user.password is None and user.passwordeval is None:
            user.password = asked.get((server.pollname, user.remote))
    resolve_passwords(config, env.netrc_path, interactive=False)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if os.getuid() == 0:
        # fetchmail's (6.4.37: every run as root, -V, --configdump, --help and -q included,
        # on the terminal before anything else, never into the logfile or syslog): a program
        # that parses what mail servers send needs no root privileges.
        sys.stderr.write(logsetup.ROOT_WARNING)
    try:
        cmd = parse_args(args)
        if cmd.help:
            sys.stdout.write(HELP_TEXT)
            return ExitCode.SUCCESS
        return run(cmd)
    except UsageError as err:
        return err.emit(sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        return ExitCode.UNDEFINED
    except Exception as err:
        text, code = _failure(err)
        sys.stderr.write(f"{text}\n")
        return code


def _failure(err: Exception) -> tuple[str, ExitCode]:
    """The line that says what ended the run, in fetchmail's form, and the exit code."""
    if isinstance(err, RcSyntaxError):
        # fetchmail's form: `fetchmail:FILE:LINE: MESSAGE at TOKEN`
        return f"{PROG}:{err.message}", err.exit_code
    if isinstance(err, PermissionsError):
        return err.message, err.exit_code  # fetchmail prints these without a prefix
    if isinstance(err, PyfetchError):
        return f"{PROG}: {err.message}", err.exit_code
    # A bug in pyfetch: say where, with fetchmail's "internal" code. The exception's own text
    # is left out: it could quote a password.
    import traceback

    frame = traceback.extract_tb(err.__traceback__)[-1]
    where = f"{os.path.basename(frame.filename)}:{frame.lineno}"
    if os.environ.get("PYFETCH_DEBUG"):
        traceback.print_exception(err)
    return f"{PROG}: internal error ({type(err).__name__} at {where}); please report it.", (
        ExitCode.UNDEFINED
    )
