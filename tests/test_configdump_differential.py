"""pyfetch --configdump against fetchmail --configdump, file by file, field by field.

Every file of tests/corpus/good must give the same dump from both programs, apart from the
deviations listed in KNOWN_DEVIATIONS (each one a fetchmail bug pyfetch does not copy); every
file of tests/corpus/bad must be refused by both with exit 5, with the same line and, where
fetchmail names one, the same message and token. Files in tests/corpus/stricter are accepted
by fetchmail but refused by pyfetch on purpose; files in tests/corpus/broader are refused by
fetchmail but accepted by pyfetch on purpose (each says why).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, ROOT_WARNING, TESTS
from reference import (
    TEST_USER,
    fetchmail_configdump,
    significant_stderr,
    visbuf,
    visbuf_is_exact,
    visbuf_localname,
)

CORPUS = TESTS / "corpus"
GOOD = sorted((CORPUS / "good").glob("*.rc"))
BAD = sorted((CORPUS / "bad").glob("*.rc"))
STRICTER = sorted((CORPUS / "stricter").glob("*.rc"))
BROADER = sorted((CORPUS / "broader").glob("*.rc"))
EXPECTED_ERRORS: dict[str, dict[str, Any]] = json.loads(
    (CORPUS / "expected_errors.json").read_text()
)

# (file, path in the dump) -> (pyfetch's value, fetchmail's value), with the reason.
KNOWN_DEVIATIONS: dict[tuple[str, str], tuple[Any, Any]] = {
    # fetchmail stores `no showdots` / `no tracepolls` as its non-zero FLAG_FALSE and never
    # turns it back into false, so its dump (and its behaviour) says "on". pyfetch: off.
    ("globals_no_forms.rc", ".showdots"): (False, True),
    ("server_no_forms.rc", ".servers[2].tracepolls"): (False, True),
    ("defaults_flags.rc", ".servers[1].tracepolls"): (False, True),
    # `bad-header reject` is fetchmail's zero value, so it cannot override
    # `defaults bad-header accept`; pyfetch lets the entry's own setting win.
    ("defaults_flags.rc", ".servers[1].badheader"): (False, True),
    # fetchmail 6.4 is built without POP2 and shows the protocol as "unknown?!?"; pyfetch
    # shows what the file says and refuses to poll with it.
    ("man_multiple_servers.rc", ".servers[1].protocol"): ("POP2", "unknown?!?"),
    ("man_noise_words.rc", ".servers[1].protocol"): ("POP2", "unknown?!?"),
    ("protocols_all.rc", ".servers[2].protocol"): ("POP2", "unknown?!?"),
    ("protocols_all.rc", ".servers[3].protocol"): ("POP2", "unknown?!?"),
}

# What depends on who runs the test, not on the file: user name, home, host.
_HOST_DEPENDENT = {"idfile"}


def run_pyfetch(rcfile: Path, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "FETCHMAILUSER": TEST_USER,
        "LC_ALL": "C",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "fetcher", "-f", str(rcfile), *args],
        cwd=rcfile.parent,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="surrogateescape",
        timeout=60,
        check=False,
    )


def rendered(value: Any, key: str = "") -> Any:
    """pyfetch's JSON value as fetchmail would print it (its visbuf escaping)."""
    if isinstance(value, str):
        return visbuf_localname(value) if key == "localnames" else visbuf(value)
    if isinstance(value, list):
        if key == "localnames":
            return [
                [visbuf_localname(v[0]), visbuf(v[1])] if isinstance(v, list) else rendered(v, key)
                for v in value
            ]
        return [rendered(v) for v in value]
    if isinstance(value, dict):
        return {k: rendered(v, k) for k, v in value.items()}
    return value


def differences(ours: Any, theirs: Any, path: str = "") -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}
    if isinstance(ours, dict) and isinstance(theirs, dict):
        if list(ours) != list(theirs):
            out[path + " (keys)"] = (list(ours), list(theirs))
        for key in ours.keys() & theirs.keys():
            out.update(differences(ours[key], theirs[key], f"{path}.{key}"))
    elif (
        isinstance(ours, list)
        and isinstance(theirs, list)
        and len(ours) == len(theirs)
        and all(isinstance(v, dict) for v in ours + theirs)
    ):
        for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            out.update(differences(a, b, f"{path}[{index}]"))
    elif ours != theirs:
        out[path] = (ours, theirs)
    return out


def _all_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _all_strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _all_strings(v)]
    return []


@pytest.mark.usefixtures("need_fetchmail")
@pytest.mark.parametrize("rcfile", GOOD, ids=lambda p: p.name)
def test_good_files_dump_like_fetchmail(rcfile: Path, tmp_path: Path) -> None:
    data = rcfile.read_bytes()
    reference = fetchmail_configdump(data, tmp_path)
    assert reference.exit_code == 0, reference.describe()
    assert reference.config is not None, reference.stdout

    ours_file = tmp_path / "fetchmailrc"  # the same path, so relative paths resolve alike
    result = run_pyfetch(ours_file, "--configdump", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    ours = json.loads(result.stdout)
    assert all(visbuf_is_exact(s) for s in _all_strings(ours)), "corpus strings must be ASCII"

    for key in _HOST_DEPENDENT:
        assert isinstance(ours[key], str) and isinstance(reference.config[key], str)
        ours[key] = reference.config[key] = None
    found = differences(rendered(ours), reference.config)
    expected = {
        path: values for (name, path), values in KNOWN_DEVIATIONS.items() if name == rcfile.name
    }
    assert found == expected


@pytest.mark.usefixtures("need_fetchmail")
@pytest.mark.parametrize("rcfile", BAD, ids=lambda p: p.name)
def test_bad_files_are_refused_like_fetchmail(rcfile: Path, tmp_path: Path) -> None:
    data = rcfile.read_bytes()
    reference = fetchmail_configdump(data, tmp_path)
    assert reference.exit_code == 5, reference.describe()

    result = run_pyfetch(tmp_path / "fetchmailrc", "--configdump", home=tmp_path / "home")
    assert result.returncode == 5
    assert result.stdout == ""
    expected = EXPECTED_ERRORS[rcfile.name]
    last_line = result.stderr.strip().splitlines()[-1]
    if expected["line"] is None:
        # fetchmail names no place for these; pyfetch says the same thing, maybe with one
        assert expected["message"].removeprefix("fetchmail: ") in last_line
        return
    prefix = f"pyfetch:{tmp_path / 'fetchmailrc'}:{expected['line']}: "
    assert last_line.startswith(prefix), last_line
    ours = last_line.removeprefix(prefix)
    ours_message = ours.rpartition(" at ")[0]
    if ours_message in ("unterminated quoted string", "backslash at end of file"):
        return  # pyfetch's own, clearer message for these, at the same line
    assert ours == f"{expected['message']} at {expected['token']}"


@pytest.mark.usefixtures("need_fetchmail")
@pytest.mark.parametrize("rcfile", STRICTER, ids=lambda p: p.name)
def test_stricter_files_are_refused_by_pyfetch_only(rcfile: Path, tmp_path: Path) -> None:
    data = rcfile.read_bytes()
    reference = fetchmail_configdump(data, tmp_path)
    assert reference.exit_code == 0, reference.describe()
    result = run_pyfetch(tmp_path / "fetchmailrc", "--configdump", home=tmp_path / "home")
    assert result.returncode == 5
    promised = next(
        line.removeprefix("# pyfetch: ") for line in data.decode().splitlines()
        if line.startswith("# pyfetch: ")
    )
    expected = promised.replace("<rcfile>", str(tmp_path / "fetchmailrc"))
    assert result.stderr.strip().splitlines()[-1] == f"pyfetch:{expected}"


@pytest.mark.usefixtures("need_fetchmail")
@pytest.mark.parametrize("rcfile", BROADER, ids=lambda p: p.name)
def test_broader_files_are_accepted_by_pyfetch_only(rcfile: Path, tmp_path: Path) -> None:
    """IDLE on several folders and accounts: fetchmail's IDLE takes over the process, pyfetch
    gives each idle folder its own connection."""
    data = rcfile.read_bytes()
    reference = fetchmail_configdump(data, tmp_path)
    assert reference.exit_code == 5, reference.describe()
    refusal = next(
        line.strip("# ").strip() for line in data.decode().splitlines()
        if line.startswith("#   fetchmail: ")
    )
    assert significant_stderr(reference.stderr)[-1] == refusal, reference.describe()
    result = run_pyfetch(tmp_path / "fetchmailrc", "--configdump", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ROOT_WARNING
    users = [u for s in json.loads(result.stdout)["servers"] for u in s["users"]]
    assert any(u["idle"] for u in users)


@pytest.mark.usefixtures("need_fetchmail")
def test_idle_with_another_folder_on_the_command_line_is_accepted(tmp_path: Path) -> None:
    argv = ["--idle", "-r", "Archive"]
    reference = fetchmail_configdump(_CLI_RC, tmp_path, args=argv)
    # fetchmail: one folder of one account at most
    assert reference.exit_code == 5, reference.describe()
    result = run_pyfetch(tmp_path / "fetchmailrc", "--configdump", *argv, home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    users = [u for s in json.loads(result.stdout)["servers"] for u in s["users"]]
    # -r adds to a user's own folders, as in fetchmail
    assert [(u["idle"], u["mailboxes"]) for u in users] == [
        (True, ["Mail", "Archive"]), (True, ["Archive"])
    ]


@pytest.mark.usefixtures("need_fetchmail")
def test_sample_rcfile_dumps_like_fetchmail(tmp_path: Path) -> None:
    data = (ROOT / "sample.fetchmailrc").read_bytes()
    reference = fetchmail_configdump(data, tmp_path)
    assert reference.exit_code == 0, reference.describe()
    result = run_pyfetch(tmp_path / "fetchmailrc", "--configdump", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    ours = json.loads(result.stdout)
    assert reference.config is not None, reference.stdout
    ours["idfile"] = reference.config["idfile"] = None
    assert differences(rendered(ours), reference.config) == {}
    assert ours["servers"][0]["users"][0]["remote"] == "bob"


COMMAND_LINES = [
    ["-k"],
    ["-K", "-a", "-F", "-n"],
    ["-S", "mx1,mx2/2525"],
    ["-r", "INBOX,Sent", "-r", "Archive"],
    ["-Z", "571,550"],
    ["-l", "0", "-B", "5", "-b", "3", "-e", "2", "-w", "60"],
    ["-p", "imap", "-P", "993", "--ssl", "--sslproto", "tls1.2+"],
    ["-p", "kpop"],
    ["-t", "0"],
    ["-t", "45", "-E", "X-Original-To", "-Q", "virt-"],
    ["-u", "alice", "-m", "procmail -d %T"],
    ["--bsmtp", "out.bsmtp", "-D", "example.org", "--smtpname", "a@example.org"],
    ["--lmtp", "-S", "/var/run/lmtp"],
    ["--nosslcertck", "--sslcertfile", "ca.pem", "--sslcommonname", "mx"],
    ["--auth", "cram-md5", "--tracepolls", "--bad-header", "accept", "-U"],
    ["--plugin", "nc %h %p", "--plugout", "nc localhost 25", "--principal", "p"],
    ["--nobounce", "--nosoftbounce", "--invisible", "--showdots", "--postmaster", "pm"],
    ["-d", "60", "-i", "ids", "--pidfile", "pid"],
    ["-c", "-d", "60"],
    ["--fetchsizelimit", "1", "--fastuidl", "0", "--limitflush"],
    ["-I", "eth0/10.0.0.1/255.0.0.0", "-M", "ppp0"],
    ["other.host.example"],
    ["alias.example.org"],
    ["--lmtp"],  # refused by both: the LMTP listener would be on the SMTP port
    ["--lmtp", "-S", "/var/run/lmtp"],  # refused by both: -S is added to `smtphost mta`
]
_CLI_RC = (
    b"set daemon 300\n"
    b"poll mail.example.org proto pop3 aka alias.example.org\n"
    b"  user bob there is bob here password secret limit 7 smtphost mta folder Mail\n"
    b"skip other.host.example proto imap user carol password pw antispam 554\n"
)


@pytest.mark.usefixtures("need_fetchmail")
@pytest.mark.parametrize("argv", COMMAND_LINES, ids=" ".join)
def test_command_line_overrides_like_fetchmail(argv: list[str], tmp_path: Path) -> None:
    reference = fetchmail_configdump(_CLI_RC, tmp_path, args=argv)
    result = run_pyfetch(tmp_path / "fetchmailrc", "--configdump", *argv, home=tmp_path / "home")
    assert result.returncode == reference.exit_code, (
        f"pyfetch's stderr:\n{result.stderr}\n{reference.describe()}"
    )
    if reference.exit_code != 0:
        theirs = significant_stderr(reference.stderr)[-1].removeprefix("fetchmail: ")
        assert result.stderr.strip().splitlines()[-1].removeprefix("pyfetch: ") == theirs
        return
    ours = json.loads(result.stdout)
    assert reference.config is not None, reference.stdout
    ours["idfile"] = reference.config["idfile"] = None
    assert differences(rendered(ours), reference.config) == {}


# Files whose -V text differs for the reasons in KNOWN_DEVIATIONS (the same fetchmail bugs),
# plus server_numbers.rc, where fetchmail prints negative numbers as they were written
# ("Poll interval is -5 seconds") and pyfetch treats them as none.
VERSION_DEVIATIONS = {name for name, _ in KNOWN_DEVIATIONS} | {"server_numbers.rc"}


def _explanation(text: str, program: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Taking options from"))
    return [line.replace(f"{program} will ", "WILL ") for line in lines[start:]]


# -V says where a run's output really goes; where that is not what fetchmail's sentence says,
# pyfetch says so in a sentence of its own (fetcher.logsetup's Outputs.describe, describe.py).
PYFETCH_ONLY_PREFIXES = (
    "Logfile lines will start with the time.",
    "Errors will be logged via syslog",
    "Syslog socket ",
)
INSTEAD_OF_FETCHMAILS: dict[str, str] = {}


def _as_fetchmail_would(ours: list[str], theirs: list[str]) -> tuple[list[str], list[str]]:
    """Both explanations with pyfetch's own sentences about its output set aside."""
    ours = [line for line in ours if not line.startswith(PYFETCH_ONLY_PREFIXES)]
    return ours, [INSTEAD_OF_FETCHMAILS.get(line, line) for line in theirs]


@pytest.mark.usefixtures("need_fetchmail")
@pytest.mark.parametrize(
    "rcfile", [p for p in GOOD if p.name not in VERSION_DEVIATIONS], ids=lambda p: p.name
)
@pytest.mark.parametrize("verbose", [[], ["-v"]], ids=["", "verbose"])
def test_version_explains_like_fetchmail(rcfile: Path, verbose: list[str], tmp_path: Path) -> None:
    """-V's account of the configuration is fetchmail's, sentence for sentence."""
    reference = fetchmail_configdump(rcfile.read_bytes(), tmp_path, args=["-V", *verbose])
    assert reference.exit_code == 0, reference.describe()
    theirs = _explanation(reference.stdout, "Fetchmail")
    result = run_pyfetch(tmp_path / "fetchmailrc", "-V", *verbose, home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    ours, theirs = _as_fetchmail_would(_explanation(result.stdout, "pyfetch"), theirs)
    if verbose:  # fetchmail shows the password here; pyfetch shows none
        theirs = [re.sub(r'^  Password = ".*"\.$', '  Password = "*".', line) for line in theirs]
    assert ours == theirs
