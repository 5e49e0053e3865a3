"""Reference side of the rcfile differential test: run the real fetchmail.

``fetchmail_configdump()`` runs ``fetchmail -f RCFILE --configdump`` in a controlled
environment and turns the printed configuration into JSON-compatible Python values,
so that it can be compared field by field with ``pyfetch --configdump``.

What ``fetchmail --configdump`` prints (6.4.x)
----------------------------------------------
A preamble (``TRUE=1; FALSE=0``, ``os_type = 'linux'``, ``feature_options = (...)``)
followed by ``fetchmailrc = { ... }`` and ``# End of initializer``.  The dictionary is
*almost* a Python literal, but not quite, which is why it is read here with a small
tolerant reader instead of ``ast.literal_eval``:

* Strings are written as ``"%s" % visbuf(value)``.  The text between the quotes is
  **kept verbatim** (escapes are *not* decoded), because visbuf's escapes are not
  Python's: ``\\x01`` is printed as ``\\0x01``, which Python would read as NUL + ``x01``.
  Compare ``visbuf(real_value)`` with the reference string.
* A ``remote = local`` mapping in ``localnames`` is printed as a 2-tuple.  6.4.37
  quotes both elements (``("hurkle", "happy")``); older versions printed the second
  element unquoted, which the reader also accepts (taken verbatim up to the ``)``).
  The *first* element is cut to 128 bytes (USERNAMELEN) *after* visbuf, and so is a
  plain local name; compare it with ``visbuf_localname()``.
* A wildcard (``is *`` / ``to ... *``) appends ``, '*'`` to the localnames list.  An
  empty list would give ``[, '*']``; 6.4.37 never prints that because an empty list
  gets the invoking user first, but the reader tolerates the leading comma.
* ``# Entry for site `POLLNAME' begins:`` comments print the poll name raw (no visbuf),
  so a poll name containing a newline or ``' begins:`` breaks the comment; the reader
  finds the real end of the comment by checking the ``"pollname":"..."`` member that
  follows it.
* ``'antispam'`` is a single-quoted string of space-separated numbers (``'571 550'``).
* Some configurations make fetchmail print a malformed dump (e.g. two ``user`` blocks
  in a ``defaults`` record); the reader raises ``ConfigDumpError`` for text it cannot
  read or for anything left over after the dictionary.

Values are converted as follows: dicts stay dicts, lists and tuples become lists,
``TRUE``/``FALSE`` become ``True``/``False``, ``None`` stays ``None``, numbers become
``int``, strings stay (verbatim) ``str``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FETCHMAIL: str | None = shutil.which("fetchmail")

ROOT_WARNING = "fetchmail: WARNING: Running as root is discouraged."

TEST_USER = "pyfetchtest"

_TIMEOUT_SECONDS = 30

USERNAMELEN = 128


def fetchmail_available() -> bool:
    """True when a runnable fetchmail binary was found on PATH."""
    return FETCHMAIL is not None and os.access(FETCHMAIL, os.X_OK)


@dataclass
class Reference:
    """Outcome of one ``fetchmail --configdump`` run."""

    exit_code: int
    stdout: str
    stderr: str
    config: dict[str, Any] | None

    def describe(self) -> str:
        """For an assertion message: fetchmail's exit code and everything it wrote to stderr."""
        return f"fetchmail exited {self.exit_code}; its stderr:\n{self.stderr or '(empty)'}"


def controlled_env(home: Path, env_extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment built from scratch for running fetchmail with ``home`` as its home.

    FETCHMAILHOME is ``home`` too, so that nothing of the invoking user's (an rcfile, an
    idfile, the pidfile of a non-root fetchmail) is looked at, and the idfile is
    ``home/.fetchids`` as for a pyfetch run with HOME=``home``.  root's pidfile does not
    follow FETCHMAILHOME (fetchmail 6.4.37 uses /var/run/fetchmail.pid), so also pass
    ``private_pidfile_args()``.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "FETCHMAILHOME": str(home),
        "FETCHMAILUSER": TEST_USER,
        "LOGNAME": TEST_USER,
        "USER": TEST_USER,
        "LC_ALL": "C",
    }
    if env_extra:
        env.update(env_extra)
    return env


def private_pidfile_args(directory: Path) -> list[str]:
    """``--pidfile DIRECTORY/fetchmail.pid``, DIRECTORY created private (0700) if missing.

    With it, a fetchmail (or pyfetch) running elsewhere on the machine, whose lock is
    /var/run/fetchmail.pid or ~/.fetchmail.pid, cannot change what the fetchmail under test
    does, and the fetchmail under test cannot disturb it.  Put these arguments before a
    test's own, so that a ``--pidfile`` among those still wins (getopt: the last one does).
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return ["--pidfile", str(directory / "fetchmail.pid")]


def fetchmail_configdump(
    rc_text: str | bytes,
    tmp_path: Path,
    args: Sequence[str] = (),
    env_extra: Mapping[str, str] | None = None,
) -> Reference:
    """Write ``rc_text`` to ``tmp_path/"fetchmailrc"`` (mode 0600) and dump it with fetchmail.

    The environment is built from scratch (``controlled_env``): PATH,
    HOME=FETCHMAILHOME=tmp_path/"home" (created), FETCHMAILUSER/LOGNAME/USER="pyfetchtest",
    LC_ALL=C, plus ``env_extra``; in particular HOME_ETC is unset.  fetchmail's pidfile is
    tmp_path/"fetchmail-run"/fetchmail.pid (``private_pidfile_args``), given before
    ``args``.  The working directory is ``tmp_path`` and stdin is /dev/null.  ``str`` input
    is encoded as UTF-8 (lone surrogates from ``surrogateescape`` decoding map back to their
    bytes); output is decoded the same way.  ``config`` is None unless fetchmail exited 0
    and printed a ``fetchmailrc = {...}`` dictionary; a dictionary that cannot be read
    raises ``ConfigDumpError``.
    """
    if FETCHMAIL is None:
        raise RuntimeError("fetchmail is not installed")
    tmp_path = Path(tmp_path)
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    rcfile = tmp_path / "fetchmailrc"
    data = rc_text.encode("utf-8", "surrogateescape") if isinstance(rc_text, str) else rc_text
    fd = os.open(rcfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(rcfile, 0o600)

    proc = subprocess.run(
        [
            FETCHMAIL, "-f", str(rcfile), "--configdump",
            *private_pidfile_args(tmp_path / "fetchmail-run"), *args,
        ],
        cwd=tmp_path,
        env=controlled_env(home, env_extra),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=_TIMEOUT_SECONDS,
        check=False,
    )
    stdout = proc.stdout.decode("utf-8", "surrogateescape")
    stderr = proc.stderr.decode("utf-8", "surrogateescape")
    config: dict[str, Any] | None = None
    if proc.returncode == 0:
        config = parse_configdump(stdout)
    return Reference(proc.returncode, stdout, stderr, config)


def significant_stderr(stderr: str) -> list[str]:
    """The non-empty stderr lines, minus the warning fetchmail prints when run as root."""
    return [line for line in stderr.splitlines() if line.strip() and line != ROOT_WARNING]


# --------------------------------------------------------------------------- visbuf

_VIS_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def visbuf(s: str) -> str:
    """Render ``s`` the way fetchmail 6.4's configdump prints a string value.

    fetchmail's visbuf() (env.c) walks the C string byte by byte (LC_ALL=C):

    * ``"`` -> ``\\"`` and ``\\`` -> ``\\\\``;
    * printable ASCII 0x20..0x7e -> itself;
    * BEL BS FF LF CR HT VT -> ``\\a \\b \\f \\n \\r \\t \\v``;
    * every other byte below 0x80 (0x01..0x1f except those, and 0x7f DEL) ->
      ``\\0x`` followed by two lowercase hex digits, e.g. 0x01 -> ``\\0x01``,
      ESC -> ``\\0x1b``, DEL -> ``\\0x7f`` (observed with 6.4.37);
    * a NUL ends the string (the rcfile lexer already truncates a value at ``\\0``).

    Bytes >= 0x80 are **not reproducible**: fetchmail indexes its hex-digit table with
    ``(signed char)c >> 4``, a negative index, so the first "digit" is whatever byte lies
    before the table on the stack.  6.4.37 was observed to print ``\\0x`` and then stop
    (a NUL from the stack ends the whole string: ``a\\xe9b`` -> ``a\\0x``), or to emit a
    random byte followed by the low-nibble digit (``\\x80`` -> ``\\0x`` 0x0e ``0``).  Here
    such bytes (non-ASCII characters are taken as their UTF-8 bytes; lone surrogates
    from ``surrogateescape`` as the original byte) are rendered as ``\\0x%02x`` of the
    unsigned byte, i.e. what the code intends; use ``visbuf_is_exact()`` to skip
    comparing those values.
    """
    out: list[str] = []
    for byte in s.encode("utf-8", "surrogateescape"):
        if byte == 0:
            break
        ch = chr(byte)
        if ch in _VIS_ESCAPES:
            out.append(_VIS_ESCAPES[ch])
        elif 0x20 <= byte <= 0x7E:
            out.append(ch)
        else:
            out.append(f"\\0x{byte:02x}")
    return "".join(out)


def visbuf_localname(s: str) -> str:
    """``visbuf(s)`` cut to the 128 bytes that configdump keeps for a local name.

    Applies to the plain entries of ``localnames`` and to the first element of a
    mapping pair; the second element of a pair is not cut.
    """
    return visbuf(s)[:USERNAMELEN]


def visbuf_is_exact(s: str) -> bool:
    """True when fetchmail's rendering of ``s`` is deterministic (``s`` is pure ASCII)."""
    return s.isascii()


# ------------------------------------------------------------------ dump reader

_DICT_START = "fetchmailrc = "
_SITE_COMMENT = "# Entry for site `"
_SITE_COMMENT_END = "' begins:\n"
_ENTRY_HEAD = re.compile(r'[ \t]*\{\n[ \t]*"pollname":"')


class ConfigDumpError(ValueError):
    """The configdump text could not be read."""


class _Reader:
    """A tolerant reader for the dictionary that fetchmail --configdump prints."""

    def __init__(self, text: str, pos: int) -> None:
        self.text = text
        self.pos = pos

    def fail(self, what: str) -> ConfigDumpError:
        line = self.text.count("\n", 0, self.pos) + 1
        snippet = self.text[self.pos : self.pos + 40]
        return ConfigDumpError(f"configdump line {line}: {what} at {snippet!r}")

    def skip_space(self) -> None:
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch in " \t\r\n":
                self.pos += 1
            elif ch == "#":
                self.skip_comment()
            else:
                return

    def skip_comment(self) -> None:
        text = self.text
        if text.startswith(_SITE_COMMENT, self.pos):
            end = self._site_comment_end(self.pos + len(_SITE_COMMENT))
            if end is not None:
                self.pos = end
                return
        end = text.find("\n", self.pos)
        self.pos = len(text) if end < 0 else end + 1

    def _site_comment_end(self, start: int) -> int | None:
        """End of a ``# Entry for site `NAME' begins:`` comment, NAME printed raw.

        The name may contain anything, including newlines and the end marker, so
        every candidate end is checked against the ``"pollname":"..."`` member that
        follows: the right one is where ``visbuf(NAME)`` appears there verbatim.
        """
        text = self.text
        first: int | None = None
        search = start
        while True:
            end = text.find(_SITE_COMMENT_END, search)
            if end < 0:
                return first
            after = end + len(_SITE_COMMENT_END)
            match = _ENTRY_HEAD.match(text, after)
            if match is not None:
                if first is None:
                    first = after
                shown = visbuf(text[start:end])
                if text.startswith(shown + '",\n', match.end()):
                    return after
            search = end + 1

    def peek(self) -> str:
        self.skip_space()
        if self.pos >= len(self.text):
            raise self.fail("unexpected end of dump")
        return self.text[self.pos]

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise self.fail(f"expected {ch!r}")
        self.pos += 1

    def value(self) -> Any:
        ch = self.peek()
        if ch == "{":
            return self.dictionary()
        if ch in "[(":
            return self.sequence("]" if ch == "[" else ")")
        if ch in "\"'":
            return self.string()
        return self.bare()

    def string(self) -> str:
        text = self.text
        quote = text[self.pos]
        start = self.pos + 1
        i = start
        while i < len(text):
            ch = text[i]
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                self.pos = i + 1
                return text[start:i]
            if ch == "\n":
                break
            i += 1
        raise self.fail("unterminated string")

    def bare(self) -> Any:
        text = self.text
        start = self.pos
        i = start
        while i < len(text) and (text[i].isalnum() or text[i] in "_-"):
            i += 1
        word = text[start:i]
        if not word:
            raise self.fail("unexpected character")
        self.pos = i
        if word in ("TRUE", "True"):
            return True
        if word in ("FALSE", "False"):
            return False
        if word == "None":
            return None
        try:
            return int(word)
        except ValueError:
            raise self.fail(f"unknown name {word!r}") from None

    def unquoted_pair_item(self) -> str:
        """The unquoted second element of ``("remote", local)`` in localnames."""
        text = self.text
        start = self.pos
        search = start
        while True:
            end = text.find(")", search)
            if end < 0:
                raise self.fail("unterminated localnames pair")
            rest = text[end + 1 :]
            if rest.startswith(("]", ", (", ', "', ", '*'")):
                self.pos = end
                return text[start:end]
            search = end + 1

    def sequence(self, close: str) -> list[Any]:
        self.pos += 1
        items: list[Any] = []
        while True:
            ch = self.peek()
            if ch == close:
                self.pos += 1
                return items
            if ch == ",":
                # tolerate the "[, '*']" that a lone wildcard produces
                self.pos += 1
                continue
            if close == ")" and len(items) == 1 and ch not in "\"'":
                items.append(self.unquoted_pair_item())
            else:
                items.append(self.value())
            ch = self.peek()
            if ch == ",":
                self.pos += 1
            elif ch != close:
                raise self.fail(f"expected ',' or {close!r}")

    def dictionary(self) -> dict[str, Any]:
        self.pos += 1
        result: dict[str, Any] = {}
        while True:
            ch = self.peek()
            if ch == "}":
                self.pos += 1
                return result
            if ch not in "\"'":
                raise self.fail("expected a key")
            key = self.string()
            self.expect(":")
            result[key] = self.value()
            ch = self.peek()
            if ch == ",":
                self.pos += 1
            elif ch != "}":
                raise self.fail("expected ',' or '}'")


def parse_configdump(stdout: str) -> dict[str, Any] | None:
    """Extract the ``fetchmailrc = {...}`` dictionary from configdump output.

    Returns None when the output contains no such dictionary; raises
    ``ConfigDumpError`` when it does but cannot be read.
    """
    if stdout.startswith(_DICT_START):
        start = 0
    else:
        start = stdout.find("\n" + _DICT_START)
        if start < 0:
            return None
        start += 1
    reader = _Reader(stdout, start + len(_DICT_START))
    if reader.peek() != "{":
        raise reader.fail("expected '{'")
    config = reader.dictionary()
    reader.skip_space()
    if reader.pos != len(stdout):
        raise reader.fail("unexpected text after the configuration dictionary")
    return config
