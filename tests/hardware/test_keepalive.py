"""KeepAlive: beats at its period on a background thread, stops cleanly, ends on False."""

from __future__ import annotations

import threading
import time

import pytest

from hardware.keepalive import KeepAlive


def test_beats_until_stopped_and_stop_waits_for_a_beat_in_progress() -> None:
    inside = threading.Event()
    log: list[str] = []

    def beat() -> bool:
        inside.set()
        log.append("begin")
        time.sleep(0.05)
        log.append("end")
        return True

    keepalive = KeepAlive(beat, 0.01, "test-keepalive").start()
    assert inside.wait(5.0)
    keepalive.stop()
    assert not keepalive.running and log[-1] == "end"  # no beat cut off half-way
    beats = keepalive.beats
    time.sleep(0.05)
    assert keepalive.beats == beats >= 1
    keepalive.stop()  # idempotent


def test_a_beat_returning_false_ends_it() -> None:
    calls: list[int] = []
    keepalive = KeepAlive(lambda: calls.append(1) or len(calls) < 3, 0.005, "test").start()
    deadline = time.monotonic() + 5.0
    while keepalive.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not keepalive.running and len(calls) == 3


def test_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="period_s"):
        KeepAlive(lambda: True, 0.0, "test")
