"""Which messages were already fetched: fetchmail's `.fetchids`, made crash-safe.

The file keeps fetchmail's format, one line per UID, `remoteuser@queryname uid`, so a user can
switch back and forth. Lines of accounts not polled in this run are kept as they are.

fetchmail writes the file at the end of a poll, so a run killed in the middle delivers again
everything it had delivered. Here every delivery is first appended to a journal beside the
file and flushed to disk (fsync) before the message is deleted on the server; the journal is
replayed on the next start. So a crash at any instant re-delivers nothing:

* `seen` UIDs (kept messages) are those of fetchmail's file;
* `delivered` UIDs are messages handed to the MTA whose deletion the server has not yet
  confirmed (POP3 makes DELE final only at QUIT). They are also written to the file as seen,
  so that fetchmail, too, would not deliver them again.

A `delivered` record deletes a message later without delivering it again, so it must never
match another message: servers repeat and reuse UIDs. It carries the message's size and a
digest of its first octets (`Identity`), and the poll deletes only a message that has all
three; when in doubt (a record without them, a UID the server gives to several messages) the
message is delivered again rather than deleted (docs/design.md, rule 8).

The journal is trusted only as the idfile is (private, ours, not a link), and a write that
does not reach the disk whole stops the poll before any deletion.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

from fetcher.errors import LocalError, PermissionsError
from fetcher.exitcodes import ExitCode
from fetcher.rcfile import check_permissions
from fetcher.worker import Worker

_JOURNAL_SUFFIX = ".journal"
# How much of a message its digest covers: the header and the start of the body tell two
# messages apart (Message-ID, Received lines with times), and hashing more costs for nothing.
DIGEST_OCTETS = 64 * 1024


@dataclass(frozen=True)
class Identity:
    """What, besides its UID, tells that a message on the server is the one a record names."""

    size: int  # octets, as the server lists it
    digest: str  # of its first DIGEST_OCTETS octets as fetched

    @classmethod
    def of(cls, size: int, spool: BinaryIO) -> Identity:
        """The identity of the message in `spool` (read from its start; left at its start)."""
        spool.seek(0)
        digest = hashlib.sha256(spool.read(DIGEST_OCTETS)).hexdigest()[:32]
        spool.seek(0)
        return cls(size, digest)

    def __str__(self) -> str:
        return f"{self.size} {self.digest}"

    @classmethod
    def parse(cls, text: str) -> Identity | None:
        size, _, digest = text.partition(" ")
        if not size.isdigit() or len(digest) != 32 or " " in digest:
            return None
        return cls(int(size), digest)


@dataclass
class _Account:
    seen: set[str] = field(default_factory=set)
    # delivered, deletion unconfirmed; None: recorded without an identity (by an older pyfetch)
    delivered: dict[str, Identity | None] = field(default_factory=dict)
    # delivered to some recipients only (LMTP deferred the others): the message, and who has it
    partial: dict[str, tuple[Identity, set[str]]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # file order, for stable rewrites


def account_key(
    remote: str, queryname: str, folder: str | None = None, uidvalidity: int | None = None
) -> str:
    """fetchmail's `user@host` for POP3. IMAP UIDs mean something only within one folder and
    one UIDVALIDITY, so both join the key (fetchmail keeps no IMAP UIDs; it leaves such lines
    alone)."""
    if uidvalidity is None:
        return f"{remote}@{queryname}"
    return f"{remote}@{queryname}/{folder or 'INBOX'};UIDVALIDITY={uidvalidity}"


def _split(line: str) -> tuple[str, str] | None:
    """fetchmail's parse: the key ends at the first space after the first `@`."""
    at = line.find("@")
    if at < 0:
        return None
    space = line.find(" ", at)
    if space < 0:
        return None
    return line[:space], line[space + 1 :]


class UidStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self.journal_path = path + _JOURNAL_SUFFIX
        self._accounts: dict[str, _Account] = {}
        self._foreign: list[str] = []  # lines we do not understand, kept verbatim
        self._journal: int | None = None  # file descriptor, opened on first use
        self._unsynced = False  # lines written to the journal and not yet fsynced

    # -- loading -----------------------------------------------------------------------

    def load(self) -> None:
        """Read the file and replay the journal. Both must be private and ours (exit 6)."""
        check_permissions(self.path)
        for line in _read_lines(self.path):
            parsed = _split(line)
            if parsed is None:
                self._foreign.append(line)
                continue
            key, uid = parsed
            self._add(key, uid)
        check_permissions(self.journal_path)
        for line in _read_lines(self.journal_path):
            kind, _, rest = line.partition(" ")
            parsed = _split(rest)
            if parsed is None:
                continue  # a torn last line from a crash: nothing was deleted for it yet
            key, uid = parsed
            if kind == "delivered":
                uid, identity = _split_identity(uid)
                self._add(key, uid, delivered=True, identity=identity)
            elif kind == "seen":
                self._add(key, uid)
            elif kind == "expunged":
                self._remove(key, uid)
            elif kind == "got":
                got = _split_partial(uid)
                if got is not None:
                    self._add_partial(key, *got)

    def _add(
        self, key: str, uid: str, *, delivered: bool = False, identity: Identity | None = None
    ) -> None:
        account = self._accounts.setdefault(key, _Account())
        if uid not in account.seen:
            account.seen.add(uid)
            account.order.append(uid)
        if delivered:
            account.delivered[uid] = identity
        account.partial.pop(uid, None)  # fetched for good: every recipient has it

    def _add_partial(self, key: str, uid: str, identity: Identity, recipient: str) -> None:
        account = self._accounts.setdefault(key, _Account())
        known = account.partial.get(uid)
        if known is None or known[0] != identity:
            known = account.partial[uid] = (identity, set())
        known[1].add(recipient)

    def _remove(self, key: str, uid: str) -> None:
        account = self._accounts.get(key)
        if account is not None:
            account.seen.discard(uid)
            account.delivered.pop(uid, None)
            account.partial.pop(uid, None)

    # -- queries -----------------------------------------------------------------------

    def seen(self, key: str) -> frozenset[str]:
        account = self._accounts.get(key)
        return frozenset(account.seen) if account else frozenset()

    def delivered(self, key: str) -> Mapping[str, Identity | None]:
        """UIDs delivered whose deletion is unconfirmed, with what identifies their message."""
        account = self._accounts.get(key)
        return dict(account.delivered) if account else {}

    def has_it(self, key: str, uid: str, identity: Identity) -> frozenset[str]:
        """The recipients that already have this very message (an earlier LMTP delivery
        deferred the others); empty if none, or if the record names another message."""
        account = self._accounts.get(key)
        known = account.partial.get(uid) if account else None
        return frozenset(known[1]) if known and known[0] == identity else frozenset()

    def knows(self, key: str) -> bool:
        """Whether any UID is recorded for `key`."""
        account = self._accounts.get(key)
        return bool(account and account.seen)

    def keys_starting(self, prefix: str) -> list[str]:
        return [key for key in self._accounts if key.startswith(prefix)]

    # -- changes (each durable before it returns) ----------------------------------------

    def record(
        self, key: str, uid: str, *, delete_pending: bool, identity: Identity | None = None,
        durable: bool = True,
    ) -> None:
        """A message was accepted by the MTA. Durable before returning (call it before DELE),
        unless `durable` is False: then the line is written (a killed process loses nothing
        written) and sync() makes it durable, so that one fsync covers several messages; no
        deletion may come before that sync(). A pending deletion should carry the message's
        identity, or a later poll that finds it still on the server delivers it again rather
        than delete it unseen."""
        line = _delivered_line(key, uid, identity) if delete_pending else f"seen {key} {uid}"
        self._append(line + "\n", sync=durable)
        self._add(key, uid, delivered=delete_pending, identity=identity)

    def record_partial(
        self, key: str, uid: str, identity: Identity, recipients: Iterable[str]
    ) -> None:
        """Some recipients have the message, the others deferred it: the next attempt must go
        to the others only. Durable before returning."""
        names = sorted(set(recipients))
        if not names:
            return
        self._append("".join(f"got {key} {uid} {identity} {name}\n" for name in names))
        for name in names:
            self._add_partial(key, uid, identity, name)

    def record_seen(self, key: str, uids: set[str]) -> None:
        """Several messages count as fetched (kept) from now on; durable, with one sync."""
        if not uids:
            return
        self._append("".join(f"seen {key} {uid}\n" for uid in sorted(uids)))
        for uid in sorted(uids):
            self._add(key, uid)

    def expunged(self, key: str, uids: set[str]) -> None:
        """The server confirmed these deletions (POP3 QUIT answered +OK)."""
        if not uids:
            return
        self._append("".join(f"expunged {key} {uid}\n" for uid in sorted(uids)))
        for uid in uids:
            self._remove(key, uid)

    def prune(self, key: str, present: set[str]) -> None:
        """Forget the UIDs of `key` that the server no longer lists: their messages are gone
        (fetchmail drops them too), so the file does not grow for ever."""
        account = self._accounts.get(key)
        if account is not None:
            self.expunged(key, (account.seen | set(account.partial)) - present)

    def forget(self, key: str) -> None:
        """Drop everything recorded for `key` (a folder whose UIDVALIDITY changed)."""
        account = self._accounts.get(key)
        if account is not None:
            self.expunged(key, account.seen | set(account.partial))

    def sync(self) -> None:
        """Make every line written so far durable (one fsync for all of them)."""
        if not self._unsynced or self._journal is None:
            return
        try:
            os.fsync(self._journal)
        except OSError as err:
            self.close()
            raise _unwritable(self.journal_path, err) from None
        self._unsynced = False

    def _append(self, text: str, *, sync: bool = True) -> None:
        """Append to the journal and fsync (or leave the fsync to sync()); raises LocalError
        (exit 6) unless all of it is written, so that no deletion follows a record that did
        not reach the disk."""
        data = text.encode("utf-8", "surrogateescape")
        start = None
        try:
            if self._journal is None:
                self._journal = _open_private(self.journal_path)
            start = os.fstat(self._journal).st_size
            written = 0
            while written < len(data):  # os.write may write less than asked (a full disk)
                written += os.write(self._journal, data[written:])
            self._unsynced = True
            if sync:
                os.fsync(self._journal)
                self._unsynced = False
        except OSError as err:
            if self._journal is not None and start is not None:
                # cut off what part of it did get written: the next record must not continue
                # a torn line
                with contextlib.suppress(OSError):
                    os.ftruncate(self._journal, start)
            self.close()  # the next record opens it again
            raise _unwritable(self.journal_path, err) from None

    def save(self) -> None:
        """Rewrite fetchmail's file atomically (temporary file, fsync, rename), then drop the
        journal; an empty store removes the file, as fetchmail does."""
        lines = list(self._foreign)
        for key, account in self._accounts.items():
            lines.extend(f"{key} {uid}" for uid in account.order if uid in account.seen)
        pending = [
            _delivered_line(key, uid, account.delivered[uid])
            for key, account in self._accounts.items()
            for uid in account.order
            if uid in account.delivered
        ] + [
            f"got {key} {uid} {identity} {name}"
            for key, account in self._accounts.items()
            for uid, (identity, names) in account.partial.items()
            for name in sorted(names)
        ]
        try:
            if lines:
                _atomic_write(self.path, "".join(line + "\n" for line in lines))
            else:
                _remove(self.path)
            self.close()
            if pending:  # deletions still unconfirmed stay in the journal for the next run
                _atomic_write(self.journal_path, "".join(line + "\n" for line in pending))
            else:
                _remove(self.journal_path)
        except OSError as err:
            raise _unwritable(err.filename or self.path, err) from None

    def close(self) -> None:
        if self._journal is not None:
            if self._unsynced:
                with contextlib.suppress(OSError):  # best effort: nothing waits for it now
                    os.fsync(self._journal)
            os.close(self._journal)
            self._journal = None
        self._unsynced = False


def _split_identity(value: str) -> tuple[str, Identity | None]:
    """`UID SIZE DIGEST` -> (UID, identity); a line without them (an older pyfetch's) is all
    UID. UIDs may hold spaces in fetchmail's file, so the identity is taken from the end."""
    parts = value.rsplit(" ", 2)
    if len(parts) == 3:
        identity = Identity.parse(f"{parts[1]} {parts[2]}")
        if identity is not None:
            return parts[0], identity
    return value, None


def _split_partial(value: str) -> tuple[str, Identity, str] | None:
    """`UID SIZE DIGEST RECIPIENT` -> its parts; None for a line that does not parse."""
    parts = value.rsplit(" ", 3)
    if len(parts) != 4:
        return None
    identity = Identity.parse(f"{parts[1]} {parts[2]}")
    return (parts[0], identity, parts[3]) if identity is not None else None


def _delivered_line(key: str, uid: str, identity: Identity | None) -> str:
    """A journal line for a delivered message whose deletion is not yet confirmed."""
    return f"delivered {key} {uid}" + (f" {identity}" if identity is not None else "")


def _read_lines(path: str) -> list[str]:
    """The file's non-blank lines; none if it does not exist. A link is not followed: a state
    file is trusted only as itself (docs/design.md, rule 10)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return []
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise PermissionsError(f"File {path} must be a regular file.") from None
        raise _unwritable(path, err, reading=True) from None
    with open(fd, encoding="utf-8", errors="surrogateescape") as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]


def _open_private(path: str) -> int:
    """The journal, opened for appending: created 0600 whatever the umask, never through a
    link, and refused unless it is a regular file of ours that nobody else may read."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise PermissionsError(f"File {path} must be a regular file owned by you.")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _unwritable(path: str, err: OSError, *, reading: bool = False) -> LocalError:
    """A state file that cannot be written (a full disk, say): said plainly, exit 6."""
    if isinstance(err, PermissionsError):
        return err
    what = "read" if reading else "write"
    reason = err.strerror or str(err)
    return LocalError(
        f"cannot {what} {path}: {reason}; mail not yet recorded stays on the server",
        ExitCode.IOERR,
    )


def _atomic_write(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".pyfetch-")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text.encode("utf-8", "surrogateescape"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a crash
    finally:
        os.close(dir_fd)


class StoreService:
    """The UID store as the run loop uses it: every read and write runs on one thread of its
    own (fetcher.worker), in the order asked. The journal's fsync then never stalls the event
    loop (and with it the other accounts' polls), and the store's sets are touched by that one
    thread only, so polls running side by side never see them half changed."""

    def __init__(self, store: UidStore) -> None:
        self.store = store
        self._worker = Worker("uidstore")

    async def load(self) -> None:
        await self._worker.call(self.store.load)

    async def seen(self, key: str) -> frozenset[str]:
        return await self._worker.call(self.store.seen, key)

    async def delivered(self, key: str) -> Mapping[str, Identity | None]:
        return await self._worker.call(self.store.delivered, key)

    async def knows(self, key: str) -> bool:
        return await self._worker.call(self.store.knows, key)

    async def keys_starting(self, prefix: str) -> list[str]:
        return await self._worker.call(self.store.keys_starting, prefix)

    async def record(
        self, key: str, uid: str, *, delete_pending: bool, identity: Identity | None = None,
        durable: bool = True,
    ) -> None:
        await self._worker.call(
            lambda: self.store.record(
                key, uid, delete_pending=delete_pending, identity=identity, durable=durable
            )
        )

    async def sync(self) -> None:
        await self._worker.call(self.store.sync)

    async def record_partial(
        self, key: str, uid: str, identity: Identity, recipients: Iterable[str]
    ) -> None:
        await self._worker.call(self.store.record_partial, key, uid, identity, recipients)

    async def has_it(self, key: str, uid: str, identity: Identity) -> frozenset[str]:
        return await self._worker.call(self.store.has_it, key, uid, identity)

    async def record_seen(self, key: str, uids: set[str]) -> None:
        await self._worker.call(self.store.record_seen, key, uids)

    async def expunged(self, key: str, uids: set[str]) -> None:
        await self._worker.call(self.store.expunged, key, uids)

    async def prune(self, key: str, present: set[str]) -> None:
        await self._worker.call(self.store.prune, key, present)

    async def forget(self, key: str) -> None:
        await self._worker.call(self.store.forget, key)

    async def save(self) -> None:
        await self._worker.call(self.store.save)

    def close(self) -> None:
        self._worker.close()
