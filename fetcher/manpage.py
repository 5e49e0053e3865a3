"""pyfetch(1): the manual page, made from the option specs and from README.md and SECURITY.md.

The OPTIONS section comes from `fetcher.options.OPTIONS`, the same specs that make the getopt
tables and `--help`; the longer sections are README.md's and SECURITY.md's own text, converted
from Markdown to roff, so that the page and those files cannot say different things. Only what
has no other home (NAME, SYNOPSIS, ENVIRONMENT, FILES, SEE ALSO) is written here.

The page is generated in the source tree and committed as man/pyfetch.1, which the package
installs as share/man/man1/pyfetch.1; tests/test_manpage.py fails when the committed page is
not what this module makes now. To make it again:

    python -m fetcher.manpage -o man/pyfetch.1

The Markdown converter knows what those files use and no more: `#` headings, paragraphs,
`-` and `1.` lists, fenced and indented code blocks, tables, and `code`, **bold**, *italic* and
[links](url) inline.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fetcher import __version__
from fetcher.exitcodes import ExitCode
from fetcher.options import OPTIONS, PROG, OptionSpec

SOURCE_ROOT = Path(__file__).resolve().parent.parent
COMMITTED_PAGE = SOURCE_ROOT / "man" / "pyfetch.1"


class ManpageError(Exception):
    """README.md or SECURITY.md no longer has what the page is made from."""


# --------------------------------------------------------------------------- inline text

_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# A hyphen that starts a word is an option's (`-d0`, `--parallel`): roff's \- keeps it the
# ASCII character that can be copied into a shell; a plain - may be shown as a typographic
# hyphen. Hyphens inside words ("read-only") stay as they are.
_OPTION_HYPHENS = re.compile(r"(?:^|(?<=[\s(\[/\"']))--?")
_INLINE = re.compile(
    r"`(?P<code>[^`]+)`"
    r"|\*\*(?P<bold>.+?)\*\*"
    r"|(?<![\w*])\*(?P<italic>[^*\s](?:[^*]*[^*\s])?)\*(?![\w*])"
    r"|\[(?P<link>[^\]]+)\]\((?P<url>[^)\s]+)\)"
)


def _escape(text: str, *, literal: bool = False) -> str:
    """roff text for `text`: backslashes escaped, non-ASCII as \\[uXXXX] (an ASCII page reads
    the same under any locale and man implementation), option hyphens as \\-, and every hyphen
    in `literal` text (code), which is meant to be typed."""
    text = text.replace("\\", "\\e")
    if literal:
        text = text.replace("-", "\\-")
    else:
        text = _OPTION_HYPHENS.sub(lambda m: "\\-" * len(m.group()), text)
    return _NON_ASCII.sub(lambda m: f"\\[u{ord(m.group()):04X}]", text)


def inline(text: str) -> str:
    """One paragraph's Markdown inline markup as roff: `code` and **bold** in bold, *x* in
    italic, [text](url) as text <url>. Fonts are not nested: markup inside bold is dropped."""
    out: list[str] = []
    pos = 0
    for match in _INLINE.finditer(text):
        out.append(_escape(text[pos : match.start()]))
        if match.group("code") is not None:
            out.append(rf"\fB{_escape(match.group('code'), literal=True)}\fR")
        elif match.group("bold") is not None:
            out.append(rf"\fB{_escape(match.group('bold').replace('`', ''))}\fR")
        elif match.group("italic") is not None:
            out.append(rf"\fI{_escape(match.group('italic'))}\fR")
        else:
            out.append(f"{_escape(match.group('link'))} <{_escape(match.group('url'))}>")
        pos = match.end()
    out.append(_escape(text[pos:]))
    return "".join(out)


def _text_lines(roff: str) -> list[str]:
    """A filled paragraph as source lines of a readable length. Any space may end a line in
    fill mode; a line must not start with a control character (. or ')."""
    lines = textwrap.wrap(roff, width=78, break_long_words=False, break_on_hyphens=False)
    return [_text_line(line) for line in lines]


def _text_line(line: str) -> str:
    # \& (a zero-width nothing) keeps a leading . or ' from being read as a request
    return rf"\&{line}" if line.startswith((".", "'")) else line


def _macro_arg(text: str) -> str:
    # a macro argument in double quotes; a quote inside is written as roff's \(dq
    return '"' + text.replace('"', r"\(dq") + '"'


# --------------------------------------------------------------------------- blocks


_FENCE = re.compile(r"^\s*```")
_BULLET = re.compile(r"^([-*]) +")
_NUMBERED = re.compile(r"^(\d+)\. +")
_TABLE_RULE = re.compile(r"^:?-+:?$")


def _starts_block(line: str) -> bool:
    return bool(
        _FENCE.match(line)
        or line.startswith("#")
        or line.lstrip().startswith("|")
        or _BULLET.match(line)
        or _NUMBERED.match(line)
    )


def _table_cells(line: str) -> list[str]:
    # split on the | that are not inside `code`
    cells: list[str] = []
    current = ""
    in_code = False
    for char in line.strip().strip("|"):
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            cells.append(current.strip())
            current = ""
        else:
            current += char
    cells.append(current.strip())
    return cells


def _code_block(lines: Iterable[str], opener: list[str]) -> list[str]:
    out = [*opener, ".RS 4", ".nf"]
    for line in lines:
        out.append(_text_line(_escape(line.expandtabs().rstrip(), literal=True)))
    return [*out, ".fi", ".RE"]


def markdown_to_roff(text: str, *, paragraph: str = ".PP", first: str | None = ".PP") -> list[str]:
    """Markdown blocks as man(7) source lines.

    `paragraph` starts each paragraph; `first` the first one (None: none, as right after a .TP
    tag). Headings become .SS: the caller decides where sections begin.
    """
    lines = textwrap.dedent(text).strip("\n").split("\n")
    out: list[str] = []
    index = 0

    def opener() -> list[str]:
        macro = paragraph if out else first
        return [] if macro is None else [macro]

    while index < len(lines):
        line = lines[index]
        if not line.strip():
            index += 1
            continue
        if _FENCE.match(line):
            end = index + 1
            while end < len(lines) and not _FENCE.match(lines[end]):
                end += 1
            out += _code_block(lines[index + 1 : end], opener())
            index = end + 1
        elif line.startswith("#"):
            out.append(".SS " + _macro_arg(line.lstrip("#").strip()))
            index += 1
        elif line.startswith("    "):
            end = index
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            block = [raw[4:] for raw in lines[index:end]]
            while block and not block[-1].strip():
                block.pop()
            out += _code_block(block, opener())
            index = end
        elif line.lstrip().startswith("|"):
            end = index
            while end < len(lines) and lines[end].lstrip().startswith("|"):
                end += 1
            rows = [_table_cells(row) for row in lines[index:end]]
            rules = [all(_TABLE_RULE.match(cell) for cell in cells) for cells in rows]
            for number, cells in enumerate(rows):
                if rules[number]:
                    continue
                if number == 0 and len(rows) > 1 and rules[1]:  # a header row: in bold
                    cells = [f"**{cell}**" for cell in cells]
                tag = _text_line(inline(cells[0]))
                out += [".TP", tag, *_text_lines(inline(" ".join(cells[1:])))]
            index = end
        elif _BULLET.match(line) or _NUMBERED.match(line):
            # items until a line that is neither an item, its indented continuation, nor a
            # blank line between items
            while index < len(lines):
                item = lines[index]
                bullet = _BULLET.match(item)
                numbered = _NUMBERED.match(item)
                if not (bullet or numbered):
                    if not item.strip() and index + 1 < len(lines) and (
                        _BULLET.match(lines[index + 1]) or _NUMBERED.match(lines[index + 1])
                    ):
                        index += 1
                        continue
                    break
                head = bullet or numbered
                assert head is not None
                mark = r"\(bu 2" if bullet else f"{head.group(1)}. 4"
                parts = [item[head.end() :].strip()]
                index += 1
                while index < len(lines) and lines[index].startswith(" ") and lines[index].strip():
                    parts.append(lines[index].strip())
                    index += 1
                out += [f".IP {mark}", *_text_lines(inline(" ".join(parts)))]
        else:
            parts = [line.strip()]
            index += 1
            while index < len(lines) and lines[index].strip() and not _starts_block(lines[index]):
                parts.append(lines[index].strip())
                index += 1
            out += opener() + _text_lines(inline(" ".join(parts)))
    return out


# --------------------------------------------------------------------------- Markdown files


@dataclass(frozen=True)
class Document:
    """A Markdown file cut at its `## ` headings."""

    name: str
    preamble: str  # between the `# ` title and the first `## `
    sections: dict[str, str]  # heading -> body

    @classmethod
    def parse(cls, name: str, text: str) -> Document:
        preamble: list[str] = []
        sections: dict[str, list[str]] = {}
        current = preamble
        in_fence = False
        for line in text.split("\n"):
            if _FENCE.match(line):
                in_fence = not in_fence
            if not in_fence and line.startswith("## "):
                current = sections.setdefault(line[3:].strip(), [])
            elif not in_fence and line.startswith("# ") and current is preamble:
                continue  # the title
            else:
                current.append(line)
        return cls(
            name,
            "\n".join(preamble).strip("\n"),
            {heading: "\n".join(body).strip("\n") for heading, body in sections.items()},
        )

    def section(self, starting: str) -> str:
        """The one section whose heading starts with `starting` (any case)."""
        found = [h for h in self.sections if h.lower().startswith(starting.lower())]
        if len(found) != 1:
            raise ManpageError(
                f"{self.name} should have one section whose heading starts with {starting!r} "
                f"(it has {len(found)}); its headings: {', '.join(self.sections)}"
            )
        return self.sections[found[0]]

    def first_paragraph(self) -> str:
        return self.preamble.split("\n\n")[0]


# --------------------------------------------------------------------------- sections


def _option_tag(spec: OptionSpec) -> str:
    names = ([rf"\fB\-{_escape(spec.short, literal=True)}\fR"] if spec.short else []) + [
        rf"\fB\-\-{_escape(name, literal=True)}\fR" for name in spec.longs
    ]
    tag = ", ".join(names)
    return tag + (rf" \fI{_escape(spec.arg)}\fR" if spec.arg else "")


def options_section() -> list[str]:
    out = [".SH OPTIONS"]
    out += markdown_to_roff(_OPTIONS_INTRO)
    for spec in OPTIONS:
        out += [".TP", _option_tag(spec)]
        out += markdown_to_roff(spec.man, paragraph=".IP", first=None)
    return out


_OPTIONS_INTRO = """
    pyfetch takes every option of fetchmail 6.4, read the way fetchmail reads them: a long
    option may be shortened to any prefix that is not ambiguous (`--fetchl`), short options
    may be grouped (`-vak`) and an argument attached (`-d0`, `--limit=5000`), and options and
    server names may come in any order (with `POSIXLY_CORRECT` set, the options end at the
    first server name); `--` ends the options. A value given here overrides the rcfile; the
    list options (`-S`, `-r`, `-Z`, `--fetchdomains`) are added to the rcfile's lists.

    An unknown or ambiguous option, a missing argument or a bad value prints the usage on
    standard error and exits 5; fetchmail exits 0 after the first three, which lets a typo in
    a cron line pass unnoticed. The options `--passwordeval`, `--parallel` and `--format` are
    pyfetch's own; the others are fetchmail's.
"""


def _exit_status(text: str) -> list[str]:
    """README's exit code sentence ("fetchmail's table: 0 mail retrieved, 1 no mail, ...") as
    a table, each number checked against fetcher.exitcodes, then the rest of the section."""
    first, _, rest = text.partition("\n\n")
    lead, colon, listing = " ".join(first.split()).partition(": ")
    items: list[str] = []
    depth = 0
    current = ""
    for char in listing.rstrip("."):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    items.append(current.strip())
    pairs = [re.fullmatch(r"(\d+) (.+)", item, re.DOTALL) for item in items]
    codes = [int(pair.group(1)) for pair in pairs if pair]
    if not colon or None in pairs or sorted(codes) != sorted(int(code) for code in ExitCode):
        raise ManpageError(
            "README.md's exit codes section should start with one sentence `...: 0 what, "
            "1 what, ...` naming every code of fetcher/exitcodes.py"
        )
    out = [".PP", *_text_lines(inline(lead + ":"))]
    for pair in pairs:
        assert pair is not None
        out += [".TP", rf"\fB{pair.group(1)}\fR", *_text_lines(inline(pair.group(2)))]
    if rest.strip():
        out += markdown_to_roff(rest)
    return out


def render(readme_text: str, security_text: str) -> str:
    """The whole page, from the option specs and the two files' text."""
    readme = Document.parse("README.md", readme_text)
    security = Document.parse("SECURITY.md", security_text)
    out = [
        r'.\" Made by `python -m fetcher.manpage` from fetcher/options.py, README.md and',
        r'.\" SECURITY.md; edit those and make the page again (see fetcher/manpage.py).',
        f'.TH PYFETCH 1 "" "{PROG} {__version__}" "User Commands"',
        # No hyphenation: option and file names stay whole, as they are typed and searched;
        # and a ragged right edge rather than the wide gaps of justified short lines.
        ".nh",
        ".ad l",
        ".SH NAME",
        rf"{PROG} \- fetch mail from POP3 and IMAP servers for the local MTA, as fetchmail does",
        ".SH SYNOPSIS",
        f".B {PROG}",
        r"[\fIoptions\fR] [\fIserver\fR ...]",
        ".SH DESCRIPTION",
    ]
    out += markdown_to_roff(readme.first_paragraph())
    out += markdown_to_roff(_DESCRIPTION)
    out += markdown_to_roff(readme.section("Status"))
    out += options_section()
    out += [".SH CONFIGURATION", *markdown_to_roff(readme.section("Where the configuration"))]
    out += [".SS TOML", *markdown_to_roff(readme.section("TOML"))]
    out += [".SH IMAP AND OAUTH2", *markdown_to_roff(readme.section("IMAP"))]
    out += [".SH IDLE", *markdown_to_roff(readme.section("IDLE"))]
    out += [".SH DAEMON MODE", *markdown_to_roff(readme.section("Daemon mode"))]
    out += [".SH MULTIDROP", *markdown_to_roff(readme.section("Multidrop"))]
    out += [".SH OUTPUT", *markdown_to_roff(readme.section("Where the output goes"))]
    out += [".SH CERTIFICATES", *markdown_to_roff(readme.section("Certificates"))]
    out += [".SH TUNNELS", *markdown_to_roff(readme.section("Tunnels"))]
    out += [".SH COMPATIBILITY", *markdown_to_roff(readme.section("Compatible with fetchmail"))]
    out += [".SS The mail delivered", *markdown_to_roff(readme.section("The mail delivered"))]
    out += [".SH EXIT STATUS", *_exit_status(readme.section("Exit codes"))]
    out += [".SH ENVIRONMENT", *markdown_to_roff(_ENVIRONMENT)]
    out += [".SH FILES", *markdown_to_roff(_FILES)]
    out += [".SH SECURITY", *markdown_to_roff(_SECURITY_INTRO)]
    out += markdown_to_roff(security.section("What pyfetch promises"))
    out += [".SH SEE ALSO", *markdown_to_roff(_SEE_ALSO)]
    # a heading starts a paragraph already: a .PP right after it is noise (and a lint warning)
    out = [
        line for number, line in enumerate(out)
        if not (line == ".PP" and out[number - 1].startswith((".SH", ".SS")))
    ]
    return "\n".join(out) + "\n"


_DESCRIPTION = """
    pyfetch polls the servers named on the command line, or every `poll` entry of the
    configuration when none is named; it fetches the new messages, hands each one to the local
    MTA (over SMTP or LMTP, to an MDA command, or into a BSMTP file) and deletes it on the
    server only once the MTA has accepted it and its UID is recorded on disk.
"""

_ENVIRONMENT = """
    | `FETCHMAILHOME` | a directory that holds `fetchmailrc` (no dot), `.fetchids` and `fetchmail.pid` instead of the home directory |
    | `HOME_ETC` | taken instead of `HOME` for `.fetchmailrc`, `.fetchids`, `.fetchmail.pid` and `.netrc` |
    | `POSIXLY_CORRECT` | the options end at the first server name, as glibc's getopt does |
    | `FETCHMAIL_INCLUDE_DEFAULT_X509_CA_CERTS` | when not empty, `--sslcertfile` and `--sslcertpath` add to the system's trusted certificates instead of replacing them |
    | `PYFETCH_SYSLOG_SOCKET` | the syslog socket to use where it is not `/dev/log` (see OUTPUT) |
"""  # noqa: E501 - a table row is one line

_FILES = """
    | `~/.fetchmailrc` | the configuration (`$FETCHMAILHOME/fetchmailrc`; see CONFIGURATION) |
    | `~/.fetchids` | the UIDs of the messages delivered, by account and folder (`-i`, `set idfile`) |
    | `~/.fetchids.journal` | each delivery since `.fetchids` was last written, flushed to disk before the message is deleted on the server |
    | `~/.fetchmail.pid` | the lock, shared with fetchmail (`$FETCHMAILHOME/fetchmail.pid`; `/var/run/fetchmail.pid` for root; `--pidfile`) |
    | `~/.netrc` | passwords, by poll name and then `via` name, when the configuration has none |
"""  # noqa: E501 - a table row is one line

_SECURITY_INTRO = """
    What pyfetch promises, from `SECURITY.md` in its source, which also names the test that
    holds each promise and each class of fetchmail's published vulnerabilities:
"""

_SEE_ALSO = """
    **fetchmail**(1), **netrc**(5); `README.md`, `SECURITY.md` and `docs/design.md` in pyfetch's
    source.
"""


# --------------------------------------------------------------------------- command line


def generate(root: Path = SOURCE_ROOT) -> str:
    """The page made from the files of the source tree at `root`."""
    try:
        readme = (root / "README.md").read_text(encoding="utf-8")
        security = (root / "SECURITY.md").read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ManpageError(
            f"{err.filename} not found: make the page in pyfetch's source tree"
        ) from None
    return render(readme, security)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fetcher.manpage",
        description="Print pyfetch(1), made from the option specs, README.md and SECURITY.md.",
    )
    parser.add_argument("-o", "--output", type=Path, help=f"write it here (e.g. man/{PROG}.1)")
    args = parser.parse_args(argv)
    try:
        page = generate()
    except ManpageError as err:
        print(f"python -m fetcher.manpage: {err}", file=sys.stderr)
        return 1
    if args.output is None:
        sys.stdout.write(page)
    else:
        args.output.write_text(page, encoding="ascii")
    return 0


if __name__ == "__main__":
    sys.exit(main())
