"""contrib/ as a user installs it: the systemd units, the cron line, the ip-up and ip-down hooks
and fetchids-import, each run for real against the installed `pyfetch` command.

The command is reached as pipx leaves it, through ~/.local/bin/pyfetch in a private home (a
link to the one this venv installed), with no PYTHONPATH: what contrib/ does must work from an
installed pyfetch, not only from the source tree.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.fixtures import unavailable
from servers.postfix import Postfix
from servers.smtp import SMTPServer
from test_e2e_daemon import ended, pop3, read_pid, wait_until, write_rcfile
from test_e2e_idle import DEADLINE, message, subjects

CONTRIB = ROOT / "contrib"
# pyfetch's first line on stderr in every run as root (fetchmail's warning, word for word)
ROOT_WARNING = "pyfetch: WARNING: Running as root is discouraged.\n" if os.getuid() == 0 else ""
SHIPPED_PATH = "/usr/local/bin/pyfetch"  # what the system units' ExecStart names


def installed_pyfetch() -> Path:
    """The `pyfetch` command pip installed beside this Python (the venv's bin/)."""
    command = Path(sys.executable).parent / "pyfetch"
    if not command.exists():
        unavailable(f"{command} is missing: pip install -e . installs the pyfetch command")
    return command


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A user's home with pyfetch installed as pipx installs it: ~/.local/bin/pyfetch."""
    path = tmp_path / "home"
    (path / ".local" / "bin").mkdir(parents=True)
    (path / ".local" / "bin" / "pyfetch").symlink_to(installed_pyfetch())
    return path


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A login's environment: the pipx directory first on PATH, then the system's."""
    return {"PATH": f"{home}/.local/bin:/usr/bin:/bin", "HOME": str(home), "LC_ALL": "C",
            **extra}


def run(
    command: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, cwd=cwd or env.get("HOME"), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, errors="replace", timeout=DEADLINE * 3, check=False,
    )


def without_root_warning(text: str) -> str:
    return text.replace(ROOT_WARNING, "") if ROOT_WARNING else text


@pytest.fixture
def no_daemon_left(home: Path) -> Iterator[None]:
    """Kills a detached daemon a failed test left behind."""
    yield
    pid = read_pid(home)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- systemd units -------------------------------------------------------------------------------


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        unavailable("systemd-analyze is missing (Debian's systemd package; scripts/test "
                    "installs it)")
    return found


def as_installed_here(unit: str, directory: Path, name: str | None = None) -> Path:
    """The shipped unit with ExecStart's path made the one `command -v pyfetch` gives here,
    which is what its comment tells a user to do; nothing else is changed."""
    text = (CONTRIB / unit).read_text()
    assert f"ExecStart={SHIPPED_PATH} --nodetach --daemon 300\n" in text
    path = directory / (name or unit)
    path.write_text(text.replace(SHIPPED_PATH, str(installed_pyfetch())))
    return path


@pytest.mark.parametrize(("unit", "loaded_as"), [
    ("pyfetch.service", "pyfetch.service"),
    ("pyfetch@.service", "pyfetch@bob.service"),  # the template, as the instance for bob
])
def test_system_units_pass_systemd_analyze_verify_and_are_sandboxed(
    tmp_path: Path, unit: str, loaded_as: str,
) -> None:
    analyze = systemd_analyze()
    as_installed_here(unit, tmp_path)
    verify = run([analyze, "verify", f"./{loaded_as}"], {"PATH": "/usr/bin:/bin"},
                 cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout + verify.stderr == ""  # not even a warning (an unknown key, say)

    security = run([analyze, "security", "--offline=true", f"./{loaded_as}"],
                   {"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert security.returncode == 0, security.stdout + security.stderr
    level = re.search(rf"Overall exposure level for {re.escape(loaded_as)}: ([0-9.]+) (\w+)",
                      security.stdout)
    assert level is not None, security.stdout
    assert float(level[1]) <= 2.0 and level[2] == "OK", level[0]


def test_the_user_unit_passes_verify_where_pipx_put_pyfetch(
    tmp_path: Path, home: Path,
) -> None:
    analyze = systemd_analyze()
    units = tmp_path / "user-units"  # ~/.config/systemd/user, as its comment says
    units.mkdir()
    shutil.copy(CONTRIB / "pyfetch-user.service", units / "pyfetch.service")
    runtime = tmp_path / "run"  # XDG_RUNTIME_DIR, which a user's manager has
    runtime.mkdir(mode=0o700)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    verify = run([analyze, "--user", "verify", "./pyfetch.service"], env, cwd=units)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout + verify.stderr == ""

    # %h is the user's home: without pyfetch in ~/.local/bin the same unit is refused
    (home / ".local" / "bin" / "pyfetch").unlink()
    missing = run([analyze, "--user", "verify", "./pyfetch.service"], env, cwd=units)
    assert missing.returncode != 0
    assert f"Command {home}/.local/bin/pyfetch is not executable" in missing.stderr


# -- cron ----------------------------------------------------------------------------------------


def cron_line() -> tuple[str, str]:
    """contrib/cron.example's PATH setting and its job's command (the five time fields off)."""
    lines = [line for line in (CONTRIB / "cron.example").read_text().splitlines()
             if line and not line.startswith("#")]
    path = next(line for line in lines if line.startswith("PATH="))
    job = next(line for line in lines if not line.startswith("PATH="))
    fields = job.split(maxsplit=5)
    assert fields[:5] == ["*/5", "*", "*", "*", "*"], job
    return path, fields[5]


def test_the_cron_line_is_quiet_and_succeeds_when_there_is_no_mail(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
) -> None:
    path, command = cron_line()
    assert command == "pyfetch -s || [ $? -eq 1 ]"
    assert path.startswith("PATH=/home/you/.local/bin:")
    env = user_env(home)
    write_rcfile(home, pop3(dovecot, test_ca, smtpd))

    plain = run(["pyfetch", "-s"], env)
    assert plain.returncode == 1  # no mail: what the idiom is for
    assert without_root_warning(plain.stderr) == ""

    quiet = run(["/bin/sh", "-c", command], env)  # cron runs a job with /bin/sh -c
    assert quiet.returncode == 0
    assert quiet.stdout == "" and without_root_warning(quiet.stderr) == ""

    dovecot.seed("bob", [message(1)])
    fetched = run(["/bin/sh", "-c", command], env)
    assert fetched.returncode == 0
    assert fetched.stdout == "" and without_root_warning(fetched.stderr) == ""
    assert subjects(smtpd) == ["idle 1"]

    # a real failure still fails, and says why: cron mails that
    write_rcfile(home, pop3(dovecot, test_ca, smtpd, password="wrong"))
    failed = run(["/bin/sh", "-c", command], env)
    assert failed.returncode != 0
    assert "pyfetch: Authorization failure on bob@bob.isp.net" in failed.stderr


# -- ip-up and ip-down hooks ---------------------------------------------------------------------


def hook(name: str, home: Path, postfix: Postfix) -> subprocess.CompletedProcess[str]:
    """A hook as pppd runs it (as root, with the link's arguments), told whom to run as and
    which MTA configuration its queue flush uses (the private Postfix, not the system's)."""
    env = user_env(home, PYFETCH_USER=subprocess.run(
        ["id", "-un"], capture_output=True, text=True, check=True).stdout.strip(),
        MAIL_CONFIG=str(postfix.confdir))
    return run([str(CONTRIB / name / "pyfetch"), "ppp0", "/dev/ttyS0", "38400", "10.0.0.2",
                "10.0.0.1", ""], env)


def test_ip_up_starts_a_daemon_then_wakes_it_and_ip_down_stops_it(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, postfix: Postfix,
    no_daemon_left: None,
) -> None:
    # a daemon the hook starts has no terminal: its log goes to a file (which, as for
    # fetchmail, must exist)
    (home / "pyfetch.log").touch(mode=0o600)
    write_rcfile(home, f"set daemon 3600\nset logfile {home}/pyfetch.log\n"
                 + pop3(dovecot, test_ca, smtpd))
    dovecot.seed("bob", [message(1)])

    up = hook("ip-up.d", home, postfix)
    assert up.returncode == 0, up.stderr
    assert without_root_warning(up.stderr) == ""  # the queue flushed, the daemon started
    pid = read_pid(home)
    assert pid is not None
    assert (home / "pyfetch.pid").read_text() == f"{pid}\n3600\n"  # a daemon holds the lock
    wait_until("the daemon's first poll", lambda: subjects(smtpd) == ["idle 1"])

    dovecot.seed("bob", [message(2)])  # mail that arrives while the daemon sleeps an hour
    again = hook("ip-up.d", home, postfix)
    assert again.returncode == 0, again.stderr
    assert without_root_warning(again.stderr) == f"pyfetch: background pyfetch at {pid} awakened.\n"
    wait_until("the poll the second link-up asks for",
               lambda: subjects(smtpd) == ["idle 1", "idle 2"])
    assert read_pid(home) == pid  # the same daemon

    down = hook("ip-down.d", home, postfix)
    assert down.returncode == 0, down.stderr
    assert without_root_warning(down.stderr) == f"pyfetch: background pyfetch at {pid} killed.\n"
    assert not (home / "pyfetch.pid").exists()  # gone by the time the hook returns
    wait_until("the daemon's end", lambda: ended(pid))

    nothing = hook("ip-down.d", home, postfix)
    assert nothing.returncode == 8
    assert without_root_warning(nothing.stderr) == "pyfetch: no other pyfetch is running\n"


def test_ip_up_says_when_the_queue_cannot_be_flushed_and_fetches_anyway(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, tmp_path: Path,
) -> None:
    if shutil.which("postqueue", path="/usr/sbin:/sbin:/usr/bin") is None:
        unavailable("postqueue is missing (Postfix; scripts/test installs it)")
    write_rcfile(home, pop3(dovecot, test_ca, smtpd))  # no `set daemon`: one poll per link-up
    dovecot.seed("bob", [message(1)])
    down_mta = tmp_path / "no-postfix"  # a Postfix configuration whose mail system is down
    down_mta.mkdir()
    (down_mta / "main.cf").write_text(f"queue_directory = {tmp_path}/no-queue\n")
    env = user_env(home, MAIL_CONFIG=str(down_mta))
    up = run([str(CONTRIB / "ip-up.d" / "pyfetch")], env)
    assert up.returncode == 0, up.stderr
    assert "ip-up.d/pyfetch: could not flush the mail queue (postqueue -f)\n" in up.stderr
    assert subjects(smtpd) == ["idle 1"]  # polled once, in the hook
    assert not (home / "pyfetch.pid").exists()


# -- fetchids-import -----------------------------------------------------------------------------


def fetchids_import(home: Path, *args: str, stdin: str | None = None) -> (
    subprocess.CompletedProcess[str]
):
    """Run as a user runs it: the system's python3 (which has no pyfetch package) through the
    script's #! line, with the pipx-installed pyfetch on PATH."""
    if shutil.which("python3", path="/usr/bin:/bin") is None:
        unavailable("/usr/bin/python3 is missing")
    env = user_env(home)
    command = [str(CONTRIB / "fetchids-import"), *args]
    if stdin is None:
        return run(command, env)
    return subprocess.run(command, env=env, cwd=home, input=stdin, capture_output=True,
                          text=True, timeout=DEADLINE, check=False)


def old_machine_entry(dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer) -> str:
    """The entry fetchmail had on the old machine: another poll name for the same mailbox."""
    host, port = smtpd.address
    return (
        f"poll localhost service {dovecot.ports['pop3']} proto pop3\n"
        f"  user bob there is bob here password hidden keep\n"
        f"  sslcertfile {test_ca.ca_cert} sslcommonname localhost smtphost {host}/{port}\n"
    )


def test_fetchmails_fetchids_from_another_machine_is_imported_and_nothing_comes_twice(
    tmp_path: Path, home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    need_fetchmail: None,
) -> None:
    # the old machine: the real fetchmail fetches two messages and keeps them on the server
    old = tmp_path / "old"
    old.mkdir()
    write_rcfile(old, old_machine_entry(dovecot, test_ca, smtpd))
    dovecot.seed("bob", [message(1), message(2)])
    fetched = run(["fetchmail"], {"PATH": "/usr/bin:/bin", "HOME": str(old), "LC_ALL": "C"})
    assert fetched.returncode == 0, fetched.stderr
    assert subjects(smtpd) == ["idle 1", "idle 2"]
    old_ids = (old / ".fetchids").read_text()
    assert len(old_ids.splitlines()) == 2 and old_ids.startswith("bob@localhost ")

    # here: pyfetch polls the same mailbox under another name (via 127.0.0.1), keeping too
    write_rcfile(home, pop3(dovecot, test_ca, smtpd, options="keep"))
    (home / ".fetchids").write_text("carol@other.example 17\n")  # what pyfetch had already
    (home / ".fetchids").chmod(0o600)
    rc = home / ".fetchmailrc"

    plain = fetchids_import(home, str(old / ".fetchids"))
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == (
        f"fetchids-import: 2 UIDs of 1 account in {old}/.fetchids\n"
        f"fetchids-import: bob@localhost: 2 UIDs, 2 of them new; no account in {rc} is "
        f"bob@localhost, so pyfetch will not use them (--rename localhost=SERVER if the poll "
        f"name changed)\n"
        f"fetchids-import: bob@127.0.0.1: keep, and no UID recorded: its next poll delivers "
        f"every message on the server\n"
        f"fetchids-import: wrote {home}/.fetchids: 3 UIDs in all (mode 0600)\n"
    )

    renamed = fetchids_import(home, "--rename", "localhost=127.0.0.1", str(old / ".fetchids"))
    assert renamed.returncode == 0, renamed.stderr
    assert renamed.stdout == (
        f"fetchids-import: 2 UIDs of 1 account in {old}/.fetchids\n"
        f"fetchids-import: bob@127.0.0.1: 2 UIDs, 2 of them new\n"
        f"fetchids-import: wrote {home}/.fetchids: 5 UIDs in all (mode 0600)\n"
    )
    ids = (home / ".fetchids").read_text().splitlines()
    assert ids[0] == "carol@other.example 17"  # kept, and first, as it was
    uids = [line.split(" ", 1)[1] for line in old_ids.splitlines()]
    assert ids[-2:] == [f"bob@127.0.0.1 {uid}" for uid in uids]
    assert (home / ".fetchids").stat().st_mode & 0o777 == 0o600

    # pyfetch now takes both kept messages as fetched, and delivers only the new one
    dovecot.seed("bob", [message(3)])
    polled = run(["pyfetch", "-d0"], user_env(home))
    assert polled.returncode == 0, polled.stderr
    assert subjects(smtpd) == ["idle 1", "idle 2", "idle 3"]
    again = run(["pyfetch", "-d0"], user_env(home))
    assert again.returncode == 1, again.stderr  # no mail


def test_fetchids_import_refuses_while_pyfetch_runs_and_changes_nothing(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, tmp_path: Path,
    no_daemon_left: None,
) -> None:
    write_rcfile(home, "set daemon 3600\n" + pop3(dovecot, test_ca, smtpd, options="keep"))
    source = tmp_path / "old.fetchids"
    source.write_text("bob@127.0.0.1 UID1\n")
    started = run(["pyfetch"], user_env(home))  # `set daemon`: into the background
    assert started.returncode == 0, started.stderr
    pid = read_pid(home)
    assert pid is not None

    refused = fetchids_import(home, str(source))
    assert refused.returncode == 8
    assert refused.stderr == (
        f"fetchids-import: pyfetch at {pid} is running (lockfile {home}/pyfetch.pid); "
        f"nothing was changed.\n"
        f"fetchids-import: stop it first (pyfetch -q, or systemctl stop): it would write its "
        f"own .fetchids over the import\n"
    )
    assert not (home / ".fetchids").exists()

    stopped = run(["pyfetch", "-q"], user_env(home))
    assert stopped.returncode == 0, stopped.stderr
    done = fetchids_import(home, str(source))
    assert done.returncode == 0, done.stderr
    assert (home / ".fetchids").read_text() == "bob@127.0.0.1 UID1\n"
    assert not (home / "pyfetch.pid").exists()  # the import's own hold on the lock is gone


def test_fetchids_import_of_the_file_pyfetch_reads_anyway_and_from_stdin(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
) -> None:
    write_rcfile(home, pop3(dovecot, test_ca, smtpd, options="keep"))
    ids = home / ".fetchids"
    ids.write_text("bob@127.0.0.1 UID1\n")
    ids.chmod(0o644)  # readable by others: pyfetch refuses it

    same = fetchids_import(home, str(ids))
    assert same.returncode == 0, same.stderr
    assert same.stdout == (
        f"fetchids-import: {ids} is the idfile pyfetch uses with {home}/.fetchmailrc already; "
        f"pyfetch reads fetchmail's file as it is, so there is nothing to import\n"
    )
    refused = run(["pyfetch", "-d0"], user_env(home))
    assert refused.returncode == 6
    assert "must have no more than -rwx--x--- (0710) permissions" in refused.stderr

    piped = fetchids_import(home, "-", stdin="bob@127.0.0.1 UID1\nnot a uid line\n")
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == (
        "fetchids-import: 1 line of - not `user@server UID` left out\n"
        f"fetchids-import: {ids} may be read by others, which pyfetch refuses (exit 6); it is "
        "written again with mode 0600\n"
    )
    assert piped.stdout.endswith(f"fetchids-import: wrote {ids}: 1 UID in all (mode 0600)\n")
    assert ids.stat().st_mode & 0o777 == 0o600
    assert ids.read_text() == "bob@127.0.0.1 UID1\n"
    dovecot.seed("bob", [message(1)])
    polled = run(["pyfetch", "-d0"], user_env(home))
    assert polled.returncode == 0, polled.stderr  # the file is accepted now
    assert subjects(smtpd) == ["idle 1"]


# -- the other contrib programs, from an installed pyfetch -------------------------------------


def test_compare_with_fetchmail_runs_the_installed_pyfetch(
    home: Path, need_fetchmail: None,
) -> None:
    rc = home / "rc"
    rc.write_text("set no showdots\npoll mail.isp.net proto pop3 user bob password x\n")
    rc.chmod(0o600)
    compared = run([str(CONTRIB / "compare-with-fetchmail"), str(rc)], user_env(home))
    assert compared.returncode == 0, compared.stderr
    # the one difference there is on purpose (fetchmail 6.4 dumps `no showdots` as on)
    assert compared.stdout == ".showdots: pyfetch False  fetchmail True\n"
