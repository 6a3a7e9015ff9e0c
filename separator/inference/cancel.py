"""Cancelling a batch from another thread, leaving no temporary file behind.

The CLI separates files in worker threads, so that its main thread can answer Ctrl-C at once
even while a model call runs. On Ctrl-C the main thread calls `Cancel.cancel()`: every output in
flight deletes its temporaries and claims (`discard_files`, safe while the worker still writes:
an unlinked file takes the writes and vanishes), and every worker raises `Cancelled` at its next
check. Whatever creates a temporary or renames outputs into place does so under `guarded()`, so
it either happens entirely before the cancel (a finished set of stems is kept) or not at all.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Protocol


class Cancelled(KeyboardInterrupt):
    """Raised in a worker whose batch was cancelled (a KeyboardInterrupt, so that every
    cleanup path that handles Ctrl-C handles it too)."""


class Discardable(Protocol):
    def discard_files(self) -> None: ...


class Cancel:
    """A cancel flag plus the outputs in flight under it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._event = threading.Event()
        self._live: dict[int, Discardable] = {}

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise `Cancelled` if the batch was cancelled."""
        if self._event.is_set():
            raise Cancelled

    @contextlib.contextmanager
    def guarded(self) -> Iterator[None]:
        """Hold off `cancel()` for the block (keep it short), and refuse to start after it."""
        with self.lock:
            self.check()
            yield

    def track(self, thing: Discardable) -> None:
        with self.lock:
            self._live[id(thing)] = thing

    def untrack(self, thing: Discardable) -> None:
        with self.lock:
            self._live.pop(id(thing), None)

    def cancel(self) -> None:
        """Set the flag and delete every tracked output's temporaries (waits for a commit in
        progress: renames take milliseconds)."""
        with self.lock:
            self._event.set()
            # Twice: a folder one track made may hold another track's folder until that goes.
            for _ in range(2):
                for thing in list(self._live.values()):
                    with contextlib.suppress(Exception):
                        thing.discard_files()
            self._live.clear()
