"""The `RobotDriver` interface: everything above it is vendor- and transport-agnostic.

A driver connects (with a handshake that checks the device against the robot config),
enables torque, sends one command per control step, reads the measured state, and stops.
Used as a context manager it connects on entry and ALWAYS disables torque and closes on
exit: on normal exit, on exceptions and on Ctrl+C (KeyboardInterrupt).

Implementations: `SerialDriver` (the framed protocol over pyserial; the real robot and the
device emulator) and `MockDriver` (the emulator's device model in-process; for unit tests).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from sim.robot_config import RobotConfig


class RobotError(Exception):
    """Base of the errors a driver raises."""


class RobotConnectionError(RobotError):
    """No port, no reply, repeated bad frames, or a device that does not match the config."""


class RobotFaultError(RobotError):
    """The device reports a latched fault; `faults` holds the decoded fault names."""

    def __init__(self, message: str, faults: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.faults = faults


@dataclass(frozen=True)
class DeviceInfo:
    """What the device says about itself in the handshake."""

    protocol_version: int
    model_id: int
    model_name: str
    joint_count: int
    actuator_count: int
    firmware_version: str


@dataclass(frozen=True)
class DeviceState:
    """One state reading, joints in robot-config order.

    `device_time_s`: the device clock; `host_time_s`: `time.monotonic()` when the reply
    arrived. `currents`/`temperatures` are None where the robot has no such sensors.
    """

    device_time_s: float
    host_time_s: float
    positions: np.ndarray
    velocities: np.ndarray
    currents: np.ndarray | None
    temperatures: np.ndarray | None
    enabled: bool
    estopped: bool
    faults: tuple[str, ...]


class RobotDriver(abc.ABC):
    """Thin driver for one robot described by a `RobotConfig`."""

    def __init__(self, robot: RobotConfig) -> None:
        self.robot = robot

    @abc.abstractmethod
    def connect(self) -> DeviceInfo:
        """Open the link and handshake; refuse a device that does not match the config."""

    @abc.abstractmethod
    def enable(self) -> None:
        """Torque on. Raises `RobotFaultError` while a fault is latched."""

    @abc.abstractmethod
    def disable(self) -> None:
        """Torque off. Always safe to call, also when already off."""

    @abc.abstractmethod
    def send_command(self, command: np.ndarray) -> None:
        """Send one physical command per actuated joint (volts, N m or position targets)."""

    def submit_command(self, command: np.ndarray) -> None:
        """Send a command without waiting for the device to accept it.

        The next `read_state()` reports a refusal (the same `RobotFaultError` that
        `send_command` raises), so a control loop's command acknowledgement overlaps its
        wait for the period's deadline. A bad command (`ValueError`) is refused here, before
        sending. Any other request first abandons the outcome of a submitted command that was
        not read yet (never re-sending it). This default sends synchronously.
        """
        self.send_command(command)

    @abc.abstractmethod
    def read_state(self) -> DeviceState:
        """Read a fresh measured state (never a stale or out-of-order reply)."""

    @abc.abstractmethod
    def estop(self) -> None:
        """Emergency stop: torque off at once, latched until `clear_fault`."""

    @abc.abstractmethod
    def clear_fault(self) -> None:
        """Clear latched faults and the e-stop; torque stays off until `enable`."""

    @abc.abstractmethod
    def set_watchdog(self, timeout_ms: int) -> None:
        """Device-side watchdog: no valid command for this long -> torque off, fault latched."""

    @abc.abstractmethod
    def close(self) -> None:
        """Disable torque (best effort) and release the link. Idempotent."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True between a successful `connect` and `close`."""

    def __enter__(self) -> RobotDriver:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Torque off on every way out, Ctrl+C included; `close` disables before releasing.
        self.close()
