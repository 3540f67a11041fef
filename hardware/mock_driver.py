"""`MockDriver`: an in-process fake device backed by a MuJoCo model of the robot. TEST-ONLY.

It implements `RobotDriver` without any I/O so that the safety layer and `RobotEnv` can be
unit-tested fast and deterministically. It is not a stand-in for dry runs: those use
`SerialDriver` against the device emulator, the same code path as the real robot.

Clock model (simulated, deterministic, no sleeping): the device clock advances by one control
period at every `read_state()`: a reading closes the current control period, during which the
last accepted command was applied for `n_substeps` physics steps (a device keeps applying its
last command until its watchdog fires). `send_command` only latches the command. So a control
loop `send_command(u); s = read_state()` advances exactly one period per step, and a host that
only reads (or calls `advance`) lets simulated time pass without commands, which is how the
device watchdog (in simulated time) is exercised. `host_time_s` of a state is `clock()`:
`time.monotonic()` as the `RobotDriver` contract says (`host_clock="monotonic"`), or with
`host_clock="simulated"` the device clock itself, which makes host-side staleness checks
deterministic (`RobotEnv` measures ages with `driver.clock`).

Device behaviour mirrored from the firmware spec (docs/protocol.md): COMMAND and ENABLE are
refused while torque is off / a fault or the e-stop is latched (`RobotFaultError`); every
fault latches, forces torque off and stays until `clear_fault`; device-side limits latch
`LIMIT` (a joint beyond its hard position limit or velocity limit) and `OVER_TEMPERATURE`
(above `device_max_temperature_c`). Torque off disables the actuators in MuJoCo.

Sensors: positions/velocities through the model's sensor effects (`sim.envs.base.SensorModel`:
latency, encoder quantisation); motor currents and an I^2 R thermal model where the config says
the device has them (`MotorThermal`, QUBE-Servo 2 figures by default); otherwise constant
temperature.

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

import mujoco
import numpy as np

from hardware.driver import (
    DeviceInfo,
    DeviceState,
    RobotConnectionError,
    RobotDriver,
    RobotFaultError,
)
from sim.envs.base import SensorModel
from sim.robot_config import RobotConfig, load_robot_config

#: Fault names as the protocol's fault word decodes them (docs/protocol.md, `FaultFlag`).
FAULT_NAMES = (
    "WATCHDOG",
    "OVER_TEMPERATURE",
    "OVER_CURRENT",
    "LIMIT",
    "BAD_COMMAND",
    "SENSOR",
    "SUPPLY",
    "INTERNAL",
)


@dataclass(frozen=True)
class CommandRecord:
    """One command as the device received it (before any device-side clamping)."""

    device_time_s: float
    command: np.ndarray
    accepted: bool
    enable_count: int  # how many times torque was switched on before this command


@dataclass(frozen=True)
class MotorThermal:
    """DC motor current and winding temperature (first-order I^2 R thermal model).

    current = actuator torque / torque_constant;
    capacity dT/dt = current^2 resistance - (T - ambient) / thermal_resistance.
    Defaults: QUBE-Servo 2 figures (kt 0.042 N m/A, R 8.4 ohm), thermal time constant 300 s.
    """

    torque_constant: float = 0.042
    resistance: float = 8.4
    thermal_resistance: float = 30.0
    capacity: float = 10.0
    ambient_c: float = 25.0


def _custom_numeric(model: mujoco.MjModel, name: str) -> float:
    idx = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_NUMERIC, name)
    return 0.0 if idx < 0 else float(model.numeric_data[model.numeric_adr[idx]])


class MockDriver(RobotDriver):
    """In-process fake device on a MuJoCo model (test-only; see the module docstring)."""

    def __init__(
        self,
        robot: RobotConfig | str,
        fidelity: str = "twin",
        *,
        thermal: MotorThermal | None = None,
        device_max_temperature_c: float | None = None,
        host_clock: Literal["monotonic", "simulated"] = "monotonic",
    ) -> None:
        super().__init__(robot if isinstance(robot, RobotConfig) else load_robot_config(robot))
        cfg = self.robot
        self.fidelity = fidelity
        self.model = mujoco.MjModel.from_xml_path(str(cfg.model_path(fidelity)))
        self.data = mujoco.MjData(self.model)
        self.n_substeps = int(round(cfg.control_dt / self.model.opt.timestep))
        self._qadr, self._vadr = self._joint_addresses()
        self._act_ids = np.array(
            [mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_ACTUATOR, n)
             for n in cfg.actuated_joints]
        )
        self._act_joint_idx = np.array([cfg.joint_names.index(n) for n in cfg.actuated_joints])
        self.sensor = SensorModel(
            cfg,
            latency_steps=int(_custom_numeric(self.model, "mfpg_sensor_latency_steps")),
            quantise=bool(_custom_numeric(self.model, "mfpg_quantise_encoders")),
        )
        self.thermal = thermal or MotorThermal()
        self.device_max_temperature_c = (
            device_max_temperature_c
            if device_max_temperature_c is not None
            else cfg.safety.max_temperature_c + 10.0
        )
        if host_clock not in ("monotonic", "simulated"):
            raise ValueError(f"host_clock must be 'monotonic' or 'simulated', got {host_clock!r}")
        self.clock: Callable[[], float] = (
            time.monotonic if host_clock == "monotonic" else self._sim_clock
        )
        self.commands: list[CommandRecord] = []
        self.call_delay_s = 0.0
        self.enable_count = 0
        self._connected = False
        self._enabled = False
        self._estopped = False
        self._faults: set[str] = set()
        self._watchdog_s = cfg.serial.watchdog_ms / 1000.0
        self._last_command_time = 0.0
        self._temperature = np.full(len(cfg.actuated_joints), self.thermal.ambient_c)
        self._current = np.zeros(len(cfg.actuated_joints))
        self._fail_in: int | None = None
        self._stale_age_s = 0.0
        self._set_torque(False)
        mujoco.mj_forward(self.model, self.data)
        self._q_meas, self._v_meas = self.sensor.reset(*self.true_joint_state())

    # -- construction helpers -------------------------------------------------------------
    def _joint_addresses(self) -> tuple[np.ndarray, np.ndarray]:
        qadr, vadr = [], []
        for name in self.robot.joint_names:
            jid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, name)
            if jid < 0:
                raise ValueError(
                    f"model '{self.fidelity}' of robot '{self.robot.name}' lacks joint '{name}'"
                )
            qadr.append(self.model.jnt_qposadr[jid])
            vadr.append(self.model.jnt_dofadr[jid])
        return np.array(qadr), np.array(vadr)

    # -- RobotDriver ----------------------------------------------------------------------
    def connect(self) -> DeviceInfo:
        self._connected = True
        return DeviceInfo(
            protocol_version=self.robot.device.protocol_version,
            model_id=self.robot.device.model_id,
            model_name=self.robot.name,
            joint_count=len(self.robot.joints),
            actuator_count=len(self.robot.actuated_joints),
            firmware_version="mock-1",
        )

    @property
    def connected(self) -> bool:
        return self._connected

    def enable(self) -> None:
        self._call()
        if self._estopped:
            raise RobotFaultError("enable refused: e-stop latched; call clear_fault()", ("ESTOP",))
        if self._faults:
            faults = self.faults
            raise RobotFaultError(f"enable refused: faults latched {faults}", faults)
        if not self._enabled:
            # Servos start holding where they are, effort drives at zero.
            self.data.ctrl[self._act_ids] = self._idle_command()
            self.enable_count += 1
        self._set_torque(True)
        self._last_command_time = self.data.time

    def disable(self) -> None:
        self._set_torque(False)

    def send_command(self, command: np.ndarray) -> None:
        self._call()
        if self.call_delay_s > 0:
            time.sleep(self.call_delay_s)
        cmd = np.array(command, dtype=np.float64).reshape(-1)
        accepted = (
            self._enabled
            and not self._faults
            and not self._estopped
            and cmd.shape == (len(self._act_ids),)
            and bool(np.all(np.isfinite(cmd)))
        )
        self.commands.append(
            CommandRecord(self.data.time, cmd.copy(), accepted, self.enable_count)
        )
        if cmd.shape != (len(self._act_ids),):
            raise ValueError(
                f"command needs {len(self._act_ids)} values (one per actuated joint "
                f"{self.robot.actuated_joints}), got shape {cmd.shape}"
            )
        if not accepted:
            raise RobotFaultError(
                f"command refused: enabled={self._enabled}, estopped={self._estopped}, "
                f"faults={self.faults}, finite={bool(np.all(np.isfinite(cmd)))}",
                self.faults,
            )
        self.data.ctrl[self._act_ids] = cmd
        self._last_command_time = self.data.time

    def read_state(self) -> DeviceState:
        self._call()
        self._advance_one_period()
        temps = self._temperature.copy() if self.robot.device.has_temperature else None
        return DeviceState(
            device_time_s=self.data.time,
            host_time_s=self.clock() - self._stale_age_s,
            positions=self._q_meas.copy(),
            velocities=self._v_meas.copy(),
            currents=self._current.copy() if self.robot.device.has_current else None,
            temperatures=temps,
            enabled=self._enabled,
            estopped=self._estopped,
            faults=self.faults,
        )

    def estop(self) -> None:
        self._estopped = True
        self._set_torque(False)

    def clear_fault(self) -> None:
        self._call()
        self._faults.clear()
        self._estopped = False

    def set_watchdog(self, timeout_ms: int) -> None:
        if not 10 <= timeout_ms <= 10_000:
            raise ValueError(f"watchdog timeout must be in [10, 10000] ms, got {timeout_ms}")
        self._watchdog_s = timeout_ms / 1000.0

    def close(self) -> None:
        self._set_torque(False)
        self._connected = False

    # -- device state ---------------------------------------------------------------------
    @property
    def torque_enabled(self) -> bool:
        """True while the actuators are powered."""
        return self._enabled

    @property
    def faults(self) -> tuple[str, ...]:
        """Latched fault names, in protocol bit order."""
        return tuple(f for f in FAULT_NAMES if f in self._faults)

    @property
    def time_s(self) -> float:
        """Device (simulated) clock."""
        return float(self.data.time)

    def true_joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact joint positions and velocities (robot joint order)."""
        return self.data.qpos[self._qadr].copy(), self.data.qvel[self._vadr].copy()

    def command_log(self, accepted_only: bool = True) -> np.ndarray:
        """(N, n_actuated) array of the commands received."""
        rows = [r.command for r in self.commands if r.accepted or not accepted_only]
        return np.array(rows).reshape(-1, len(self._act_ids))

    # -- test hooks -----------------------------------------------------------------------
    def inject_fault(self, name: str) -> None:
        """Latch a device fault by its protocol name (e.g. "OVER_TEMPERATURE"); torque off."""
        key = name.upper()
        if key not in FAULT_NAMES:
            raise ValueError(f"unknown fault '{name}'; known faults: {FAULT_NAMES}")
        self._latch(key)

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
        self._temperature[:] = celsius

    def set_joint_state(self, q: np.ndarray, v: np.ndarray | None = None) -> None:
        """Teleport the physics (robot joint order); the sensor delay line restarts there."""
        self.data.qpos[self._qadr] = q
        self.data.qvel[self._vadr] = 0.0 if v is None else v
        mujoco.mj_forward(self.model, self.data)
        self._q_meas, self._v_meas = self.sensor.reset(*self.true_joint_state())

    def advance(self, periods: int = 1) -> None:
        """Let `periods` control periods pass with no host traffic."""
        for _ in range(periods):
            self._advance_one_period()

    # -- internals ------------------------------------------------------------------------
    def _sim_clock(self) -> float:
        return float(self.data.time)

    def _call(self) -> None:
        if not self._connected:
            raise RobotConnectionError("mock driver is not connected; call connect() first")
        if self._fail_in is not None:
            if self._fail_in == 0:
                raise self._fail_error("injected failure: mock device stopped answering")
            self._fail_in -= 1

    def _idle_command(self) -> np.ndarray:
        if self.robot.actuation.type == "position":
            return self.data.qpos[self._qadr[self._act_joint_idx]].copy()
        return np.zeros(len(self._act_ids))

    def _set_torque(self, on: bool) -> None:
        self._enabled = on
        flag = int(mujoco.mjtDisableBit.mjDSBL_ACTUATION)
        if on:
            self.model.opt.disableflags &= ~flag
        else:
            self.model.opt.disableflags |= flag

    def _latch(self, fault: str) -> None:
        self._faults.add(fault)
        self._set_torque(False)

    def _advance_one_period(self) -> None:
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        q, v = self.true_joint_state()
        self._q_meas, self._v_meas = self.sensor.measure(q, v)
        self._update_thermal()
        self._device_checks(q, v)

    def _update_thermal(self) -> None:
        dt = self.robot.control_dt
        th = self.thermal
        if self.robot.device.has_current:
            torque = self.data.actuator_force[self._act_ids] if self._enabled else 0.0
            self._current = np.asarray(torque, dtype=np.float64) / th.torque_constant
            heat = self._current**2 * th.resistance
            cool = (self._temperature - th.ambient_c) / th.thermal_resistance
            self._temperature = self._temperature + dt * (heat - cool) / th.capacity

    def _device_checks(self, q: np.ndarray, v: np.ndarray) -> None:
        if self._enabled and self.data.time - self._last_command_time > self._watchdog_s + 1e-9:
            self._latch("WATCHDOG")
        if np.max(self._temperature) > self.device_max_temperature_c:
            self._latch("OVER_TEMPERATURE")
        for i, joint in enumerate(self.robot.joints):
            lim = joint.hard_limits
            outside = lim is not None and not lim.lower <= q[i] <= lim.upper
            if outside or abs(v[i]) > joint.velocity_limit:
                self._latch("LIMIT")
