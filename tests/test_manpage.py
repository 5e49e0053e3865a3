"""pyfetch(1): the committed page is the one the options and README.md make, it reads without
a roff warning, it lists every option of --help, and `pip install` puts it where `man` finds it.

The pages are read through man-db's `man`, as a user reads them. With CI=true a missing `man`
is a failure, never a skip (scripts/install-packages installs man-db and groff-base).
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from fetcher.manpage import COMMITTED_PAGE, SOURCE_ROOT, Document, ManpageError, markdown_to_roff
from fetcher.options import HELP_TEXT

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need_man() -> str:
    man = shutil.which("man")
    if man is None or shutil.which("nroff") is None:
        if IN_CI:
            pytest.fail("man is missing and CI=true forbids skipping; scripts/install-packages")
        pytest.skip("man-db and groff-base are not installed (scripts/install-packages)")
    return man


def _man_env(**extra: str) -> dict[str, str]:
    # A fixed width and locale, no pager, and no MANPATH of the caller's
    env = {k: v for k, v in os.environ.items() if k not in ("MANPATH", "MANOPT", "MANROFFOPT")}
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8", MANWIDTH="80", MANPAGER="cat", PAGER="cat")
    env.update(extra)
    return env


def _render(page: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_need_man(), "--warnings=w", "-l", str(page)],
        capture_output=True, text=True, env=_man_env(), timeout=60, check=False,
    )


@pytest.fixture(scope="module")
def rendered() -> str:
    result = _render(COMMITTED_PAGE)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _section(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(name)
    end = next(i for i in range(start + 1, len(lines)) if re.match(r"[A-Z]", lines[i]))
    return lines[start + 1 : end]


# --------------------------------------------------------------------------- the committed page


def test_the_committed_page_is_what_the_options_and_readme_make_now() -> None:
    made = subprocess.run(
        [sys.executable, "-m", "fetcher.manpage"],
        capture_output=True, text=True, cwd=SOURCE_ROOT, timeout=60, check=False,
    )
    assert made.returncode == 0, made.stderr
    committed = COMMITTED_PAGE.read_text(encoding="ascii")
    if made.stdout != committed:
        diff = "".join(list(difflib.unified_diff(
            committed.splitlines(True), made.stdout.splitlines(True),
            "man/pyfetch.1", "python -m fetcher.manpage",
        ))[:40])
        pytest.fail(f"man/pyfetch.1 is out of date: run scripts/manpage and commit it\n{diff}")


def test_the_page_renders_without_a_warning() -> None:
    result = _render(COMMITTED_PAGE)
    assert result.returncode == 0
    assert result.stderr == ""
    assert result.stdout.startswith("PYFETCH(1)")


def test_the_page_has_the_sections_of_a_manual(rendered: str) -> None:
    headings = [line for line in rendered.splitlines() if re.fullmatch(r"[A-Z][A-Z0-9 ]+", line)]
    assert headings == [
        "NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "CONFIGURATION", "IMAP AND OAUTH2",
        "IDLE", "DAEMON MODE", "MULTIDROP", "OUTPUT", "CERTIFICATES", "COMPATIBILITY",
        "EXIT STATUS",
        "ENVIRONMENT", "FILES",
        "SECURITY", "SEE ALSO",
    ]
    assert "pyfetch - fetch mail from POP3 and IMAP servers" in rendered
    assert "pyfetch [options] [server ...]" in rendered


def _help_rows() -> list[list[str]]:
    """The option names of each --help line, synonyms spelled out: `-p, --proto[col]` gives
    -p, --proto and --protocol."""
    rows = []
    for line in HELP_TEXT.splitlines()[2:]:
        flags = re.match(r"  (-\S, )?(    )?(--\S+)", line)
        if flags is None:
            continue
        names = [flags.group(1)[:2]] if flags.group(1) else []
        bracket = re.fullmatch(r"--(\[(\w+)\])?([\w-]+)(\[(\w+)\])?", flags.group(3))
        assert bracket is not None, line
        head, stem, tail = bracket.group(2) or "", bracket.group(3), bracket.group(5) or ""
        names += sorted({f"--{stem}", f"--{head}{stem}{tail}"})
        rows.append(names)
    return rows


def test_every_option_of_help_has_an_entry_in_options(rendered: str) -> None:
    # an entry's first line: `-p, --protocol, --proto proto`, `--ssl  Use TLS from ...`
    entries = [
        set(re.split(r"[,\s]+", line.strip()))
        for line in _section(rendered, "OPTIONS")
        if re.match(r" {7}-", line)
    ]
    rows = _help_rows()
    assert len(rows) == len(entries)
    for names in rows:
        assert any(set(names) <= entry for entry in entries), names


def test_help_points_at_the_page() -> None:
    assert HELP_TEXT.splitlines()[-1] == "  See pyfetch(1) for the full description (man pyfetch)."


def test_options_are_written_so_they_can_be_typed(rendered: str) -> None:
    # roff's \- : the ASCII hyphen, never a typographic one that a shell would not take
    assert "\u2010" not in rendered and "\u2212" not in rendered  # hyphen, minus sign
    # Debian's groff shows a plain - as ASCII too, others a hyphen: the source must say \-
    source = COMMITTED_PAGE.read_text(encoding="ascii").splitlines()
    bare = [line for line in source if not line.startswith('.\\"')
            and re.search(r"(?:^|[\s(\[/\"'])-", line)]
    assert bare == []
    assert "--passwordeval" in rendered and "-d0" in rendered
    assert "pyfetch -f ~/.fetchmailrc --configdump --format toml > ~/.pyfetch.toml" in rendered


def test_exit_status_is_fetchmails_table(rendered: str) -> None:
    section = "\n".join(_section(rendered, "EXIT STATUS"))
    for code, words in [("0", "mail retrieved"), ("1", "no mail"), ("8", "another instance"),
                        ("13", "fetchlimit reached"), ("23", "internal error")]:
        assert re.search(rf"^ {{7}}{code} +{words}", section, re.MULTILINE), code


def test_readme_text_is_in_the_page(rendered: str) -> None:
    idle = " ".join(" ".join(_section(rendered, "IDLE")).split())
    assert "IDLE is renewed every 28 minutes (servers may drop it after 30)." in idle
    assert "leave them, marked \\Seen once delivered" in rendered


# --------------------------------------------------------------------------- the converter


def test_the_markdown_converter_reads_as_the_markdown_does(tmp_path: Path) -> None:
    markdown = """
        A paragraph with `--parallel 1`, **bold**, *italic*, a \\backslash and a
        `\\Seen` flag, on two lines.

        - an item that goes on
          over two lines
        - a second item

        ```
        .line starting with a dot
        'and a quote
        ```

        | code | meaning |
        |---|---|
        | `7` | server error |
    """
    page = tmp_path / "t.1"
    page.write_text(
        ".TH T 1\n.SH NAME\nt \\- test\n.SH TEXT\n" + "\n".join(markdown_to_roff(markdown))
        + "\n",
        encoding="ascii",
    )
    result = _render(page)
    assert result.stderr == ""
    text = " ".join(result.stdout.split())
    assert ("A paragraph with --parallel 1, bold, italic, a \\backslash and a \\Seen flag, "
            "on two lines.") in text
    assert "• an item that goes on over two lines • a second item" in text
    assert ".line starting with a dot 'and a quote" in text
    assert "code meaning 7 server error" in text


def test_a_readme_section_that_is_gone_is_named() -> None:
    document = Document.parse("README.md", "# T\n\nintro\n\n## Exit codes\n\ntext\n")
    assert document.section("exit codes") == "text"
    with pytest.raises(ManpageError, match=r"README.md should have one section whose heading "
                       r"starts with 'IDLE' \(it has 0\); its headings: Exit codes"):
        document.section("IDLE")


# --------------------------------------------------------------------------- installed


def test_pip_install_puts_the_page_where_man_finds_it(tmp_path: Path) -> None:
    _need_man()
    # Only what a checkout has: build/ and *.egg-info appear in the copy, not in the tree
    source = tmp_path / "src"
    shutil.copytree(
        SOURCE_ROOT / "fetcher", source / "fetcher",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("pyproject.toml", "README.md", "man"):
        copy = shutil.copytree if (SOURCE_ROOT / name).is_dir() else shutil.copy
        copy(SOURCE_ROOT / name, source / name)
    prefix = tmp_path / "venv"
    venv.create(prefix, with_pip=True)
    installed = subprocess.run(
        [str(prefix / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
         "--disable-pip-version-check", str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    page = prefix / "share" / "man" / "man1" / "pyfetch.1"
    assert page.read_bytes() == COMMITTED_PAGE.read_bytes()

    # man-db finds the pages of the programs on PATH under ../share/man: no MANPATH needed
    env = _man_env(PATH=f"{prefix / 'bin'}:/usr/bin:/bin", HOME=str(tmp_path))
    where = subprocess.run(
        ["man", "-w", "pyfetch"], capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )
    assert where.stdout.strip() == str(page), where.stderr
    shown = subprocess.run(
        ["man", "pyfetch"], capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("PYFETCH(1)")
    assert "--parallel n" in shown.stdout
