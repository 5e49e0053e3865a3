"""Where a password comes from: the rcfile, then ~/.netrc, then a prompt on the terminal.

The order and the messages are fetchmail's: `.netrc` is searched for `machine <poll name>`,
then `machine <via>`; an entry whose `login` names another user does not match. Without a
terminal to ask on, the run ends with exit 3 and `can't find a password for user@server.`
"""

from __future__ import annotations

import dataclasses
import getpass
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from fetcher.errors import CredentialsError
from fetcher.model import Config, ServerOptions, UserOptions

# Authentication that needs no password from us (fetchmail's NO_PASSWORD()).
_PASSWORDLESS_AUTH = frozenset({"ssh", "external", "gssapi", "kerberos_v4", "kerberos_v5", "otp"})
# fetchmail reads at most this many characters at its prompt.
_PROMPT_LIMIT = 63


def needs_password(server: ServerOptions) -> bool:
    return server.auth not in _PASSWORDLESS_AUTH and server.protocol != "ETRN"


@dataclass(frozen=True)
class NetrcEntry:
    machine: str
    login: str | None
    password: str | None


def parse_netrc(text: str) -> list[NetrcEntry]:
    """The `machine` entries of a .netrc (`default` is not supported, `macdef` is skipped)."""
    words = _netrc_words(text)
    entries: list[NetrcEntry] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "machine" and i + 1 < len(words):
            machine = words[i + 1]
            login = password = None
            i += 2
            while i < len(words) and words[i] not in ("machine", "default", "macdef"):
                key = words[i]
                value = words[i + 1] if i + 1 < len(words) else None
                if key == "login":
                    login = value
                elif key == "password":
                    password = value
                i += 2
            entries.append(NetrcEntry(machine, login, password))
        else:
            i += 1
    return entries


def _netrc_words(text: str) -> list[str]:
    words: list[str] = []
    lines = text.splitlines()
    skipping_macro = False
    for line in lines:
        if skipping_macro:
            if not line.strip():
                skipping_macro = False
            continue
        parts = line.split()
        if "macdef" in parts:  # a macro body runs to the next empty line
            words.extend(parts[: parts.index("macdef")])
            skipping_macro = True
            continue
        words.extend(parts)
    return words


def netrc_password(path: str, server: ServerOptions, user: UserOptions) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            entries = parse_netrc(handle.read())
    except OSError:
        return None
    for machine in (server.pollname, server.via):
        if machine is None:
            continue
        for entry in entries:
            matches = entry.machine == machine and entry.login in (None, user.remote)
            if matches and entry.password is not None:
                return entry.password
    return None


Prompt = Callable[[str], str]

# A token helper may have to refresh an OAuth2 token over the network: give it time, not forever.
PASSWORDEVAL_TIMEOUT = 60


def password_from_command(command: str, server: ServerOptions, user: UserOptions) -> str:
    """`passwordeval "cmd"`: the command's standard output, without the final line end.

    Its output is a secret: it goes nowhere but into the login, and errors name the account and
    the command's status, never what it printed.
    """
    account = f"{user.remote}@{server.pollname}"
    try:
        result = subprocess.run(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            timeout=PASSWORDEVAL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CredentialsError(
            f"passwordeval for {account} did not finish in {PASSWORDEVAL_TIMEOUT} seconds"
        ) from None
    if result.returncode != 0:
        raise CredentialsError(
            f"passwordeval for {account} failed with status {result.returncode}"
        )
    password = result.stdout.decode("utf-8", "surrogateescape").rstrip("\r\n")
    if not password:
        raise CredentialsError(f"passwordeval for {account} printed no password")
    return password


def for_login(server: ServerOptions, user: UserOptions) -> UserOptions:
    """The account as the next login needs it. With `passwordeval`, the command runs again
    for every login, because OAuth2 tokens expire within the hour and a watch or a long run
    logs in for days; the fresh password goes into a copy, so that a driver already
    connected keeps the one it redacts from its trace."""
    if user.passwordeval is None:
        return user
    return dataclasses.replace(
        user, password=password_from_command(user.passwordeval, server, user)
    )


def resolve_passwords(
    config: Config,
    netrc_path: str,
    prompt: Prompt | None = None,
    interactive: bool | None = None,
) -> None:
    """Fill in the password of every selected account that needs one, or raise exit 3."""
    if interactive is None:
        interactive = sys.stdin.isatty()
    ask = prompt or getpass.getpass
    for server, user in config.selected_accounts():
        if user.passwordeval is not None:
            # run once now as well, so that a broken command ends the run before any poll
            user.password = password_from_command(user.passwordeval, server, user)
            continue
        if user.password is not None or not needs_password(server):
            continue
        user.password = netrc_password(netrc_path, server, user)
        if user.password is not None:
            continue
        if not interactive:
            raise CredentialsError(
                f"can't find a password for {user.remote}@{server.pollname}."
            )
        answer = ask(f"Enter password for {user.remote}@{server.pollname}: ")
        user.password = answer[:_PROMPT_LIMIT]
