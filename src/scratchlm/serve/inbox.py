"""Events from the scheduler's thread to one request's coroutine, merged while the reader is busy.

The scheduler emits one event per row per step. Waking the event loop for each (`call_soon_threadsafe`
per token) costs more than the step itself once 16 streams share a CPU, so the inbox wakes its reader
once, and whatever arrived until the reader runs is read together (and a stream sends it as one chunk).
"""

from __future__ import annotations

import asyncio
import threading


class Inbox:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._items: list = []
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._woken = False

    def put(self, item) -> None:
        """From any thread."""
        with self._lock:
            self._items.append(item)
            if self._woken:
                return  # a wake-up is on its way; the reader will take this item with it
            self._woken = True
        self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self, timeout: float | None = None) -> list:
        """Everything that arrived since the last take (waiting for at least one item); [] on timeout."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return []
        with self._lock:
            items, self._items = self._items, []
            self._woken = False
            self._ready.clear()
        return items
