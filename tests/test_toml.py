"""The TOML configuration means what the rcfile means, and the converter loses nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import TESTS

from fetcher.config import Environment, build
from fetcher.configdump import configdump
from fetcher.errors import ConfigError
from fetcher.rcfile import parse
from fetcher.tomlconfig import dumps, parse_toml

ENV = Environment(user="bob", home="/home/bob", fetchmailhome=None, is_root=False)
GOOD = sorted((TESTS / "corpus" / "good").glob("*.rc"))


def effective(tree_source: bytes, path: str) -> dict[str, object]:
    return configdump(build(parse(tree_source, path), ENV, dumping=True))


@pytest.mark.parametrize("rcfile", GOOD, ids=lambda p: p.name)
def test_every_corpus_file_converts_to_identical_configuration(
    rcfile: Path, tmp_path: Path
) -> None:
    original_path = str(tmp_path / "conf" / "fetchmailrc")
    tree = parse(rcfile.read_bytes(), original_path)
    try:
        text = dumps(tree)
    except ConfigError as err:
        # only strings that are not UTF-8 cannot be TOML; then the converter says so
        assert "not valid UTF-8" in str(err)
        return
    # the TOML file lives elsewhere: relative paths were written out absolute
    toml_path = str(tmp_path / "elsewhere" / "pyfetch.toml")
    converted = parse_toml(text, toml_path)
    assert configdump(build(converted, ENV, dumping=True)) == configdump(
        build(tree, ENV, dumping=True)
    )


def test_the_readme_example() -> None:
    text = """
[set]
poll_interval = 180

[defaults]
protocol = "POP3"

[[poll]]
name = "mail.isp.net"

[[poll.user]]
remote = "bob"
localnames = ["bob", ["robert", "bob"]]
password = "hidden"
keep = false
"""
    dump = configdump(build(parse_toml(text, "/home/bob/pyfetch.toml"), ENV))
    assert dump["poll_interval"] == 180
    (server,) = dump["servers"]
    assert server["protocol"] == "POP3"
    (user,) = server["users"]
    assert user["localnames"] == ["bob", ["robert", "bob"]]
    assert (user["remote"], user["password"], user["keep"]) == ("bob", "hidden", False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[poll]]\nname = 'h'\nkep = true\n", "pyfetch.toml: poll \"h\": unknown option 'kep'"),
        ("[[poll]]\nname = 'h'\n[[poll.user]]\nlimit = '5'\n",
         "pyfetch.toml: poll \"h\" user #1: limit must be an integer, not '5'"),
        ("[[poll]]\nprotocol = 'POP3'\n", "pyfetch.toml: poll #1: needs a name = \"server\""),
        ("[sett]\n", "pyfetch.toml: top level: unknown table 'sett'"),
        ("[set]\npoll_interval = true\n",
         "pyfetch.toml: [set]: poll_interval must be an integer, not True"),
        ("[[poll]\n", "pyfetch.toml: "),
    ],
)
def test_bad_toml_names_file_entry_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_toml(text, "/home/bob/pyfetch.toml")
    assert str(info.value).startswith("/home/bob/" + message)
    assert info.value.exit_code == 5


def test_cli_converts_and_reads_back(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from conftest import ROOT

    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        "set daemon 60\ndefaults timeout 30\n"
        "poll mail.isp.net proto pop3 no envelope user bob is bob here password 'p\\x41ss'\n"
    )
    rc.chmod(0o600)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}

    def run(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "fetcher", *args], env=env, capture_output=True, text=True,
            check=False, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    toml_file = tmp_path / "pyfetch.toml"
    toml_file.write_text(run("-f", str(rc), "--configdump", "--format", "toml"))
    toml_file.chmod(0o600)
    assert json.loads(run("-f", str(toml_file), "--configdump")) == json.loads(
        run("-f", str(rc), "--configdump")
    )
    assert "pAss" in toml_file.read_text()
