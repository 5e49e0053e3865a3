"""The `.fetchmailrc` front end: find the file, check who may read it, parse it."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable

from fetcher.errors import PermissionsError
from fetcher.rcfile.lexer import KEYWORD_NAMES, tokenize
from fetcher.rcfile.parser import Entry, RcFile, UserBlock, parse

__all__ = ["Entry", "RcFile", "UserBlock", "check_permissions", "load", "parse"]

# Where fetchmail skips the check: stdin, and the conventional "no configuration".
_EXEMPT = ("-", "/dev/null")


def check_permissions(path: str) -> None:
    """Refuse an rcfile that others can read or change, as fetchmail does (exit 6).

    The file holds passwords: group or other read/write bits, or other execute, mean they
    may have leaked. Group execute is allowed, hence the 0710 in the message. A missing file is
    not an error here: fetchmail then runs with no servers configured.
    """
    if path in _EXEMPT:
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PermissionsError(f"lstat: {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PermissionsError(f"File {path} must be a regular file.")
    if st.st_mode & (stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH | stat.S_IXOTH):
        raise PermissionsError(f"File {path} must have no more than -rwx--x--- (0710) permissions.")
    if st.st_uid != os.geteuid():
        raise PermissionsError(f"File {path} must be owned by you.")


def load(
    path: str, *, secure: bool = True, trace: Callable[[str], object] | None = None
) -> RcFile | None:
    """Read and parse the rcfile at `path` ("-" is stdin); None if there is no such file.

    `secure=False` skips the permission check, as `-V` does in fetchmail. `trace` (`-y`) is
    given a line for each token read: its line number and kind, never a string's text, which
    may be a password.
    """
    if secure:
        check_permissions(path)
    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PermissionsError(f"open: {path}: {exc.strerror}") from None
    if trace is not None:
        for token in tokenize(data, path):
            trace(f"{path}:{token.line}: token {KEYWORD_NAMES[token.kind]}")
    return parse(data, path)
