"""`plugin` and `plugout`: a command whose standard input and output are the connection.

The command is run as fetchmail runs it (socket.c, handle_plugin): `%h` and `%p` anywhere in
it are replaced by the host and the service, the result is split at white space and run with
execvp, without a shell (quotes, `$` and `~` are ordinary characters, and a command that works
under fetchmail works the same here), with one end of a socketpair as both its standard input
and its standard output. Its standard error is ours, so that ssh can say what went wrong.

Our end is an ordinary stream socket: the drivers and the SMTP client read and write it, time
out on it and put TLS on it (`ssl`, STARTTLS) exactly as on a TCP connection, so every rule
of a socket holds for a plugin too.

Unlike fetchmail, which leaves its plugins to end when they will, the command is made to end
when its connection is done: it is given a moment to go after our end is closed, then
SIGTERM, then SIGKILL, so that a command that hangs does not outlive its poll.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
from dataclasses import dataclass

GRACE = 2.0  # seconds a command has to end on its own once its connection is closed
_SPACE = re.compile(r"[ \t\n\v\f\r]+")  # C's isspace() in the C locale, as fetchmail splits
_TOKEN = re.compile(r"%([hp])")


def plugin_argv(command: str, host: str, service: str) -> list[str]:
    """The command's arguments: `%h` is the host and `%p` the service, wherever they stand
    (fetchmail's man page asks for white space around them, its code does not), then split
    at white space."""
    expanded = _TOKEN.sub(lambda m: host if m.group(1) == "h" else service, command)
    return [word for word in _SPACE.split(expanded) if word]


def describe(command: str, host: str, service: str) -> str:
    """fetchmail's -v line for a plugin being started (its words)."""
    return f"running {command} (host {host} service {service})"


@dataclass
class PluginProcess:
    """A running plugin command; `command` as configured, for messages."""

    what: str  # "plugin" or "plugout"
    command: str
    process: subprocess.Popen[bytes]

    def exit_note(self, wait: float = 0.5) -> str:
        """How the command ended, for a message about a connection it closed ("" if it is
        still running after `wait` seconds): it usually exits as it closes its end."""
        try:
            status = self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return ""
        if status < 0:
            return f" ({self.what} command killed by signal {-status})"
        return f" ({self.what} command exited with status {status})"

    def finish(self, grace: float = GRACE) -> None:
        """Let the command end now that its connection is closed: it has `grace` seconds to
        go on its own (ssh, nc and imapd do at end of input), then SIGTERM, then SIGKILL.
        Never raises."""
        process = self.process
        for signal_it in (None, process.terminate, process.kill):
            try:
                if signal_it is not None:
                    signal_it()
                process.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue
            except OSError:  # gone already
                return

    def finish_in_background(self) -> None:
        """finish() on a thread of its own, for a caller that must not wait (the event loop).
        Not a daemon thread: the interpreter waits for it, so no command outlives the run."""
        if self.process.poll() is None:
            threading.Thread(target=self.finish, name=f"end {self.what}").start()


def start(what: str, command: str, host: str, service: str) -> tuple[socket.socket, PluginProcess]:
    """Run `command` on a socketpair; our end (blocking, no timeout set) and the process.
    OSError if it cannot be run, its text naming the command."""
    argv = plugin_argv(command, host, service)
    if not argv:
        raise OSError(f"the {what} command is empty")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = subprocess.Popen(
            argv, stdin=theirs.fileno(), stdout=theirs.fileno(), close_fds=True
        )
    except OSError as err:
        ours.close()
        reason = err.strerror or str(err)
        raise OSError(f'cannot run {what} "{command}": {argv[0]}: {reason}') from None
    finally:
        # Closed on our side at once, so that we see end of input when the command ends.
        theirs.close()
    return ours, PluginProcess(what, command, process)
