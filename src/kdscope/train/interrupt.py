"""Ctrl-C (and SIGTERM, which the CLI maps to it) stops training at a step boundary."""

from __future__ import annotations

import signal
import threading


class StopBetweenSteps:
    """Turn the first Ctrl-C into a stop at the next step boundary (so the checkpoint is exact);
    a second Ctrl-C interrupts at once."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.previous = None

    def _handler(self, signum, frame):
        if self.trainer._stop_requested:
            raise KeyboardInterrupt
        self.trainer._stop_requested = True

    def __enter__(self):
        self.trainer._stop_requested = False
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
