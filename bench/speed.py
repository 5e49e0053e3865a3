#!/usr/bin/env python3
"""Every speed case at once: pyfetch beside fetchmail on the same private Dovecot and Postfix.

One command runs each case below with pyfetch and with fetchmail (the real one, from PATH), one
after the other on the same servers, and prints per case both wall times, both CPU times, both
peak RSS, the ratios pyfetch/fetchmail, and the limit: the fastest the servers themselves allow.

    1. 2,000 x 4 KB over POP3, `-v -a`
    2. the same, `-a` only
    3. 2,000 x 4 KB over IMAP, `-v -a`
    4. 200 x 1 MB over POP3, `-a`
    5. 1 x 100 MB over POP3, then over IMAP, `-a`
    6. 20 accounts x 100 x 4 KB over POP3, `-a`, with a mute server listed first (a TCP
       listener that accepts and never answers; `timeout 20` on its entry): pyfetch with its
       default --parallel and with --parallel 20; fetchmail polls the entries in turn.

Run as root (the servers drop privileges), with Dovecot, Postfix (and its smtp-source) and
fetchmail installed (scripts/test installs them):

    .venv/bin/python bench/speed.py [--quick] [--cases 1,3] [--no-fetchmail] [--markdown FILE]

`--quick` shrinks the cases for a smoke run (100 x 4 KB, 10 x 1 MB, 1 x 10 MB, 4 accounts x 20
x 4 KB with a 3 s mute timeout). The mute server listens on 127.0.0.2 when it can, a host of
its own as a real dead server would be (pyfetch limits its polls per server host).

How each run is measured. The mailboxes are emptied and seeded afresh, Postfix's Maildir and
queue emptied, and the program started in a private home (its own rcfile, pidfile and
.fetchids; output to a file there) under GNU time. Its exit is collected with os.wait4, which
gives its CPU time (user + system); its peak RSS is GNU time's (see spawn_timed for why); the
servers' own time and memory are not counted. Wall time runs from the start until the
program has exited AND every message is in Postfix's Maildir (the last file's mtime). A run
only counts if the program exited 0, left every mailbox empty, and every seeded message is in
the Maildir exactly once and intact: the stored file, minus the headers prepended in front of
the message's own first line (Postfix's Return-Path, Delivered-To, Received, and the
program's Received), with its LF line ends turned back into CRLF, must hash the same as the
seeded bytes. Each message's body starts with a line beginning with a dot, so dot-stuffing is
checked on both legs.

The limit, per case, is the larger of two floors measured on the same servers just before:

* smtp-source: Postfix's own load generator sending the same number of messages of the same
  size (one of the seeded messages, `-F`) to the same Postfix over one SMTP session (`-d`;
  in case 6 as many sessions at once as there are accounts, since a client polling them side
  by side may deliver over several), timed until all are in the Maildir: what the delivery
  leg costs Postfix.
* drain: a raw client (bench/rawdrain.py) emptying the same mailbox(es) over STLS/STARTTLS
  with every command pipelined: all RETRs in one write (IMAP: one FETCH 1:*), then all DELEs
  (STORE \\Deleted + EXPUNGE): what the fetching leg costs Dovecot.

In case 6 no client can end before the mute server's timeout, so the limit there is also at
least that timeout; the notes give the time at which each program had delivered everything.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(BENCH))

import rawdrain  # noqa: E402  (after the sys.path lines)
from servers.certs import TestCA, make_test_ca  # noqa: E402
from servers.dovecot import Dovecot  # noqa: E402
from servers.postfix import Postfix  # noqa: E402

KB = 1 << 10
MB = 1 << 20
SMTP_SOURCE = Path("/usr/sbin/smtp-source")
GNU_TIME = Path("/usr/bin/time")  # Debian package `time`
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
RUN_TIMEOUT = 1800.0  # seconds for any one program run before it is killed
DELIVERY_TIMEOUT = 300.0  # seconds after a run for Postfix to empty its queue
LINE = 76  # bytes per body line, CRLF included
TIMES = "\u00d7"  # as in README
NONE = "\u2013"  # an en dash: nothing to show


# -- the cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way of running pyfetch in a case (case 6 has two)."""

    label: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    number: int
    protocol: str  # "pop3" or "imap"
    accounts: int
    count: int  # messages per account
    size: int  # bytes per message
    flags: tuple[str, ...]
    mute_timeout: int = 0  # > 0: a mute server is polled first, with this timeout
    variants: tuple[Variant, ...] = (Variant(""),)

    @property
    def total(self) -> int:
        return self.accounts * self.count

    def title(self, variant: Variant | None = None) -> str:
        """E.g. `1. POP3 2,000 x 4 KB -v -a`; `6. POP3 20 x 100 x 4 KB -a, mute first,
        --parallel 20` (with ``variant``, pyfetch's way of running)."""
        what = f"{self.count:,} {TIMES} {human_size(self.size)}"
        if self.accounts > 1:
            what = f"{self.accounts} {TIMES} {what}"
        title = f"{self.number}. {self.protocol.upper()} {what} {' '.join(self.flags)}"
        if self.mute_timeout:
            title += ", mute first"
        if variant is not None and variant.label:
            title += f", {variant.label}"
        return title


def human_size(size: int) -> str:
    if size >= MB and size % MB == 0:
        return f"{size // MB} MB"
    if size >= KB and size % KB == 0:
        return f"{size // KB} KB"
    return f"{size} B"


def make_cases(quick: bool) -> list[Case]:
    if quick:
        small, big_n, huge, accounts, per, mute = 100, 10, 10 * MB, 4, 20, 3
    else:
        small, big_n, huge, accounts, per, mute = 2000, 200, 100 * MB, 20, 100, 20
    va, a = ("-v", "-a"), ("-a",)
    return [
        Case(1, "pop3", 1, small, 4 * KB, va),
        Case(2, "pop3", 1, small, 4 * KB, a),
        Case(3, "imap", 1, small, 4 * KB, va),
        Case(4, "pop3", 1, big_n, 1 * MB, a),
        Case(5, "pop3", 1, 1, huge, a),
        Case(5, "imap", 1, 1, huge, a),
        Case(
            6, "pop3", accounts, per, 4 * KB, a, mute_timeout=mute,
            variants=(
                Variant("default --parallel"),
                Variant(f"--parallel {accounts}", ("--parallel", str(accounts))),
            ),
        ),
    ]  # fmt: skip


# -- messages ----------------------------------------------------------------------------------

_FILLER = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-=+*"


def message(mid: str, index: int, size: int) -> bytes:
    """Exactly ``size`` bytes (unless the headers alone are longer): Message-ID first, a line
    starting with a dot, then numbered CRLF lines that differ from message to message."""
    head = (
        f"Message-ID: <{mid}>\r\nFrom: sender@example.org\r\nTo: bob@mail.isp.net\r\n"
        f"Subject: {mid}\r\n\r\n..{mid} starts with a dot\r\n"
    ).encode()
    remain = size - len(head)
    if remain <= 0:
        return head
    lines, rest = divmod(remain, LINE)
    if rest == 1 and lines:  # a 1-byte line cannot hold a CRLF: make the last one longer
        lines, rest = lines - 1, rest + LINE
    prefix = b"%06d." % index
    width = LINE - 2 - len(prefix) - 8
    filler = _FILLER[:width]
    body = b"".join([b"%s%07d %s\r\n" % (prefix, n, filler) for n in range(lines)])
    tail = (_FILLER * (rest // len(_FILLER) + 1))[: rest - 2] + b"\r\n" if rest >= 2 else b""
    return head + body + tail


@dataclass
class Mail:
    """What a case seeds: each account's messages, and each message's expected digest."""

    boxes: dict[str, list[bytes]]
    expected: dict[bytes, bytes]  # Message-ID value -> sha256 of the message as seeded


def make_mail(case: Case, accounts: Sequence[tuple[str, str]]) -> Mail:
    boxes: dict[str, list[bytes]] = {}
    expected: dict[bytes, bytes] = {}
    index = 0
    for user, _ in accounts:
        box = boxes.setdefault(user, [])
        for n in range(case.count):
            mid = f"c{case.number}{case.protocol}.{user}.{n}@speed.bench"
            data = message(mid, index, case.size)
            index += 1
            box.append(data)
            expected[f"<{mid}>".encode()] = hashlib.sha256(data).digest()
    return Mail(boxes, expected)


class CheckFailed(RuntimeError):
    pass


def check_maildir(postfix: Postfix, expected: dict[bytes, bytes]) -> None:
    """Every expected message in the Maildir exactly once and intact (see the docstring)."""
    seen: Counter[bytes] = Counter()
    problems: list[str] = []
    for path in postfix.message_files():
        data = path.read_bytes()
        start = data.find(b"\nMessage-ID: <")
        header_end = data.find(b"\n\n")
        if data.startswith(b"Message-ID: <"):
            start = 0
        elif start < 0 or (0 <= header_end < start):
            problems.append(f"{path.name}: no Message-ID line in the headers")
            continue
        else:
            start += 1
        added = data[:start].split(b"\n")[:-1]
        if any(line[:1] not in (b" ", b"\t") and b":" not in line for line in added):
            problems.append(f"{path.name}: something other than headers before the message")
            continue
        end = data.index(b"\n", start)
        mid = data[start + len(b"Message-ID: ") : end]
        seen[mid] += 1
        want = expected.get(mid)
        if want is None:
            problems.append(f"{path.name}: unexpected message {mid!r}")
        elif hashlib.sha256(data[start:].replace(b"\n", b"\r\n")).digest() != want:
            problems.append(f"{mid.decode()} arrived altered ({len(data) - start} bytes stored)")
    doubled = [mid.decode() for mid, n in seen.items() if n > 1]
    missing = [mid.decode() for mid in expected if mid not in seen]
    if doubled:
        problems.append(f"{len(doubled)} arrived more than once, e.g. {doubled[0]}")
    if missing:
        problems.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if problems:
        raise CheckFailed("; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))


# -- the servers and the mute listener ---------------------------------------------------------


class MuteServer:
    """A TCP listener that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Its own address, as a separate host would have: pyfetch limits polls per host.
        for host in ("127.0.0.2", "127.0.0.1"):
            try:
                self.sock.bind((host, 0))
                break
            except OSError:
                continue
        self.host, self.port = self.sock.getsockname()
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._open.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        for conn in self._open:
            conn.close()


@dataclass
class Servers:
    base: Path
    ca: TestCA
    dovecot: Dovecot
    postfix: Postfix
    mute: MuteServer

    def accounts(self, case: Case) -> list[tuple[str, str]]:
        if case.accounts == 1:
            return [("bob", "hidden")]
        found = []
        for n in range(case.accounts):
            user, password = f"user{n:02d}", f"secret{n:02d}"
            if self.dovecot.users.get(user) != password:
                self.dovecot.add_user(user, password)
            found.append((user, password))
        return found

    def prepare(self, mail: Mail | None) -> None:
        """Empty every mailbox and Postfix; seed ``mail``."""
        for user in self.dovecot.users:
            self.dovecot.reset(user)
        self.postfix.reset()
        if mail is not None:
            for user, messages in mail.boxes.items():
                for data in messages:  # one at a time: no second copy of the whole box
                    self.dovecot.seed(user, [data])

    def left_on_server(self, mail: Mail) -> int:
        return sum(len(self.dovecot.message_files(user)) for user in mail.boxes)

    def wait_for_postfix(self, count: int) -> float:
        """Wait until Postfix's queue is empty and ``count`` messages are in the Maildir;
        return the mtime of the last one written."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        new = self.postfix.maildir / "new"
        while True:
            with os.scandir(new) as entries:
                found = sum(1 for _ in entries)
            if found >= count and not self.postfix.queued():
                break
            if time.monotonic() > deadline:
                raise CheckFailed(
                    f"Postfix has {found} of {count} messages in the Maildir and "
                    f"{len(self.postfix.queued())} queued after {DELIVERY_TIMEOUT:.0f} s"
                )
            time.sleep(0.005)
        files = self.postfix.message_files()
        if len(files) != count:
            raise CheckFailed(f"{len(files)} messages in the Maildir, expected {count}")
        return max((p.stat().st_mtime for p in files), default=0.0)


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    with tempfile.TemporaryDirectory(prefix="pyfetch-speed-") as tmp:
        base = Path(tmp)
        ca = make_test_ca(base / "ca")
        mute = MuteServer()
        try:
            with Dovecot(ca) as dovecot, Postfix() as postfix:
                yield Servers(base, ca, dovecot, postfix, mute)
        finally:
            mute.close()


# -- running one program -----------------------------------------------------------------------


@dataclass
class Run:
    wall: float = 0.0  # until exited and everything is in the Maildir
    exited: float = 0.0
    delivered: float = 0.0  # the last message written into the Maildir
    cpu: float = 0.0
    maxrss_kb: int = 0
    servers_cpu: float = 0.0  # what the rest of the machine (the servers) used meanwhile
    error: str | None = None


def rcfile(servers: Servers, case: Case, accounts: Sequence[tuple[str, str]], home: Path) -> str:
    host, port = servers.postfix.address
    tls = f"sslcertfile {servers.ca.ca_cert} sslcommonname localhost smtphost {host}/{port}"
    lines = [f"set pidfile {home / 'lock.pid'}"]  # its own lock: other runs are left alone
    if case.mute_timeout:
        lines += [
            f"poll mute.example via {servers.mute.host} service {servers.mute.port}"
            f" proto {case.protocol} timeout {case.mute_timeout}",
            f"  user bob there is bob here password hidden {tls}",
        ]
    service = servers.dovecot.ports[case.protocol]
    for n, (user, password) in enumerate(accounts):
        name = "mail.isp.net" if len(accounts) == 1 else f"mail{n:02d}.isp.net"
        lines += [
            f"poll {name} via 127.0.0.1 service {service} proto {case.protocol}",
            f"  user {user} there is bob here password {password} {tls}",
        ]
    return "\n".join(lines) + "\n"


def spawn_timed(command: list[str], home: Path, env: dict[str, str]) -> tuple[float, Run, int]:
    """Start ``command`` in ``home``, wait for it; (start as wall-clock time, Run, status).

    The CPU time is os.wait4's (user + system of the child and what it reaped). The peak RSS
    is not taken from there: Python starts a child with vfork, and Linux keeps in the child's
    ru_maxrss the peak of the memory it ran in before exec, this process's (tens of MB, and
    hundreds while a case's messages are held). GNU time, a small process that forks the
    program the ordinary way, reports the program's own figure (%M, also from wait4).
    """
    log = home / "output.txt"
    report = home / "rusage.txt"
    report.unlink(missing_ok=True)
    with log.open("wb") as out:
        start_clock = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(GNU_TIME), "-o", str(report), "-f", "%M", *command], env=env, cwd=home,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    timer = threading.Timer(RUN_TIMEOUT, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    exited = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    try:  # GNU time writes "Command exited with non-zero status N" first, then %M
        maxrss_kb = int(report.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        maxrss_kb = 0
    run = Run(exited=exited, cpu=usage.ru_utime + usage.ru_stime, maxrss_kb=maxrss_kb)
    return start_clock, run, proc.returncode


def machine_busy() -> float:
    """CPU seconds the whole machine has spent (all CPUs, all processes, the kernel)."""
    with open("/proc/stat") as stat:
        ticks = [int(n) for n in stat.readline().split()[1:8]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """This process's CPU and its reaped children's (the program, its GNU time, postqueue)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def log_tail(home: Path, lines: int = 15) -> str:
    text = (home / "output.txt").read_text(errors="replace").splitlines()
    return "\n".join(f"    {line}" for line in text[-lines:])


def run_program(
    servers: Servers, case: Case, mail: Mail, accounts: Sequence[tuple[str, str]],
    name: str, command: list[str], home: Path,
) -> Run:
    home.mkdir(parents=True, exist_ok=True)
    servers.prepare(mail)
    rc = home / ".fetchmailrc"
    rc.write_text(rcfile(servers, case, accounts, home))
    rc.chmod(0o600)
    for leftover in (".fetchids", ".fetchids.journal", "lock.pid"):
        (home / leftover).unlink(missing_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C",
        "PYTHONPATH": str(ROOT),
    }  # fmt: skip
    busy, ours = machine_busy(), own_cpu()
    start_clock, run, status = spawn_timed(command, home, env)
    try:
        if status != 0:
            raise CheckFailed(f"exit status {status}")
        last = servers.wait_for_postfix(case.total)
        # the servers' CPU: the machine's, less the program's and this harness's
        run.servers_cpu = max(machine_busy() - busy - (own_cpu() - ours), 0.0)
        left = servers.left_on_server(mail)
        if left:
            raise CheckFailed(f"{left} messages left on the server")
        check_maildir(servers.postfix, mail.expected)
    except CheckFailed as exc:
        run.error = str(exc)
        print(f"  {name} FAILED: {exc}; its output ends with:\n{log_tail(home)}",
              file=sys.stderr, flush=True)
        return run
    run.delivered = last - start_clock
    run.wall = max(run.exited, run.delivered)
    return run


# -- the limit ---------------------------------------------------------------------------------


@dataclass
class Limit:
    smtp_source: float | None = None
    drain: float | None = None
    floor: float = 0.0  # what no client can go under whatever the servers do (case 6)
    errors: list[str] = field(default_factory=list)

    @property
    def value(self) -> float | None:
        known = [t for t in (self.smtp_source, self.drain) if t is not None]
        return max([*known, self.floor]) if known else None


def time_smtp_source(servers: Servers, case: Case, mail: Mail, home: Path) -> float:
    """smtp-source sending as many messages as the case, each as large, until all are in;
    over one session per account."""
    home.mkdir(parents=True, exist_ok=True)
    servers.prepare(None)
    sample = home / "message.txt"  # smtp-source -F appends CRLF to each line itself
    sample.write_bytes(next(iter(mail.boxes.values()))[0].replace(b"\r\n", b"\n"))
    host, port = servers.postfix.address
    command = [
        str(SMTP_SOURCE), "-s", str(case.accounts), "-d", "-m", str(case.total), "-F", str(sample),
        "-M", "localhost", "-f", "sender@example.org", "-t", "bob@localhost", f"{host}:{port}",
    ]  # fmt: skip
    start_clock, run, status = spawn_timed(command, home, {"PATH": "/usr/bin:/bin"})
    if status != 0:
        raise CheckFailed(f"smtp-source exited {status}:\n{log_tail(home)}")
    last = servers.wait_for_postfix(case.total)
    return max(run.exited, last - start_clock)


def time_drain(servers: Servers, case: Case, mail: Mail) -> float:
    """The raw pipelined drain of every account's mailbox, one after the other."""
    servers.prepare(mail)
    drain = rawdrain.DRAINS[case.protocol]
    port = servers.dovecot.ports[case.protocol]
    users = dict(servers.accounts(case))
    start = time.perf_counter()
    for user, messages in mail.boxes.items():
        got = drain(port, str(servers.ca.ca_cert), user, users[user], len(messages))
        if got.messages != len(messages):
            raise CheckFailed(f"drain got {got.messages} of {len(messages)} messages")
    elapsed = time.perf_counter() - start
    left = servers.left_on_server(mail)
    if left:
        raise CheckFailed(f"the drain left {left} messages on the server")
    return elapsed


def measure_limit(servers: Servers, case: Case, mail: Mail, home: Path) -> Limit:
    limit = Limit(floor=float(case.mute_timeout))
    try:
        limit.smtp_source = time_smtp_source(servers, case, mail, home / "smtp-source")
    except (CheckFailed, OSError) as exc:
        limit.errors.append(f"smtp-source: {exc}")
    try:
        limit.drain = time_drain(servers, case, mail)
    except (CheckFailed, OSError, rawdrain.DrainError) as exc:
        limit.errors.append(f"drain: {exc}")
    for error in limit.errors:
        print(f"  limit FAILED: {error}", file=sys.stderr, flush=True)
    return limit


# -- the whole run -----------------------------------------------------------------------------


@dataclass
class Row:
    case: Case
    variant: Variant
    pyfetch: Run | None
    fetchmail: Run | None
    limit: Limit


def seconds(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def ratio(ours: float, theirs: float) -> str:
    if theirs <= 0:
        return NONE
    value = ours / theirs
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


def run_case(
    servers: Servers, case: Case, programs: dict[str, list[str]], base: Path
) -> list[Row]:
    accounts = servers.accounts(case)
    mail = make_mail(case, accounts)
    key = f"case{case.number}-{case.protocol}"
    print(case.title(), file=sys.stderr, flush=True)
    limit = measure_limit(servers, case, mail, base / key)
    print(f"  limit: smtp-source {limit.smtp_source and seconds(limit.smtp_source)} s, "
          f"drain {limit.drain and seconds(limit.drain)} s", file=sys.stderr, flush=True)

    def one(name: str, command: list[str], home: Path) -> Run:
        run = run_program(servers, case, mail, accounts, name, command, home)
        if run.error is None:
            print(f"  {name}: {seconds(run.wall)} s wall (all delivered at "
                  f"{seconds(run.delivered)} s), {seconds(run.cpu)} s CPU, "
                  f"{run.maxrss_kb / 1024:.1f} MB; the servers' CPU meanwhile "
                  f"{seconds(run.servers_cpu)} s", file=sys.stderr, flush=True)
        return run

    ours = [
        one(f"pyfetch {v.label}".strip(), [*programs["pyfetch"], *case.flags, *v.args],
            base / key / f"pyfetch{i}")
        for i, v in enumerate(case.variants)
    ]  # fmt: skip
    theirs = None
    if "fetchmail" in programs:
        theirs = one("fetchmail", [*programs["fetchmail"], *case.flags], base / key / "fetchmail")
    return [Row(case, v, run, theirs, limit) for v, run in zip(case.variants, ours, strict=True)]


HEADERS = (
    "Case", "pyfetch s", "fetchmail s", "ratio", "pyfetch CPU s", "fetchmail CPU s", "ratio",
    "pyfetch RSS MB", "fetchmail RSS MB", "ratio", "smtp-source s", "drain s", "limit s",
    "pyfetch ÷ limit", "servers' CPU s", "CPU floor s",
)  # fmt: skip


def cells(row: Row) -> list[str]:
    ours, theirs, limit = row.pyfetch, row.fetchmail, row.limit

    def value(run: Run | None, attr: str) -> str:
        if run is None:
            return NONE
        if run.error is not None:
            return "failed"
        if attr == "maxrss_kb":
            return f"{run.maxrss_kb / 1024:.1f}"
        return seconds(getattr(run, attr))

    def rate(attr: str) -> str:
        if ours is None or theirs is None or ours.error or theirs.error:
            return NONE
        return ratio(getattr(ours, attr), getattr(theirs, attr))

    lim = limit.value
    over = ratio(ours.wall, lim) if ours and not ours.error and lim else NONE
    return [
        row.case.title(row.variant),
        value(ours, "wall"), value(theirs, "wall"), rate("wall"),
        value(ours, "cpu"), value(theirs, "cpu"), rate("cpu"),
        value(ours, "maxrss_kb"), value(theirs, "maxrss_kb"), rate("maxrss_kb"),
        "failed" if limit.smtp_source is None else seconds(limit.smtp_source),
        "failed" if limit.drain is None else seconds(limit.drain),
        NONE if lim is None else seconds(lim),
        over,
        value(ours, "servers_cpu"),
        NONE if ours is None or ours.error else seconds(cpu_floor(ours)),
    ]  # fmt: skip


def cpu_floor(run: Run) -> float:
    """The least wall time the CPU work of a run allows: the program's and the servers' CPU
    spread evenly over every CPU of the machine."""
    return (run.cpu + run.servers_cpu) / (os.cpu_count() or 1)


def notes(rows: list[Row]) -> list[str]:
    """What the table cannot say: failures, where pyfetch lost, and when case 6's mail was
    all delivered (its runs cannot end before the mute server's timeout)."""
    said: list[str] = []
    for row in rows:
        title = row.case.title(row.variant)
        ours, theirs, limit = row.pyfetch, row.fetchmail, row.limit
        for name, run in (("pyfetch", ours), ("fetchmail", theirs)):
            if run is not None and run.error is not None:
                said.append(f"{title}: {name} failed: {run.error}")
        said.extend(f"{row.case.title()}: the limit's {error}" for error in limit.errors)
        ok = [(n, r) for n, r in (("pyfetch", ours), ("fetchmail", theirs))
              if r is not None and r.error is None]  # fmt: skip
        if len(ok) == 2 and ok[0][1].wall > ok[1][1].wall:
            said.append(f"{title}: pyfetch took longer than fetchmail "
                        f"({seconds(ok[0][1].wall)} s against {seconds(ok[1][1].wall)} s).")
        mail_alone = [t for t in (limit.smtp_source, limit.drain) if t is not None]
        if limit.floor and ok and mail_alone:
            when = ", ".join(f"{name} after {seconds(run.delivered)} s" for name, run in ok)
            said.append(
                f"{title}: all mail was in the Maildir {when} (limit for the mail alone "
                f"{seconds(max(mail_alone))} s); no run can end before the mute server's "
                f"timeout, {limit.floor:.0f} s."
            )
    return list(dict.fromkeys(said))


LEGEND = (
    "Wall: from the start until the program has exited and every message is in Postfix's "
    "Maildir, each checked to be there once and intact. CPU: user + system time of the "
    "program. RSS: its peak resident memory. Ratios: pyfetch / fetchmail. smtp-source: "
    "Postfix's own generator sending as many messages of the same size over one session "
    "(case 6: one per account, at once), until all are in the Maildir. drain: a raw client "
    "taking the same mailbox(es) over STLS/STARTTLS with every command pipelined (POP3; IMAP "
    "for the IMAP cases; one account after the other). Limit: the larger of the two (and in "
    "case 6 at least the mute server's timeout). Servers' CPU: what the rest of the machine "
    "(Dovecot, Postfix, the kernel's work for them) spent during pyfetch's run. CPU floor: "
    "pyfetch's and the servers' CPU spread over all CPUs, the least wall time that work "
    "allows on this machine."
)


def text_table(rows: list[list[str]]) -> str:
    table = [list(HEADERS), *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADERS))]
    out = []
    for n, r in enumerate(table):
        out.append("  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                strict=True))
        ).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" + "---:|" * (len(HEADERS) - 1)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def version(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30,
                                check=False)
    except OSError:
        return "?"
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if "release" in line or "version" in line.lower()]
    return lines[0].strip() if lines else "?"


def parse_cases(text: str) -> set[int]:
    try:
        chosen = {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        chosen = set()
    if not chosen or not chosen <= set(range(1, 7)):
        raise argparse.ArgumentTypeError(f"--cases takes numbers 1 to 6, as in 1,3; not {text!r}")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument("--cases", type=parse_cases, default=set(range(1, 7)),
                        help="which cases, e.g. 1,3 (default: all)")
    parser.add_argument("--no-fetchmail", action="store_true", help="run pyfetch only")
    parser.add_argument("--markdown", type=Path, metavar="FILE",
                        help="also write the table as Markdown to FILE")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: the servers drop privileges themselves")
    if not SMTP_SOURCE.exists():
        parser.error(f"{SMTP_SOURCE} is missing (it comes with the postfix package)")
    if not GNU_TIME.exists():
        parser.error(f"{GNU_TIME} is missing: install GNU time (apt-get install time)")
    python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
    programs = {"pyfetch": [python, "-m", "fetcher"]}
    fetchmail = shutil.which("fetchmail")
    if not args.no_fetchmail:
        if fetchmail:
            programs["fetchmail"] = [fetchmail]
        else:
            print("fetchmail is not on PATH: measuring pyfetch only", file=sys.stderr)
    cases = [case for case in make_cases(args.quick) if case.number in args.cases]
    rows: list[Row] = []
    with servers() as srv:
        for case in cases:
            rows += run_case(srv, case, programs, srv.base)
    table = [cells(row) for row in rows]
    said = notes(rows)
    about = (
        f"{'quick run' if args.quick else 'full run'}; {os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}"
        + (f"; {version([fetchmail, '--version'])}" if "fetchmail" in programs and fetchmail
           else "")
    )
    print()
    print(text_table(table))
    print()
    print(about)
    print(LEGEND)
    for line in said:
        print(f"- {line}")
    if args.markdown:
        args.markdown.write_text(
            markdown_table(table) + "\n\n" + about.rstrip(".") + ". " + LEGEND + "\n"
            + "".join(f"\n- {line}" for line in said) + ("\n" if said else "")
        )
    failed = any(
        (run is not None and run.error is not None) for row in rows
        for run in (row.pyfetch, row.fetchmail)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
