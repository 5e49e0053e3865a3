"""Pause the cyclic garbage collector around bulk work that only allocates.

Reading a large configuration creates hundreds of thousands of small objects that all stay
alive; the collector would walk them again and again and find nothing (it doubles the time
of a 10,000-entry rcfile).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
