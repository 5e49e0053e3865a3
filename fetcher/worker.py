"""A thread of its own for one connection's blocking calls, with an async face.

poplib and imapclient block. Each mailbox connection (and the UID store's file writes) gets
one Worker: its calls run in order on its thread, and the event loop awaits them. A server that
hangs then ties up only its own thread, never the loop or another account's poll.

The thread is a daemon thread: a call stuck on a dead server (bounded by the account's
timeout) never keeps the process from exiting once the run has decided to stop. Calls run in
a copy of the caller's context, so context variables (which poll's output a trace line belongs
to) follow them onto the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[
    asyncio.AbstractEventLoop, "asyncio.Future[Any]", contextvars.Context, Callable[..., Any],
    tuple[Any, ...],
]


class Worker:
    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.busy = False  # a call is running on the thread (read from the loop: advisory)

    async def call(self, func: Callable[..., T], *args: Any) -> T:
        """Run `func(*args)` on this worker's thread and return its result (or raise)."""
        if self._closed:
            raise RuntimeError(f"worker {self.name} is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, contextvars.copy_context(), func, args))
        return await future

    def close(self) -> None:
        """Let the thread end once the calls already queued are done. Never waits."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, future, context, func, args = job
            self.busy = True
            try:
                result = context.run(func, *args)
            except BaseException as err:  # handed to the awaiting task, which decides
                _settle(loop, future, error=err)
            else:
                _settle(loop, future, result=result)
            finally:
                self.busy = False


def _settle(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    *,
    result: Any = None,
    error: BaseException | None = None,
) -> None:
    def settle() -> None:
        if future.done():  # the awaiting task was cancelled: nobody wants the answer
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over
        loop.call_soon_threadsafe(settle)
