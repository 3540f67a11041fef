"""`MockDriver`: an in-process fake device for fast, deterministic unit tests.

It runs the firmware of the device emulator, `hardware.device_model.DeviceModel` (the twin
MuJoCo model, sensor effects, current and I^2 R temperature, watchdog, device-side limits and
faults), and talks to it with the same protocol messages as `SerialDriver`, bypassing only the
bytes: there is one implementation of the device's behaviour, and a refusal raises the same
error as over a serial link (`hardware.serial_driver.refusal_error`). Replies are not rounded
to float32, as a wire would round them.

Time is simulated: the device advances one control period per `read_state()` (or per
`advance()` period), never by the wall clock. Commands take effect at that next period, as on
the device. `DeviceState.host_time_s` is stamped with `time.monotonic()`, as the `RobotDriver`
contract says (`host_clock="monotonic"`), or with `host_clock="simulated"` the device clock
itself, which makes host-side staleness checks deterministic (`RobotEnv` measures ages with
`driver.clock`).

Test hooks: `inject_fault(name)`, `fail_after_n_calls(n)`, `stale_replies(age_s)`,
`call_delay_s` (a real sleep in `send_command`, for deadline tests), `set_temperature`,
`set_joint_state`, `advance(periods)`; every command received is recorded in `commands`
(accepted or not), so tests can check what reached the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hardware.device_model import DeviceModel
from hardware.driver import (
    DeviceInfo,
    DeviceState,
    RobotConnectionError,
    RobotDriver,
)
from hardware.protocol import (
    PROTOCOL_VERSION,
    ClearFault,
    Command,
    Disable,
    Enable,
    ErrorReply,
    Estop,
    FaultFlag,
    Frame,
    Hello,
    HelloReply,
    Message,
    SetWatchdog,
    decode_faults,
    next_seq,
)
from hardware.serial_driver import device_info, refusal_error, watchdog_request
from sim.robot_config import RobotConfig, load_robot_config

#: Fault names as the protocol's fault word decodes them (docs/protocol.md, `FaultFlag`).
FAULT_NAMES = tuple(f.name for f in FaultFlag)


@dataclass(frozen=True)
class CommandRecord:
    """One command as the device received it (before any device-side clamping)."""

    device_time_s: float
    command: np.ndarray
    accepted: bool
    enable_count: int  # how many times torque was switched on before this command


class MockDriver(RobotDriver):
    """`DeviceModel` behind the `RobotDriver` interface (test-only; see the module docstring)."""

    def __init__(
        self,
        robot: RobotConfig | str,
        *,
        host_clock: Literal["monotonic", "simulated"] = "monotonic",
    ) -> None:
        super().__init__(robot if isinstance(robot, RobotConfig) else load_robot_config(robot))
        if host_clock not in ("monotonic", "simulated"):
            raise ValueError(f"host_clock must be 'monotonic' or 'simulated', got {host_clock!r}")
        self.device = DeviceModel(self.robot)
        self.clock: Callable[[], float] = (
            time.monotonic if host_clock == "monotonic" else self._sim_clock
        )
        self.commands: list[CommandRecord] = []
        self.call_delay_s = 0.0
        self.enable_count = 0
        self._n_act = len(self.robot.actuated_joints)
        self._now_us = 0  # device clock
        self._seq = 0xFFFF
        self._connected = False
        self._fail_in: int | None = None
        self._fail_error: type[Exception] = RobotConnectionError
        self._stale_age_s = 0.0

    # -- RobotDriver ----------------------------------------------------------------------
    def connect(self) -> DeviceInfo:
        """Handshake and set the configured watchdog, as `SerialDriver.connect` does."""
        self.close()
        reply = self._handle(Hello(PROTOCOL_VERSION))
        assert isinstance(reply, HelloReply)
        self._handle(SetWatchdog(self.robot.serial.watchdog_ms))
        self._connected = True
        return device_info(reply)

    @property
    def connected(self) -> bool:
        return self._connected

    def enable(self) -> None:
        self._call()
        was_enabled = self.device.enabled
        self._ack(Enable())
        if not was_enabled:
            self.enable_count += 1

    def disable(self) -> None:
        """Torque off; works on a link failed by `fail_after_n_calls` (best effort)."""
        self._handle(Disable())

    def send_command(self, command: np.ndarray) -> None:
        self._call()
        if self.call_delay_s > 0:
            time.sleep(self.call_delay_s)
        cmd = np.array(command, dtype=np.float64).reshape(-1)
        try:
            msg: Command | None = Command(cmd.tolist())
        except ValueError:  # ProtocolError: not finite, or not 1..16 values
            msg = None
        if msg is None or len(msg.targets) != self._n_act:
            self.commands.append(CommandRecord(self.time_s, cmd, False, self.enable_count))
            raise ValueError(
                f"command must hold {self._n_act} finite value(s), one per actuated joint "
                f"{self.robot.actuated_joints}, got {command!r}"
            )
        reply = self._handle(msg)
        refused = isinstance(reply, ErrorReply)
        self.commands.append(CommandRecord(self.time_s, cmd, not refused, self.enable_count))
        if refused:
            raise refusal_error(msg.TYPE, reply, lambda: self.faults)

    def read_state(self) -> DeviceState:
        self._call()
        self.advance()
        dev = self.robot.device
        model = self.device
        twin = model.twin
        return DeviceState(
            device_time_s=model.sample_us * 1e-6,
            host_time_s=self.clock() - self._stale_age_s,
            positions=twin.q_meas.copy(),
            velocities=twin.v_meas.copy(),
            currents=model.current.copy() if dev.has_current else None,
            temperatures=model.temperature.copy() if dev.has_temperature else None,
            enabled=model.enabled,
            estopped=model.estopped,
            faults=self.faults,
        )

    def estop(self) -> None:
        self._handle(Estop())

    def clear_fault(self) -> None:
        self._call()
        self._handle(ClearFault())

    def set_watchdog(self, timeout_ms: int) -> None:
        self._handle(watchdog_request(timeout_ms))

    def close(self) -> None:
        self._handle(Disable())
        self._connected = False

    # -- device state ---------------------------------------------------------------------
    @property
    def torque_enabled(self) -> bool:
        """True while the actuators are powered."""
        return self.device.enabled

    @property
    def faults(self) -> tuple[str, ...]:
        """Latched fault names, in protocol bit order."""
        return tuple(decode_faults(self.device.faults))

    @property
    def time_s(self) -> float:
        """Device (simulated) clock."""
        return self._now_us * 1e-6

    @property
    def device_max_temperature_c(self) -> float:
        """Where the device latches OVER_TEMPERATURE (above the host's safety limit)."""
        return self.device.temp_limit_c

    def true_joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact joint positions and velocities (robot joint order)."""
        return self.device.twin.true_state()

    def command_log(self, accepted_only: bool = True) -> np.ndarray:
        """(N, n_actuated) array of the commands received."""
        rows = [r.command for r in self.commands if r.accepted or not accepted_only]
        return np.array(rows).reshape(-1, self._n_act)

    # -- test hooks -----------------------------------------------------------------------
    def inject_fault(self, name: str) -> None:
        """Latch a device fault by its protocol name (e.g. "OVER_TEMPERATURE"); torque off."""
        key = name.upper()
        if key not in FAULT_NAMES:
            raise ValueError(f"unknown fault '{name}'; known faults: {FAULT_NAMES}")
        self.device.latch(FaultFlag[key])

    def fail_after_n_calls(
        self, n: int, error: type[Exception] = RobotConnectionError
    ) -> None:
        """After `n` more calls (enable/send_command/read_state/clear_fault) every call raises."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._fail_in = n
        self._fail_error = error

    def stale_replies(self, age_s: float) -> None:
        """From now on, replies carry a host timestamp `age_s` in the past (0 restores)."""
        self._stale_age_s = float(age_s)

    def set_temperature(self, celsius: float) -> None:
        """Set every motor's temperature (the thermal model continues from there)."""
        self.device.temperature = np.full(self._n_act, float(celsius))

    def set_joint_state(self, q: np.ndarray, v: np.ndarray | None = None) -> None:
        """Teleport the physics (robot joint order); the sensor delay line restarts there."""
        self.device.twin.set_state(q, v)

    def advance(self, periods: int = 1) -> None:
        """Let `periods` control periods pass with no host traffic."""
        for _ in range(periods):
            self._now_us += self.device.period_us
            self.device.tick(self._now_us)

    # -- internals ------------------------------------------------------------------------
    def _sim_clock(self) -> float:
        return self._now_us * 1e-6

    def _call(self) -> None:
        if not self._connected:
            raise RobotConnectionError("mock driver is not connected; call connect() first")
        if self._fail_in is not None:
            if self._fail_in == 0:
                raise self._fail_error("injected failure: mock device stopped answering")
            self._fail_in -= 1

    def _handle(self, msg: Message) -> Message:
        """The device's reply to `msg`, received now."""
        self._seq = next_seq(self._seq)
        return self.device.handle(Frame(self._seq, msg), self._now_us)

    def _ack(self, msg: Message) -> None:
        reply = self._handle(msg)
        if isinstance(reply, ErrorReply):
            raise refusal_error(msg.TYPE, reply, lambda: self.faults)
