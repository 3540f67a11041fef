"""A background heartbeat: call `beat()` at a fixed low rate until stopped.

`RobotEnv` uses it between episodes to keep a position-servo robot holding its pose: the
device watchdog cuts torque when commands stop for `serial.watchdog_ms`, and an arm without
torque falls under gravity. The owner must not use the driver while a `KeepAlive` runs:
`stop()` returns only after the last beat has finished.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class KeepAlive:
    """Calls `beat()` every `period_s` on a daemon thread until `stop()` or a beat says False."""

    def __init__(self, beat: Callable[[], bool], period_s: float, name: str) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self._beat = beat
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.beats = 0

    def start(self) -> KeepAlive:
        """Start beating (the first beat one period from now); returns self."""
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """True until stopped or a beat returned False."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop and wait for a beat in progress to finish (idempotent)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self.beats += 1
            if not self._beat():
                return
