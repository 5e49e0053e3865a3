"""A TOML configuration, as an alternative to the rcfile, and the converter to it.

The TOML file maps onto the same parse tree as an rcfile, so both go through the same merge
(`defaults`, command line, built-in defaults) and mean exactly the same thing. Keys are the
names `--configdump` prints::

    [set]                       # the rcfile's `set` statements
    poll_interval = 300

    [defaults]                  # optional: fills what entries leave unset
    protocol = "POP3"

    [[poll]]
    name = "mail.isp.net"       # the poll name; `skip = true` for a skip entry
    protocol = "POP3"
    [[poll.user]]
    remote = "bob"
    localnames = ["bob"]        # `is bob here`; ["a", "b"] maps remote a to local b
    password = "hidden"

`envelope = false` is the rcfile's `no envelope`. `pyfetch --configdump --format toml` writes an
rcfile in this form.
"""

from __future__ import annotations

import tomllib
import typing
from collections.abc import Mapping
from typing import Any

from fetcher.config import is_toml_path, resolve_paths
from fetcher.errors import ConfigError
from fetcher.model import GlobalOptions, ServerOptions, UserOptions
from fetcher.rcfile import check_permissions
from fetcher.rcfile import load as load_rcfile
from fetcher.rcfile.parser import Entry, Options, RcFile, UserBlock, Value

# The kinds of value a key takes.
_BOOL, _INT, _STR, _STRS, _INTS, _NAMES, _ENVELOPE = (
    "a boolean",
    "an integer",
    "a string",
    "a list of strings",
    "a list of integers",
    "a list of names or [remote, local] pairs",
    "a string, or false for no envelope",
)
# Model fields that are derived, not written by the user.
_NOT_KEYS = {
    "users", "active", "selected", "line", "pollname", "smtphunt_default", "fetchdomains_default"
}


def _kinds(cls: type[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, hint in typing.get_type_hints(cls).items():
        if name in _NOT_KEYS:
            continue
        text = str(hint)
        if hint is bool:
            out[name] = _BOOL
        elif hint is int:
            out[name] = _INT
        elif "list[int]" in text:
            out[name] = _INTS
        elif "list[tuple" in text:
            out[name] = _NAMES
        elif "list[str]" in text:
            out[name] = _STRS
        else:
            out[name] = _STR
    return out


GLOBAL_KEYS = _kinds(GlobalOptions)
SERVER_KEYS = {**_kinds(ServerOptions), "envelope": _ENVELOPE}
USER_KEYS = _kinds(UserOptions)


class _Where:
    """Names the place of a bad value: `FILE: poll "x" user 1: key`."""

    def __init__(self, path: str, place: str) -> None:
        self.path, self.place = path, place

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.place}: {message}")


def _check_value(where: _Where, key: str, kind: str, value: Any) -> Value:
    ok: bool
    if kind == _BOOL:
        ok = isinstance(value, bool)
    elif kind == _INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == _STR:
        ok = isinstance(value, str)
    elif kind == _ENVELOPE:
        if value is False:
            return None
        ok = isinstance(value, str)
    elif kind == _STRS:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif kind == _INTS:
        ok = isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
    else:  # local names
        ok = isinstance(value, list) and all(_is_name(v) for v in value)
        if ok:
            return [(v, None) if isinstance(v, str) else (v[0], v[1]) for v in value]
    if not ok:
        raise where.error(f"{key} must be {kind}, not {value!r}")
    return value  # type: ignore[no-any-return]


def _is_name(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)
    )


def _options(
    where: _Where, table: Mapping[str, Any], allowed: Mapping[str, str], skip: set[str]
) -> Options:
    out: Options = {}
    for key, value in table.items():
        if key in skip:
            continue
        kind = allowed.get(key)
        if kind is None:
            raise where.error(f"unknown option {key!r}")
        out[key] = _check_value(where, key, kind, value)
    return out


def parse_toml(text: str, path: str) -> RcFile:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    rc = RcFile(path)
    top = _Where(path, "top level")
    for key in doc:
        if key not in ("set", "defaults", "poll"):
            raise top.error(f"unknown table {key!r} (expected set, defaults, poll)")
    rc.globals = _options(_Where(path, "[set]"), _table(top, doc, "set"), GLOBAL_KEYS, set())
    if "defaults" in doc:
        where = _Where(path, "[defaults]")
        options = _options(where, _table(top, doc, "defaults"), {**SERVER_KEYS, **USER_KEYS}, set())
        entry = Entry("defaults", 0)
        entry.server = {k: v for k, v in options.items() if k in SERVER_KEYS}
        user = {k: v for k, v in options.items() if k not in SERVER_KEYS}
        entry.users.append(UserBlock(0, user, explicit=False))
        rc.entries.append(entry)
    polls = doc.get("poll", [])
    if not isinstance(polls, list):
        raise top.error("poll must be an array of tables: [[poll]]")
    for number, poll in enumerate(polls, 1):
        rc.entries.append(_entry(path, number, poll))
    return rc


def _table(where: _Where, doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise where.error(f"{key} must be a table")
    return value


def _entry(path: str, number: int, poll: Any) -> Entry:
    where = _Where(path, f"poll #{number}")
    if not isinstance(poll, dict):
        raise where.error("must be a table")
    name = poll.get("name")
    if not isinstance(name, str):  # "" is a name, as `poll ""` is in an rcfile
        raise where.error("needs a name = \"server\"")
    where = _Where(path, f'poll "{name}"')
    skip = poll.get("skip", False)
    if not isinstance(skip, bool):
        raise where.error(f"skip must be a boolean, not {skip!r}")
    entry = Entry(name, 0, skip=skip)
    entry.server = _options(where, poll, SERVER_KEYS, {"name", "skip", "user"})
    users = poll.get("user", [])
    if not isinstance(users, list):
        raise where.error("user must be an array of tables: [[poll.user]]")
    for index, user in enumerate(users, 1):
        user_where = _Where(path, f'poll "{name}" user #{index}')
        if not isinstance(user, dict):
            raise user_where.error("must be a table")
        entry.users.append(UserBlock(0, _options(user_where, user, USER_KEYS, set())))
    if not entry.users:
        entry.users.append(UserBlock(0, explicit=False))
    return entry


def load(path: str, *, secure: bool = True) -> RcFile | None:
    """Read a TOML configuration; None if there is no such file. Same permission rules."""
    if secure:
        check_permissions(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_toml(text, path)


# -- writing ------------------------------------------------------------------------------


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif 0xD800 <= code <= 0xDFFF:
            # a byte that was not UTF-8 in the rcfile; TOML text is Unicode, so say so
            raise ConfigError(f"{text!r} is not valid UTF-8 and cannot be written as TOML")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _value(value: Value) -> str:
    if value is None:
        return "false"  # only `envelope` can be None in a tree: `no envelope`
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    items: list[str] = []
    for item in value:
        if isinstance(item, tuple):
            name, mapped = item
            items.append(_quote(name) if mapped is None else f"[{_quote(name)}, {_quote(mapped)}]")
        elif isinstance(item, bool) or not isinstance(item, (int, str)):
            raise AssertionError(item)  # pragma: no cover
        else:
            items.append(_value(item))
    return "[" + ", ".join(items) + "]"


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _quote(key)


def _lines(options: Options) -> list[str]:
    return [f"{_key(k)} = {_value(v)}" for k, v in options.items()]


def dumps(rc: RcFile) -> str:
    """Write a parse tree as TOML; paths are made absolute so the file can live anywhere."""
    out = [f"# pyfetch configuration, converted from {rc.path}", ""]
    globals_ = dict(rc.globals)
    resolve_paths(globals_, rc.path)
    if globals_:
        out += ["[set]", *_lines(globals_), ""]
    for index, entry in enumerate(rc.entries):
        server = dict(entry.server)
        resolve_paths(server, rc.path)
        if entry.is_defaults and index == 0:
            merged: Options = dict(server)
            for block in entry.users:
                user = dict(block.options)
                resolve_paths(user, rc.path)
                merged.update(user)
            out += ["[defaults]", *_lines(merged), ""]
            continue
        out += ["[[poll]]", f"name = {_quote(entry.name)}"]
        if entry.skip:
            out.append("skip = true")
        out += [*_lines(server), ""]
        for block in entry.users:
            user = dict(block.options)
            resolve_paths(user, rc.path)
            out += ["[[poll.user]]", *_lines(user), ""]
    return "\n".join(out)


def dumps_config_source(path: str) -> str:
    """`--configdump --format toml`: the rcfile (or TOML file) at `path`, as TOML."""
    tree = load(path) if is_toml_path(path) else load_rcfile(path)
    if tree is None:
        raise ConfigError(f"{path}: no such file")
    return dumps(tree)
