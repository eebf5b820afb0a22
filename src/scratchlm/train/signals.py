"""SIGINT (Ctrl-C) and SIGTERM (a scheduler's "time is up") end a run with a checkpoint, not a loss.

The handler only sets a flag; the loop looks at it between steps, saves a checkpoint of the step it just
finished and returns. Saving from inside the handler could interrupt an optimizer step half-way and save
weights that belong to no step. A second signal while the first is being honoured stops at once.
Under torchrun every rank gets the signal; the loop agrees on stopping across ranks before it saves.
"""

from __future__ import annotations

import signal
import threading


class StopSignals:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and stops. A second signal stops at once."""

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def __enter__(self):
        if _main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
