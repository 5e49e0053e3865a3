"""The `pyfetch` command: arguments in, exit code out.

Everything that can go wrong before polling (bad options, rcfile syntax, permissions, missing
passwords) ends here with fetchmail's message shape and exit code.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from fetcher import rcfile, tomlconfig
from fetcher.config import Config, Environment, Overrides, build
from fetcher.configdump import configdump_json
from fetcher.credentials import resolve_passwords
from fetcher.describe import write_version
from fetcher.errors import PermissionsError, PyfetchError, RcSyntaxError
from fetcher.exitcodes import ExitCode
from fetcher.features import unsupported
from fetcher.gcpause import paused_gc
from fetcher.options import HELP_TEXT, CommandLine, UsageError, parse_args
from fetcher.report import Reporter
from fetcher.runner import poll_all, setup_trace

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
    if tomlconfig.is_toml_path(path):
        tree = tomlconfig.load(path, secure=secure)
    else:
        tree = rcfile.load(path, secure=secure)
    overrides = Overrides(cmd.global_overrides, cmd.server_overrides, cmd.user_overrides)
    return build(
        tree,
        env,
        overrides,
        servers=cmd.servers,
        check_only=cmd.check,
        nodetach=cmd.nodetach,
        dumping=cmd.configdump,
    )


def run(cmd: CommandLine) -> ExitCode:
    with paused_gc():
        return _run(cmd)


def _run(cmd: CommandLine) -> ExitCode:
    env = Environment.from_os()
    if cmd.version:
        config = _load_config(cmd, env)
        write_version(config, cmd.verbose)
        return ExitCode.SUCCESS
    config = _load_config(cmd, env)
    for warning in config.warnings:
        sys.stderr.write(f"{warning}\n")
    if cmd.configdump:
        if cmd.dump_format == "toml":
            sys.stdout.write(tomlconfig.dumps_config_source(_rcfile_path(cmd, env)))
        else:
            sys.stdout.write(configdump_json(config))
        return ExitCode.SUCCESS
    accounts = config.selected_accounts()
    if not accounts:
        _report("no mailservers have been specified.")
        return ExitCode.SYNTAX
    problems = [p for server, user in accounts for p in unsupported(server, user)]
    if problems:
        for problem in problems:
            _report(problem)
        return ExitCode.SYNTAX
    resolve_passwords(config, env.netrc_path)
    if config.globals.poll_interval > 0 and not all(user.idle for _, user in accounts):
        # Said, never silently ignored: the daemon loop comes with its own issue.
        _report(
            "daemon mode (-d/set daemon) is not available in this release; polling once"
            " (use -d0 to poll once without this notice)."
        )
    setup_trace(cmd.verbose)
    reporter = Reporter(verbose=cmd.verbose, silent=cmd.silent)
    return poll_all(config, reporter, check_only=cmd.check)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cmd = parse_args(args)
        if cmd.help:
            sys.stdout.write(HELP_TEXT)
            return ExitCode.SUCCESS
        return run(cmd)
    except UsageError as err:
        return err.emit(sys.stdout, sys.stderr)
    except RcSyntaxError as err:
        # fetchmail's form: `fetchmail:FILE:LINE: MESSAGE at TOKEN`
        sys.stderr.write(f"{PROG}:{err.message}\n")
        return err.exit_code
    except PermissionsError as err:
        sys.stderr.write(f"{err.message}\n")  # fetchmail prints these without a prefix
        return err.exit_code
    except PyfetchError as err:
        _report(err.message)
        return err.exit_code
    except KeyboardInterrupt:
        return ExitCode.UNDEFINED
    except Exception as err:  # a bug in pyfetch: say where, with fetchmail's "internal" code
        # The exception's own text is left out: it could quote a password.
        frame = traceback.extract_tb(err.__traceback__)[-1]
        where = f"{os.path.basename(frame.filename)}:{frame.lineno}"
        _report(f"internal error ({type(err).__name__} at {where}); please report it.")
        if os.environ.get("PYFETCH_DEBUG"):
            traceback.print_exception(err)
        return ExitCode.UNDEFINED
