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
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field

from fetcher.rcfile import check_permissions
from fetcher.worker import Worker

_JOURNAL_SUFFIX = ".journal"


@dataclass
class _Account:
    seen: set[str] = field(default_factory=set)
    delivered: set[str] = field(default_factory=set)
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

    # -- loading -----------------------------------------------------------------------

    def load(self) -> None:
        """Read the file and replay the journal. The file must be private (exit 6)."""
        check_permissions(self.path)
        for line in _read_lines(self.path):
            parsed = _split(line)
            if parsed is None:
                self._foreign.append(line)
                continue
            key, uid = parsed
            self._add(key, uid, delivered=False)
        for line in _read_lines(self.journal_path):
            kind, _, rest = line.partition(" ")
            parsed = _split(rest)
            if parsed is None:
                continue  # a torn last line from a crash: nothing was deleted for it yet
            key, uid = parsed
            if kind == "delivered":
                self._add(key, uid, delivered=True)
            elif kind == "seen":
                self._add(key, uid, delivered=False)
            elif kind == "expunged":
                self._remove(key, uid)

    def _add(self, key: str, uid: str, *, delivered: bool) -> None:
        account = self._accounts.setdefault(key, _Account())
        if uid not in account.seen:
            account.seen.add(uid)
            account.order.append(uid)
        if delivered:
            account.delivered.add(uid)

    def _remove(self, key: str, uid: str) -> None:
        account = self._accounts.get(key)
        if account is not None:
            account.seen.discard(uid)
            account.delivered.discard(uid)

    # -- queries -----------------------------------------------------------------------

    def seen(self, key: str) -> frozenset[str]:
        account = self._accounts.get(key)
        return frozenset(account.seen) if account else frozenset()

    def delivered(self, key: str) -> frozenset[str]:
        account = self._accounts.get(key)
        return frozenset(account.delivered) if account else frozenset()

    def knows(self, key: str) -> bool:
        """Whether any UID is recorded for `key`."""
        account = self._accounts.get(key)
        return bool(account and account.seen)

    def keys_starting(self, prefix: str) -> list[str]:
        return [key for key in self._accounts if key.startswith(prefix)]

    # -- changes (each durable before it returns) ----------------------------------------

    def record(self, key: str, uid: str, *, delete_pending: bool) -> None:
        """A message was accepted by the MTA. Durable before returning: call it before DELE."""
        kind = "delivered" if delete_pending else "seen"
        self._append(f"{kind} {key} {uid}\n")
        self._add(key, uid, delivered=delete_pending)

    def record_seen(self, key: str, uids: set[str]) -> None:
        """Several messages count as fetched (kept) from now on; durable, with one sync."""
        if not uids:
            return
        self._append("".join(f"seen {key} {uid}\n" for uid in sorted(uids)))
        for uid in sorted(uids):
            self._add(key, uid, delivered=False)

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
            self.expunged(key, account.seen - present)

    def forget(self, key: str) -> None:
        """Drop everything recorded for `key` (a folder whose UIDVALIDITY changed)."""
        account = self._accounts.get(key)
        if account is not None:
            self.expunged(key, set(account.seen))

    def _append(self, text: str) -> None:
        if self._journal is None:
            self._journal = os.open(
                self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
            )
        os.write(self._journal, text.encode("utf-8", "surrogateescape"))
        os.fsync(self._journal)

    def save(self) -> None:
        """Rewrite fetchmail's file atomically (temporary file, fsync, rename), then drop the
        journal; an empty store removes the file, as fetchmail does."""
        lines = list(self._foreign)
        for key, account in self._accounts.items():
            lines.extend(f"{key} {uid}" for uid in account.order if uid in account.seen)
        pending = [
            f"delivered {key} {uid}"
            for key, account in self._accounts.items()
            for uid in account.order
            if uid in account.delivered
        ]
        if lines:
            _atomic_write(self.path, "".join(line + "\n" for line in lines))
        elif os.path.exists(self.path):
            os.unlink(self.path)
        self.close()
        if pending:  # deletions still unconfirmed stay in the journal for the next run
            _atomic_write(self.journal_path, "".join(line + "\n" for line in pending))
        elif os.path.exists(self.journal_path):
            os.unlink(self.journal_path)

    def close(self) -> None:
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            return [line.rstrip("\n") for line in handle if line.strip()]
    except FileNotFoundError:
        return []


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

    async def delivered(self, key: str) -> frozenset[str]:
        return await self._worker.call(self.store.delivered, key)

    async def knows(self, key: str) -> bool:
        return await self._worker.call(self.store.knows, key)

    async def keys_starting(self, prefix: str) -> list[str]:
        return await self._worker.call(self.store.keys_starting, prefix)

    async def record(self, key: str, uid: str, *, delete_pending: bool) -> None:
        await self._worker.call(
            lambda: self.store.record(key, uid, delete_pending=delete_pending)
        )

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
