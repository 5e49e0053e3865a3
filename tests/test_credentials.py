"""Where passwords come from: rcfile, ~/.netrc (poll name, then via), a prompt, or exit 3."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetcher.config import Environment, build
from fetcher.credentials import for_login, parse_netrc, resolve_passwords
from fetcher.errors import CredentialsError
from fetcher.exitcodes import ExitCode
from fetcher.model import Config
from fetcher.rcfile import parse

ENV = Environment(user="bob", home="/home/bob", fetchmailhome=None, is_root=False)


def config(text: str) -> Config:
    return build(parse(text.encode(), "/home/bob/.fetchmailrc"), ENV)


def passwords(cfg: Config) -> list[str | None]:
    return [user.password for _, user in cfg.selected_accounts()]


NETRC = """\
machine mail.isp.net login alice password for-alice
machine mail.isp.net login bob password for-bob
machine real.host.net password via-password
macdef init
    cd /pub
    machine ignored.net password inside-a-macro

machine ignored.net login bob password after-macro
"""


@pytest.fixture
def netrc(tmp_path: Path) -> Path:
    path = tmp_path / ".netrc"
    path.write_text(NETRC)
    return path


@pytest.mark.parametrize(
    ("rc", "expected"),
    [
        ("poll mail.isp.net user bob password from-rc", "from-rc"),  # the rcfile wins
        ("poll mail.isp.net user bob", "for-bob"),  # login must match the remote user
        ("poll mail.isp.net user carol", None),  # no entry for carol
        ("poll label via real.host.net user carol", "via-password"),  # via, login absent
        ("poll ignored.net user bob", "after-macro"),  # macro bodies are skipped
    ],
)
def test_netrc(rc: str, expected: str | None, netrc: Path) -> None:
    cfg = config(rc)
    if expected is None:
        with pytest.raises(CredentialsError) as info:
            resolve_passwords(cfg, str(netrc), interactive=False)
        assert info.value.exit_code == ExitCode.AUTHFAIL
        assert str(info.value) == "can't find a password for carol@mail.isp.net."
    else:
        resolve_passwords(cfg, str(netrc), interactive=False)
        assert passwords(cfg) == [expected]


def test_prompt_when_interactive(tmp_path: Path) -> None:
    cfg = config("poll mail.isp.net user bob")
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "x" * 100

    resolve_passwords(cfg, str(tmp_path / "none"), prompt=prompt, interactive=True)
    assert asked == ["Enter password for bob@mail.isp.net: "]
    assert passwords(cfg) == ["x" * 63]  # fetchmail reads at most 63 characters


def test_no_password_needed_for_external_auth(netrc: Path) -> None:
    """Nothing is asked and nothing is looked up (fetchmail's NO_PASSWORD): the TLS client
    certificate logs in. .netrc has an entry for bob@mail.isp.net that must stay unused; the
    password is the remote name, the placeholder fetchmail puts there."""
    cfg = config("poll mail.isp.net auth external user bob")
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "typed"

    resolve_passwords(cfg, str(netrc), prompt=prompt, interactive=True)
    assert asked == []
    assert passwords(cfg) == ["bob"]  # not .netrc's "for-bob"


def test_netrc_parser_reads_words_across_lines() -> None:
    (entry,) = parse_netrc("machine\n h\n login\n u password\n p account a\n")
    assert (entry.machine, entry.login, entry.password) == ("h", "u", "p")


def test_passwordeval_output_is_the_password(tmp_path: Path) -> None:
    cfg = config("poll mail.isp.net user bob passwordeval \"printf 's3cret\\\\n'\"")
    resolve_passwords(cfg, str(tmp_path / "none"), interactive=False)
    assert passwords(cfg) == ["s3cret"]


def test_passwordeval_runs_again_for_each_login(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    command = f"echo x >> {counter}; wc -l < {counter}"
    cfg = config(f'poll mail.isp.net user bob passwordeval "{command}"')
    resolve_passwords(cfg, str(tmp_path / "none"), interactive=False)
    server, user = cfg.selected_accounts()[0]
    logins = [for_login(server, user).password for _ in range(2)]
    assert [user.password, *logins] == ["1", "2", "3"]  # a fresh token every time
    assert user.password == "1"  # the copy changes, not the account a driver may be using


def test_account_without_passwordeval_is_used_as_it_is(tmp_path: Path) -> None:
    cfg = config("poll mail.isp.net user bob password secret")
    server, user = cfg.selected_accounts()[0]
    assert for_login(server, user) is user


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("echo leaked-token; exit 4", "passwordeval for bob@mail.isp.net failed with status 4"),
        ("true", "passwordeval for bob@mail.isp.net printed no password"),
    ],
)
def test_failing_passwordeval_names_the_account_not_the_output(
    tmp_path: Path, command: str, message: str
) -> None:
    cfg = config(f'poll mail.isp.net user bob passwordeval "{command}"')
    with pytest.raises(CredentialsError) as info:
        resolve_passwords(cfg, str(tmp_path / "none"), interactive=False)
    assert str(info.value) == message
    assert info.value.exit_code == ExitCode.AUTHFAIL
