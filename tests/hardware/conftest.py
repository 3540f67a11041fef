"""Fixtures for hardware tests: device emulator subprocesses (`mfpg-robot emulator`).

`EmulatorProcess.start(robot, *options)` runs the emulator CLI, waits for its first line
`port: PATH` and exposes `.port`; `stop()` sends SIGTERM and returns the exit status, and
the fixtures kill whatever is still running at teardown. Session-scoped `furuta_emulator` and
`arm2_emulator` (no fault injection) are shared by every module; tests that use them must
not assume any device state (clear faults, disable first).

`relaxed_config(name)` is the robot config for tests that drive the emulator in real time but
are not about timing (module docstring of test_robot_env_faults.py): CI runs on 2 shared cores,
where a 250 Hz loop competing with the emulator misses deadlines and sees late replies.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from sim.robot_config import RobotConfig, load_robot_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT_S = 60.0  # the machine is shared; imports alone take seconds under load


class EmulatorProcess:
    """One `mfpg-robot emulator` subprocess."""

    def __init__(self, robot: str, options: tuple[str, ...]) -> None:
        self.robot = robot
        cmd = [sys.executable, "-m", "mfpg_robot.cli", "emulator", "--robot", robot, *options]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.first_line = self._read_line(START_TIMEOUT_S)
        if not self.first_line.startswith("port: "):
            self.kill()
            raise RuntimeError(f"emulator did not print its port first: {self.first_line!r}")
        self.port = self.first_line.removeprefix("port: ").strip()

    @classmethod
    def start(cls, robot: str, *options: str) -> EmulatorProcess:
        return cls(robot, options)

    def _read_line(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            self.kill()
            raise RuntimeError(f"emulator printed nothing within {timeout_s} s")
        return self.proc.stdout.readline()

    def wait(self, timeout_s: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout_s)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
        """Signal the emulator and return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout_s)

    def output(self) -> str:
        """Everything printed after the first line (call after it exited)."""
        assert self.proc.stdout is not None
        return self.proc.stdout.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _relaxed_config(name: str) -> RobotConfig:
    """Robot `name` with a short settle, relaxed timing checks and a patient link.

    Missed deadlines and states up to 1 s old are tolerated; every request gets 7 attempts of
    the robot's own reply timeout and the device watchdog is 500 ms, so that only what a test
    injects (a fault, a pause longer than the watchdog) ends an episode or cuts torque. The
    reply timeout itself is kept: while the host waits for the reply to a COMMAND the device
    lost, the previous command keeps acting (docs/safety.md, fault section).
    """
    base = load_robot_config(name)
    return base.model_copy(
        update={
            "reset": base.reset.model_copy(update={"settle_s": 0.04}),
            "safety": base.safety.model_copy(
                update={"deadline_tolerance": 100_000, "stale_state_s": 1.0}
            ),
            "serial": base.serial.model_copy(update={"retries": 6, "watchdog_ms": 500}),
        }
    )


@pytest.fixture(scope="session")
def relaxed_config() -> Callable[[str], RobotConfig]:
    """`relaxed_config(name)`: the relaxed config of robot `name` (module docstring)."""
    return _relaxed_config


@pytest.fixture
def emulator_factory() -> Iterator:
    """Start emulators with options inside a test; all are killed at teardown."""
    started: list[EmulatorProcess] = []

    def start(robot: str, *options: str) -> EmulatorProcess:
        emu = EmulatorProcess.start(robot, *options)
        started.append(emu)
        return emu

    yield start
    for emu in started:
        emu.kill()


@pytest.fixture(scope="session")
def furuta_emulator() -> Iterator[EmulatorProcess]:
    emu = EmulatorProcess.start("furuta")
    yield emu
    emu.kill()


@pytest.fixture(scope="session")
def arm2_emulator() -> Iterator[EmulatorProcess]:
    emu = EmulatorProcess.start("arm2")
    yield emu
    emu.kill()


@pytest.fixture(scope="session")
def furuta() -> RobotConfig:
    return load_robot_config("furuta")


@pytest.fixture(scope="session")
def arm2() -> RobotConfig:
    return load_robot_config("arm2")

