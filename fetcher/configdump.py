"""`--configdump`: the effective configuration as JSON, shaped like fetchmail's dump.

fetchmail prints a Python dict literal for its old configuration editor; pyfetch prints the
same keys, in the same order and nesting, as JSON (true/false/null), so the two can be compared
field by field by a script.
"""

from __future__ import annotations

import json
from typing import Any

from fetcher.model import Config, GlobalOptions, ServerOptions, UserOptions, dumped_fields


def configdump(config: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in dumped_fields(GlobalOptions):
        out[name] = getattr(config.globals, name)
    out["servers"] = [_server(s) for s in config.servers]
    return out


def _server(server: ServerOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in dumped_fields(ServerOptions):
        if name == "users":
            out["users"] = [_user(u) for u in server.users]
        elif name == "esmtppassword":
            if server.esmtppassword is not None:  # fetchmail shows it only when set
                out[name] = server.esmtppassword
        elif name == "auth" and server.auth == "external":
            pass  # fetchmail's dump has no entry for `auth external`
        else:
            out[name] = _plain(getattr(server, name))
    return out


def _user(user: UserOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in dumped_fields(UserOptions):
        if name == "localnames":
            names: list[Any] = [n if m is None else [n, m] for n, m in user.localnames]
            out[name] = [*names, "*"] if user.wildcard else names
        elif name == "antispam":
            out[name] = " ".join(str(code) for code in user.antispam)
        else:
            out[name] = _plain(getattr(user, name))
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def configdump_json(config: Config) -> str:
    return json.dumps(configdump(config), indent=4) + "\n"
