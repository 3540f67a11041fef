"""The firmware of an emulated device, without I/O: protocol handling, limits, faults, twin.

`DeviceModel(robot)` is what `hardware.emulator` runs behind its pseudo-terminal, and what
`hardware.mock_driver.MockDriver` runs in-process (messages without bytes). It follows
docs/protocol.md: `handle(frame, now_us)` answers one received frame (check order of section
7, state rules of section 4), `tick(now_us)` runs one device control period (section 6
watchdog, physics, sensors, fault checks). The clock is passed in, so tests drive it
deterministically.

Physics: the robot's `twin` MuJoCo model (`Twin`), advanced one control period per tick with
the targets of the last accepted COMMAND (a COMMAND takes effect at the next tick), measured
through the model's sensor effects (encoder quantisation, latency; `sim.envs.base.SensorModel`).
Torque off disables the actuators (0 V / limp servo). On ENABLE a voltage drive holds 0 V and
a position servo its present position until the first COMMAND.

Device-side limits: COMMAND targets are clamped to the robot's command bounds (voltage limit,
or the soft position limits for servos; `sim.actuation.command_bounds`), setting CLAMPED; a
servo target may also lie between a soft limit and the joint's present position beyond it
(never further out than the joint is), so that a joint resting past a soft limit can be moved
back slowly. Faults latched by the device: WATCHDOG, LIMIT (a joint faster than its velocity
limit; with torque on, a joint beyond a hard position limit, except that a joint switched on
while resting beyond it, on its end stop, may move back: it latches only if it gets further
out, by more than `LIMIT_SLACK`, than it has been since), BAD_COMMAND, OVER_CURRENT (above
`safety.max_current_a`) and OVER_TEMPERATURE (above `safety.max_temperature_c` +
`DEVICE_TEMP_MARGIN_C`).

Current and temperature: for a voltage-driven motor (furuta) current = motor torque / kt,
with kt and R read off the twin's DC-motor actuator (`Twin.motor_constants`), and the
winding temperature follows a first-order I^2 R model (`Thermal`). Servos report a constant
temperature (ambient unless changed). `inject_overtemperature()` adds a heat offset that puts
the motors past the limit for good (a fault that re-latches after CLEAR_FAULT, as a motor
still too hot does).
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from hardware.protocol import (
    DEFAULT_WATCHDOG_MS,
    PROTOCOL_VERSION,
    Ack,
    ClearFault,
    Command,
    Disable,
    Enable,
    ErrorCode,
    ErrorReply,
    Estop,
    FaultFlag,
    Frame,
    Hello,
    HelloReply,
    Message,
    MsgType,
    ReadState,
    SetWatchdog,
    StateReply,
    StatusFlag,
    Undecodable,
)
from sim.actuation import command_bounds
from sim.envs.base import SensorModel
from sim.robot_config import RobotConfig

FIRMWARE_VERSION = (1, 0, 0)
DEVICE_TEMP_MARGIN_C = 10.0  # device over-temperature limit above the host's safety limit
OVERTEMP_INJECTION_C = 20.0  # injected heat: this far past the host's limit
LIMIT_SLACK = 0.01  # joint units: beyond-hard-limit excursion growth tolerated (sensor noise)


@dataclass(frozen=True)
class Thermal:
    """First-order winding temperature: C dT/dt = I^2 R - (T - ambient) / R_th."""

    thermal_resistance: float = 30.0  # K/W
    capacity: float = 10.0  # J/K (time constant 300 s)
    ambient_c: float = 25.0


def _custom_numeric(model: mujoco.MjModel, name: str) -> float:
    idx = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_NUMERIC, name)
    return 0.0 if idx < 0 else float(model.numeric_data[model.numeric_adr[idx]])


class Twin:
    """The robot's `twin` MuJoCo model, stepped one control period at a time."""

    def __init__(self, robot: RobotConfig) -> None:
        self.robot = robot
        self.model = mujoco.MjModel.from_xml_path(str(robot.model_path("twin")))
        self.data = mujoco.MjData(self.model)
        ratio = robot.control_dt / self.model.opt.timestep
        self.n_substeps = int(round(ratio))
        if self.n_substeps < 1 or abs(ratio - self.n_substeps) > 1e-6:
            raise ValueError(
                f"{robot.models['twin']}: control period {robot.control_dt} s is not a whole "
                f"number of timesteps ({self.model.opt.timestep} s)"
            )
        ids = [self._id(mujoco.mjtObj.mjOBJ_JOINT, n) for n in robot.joint_names]
        self.qadr = self.model.jnt_qposadr[ids]
        self.vadr = self.model.jnt_dofadr[ids]
        self.act_ids = np.array(
            [self._id(mujoco.mjtObj.mjOBJ_ACTUATOR, n) for n in robot.actuated_joints]
        )
        self.act_joint_idx = np.array([robot.joint_names.index(n) for n in robot.actuated_joints])
        self.sensor = SensorModel(
            robot,
            latency_steps=int(_custom_numeric(self.model, "mfpg_sensor_latency_steps")),
            quantise=bool(_custom_numeric(self.model, "mfpg_quantise_encoders")),
        )
        if robot.actuation.type == "position":
            # The firmware clamps targets (DeviceModel._command); the servo itself takes any
            # target in the joint's hard range, e.g. its present position on an end stop.
            for aid, name in zip(self.act_ids, robot.actuated_joints, strict=True):
                hard = robot.joint(name).hard_limits
                if hard is not None:
                    self.model.actuator_ctrlrange[aid] = (hard.lower, hard.upper)
        self.set_torque(False)
        self.set_state(np.array([robot.reset.home.get(n, 0.0) for n in robot.joint_names]))

    def _id(self, kind: mujoco.mjtObj, name: str) -> int:
        idx = mujoco.mj_name2id(self.model, kind, name)
        if idx < 0:
            raise ValueError(f"twin model of '{self.robot.name}' has no {kind.name} '{name}'")
        return idx

    def set_state(self, q: np.ndarray, v: np.ndarray | None = None) -> None:
        """Put the joints at `q` with velocities `v` (default rest); the sensors restart there."""
        self.data.qpos[self.qadr] = q
        self.data.qvel[self.vadr] = 0.0 if v is None else v
        mujoco.mj_forward(self.model, self.data)
        self.q_meas, self.v_meas = self.sensor.reset(*self.true_state())

    def true_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact joint positions and velocities (config joint order)."""
        return self.data.qpos[self.qadr].copy(), self.data.qvel[self.vadr].copy()

    def set_torque(self, on: bool) -> None:
        """Actuators powered or not (off: no motor force at all, as an open H-bridge)."""
        flag = int(mujoco.mjtDisableBit.mjDSBL_ACTUATION)
        if on:
            self.model.opt.disableflags &= ~flag
        else:
            self.model.opt.disableflags |= flag

    def actuated_positions(self) -> np.ndarray:
        return self.data.qpos[self.qadr[self.act_joint_idx]].copy()

    def step(self, targets: np.ndarray) -> None:
        """Apply `targets` for one control period and take a (delayed) measurement."""
        self.data.ctrl[self.act_ids] = targets
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self.q_meas, self.v_meas = self.sensor.measure(*self.true_state())

    def motor_constants(self) -> tuple[float, float] | None:
        """(kt in N m/A, R in ohm) of a voltage-driven DC-motor actuator, else None.

        Such an actuator has torque = (kt/R) V - (kt km/R) w, i.e. gain kt/R and an affine
        velocity bias -kt km/R; with kt = km (SI units) both follow from gain and bias.
        """
        aid = self.act_ids[0]
        gain = float(self.model.actuator_gainprm[aid, 0])
        bias = float(self.model.actuator_biasprm[aid, 2])
        if self.model.actuator_biastype[aid] != mujoco.mjtBias.mjBIAS_AFFINE or bias >= 0:
            return None
        kt = -bias / gain
        return kt, kt / gain


class DeviceModel:
    """Protocol-level behaviour of the robot's firmware; see the module docstring."""

    def __init__(self, robot: RobotConfig, thermal: Thermal | None = None) -> None:
        self.robot = robot
        self.twin = Twin(robot)
        self.period_us = int(round(robot.control_dt * 1e6))
        self.lower, self.upper = command_bounds(robot)
        self.n_act = len(robot.actuated_joints)
        self.thermal = thermal or Thermal()
        motor = self.twin.motor_constants() if robot.device.has_current else None
        if robot.device.has_current and motor is None:
            raise ValueError(
                f"robot '{robot.name}' reports motor current but its twin's actuators are not "
                f"DC motors (affine velocity bias) to compute it from"
            )
        self.motor = motor
        self.temp_limit_c = robot.safety.max_temperature_c + DEVICE_TEMP_MARGIN_C
        self.current_limit_a = robot.safety.max_current_a
        self.enabled = False
        self.estopped = False
        self.faults = FaultFlag(0)
        self.clamped = False
        self.watchdog_ms = DEFAULT_WATCHDOG_MS
        self.targets = self._idle_targets()
        self.current = np.zeros(self.n_act)
        self.temperature = np.full(self.n_act, self.thermal.ambient_c)
        self.heat_offset_c = 0.0
        self.sample_us = 0
        self._feed_us = 0
        self._hard_lo = np.array([j.hard_limits.lower if j.hard_limits else -np.inf
                                  for j in robot.joints])
        self._hard_hi = np.array([j.hard_limits.upper if j.hard_limits else np.inf
                                  for j in robot.joints])
        self._vlim = np.array([j.velocity_limit for j in robot.joints])
        self._allowed_excursion = np.zeros(len(robot.joints))  # beyond hard limits, torque on

    # -- protocol ---------------------------------------------------------------------------
    def handle(self, frame: Frame, now_us: int) -> Message:
        """The reply to one CRC-valid received frame (docs/protocol.md section 7 order)."""
        seq, msg = frame
        if isinstance(msg, Undecodable):
            # The codec reports an unknown type first; a reply type is never a valid request.
            code = ErrorCode.UNKNOWN_TYPE if msg.type_id & 0x80 else msg.error
            if msg.type_id == MsgType.COMMAND and self.enabled:
                self.latch(FaultFlag.BAD_COMMAND)
            return ErrorReply(code, msg.type_id, seq)
        if not msg.TYPE.is_request:
            return ErrorReply(ErrorCode.UNKNOWN_TYPE, msg.TYPE, seq)
        handler = _HANDLERS[type(msg)]
        return handler(self, msg, seq, now_us)

    def _hello(self, msg: Hello, seq: int, now_us: int) -> Message:
        name = f"{self.robot.name} emulator"
        return HelloReply(
            PROTOCOL_VERSION,
            self.robot.device.model_id,
            len(self.robot.joints),
            self.n_act,
            FIRMWARE_VERSION,
            name,
        )

    def _enable(self, msg: Enable, seq: int, now_us: int) -> Message:
        refused = self._refusal(msg, seq, need_enabled=False)
        if refused:
            return refused
        if not self.enabled:
            self.targets = self._idle_targets()
            self.enabled = True
            self.twin.set_torque(True)
            self._allowed_excursion = self._excursion()
        self._feed_us = now_us
        return Ack(MsgType.ENABLE)

    def _disable(self, msg: Disable, seq: int, now_us: int) -> Message:
        self._torque_off()
        return Ack(MsgType.DISABLE)

    def _command(self, msg: Command, seq: int, now_us: int) -> Message:
        if len(msg.targets) != self.n_act:
            if self.enabled:
                self.latch(FaultFlag.BAD_COMMAND)
            return ErrorReply(ErrorCode.BAD_VALUE, MsgType.COMMAND, seq)
        refused = self._refusal(msg, seq, need_enabled=True)
        if refused:
            return refused
        raw = np.array(msg.targets)
        lower, upper = self.lower, self.upper
        if self.robot.actuation.type == "position":
            q = self.twin.q_meas[self.twin.act_joint_idx]
            lower, upper = np.minimum(lower, q), np.maximum(upper, q)
        self.targets = np.clip(raw, lower, upper)
        self.clamped = bool(np.any(self.targets != raw))
        self._feed_us = now_us
        return Ack(MsgType.COMMAND)

    def _read_state(self, msg: ReadState, seq: int, now_us: int) -> Message:
        return self.state()

    def _estop(self, msg: Estop, seq: int, now_us: int) -> Message:
        self.estopped = True
        self._torque_off()
        return Ack(MsgType.ESTOP)

    def _clear_fault(self, msg: ClearFault, seq: int, now_us: int) -> Message:
        self.faults = FaultFlag(0)
        self.estopped = False
        return Ack(MsgType.CLEAR_FAULT)

    def _set_watchdog(self, msg: SetWatchdog, seq: int, now_us: int) -> Message:
        self.watchdog_ms = msg.timeout_ms
        self._feed_us = now_us
        return Ack(MsgType.SET_WATCHDOG)

    def _refusal(self, msg: Message, seq: int, *, need_enabled: bool) -> ErrorReply | None:
        if self.estopped:
            return ErrorReply(ErrorCode.ESTOPPED, msg.TYPE, seq)
        if self.faults:
            return ErrorReply(ErrorCode.FAULTED, msg.TYPE, seq)
        if need_enabled and not self.enabled:
            return ErrorReply(ErrorCode.NOT_ENABLED, msg.TYPE, seq)
        return None

    # -- device control period ----------------------------------------------------------------
    def tick(self, now_us: int) -> None:
        """One control period ending at `now_us`: watchdog, physics, sensors, fault checks."""
        if self.enabled and now_us - self._feed_us > self.watchdog_ms * 1000:
            self.latch(FaultFlag.WATCHDOG)
        twin = self.twin
        twin.step(self.targets if self.enabled else self._idle_targets())
        self._update_motor()
        self.sample_us = now_us
        if np.any(np.abs(twin.v_meas) > self._vlim):
            self.latch(FaultFlag.LIMIT)
        if self.enabled:
            excursion = self._excursion()
            allowed = self._allowed_excursion
            if np.any(excursion > np.where(allowed > 0, allowed + LIMIT_SLACK, 0.0)):
                self.latch(FaultFlag.LIMIT)
            self._allowed_excursion = np.minimum(self._allowed_excursion, excursion)
        if np.max(self.temperature) > self.temp_limit_c:
            self.latch(FaultFlag.OVER_TEMPERATURE)
        if self.current_limit_a is not None and np.max(np.abs(self.current)) > self.current_limit_a:
            self.latch(FaultFlag.OVER_CURRENT)

    def _update_motor(self) -> None:
        """Current and winding temperature over one period (servos: temperature unchanged)."""
        if self.motor is None:
            return
        th = self.thermal
        kt, resistance = self.motor
        torque = self.twin.data.actuator_force[self.twin.act_ids]
        self.current = torque / kt if self.enabled else np.zeros(self.n_act)
        heat = self.current**2 * resistance
        cool = (self.temperature - th.ambient_c - self.heat_offset_c) / th.thermal_resistance
        self.temperature = self.temperature + self.robot.control_dt * (heat - cool) / th.capacity

    def inject_overtemperature(self) -> None:
        """Put every motor past the device's temperature limit from now on."""
        self.heat_offset_c = self.temp_limit_c + OVERTEMP_INJECTION_C - self.thermal.ambient_c
        self.temperature = np.maximum(self.temperature, self.thermal.ambient_c + self.heat_offset_c)

    def latch(self, fault: FaultFlag) -> None:
        """Latch `fault` (kept until CLEAR_FAULT) and switch torque off."""
        self.faults |= fault
        self._torque_off()

    def shutdown(self) -> None:
        """Power-down path: torque off."""
        self._torque_off()

    def state(self) -> StateReply:
        """The latest sample as a STATE message."""
        status = StatusFlag(0)
        if self.enabled:
            status |= StatusFlag.ENABLED
        if self.estopped:
            status |= StatusFlag.ESTOPPED
        if self.faults:
            status |= StatusFlag.FAULTED
        if self.clamped:
            status |= StatusFlag.CLAMPED
        dev = self.robot.device
        return StateReply(
            self.sample_us,
            status,
            self.faults,
            tuple(self.twin.q_meas.tolist()),
            tuple(self.twin.v_meas.tolist()),
            tuple(self.current.tolist()) if dev.has_current else None,
            tuple(self.temperature.tolist()) if dev.has_temperature else None,
        )

    # -- internals ------------------------------------------------------------------------
    def _excursion(self) -> np.ndarray:
        """How far each measured joint is beyond its hard position limits (0 inside)."""
        q = self.twin.q_meas
        return np.maximum(np.maximum(self._hard_lo - q, q - self._hard_hi), 0.0)

    def _idle_targets(self) -> np.ndarray:
        if self.robot.actuation.type == "position":
            return self.twin.actuated_positions()
        return np.zeros(self.n_act)

    def _torque_off(self) -> None:
        self.enabled = False
        self.twin.set_torque(False)



_HANDLERS = {
    Hello: DeviceModel._hello,
    Enable: DeviceModel._enable,
    Disable: DeviceModel._disable,
    Command: DeviceModel._command,
    ReadState: DeviceModel._read_state,
    Estop: DeviceModel._estop,
    ClearFault: DeviceModel._clear_fault,
    SetWatchdog: DeviceModel._set_watchdog,
}
