"""Fixed-rate control loop timing: absolute deadlines, sleep-then-spin, jitter statistics.

Deadlines are absolute, `t0 + k * period`, so timing errors do not accumulate. `wait()` sleeps
until `spin_s` before the deadline (OS sleeps overshoot by tens of microseconds) and then
busy-waits for the rest. Arriving at `wait()` after the deadline is a *missed deadline*: the
work of that period (policy, command) overran it; the tick returns at once and the grid is
re-based on the late arrival (no burst of short periods to catch up).

`realtime=False` never sleeps (for in-process drivers with a simulated clock): the ticks still
measure the host time per step, and no deadline counts as missed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tick:
    """Timing of one control period (seconds, scheduler clock)."""

    deadline_s: float
    wake_s: float
    period_s: float  # wake - previous wake (nan on the first tick after start)
    lateness_s: float  # wake - deadline (>= 0 when met; the overrun when missed)
    busy_s: float  # time from the previous wake to arriving at wait(): the work of the period
    waited_s: float  # time spent sleeping/spinning in wait()
    missed: bool
    consecutive_missed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "deadline_s": self.deadline_s,
            "wake_s": self.wake_s,
            "period_s": self.period_s,
            "lateness_s": self.lateness_s,
            "busy_s": self.busy_s,
            "waited_s": self.waited_s,
            "missed": self.missed,
            "consecutive_missed": self.consecutive_missed,
        }


@dataclass(frozen=True)
class TimingStats:
    """Summary over the recorded ticks; jitter is |period - nominal period|."""

    steps: int
    period_s: float
    period_p50_s: float
    period_max_s: float
    jitter_p50_s: float
    jitter_p99_s: float
    jitter_max_s: float
    busy_p50_s: float
    busy_p99_s: float
    missed: int
    max_consecutive_missed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else float("nan")


class Scheduler:
    """Deadline scheduler for a loop of period `period_s` (see the module docstring)."""

    def __init__(
        self,
        period_s: float,
        *,
        realtime: bool = True,
        spin_s: float = 0.0005,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        history: int = 100_000,
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        if spin_s < 0:
            raise ValueError(f"spin_s must be >= 0, got {spin_s}")
        self.period_s = period_s
        self.realtime = realtime
        self.spin_s = spin_s
        self.clock = clock
        self.sleep = sleep
        self._ticks: deque[Tick] = deque(maxlen=history)
        self._t0 = 0.0
        self._k = 0
        self._last_wake = float("nan")
        self._consecutive = 0

    def start(self) -> float:
        """Begin a run of periods now; returns the start time (tick 0)."""
        self._t0 = self.clock()
        self._k = 0
        self._last_wake = self._t0
        self._consecutive = 0
        return self._t0

    def wait(self) -> Tick:
        """Block until the next deadline (or return at once if it has passed)."""
        self._k += 1
        deadline = self._t0 + self._k * self.period_s
        arrive = self.clock()
        missed = self.realtime and arrive > deadline
        if not self.realtime:
            deadline = arrive
        elif missed:
            self._t0 = arrive - self._k * self.period_s  # re-base the grid on the late arrival
        else:
            remaining = deadline - arrive - self.spin_s
            if remaining > 0:
                self.sleep(remaining)
            while self.clock() < deadline:
                pass
        wake = self.clock() if self.realtime else arrive
        self._consecutive = self._consecutive + 1 if missed else 0
        tick = Tick(
            deadline_s=deadline,
            wake_s=wake,
            period_s=wake - self._last_wake,
            lateness_s=wake - deadline,
            busy_s=arrive - self._last_wake,
            waited_s=wake - arrive,
            missed=missed,
            consecutive_missed=self._consecutive,
        )
        self._last_wake = wake
        self._ticks.append(tick)
        return tick

    @property
    def ticks(self) -> list[Tick]:
        return list(self._ticks)

    def clear(self) -> None:
        """Forget the recorded ticks (e.g. at the start of a benchmark)."""
        self._ticks.clear()

    def stats(self) -> TimingStats:
        """Percentiles over the recorded ticks."""
        ticks = list(self._ticks)
        period = np.array([t.period_s for t in ticks])
        period = period[np.isfinite(period)]
        jitter = np.abs(period - self.period_s)
        busy = np.array([t.busy_s for t in ticks])
        return TimingStats(
            steps=len(ticks),
            period_s=self.period_s,
            period_p50_s=_pct(period, 50),
            period_max_s=float(period.max()) if period.size else float("nan"),
            jitter_p50_s=_pct(jitter, 50),
            jitter_p99_s=_pct(jitter, 99),
            jitter_max_s=float(jitter.max()) if jitter.size else float("nan"),
            busy_p50_s=_pct(busy, 50),
            busy_p99_s=_pct(busy, 99),
            missed=sum(t.missed for t in ticks),
            max_consecutive_missed=max((t.consecutive_missed for t in ticks), default=0),
        )
