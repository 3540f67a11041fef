"""Device emulator: the robot's firmware on a pseudo-terminal, for dry runs without a robot.

    mfpg-robot emulator --robot configs/robots/furuta.yaml
    port: /dev/pts/7                      <- first line of output; pass it as --port

It opens a pty (`os.openpty`, device side in raw mode), prints `port: <path>` as its first
line, and serves the protocol of docs/protocol.md there with `DeviceModel` (the twin in real
time: one control period per tick at the robot's control rate, advanced by the wall clock).
Requests are answered as they arrive; a COMMAND takes effect at the next tick. SIGINT and
SIGTERM stop it cleanly: torque off, pty closed, exit status 0. With a `parent_pid` it also
stops once that process is no longer its parent (the parent died; `mfpg-robot emulator
--parent-pid PID`), checked every control period.

Fault injection (`FaultInjection`, all driven by one seeded RNG): replies dropped, corrupted
(one byte flipped) or delayed with given probabilities; received bytes corrupted (one byte
of a received chunk flipped before decoding, as noise on the host-to-device wire); a
disconnect (the pty is closed, as an unplugged cable) and an over-temperature after given
times.

Diagnostics (`EmulatorStats`): frames received and rejected (bad header / CRC), COMMANDs
received and executed (with the targets of the first `COMMAND_LOG_LIMIT` executed ones),
replies sent, dropped and corrupted. `mfpg-robot emulator --stats-file PATH` writes them as
JSON when the emulator exits (not after SIGKILL); the protocol itself is unchanged.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from hardware.device_model import DeviceModel
from hardware.protocol import Ack, Command, Frame, FrameDecoder, Message, Undecodable, encode
from sim.robot_config import RobotConfig

READ_CHUNK = 4096
MAX_CATCH_UP_S = 0.25  # further behind the wall clock than this: skip ticks instead
COMMAND_LOG_LIMIT = 20_000  # executed COMMANDs whose targets the stats keep (80 s at 250 Hz)


@dataclass(frozen=True)
class FaultInjection:
    """Faults the emulator injects; probabilities are per reply, times since start."""

    drop_rate: float = 0.0
    corrupt_rate: float = 0.0
    corrupt_rx_rate: float = 0.0  # per chunk of received bytes (usually one request)
    delay_rate: float = 0.0
    delay_ms: float = 0.0
    disconnect_after_s: float | None = None
    overtemp_after_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("drop_rate", "corrupt_rate", "corrupt_rx_rate", "delay_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if not (math.isfinite(self.delay_ms) and self.delay_ms >= 0):
            raise ValueError(f"delay_ms must be >= 0, got {self.delay_ms}")
        if self.delay_rate > 0 and self.delay_ms == 0:
            raise ValueError("delay_rate > 0 needs delay_ms > 0 (how long a reply is held)")
        for name in ("disconnect_after_s", "overtemp_after_s"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {value}")

    def describe(self) -> str:
        """'none' or e.g. 'drop 5%, corrupt 1%, disconnect after 2 s'."""
        parts = []
        if self.drop_rate:
            parts.append(f"drop {self.drop_rate:.1%}")
        if self.corrupt_rate:
            parts.append(f"corrupt {self.corrupt_rate:.1%}")
        if self.corrupt_rx_rate:
            parts.append(f"corrupt received {self.corrupt_rx_rate:.1%}")
        if self.delay_rate:
            parts.append(f"delay {self.delay_rate:.1%} by {self.delay_ms:g} ms")
        if self.disconnect_after_s is not None:
            parts.append(f"disconnect after {self.disconnect_after_s:g} s")
        if self.overtemp_after_s is not None:
            parts.append(f"over-temperature after {self.overtemp_after_s:g} s")
        return ", ".join(parts) or "none"


@dataclass
class EmulatorStats:
    """What the emulated device received, executed and sent (diagnostics, not protocol)."""

    rx_chunks_corrupted: int = 0  # received chunks with a byte flipped by `corrupt_rx_rate`
    commands_received: int = 0  # CRC-valid, decodable COMMAND frames
    commands_executed: int = 0  # of those, accepted (ACK): the device applied their targets
    replies_sent: int = 0
    replies_dropped: int = 0  # by `drop_rate`, or lost to a full port buffer
    replies_corrupted: int = 0  # by `corrupt_rate`
    # targets of the first COMMAND_LOG_LIMIT executed COMMANDs
    executed_commands: list[list[float]] = field(default_factory=list)

    def count(self, msg: Message | Undecodable, reply: Message) -> None:
        """Account for one handled request and its reply."""
        if isinstance(msg, Command):
            self.commands_received += 1
            if isinstance(reply, Ack):
                self.commands_executed += 1
                if len(self.executed_commands) < COMMAND_LOG_LIMIT:
                    self.executed_commands.append(list(msg.targets))


class Emulator:
    """A `DeviceModel` served on a pty; `serve()` runs until `stop()` or a disconnect."""

    def __init__(self, robot: RobotConfig, faults: FaultInjection | None = None) -> None:
        self.robot = robot
        self.faults = faults or FaultInjection()
        self.device = DeviceModel(robot)
        self._rng = np.random.default_rng(self.faults.seed)
        self._decoder = FrameDecoder()
        self.stats = EmulatorStats()
        self._out: deque[tuple[float, bytes]] = deque()
        self._stop = False
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)

    def stop(self) -> None:
        """Ask `serve()` to return (safe to call from a signal handler)."""
        self._stop = True

    def serve(
        self, log: Callable[[str], None] = lambda line: None, parent_pid: int | None = None
    ) -> str:
        """Run the device in real time; return why it ended.

        'stopped' (`stop()`), 'disconnected' (injected) or 'orphaned' (the process
        `parent_pid` is no longer this process's parent).
        """
        dev, f = self.device, self.faults
        dt = self.robot.control_dt
        t0 = time.monotonic()
        next_tick = dt
        overtemp_pending = f.overtemp_after_s is not None
        while not self._stop:
            t = time.monotonic() - t0
            if f.disconnect_after_s is not None and t >= f.disconnect_after_s:
                log(f"disconnect injected at {t:.3f} s: torque off, pty closed")
                return "disconnected"
            if overtemp_pending and t >= f.overtemp_after_s:
                dev.inject_overtemperature()
                overtemp_pending = False
                log(f"over-temperature injected at {t:.3f} s")
            wait = next_tick - t
            if self._out:
                wait = min(wait, self._out[0][0] - t)
            if parent_pid is not None and os.getppid() != parent_pid:
                log(f"parent process {parent_pid} is gone: torque off, pty closed")
                return "orphaned"
            ready, _, _ = select.select([self._master], [], [], max(0.0, wait))
            if ready:
                self._receive(t0)
            t = time.monotonic() - t0
            self._send_due(t)
            if t - next_tick > MAX_CATCH_UP_S:
                next_tick = t  # the process was suspended: resume, do not replay the gap
            while t >= next_tick:
                dev.tick(int(next_tick * 1e6))
                next_tick += dt
        return "stopped"

    def close(self) -> None:
        """Torque off and close the pty (idempotent)."""
        self.device.shutdown()
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    def stats_dict(self, reason: str) -> dict[str, Any]:
        """The diagnostics as a JSON-ready dict (decoder counters included)."""
        rx = self._decoder.stats
        return {
            "robot": self.robot.name,
            "faults": self.faults.describe(),
            "reason": reason,
            "frames_received": rx.frames,
            "frames_undecodable": rx.undecodable,
            "bad_header": rx.bad_header,
            "bad_crc": rx.bad_crc,
            "dropped_bytes": rx.dropped_bytes,
            **asdict(self.stats),
        }

    def write_stats(self, path: str | Path, reason: str) -> None:
        """Write `stats_dict(reason)` to `path` as JSON (atomically: temp file, rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.stats_dict(reason)))
        os.replace(tmp, path)

    # -- internals ------------------------------------------------------------------------
    def _receive(self, t0: float) -> None:
        try:
            data = os.read(self._master, READ_CHUNK)
        except BlockingIOError:
            return
        f, rng = self.faults, self._rng
        if data and f.corrupt_rx_rate and rng.random() < f.corrupt_rx_rate:
            buf = bytearray(data)
            buf[int(rng.integers(len(buf)))] ^= int(rng.integers(1, 256))
            data = bytes(buf)
            self.stats.rx_chunks_corrupted += 1
        for frame in self._decoder.feed(data):
            self._handle(frame, time.monotonic() - t0)

    def _handle(self, frame: Frame, now: float) -> None:
        reply = self.device.handle(frame, int(now * 1e6))
        self.stats.count(frame.msg, reply)
        self._queue(encode(reply, frame.seq), now)

    def _queue(self, frame: bytes, now: float) -> None:
        f, rng = self.faults, self._rng
        if f.drop_rate and rng.random() < f.drop_rate:
            self.stats.replies_dropped += 1
            return
        if f.corrupt_rate and rng.random() < f.corrupt_rate:
            buf = bytearray(frame)
            buf[int(rng.integers(2, len(buf)))] ^= int(rng.integers(1, 256))
            frame = bytes(buf)
            self.stats.replies_corrupted += 1
        due = now
        if f.delay_rate and rng.random() < f.delay_rate:
            due += f.delay_ms / 1000.0
        if self._out:
            due = max(due, self._out[-1][0])  # replies leave in request order
        self._out.append((due, frame))

    def _send_due(self, t: float) -> None:
        while self._out and self._out[0][0] <= t:
            _, frame = self._out.popleft()
            try:
                os.write(self._master, frame)
                self.stats.replies_sent += 1
            except BlockingIOError:
                # nobody reads the port and its buffer is full: lost, as on a wire
                self.stats.replies_dropped += 1


def run_emulator(
    robot: RobotConfig,
    faults: FaultInjection,
    out: TextIO,
    stats_path: str | Path | None = None,
    parent_pid: int | None = None,
) -> int:
    """The `mfpg-robot emulator` process: print the port first, serve until a signal.

    With `stats_path`, the diagnostics (`Emulator.stats_dict`) are written there as JSON on
    the way out. With `parent_pid`, it also ends when that process stops being its parent.
    """
    emulator = Emulator(robot, faults)

    def log(line: str) -> None:
        print(line, file=out, flush=True)

    # Handlers first: whoever reads the port line may signal at once.
    previous = {s: signal.signal(s, lambda *_: emulator.stop()) for s in _STOP_SIGNALS}
    reason = "crashed"
    try:
        log(f"port: {emulator.port}")
        log(
            f"emulating {robot.name} ({robot.control_rate_hz:g} Hz, twin model), "
            f"faults injected: {faults.describe()}; stop with Ctrl+C"
        )
        reason = emulator.serve(log, parent_pid)
    finally:
        emulator.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stats_path is not None:
            emulator.write_stats(stats_path, reason)
    log(f"{reason}: torque off, port closed")
    return 0


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
