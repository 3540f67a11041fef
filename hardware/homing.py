"""The robot's reset procedure: slow move home, settle, randomise the start, settle again.

1. Move home: a reference that starts at the measured position and moves towards `reset.home`
   at `reset.homing_speed` (unit/s) per actuated joint.
2. Settle: hold home until every joint is settled (actuated joints within
   `reset.settle_position_tolerance` of the goal, all speeds below
   `reset.settle_velocity_tolerance`, passive joints at their home value modulo 2 pi, i.e.
   hanging) continuously for `reset.settle_s`; after `reset.max_settle_s` -> `ResetError`.
3. Randomise: the actuated joints move (same speed) to their values in a start drawn by
   `sim.starts.sample_start_state` (home + U(-1, 1) x `reset.position_noise`, the same draw
   as the simulated envs), clipped to the soft limits, and settle again. Passive joints and
   `reset.velocity_noise` cannot be imposed on a real robot: the start is wherever the robot
   settles (pendulum hanging at rest), and the measured start state is what the episode (and
   its low-fidelity pair) starts from.

Commands: position servos get the reference as target. Voltage/torque robots get a PD law on
the actuated joints plus feedback of the passive joints' velocity, which damps a swinging
pendulum through the arm (`reset.homing_gains` of the robot config; furuta's are tuned on the
twin: a pendulum swinging at 20 rad/s comes to rest in ~5 s instead of ~100 s by friction
alone), and a speed governor: an actuated joint faster than `reset.homing_speed` gets only
braking effort (a swinging pendulum can still kick the arm briefly above it). Every command
passes the safety layer.

Before torque goes on, `check_startable` refuses a joint outside its hard limits, except a
voltage/torque joint that coasted there (below) and a position-servo joint resting on its end
stop with torque off (outside its soft limits, at most `HARD_STOP_SLACK` of its hard range
beyond its hard limit): `end_stop_recovery` plans, and
`recover_end_stops` carries out, a slow move of such joints back inside their soft limits.
The pre-flight of a session (`mfpg_robot.robot_link`) and `RobotEnv.reset` share them. The move
talks to the driver directly (the safety layer would stop at once on a position beyond a hard
limit) and checks every period itself: device faults, torque still on, speeds within the
velocity limits, done within `reset.max_settle_s` plus the travel time; on any problem torque
goes off and `RecoveryError` says why.

A voltage/torque-driven joint has no end stop to rest on: with torque off it coasts (after a
safety stop or a device watchdog cut at speed). One found beyond its hard limit, at most
`COAST_SLACK` of its hard range (`coast_recovery`), is brought back by `ResetProcedure.recover`
once it has come to rest (`wait_at_rest`, torque off): torque on, the safety layer tolerating the
excursion as long as it does not grow (`SafetyLayer.allow_excursion`), a reference moving from
the measured position to just inside the soft limits at `reset.homing_speed`, tracked by the PD
law without the passive-joint feedback (which would push the arm with the swinging pendulum).

`ResetProcedure.brake` ends an episode of a voltage/torque robot: the PD law, holding each
actuated joint where it is (the reference follows the measured position, clipped to the soft
limits), with the speed governor and without passive feedback, until the actuated joints are at
rest (speeds within `reset.settle_velocity_tolerance` for `AT_REST_S`) or `brake_limit_s` has
passed; torque goes off after it (`RobotEnv.end_episode`), not at speed.

`reset.rest` (optional): a pose where the robot can rest with torque off (gravity-stable, e.g. a
servo arm lowered towards an end stop, forearm hanging). `RobotEnv.park` moves there
(`ResetProcedure.rest`, clipped to the soft limits) and switches torque off.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from hardware.driver import DeviceState, RobotDriver, RobotError
from hardware.safety import torque_off
from hardware.scheduler import Scheduler
from sim.robot_config import RobotConfig

#: How far beyond a hard limit (fraction of the joint's hard range) a position servo may rest,
#: on its end stop with torque off, and still be moved out by `recover_end_stops`.
HARD_STOP_SLACK = 0.02
#: How far beyond a hard limit (fraction of the joint's hard range) a voltage/torque-driven joint
#: may have coasted with torque off and still be moved back by `ResetProcedure.recover` (furuta's
#: arm: 1.53 rad, about a quarter turn; reasons in docs/safety.md, reset procedure).
COAST_SLACK = 1.0 / 3.0
#: How long the actuated joints must stay within `reset.settle_velocity_tolerance` to count as
#: at rest (end of the brake, and before a coast recovery switches torque on).
AT_REST_S = 0.02


class ResetError(RobotError):
    """The reset procedure cannot bring the robot to a start state (message says why)."""


class RecoveryError(ResetError):
    """A recovery move (out of an end stop, or back from a coast) stopped; torque is off
    (message says why)."""


@dataclass(frozen=True)
class Braking:
    """How an end-of-episode brake went: robot time, control periods, at rest or not."""

    duration_s: float
    periods: int
    at_rest: bool
    velocities: list[float]  # the actuated joints' last measured velocities

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ControlLoop(Protocol):
    """What the reset procedure drives: one command per control period, state back."""

    def apply_command(self, command: np.ndarray) -> DeviceState:
        """Filter and send `command`, wait for the period's deadline, return the new state."""


def _wrap(x: np.ndarray) -> np.ndarray:
    return (x + np.pi) % (2.0 * np.pi) - np.pi


class ResetProcedure:
    """Runs the reset for one robot on a `ControlLoop` (see the module docstring)."""

    def __init__(self, robot: RobotConfig) -> None:
        self.robot = robot
        self.cfg = robot.reset
        names = robot.joint_names
        self.act_idx = np.array([names.index(n) for n in robot.actuated_joints])
        self.passive_idx = np.array(
            [i for i, j in enumerate(robot.joints) if not j.actuated], dtype=int
        )
        home = np.array([robot.reset.home.get(n, 0.0) for n in names])
        self.home = home
        soft = [robot.joint(n).soft_limits for n in robot.actuated_joints]
        self.soft_lo = np.array([s.lower if s else -np.inf for s in soft])
        self.soft_hi = np.array([s.upper if s else np.inf for s in soft])
        self.step_size = robot.reset.homing_speed * robot.control_dt
        vlim = max(robot.joint(n).velocity_limit for n in robot.actuated_joints)
        decel = robot.safety.brake_decel
        #: Longest brake: from the velocity limit at `safety.brake_decel`, plus the at-rest check
        #: (voltage/torque robots; servos hold instead of braking).
        self.brake_limit_s = None if decel is None else vlim / decel + AT_REST_S
        rest = robot.reset.rest
        #: The rest pose of the actuated joints (`reset.rest`; home for joints it omits).
        self.rest = None if rest is None else np.clip(
            [rest.get(n, home[names.index(n)]) for n in robot.actuated_joints],
            self.soft_lo, self.soft_hi,
        )

    def check_startable(self, state: DeviceState) -> dict[str, list[float]]:
        """The recoveries a start needs: servos on an end stop (`end_stop_recovery`), effort
        joints that coasted past a hard limit (`coast_recovery`); `ResetError` for a joint
        outside its hard limits that no recovery may move (needs the operator)."""
        recovery = {**end_stop_recovery(self.robot, state), **coast_recovery(self.robot, state)}
        for i, joint in enumerate(self.robot.joints):
            lim = joint.hard_limits
            q = state.positions[i]
            if lim is not None and not lim.lower <= q <= lim.upper and joint.name not in recovery:
                raise ResetError(
                    f"joint '{joint.name}' at {q:.3f} is outside its hard limits "
                    f"[{lim.lower}, {lim.upper}], too far for a recovery move: with torque off, "
                    "move it back inside by hand, then reset again"
                )
        return recovery

    def run(self, loop: ControlLoop, state: DeviceState, start: np.ndarray) -> DeviceState:
        """Home, settle, move the actuated joints to `start` (all joints), settle.

        `start` is a sampled start pose (`sim.starts.sample_start_state`); only its actuated
        joints can be imposed. Returns the measured start state.
        """
        goal = np.clip(self.home[self.act_idx], self.soft_lo, self.soft_hi)
        state, ref = self.move(loop, state, goal)
        state = self.settle(loop, state, ref)
        goal = np.clip(start[self.act_idx], self.soft_lo, self.soft_hi)
        state, ref = self.move(loop, state, goal, ref)
        return self.settle(loop, state, ref)

    def command(self, state: DeviceState, ref: np.ndarray, *, passive: bool = True) -> np.ndarray:
        """The command that tracks `ref` (servo target, or PD effort with passive damping
        unless `passive` is False)."""
        g = self.cfg.homing_gains
        if g is None:  # position servos (the config requires gains for every other kind)
            return ref.copy()
        q, v = state.positions, state.velocities
        u = g.kp * (ref - q[self.act_idx]) - g.kd * v[self.act_idx]
        if passive and self.passive_idx.size:
            qp = q[self.passive_idx] - self.home[self.passive_idx]
            u = u + g.passive_damping * float(np.sum(v[self.passive_idx] * np.cos(qp)))
        # Speed governor: above the homing speed, brake in proportion to the excess.
        va = v[self.act_idx]
        excess = np.sign(va) * np.maximum(np.abs(va) - self.cfg.homing_speed, 0.0)
        return np.where(excess != 0.0, -g.speed_gain * excess, u)

    def move(
        self,
        loop: ControlLoop,
        state: DeviceState,
        goal: np.ndarray,
        ref: np.ndarray | None = None,
        *,
        passive: bool = True,
    ) -> tuple[DeviceState, np.ndarray]:
        """Move the reference (default: the measured position, clipped to the soft limits) to
        `goal` at the homing speed."""
        if ref is None:
            ref = np.clip(state.positions[self.act_idx], self.soft_lo, self.soft_hi)
        while not np.allclose(ref, goal, rtol=0.0, atol=1e-12):
            ref = ref + np.clip(goal - ref, -self.step_size, self.step_size)
            state = loop.apply_command(self.command(state, ref, passive=passive))
        return state, ref

    def recover(
        self, loop: ControlLoop, state: DeviceState, recovery: dict[str, list[float]]
    ) -> DeviceState:
        """Voltage/torque joints of `recovery` (`coast_recovery`) back to their targets: the
        reference moves from the measured position at the homing speed, without passive
        feedback; other actuated joints hold where they are (inside their soft limits)."""
        q = state.positions[self.act_idx].astype(np.float64)
        goal = np.array([recovery[n][1] if n in recovery else q[j]
                         for j, n in enumerate(self.robot.actuated_joints)])
        state, _ = self.move(loop, state, np.clip(goal, self.soft_lo, self.soft_hi), q,
                             passive=False)
        return state

    def at_rest(self, state: DeviceState) -> bool:
        """Every actuated joint slower than `reset.settle_velocity_tolerance`."""
        v = state.velocities[self.act_idx]
        return bool(np.all(np.abs(v) <= self.cfg.settle_velocity_tolerance))

    def brake(self, loop: ControlLoop, state: DeviceState) -> tuple[DeviceState, Braking]:
        """Bring the actuated joints of a voltage/torque robot to rest (module docstring).

        Returns the last state and how it went; a safety stop raises `SafetyStopError` from
        `loop` (the stop carried out). Torque stays on: the caller switches it off.
        """
        if self.brake_limit_s is None:
            raise ValueError(f"robot '{self.robot.name}' has position servos: they hold, "
                             "they do not brake")
        dt = self.robot.control_dt
        need = max(1, int(np.ceil(AT_REST_S / dt - 1e-9)))
        limit = int(np.ceil(self.brake_limit_s / dt))
        run = periods = 0
        while run < need and periods < limit:
            ref = np.clip(state.positions[self.act_idx], self.soft_lo, self.soft_hi)
            state = loop.apply_command(self.command(state, ref, passive=False))
            periods += 1
            run = run + 1 if self.at_rest(state) else 0
        v = state.velocities[self.act_idx]
        return state, Braking(periods * dt, periods, run >= need, v.round(4).tolist())

    def settled(self, state: DeviceState, ref: np.ndarray) -> bool:
        """Actuated joints at `ref`, passive joints hanging at home, everything at rest."""
        tol = self.cfg.settle_position_tolerance
        q, v = state.positions, state.velocities
        ok = bool(np.all(np.abs(q[self.act_idx] - ref) <= tol))
        ok &= bool(np.all(np.abs(v) <= self.cfg.settle_velocity_tolerance))
        if self.passive_idx.size:
            off = _wrap(q[self.passive_idx] - self.home[self.passive_idx])
            ok &= bool(np.all(np.abs(off) <= tol))
        return ok

    def settle(self, loop: ControlLoop, state: DeviceState, ref: np.ndarray) -> DeviceState:
        """Hold `ref` until settled for `reset.settle_s` in a row (at most `max_settle_s`)."""
        dt = self.robot.control_dt
        need = max(1, int(round(self.cfg.settle_s / dt)))
        limit = int(round(self.cfg.max_settle_s / dt))
        run = 0
        for _ in range(limit):
            state = loop.apply_command(self.command(state, ref))
            run = run + 1 if self.settled(state, ref) else 0
            if run >= need:
                return state
        q, v = state.positions, state.velocities
        raise ResetError(
            f"robot '{self.robot.name}' did not settle within {self.cfg.max_settle_s} s at "
            f"{dict(zip(self.robot.actuated_joints, ref.round(3).tolist(), strict=True))} "
            f"(last positions {q.round(3).tolist()}, velocities {v.round(3).tolist()}); "
            "check the joints move freely, or raise reset.max_settle_s (or the settle "
            "tolerances) in the robot config"
        )


def end_stop_recovery(robot: RobotConfig, state: DeviceState) -> dict[str, list[float]]:
    """Position-servo joints resting on an end stop: joint -> [measured, target].

    A joint qualifies outside its soft limits and at most `HARD_STOP_SLACK` of its hard range
    beyond its hard limit; its target is just inside the soft limits (by
    `reset.settle_position_tolerance`). Empty for voltage/torque robots.
    """
    if robot.actuation.type != "position":
        return {}
    tol = robot.reset.settle_position_tolerance
    recovery: dict[str, list[float]] = {}
    for i, joint in enumerate(robot.joints):
        soft, hard, q = joint.soft_limits, joint.hard_limits, float(state.positions[i])
        if not joint.actuated or soft is None or hard is None or soft.lower <= q <= soft.upper:
            continue
        beyond = max(hard.lower - q, q - hard.upper, 0.0)
        if beyond <= HARD_STOP_SLACK * (hard.upper - hard.lower):
            recovery[joint.name] = [q, min(max(q, soft.lower + tol), soft.upper - tol)]
    return recovery


def coast_recovery(robot: RobotConfig, state: DeviceState) -> dict[str, list[float]]:
    """Voltage/torque joints that coasted past a hard limit: joint -> [measured, target].

    A joint qualifies beyond its hard limit by at most `COAST_SLACK` of its hard range; its
    target is just inside the soft limits (by `reset.settle_position_tolerance`). Empty for
    position servos (`end_stop_recovery`).
    """
    if robot.actuation.type == "position":
        return {}
    tol = robot.reset.settle_position_tolerance
    recovery: dict[str, list[float]] = {}
    for i, joint in enumerate(robot.joints):
        soft, hard, q = joint.soft_limits, joint.hard_limits, float(state.positions[i])
        if not joint.actuated or soft is None or hard is None or hard.lower <= q <= hard.upper:
            continue
        beyond = max(hard.lower - q, q - hard.upper)
        if beyond <= COAST_SLACK * (hard.upper - hard.lower):
            recovery[joint.name] = [q, min(max(q, soft.lower + tol), soft.upper - tol)]
    return recovery


def wait_at_rest(
    driver: RobotDriver, procedure: ResetProcedure, scheduler: Scheduler, limit_s: float
) -> DeviceState:
    """Torque off: read the state every control period until the actuated joints are at rest
    (`ResetProcedure.at_rest` for `AT_REST_S`); `ResetError` after `limit_s`."""
    robot = driver.robot
    need = max(1, int(np.ceil(AT_REST_S / robot.control_dt - 1e-9)))
    scheduler.start()
    run = 0
    for _ in range(int(np.ceil(limit_s / robot.control_dt))):
        scheduler.wait()
        state = driver.read_state()
        run = run + 1 if procedure.at_rest(state) else 0
        if run >= need:
            return state
    raise ResetError(
        f"robot '{robot.name}' did not come to rest within {limit_s:g} s with torque off "
        f"(last positions {state.positions.round(3).tolist()}, velocities "
        f"{state.velocities.round(3).tolist()}); once it rests, reset again"
    )


def recover_end_stops(
    driver: RobotDriver,
    recovery: dict[str, list[float]],
    scheduler: Scheduler | None = None,
) -> np.ndarray:
    """Torque on; move the joints of `recovery` to their targets; return the servo targets held.

    Targets move at `reset.homing_speed` from the measured position, one command per control
    period of `scheduler` (default: a real-time one); joints without a recovery hold where they
    are. Done once the joints are within the settle tolerances of the goal (`reset.settle_*`).
    Checked every period (module docstring); on a problem, or any exception, torque goes off.
    """
    robot = driver.robot
    act = [robot.joint_names.index(n) for n in robot.actuated_joints]
    scheduler = scheduler if scheduler is not None else Scheduler(robot.control_dt)
    state = driver.read_state()
    ref = state.positions[act].astype(np.float64)
    goal = np.array([recovery[n][1] if n in recovery else ref[j]
                     for j, n in enumerate(robot.actuated_joints)])
    cfg = robot.reset
    step = cfg.homing_speed * robot.control_dt
    vlim = np.array([j.velocity_limit for j in robot.joints])
    limit_s = cfg.max_settle_s + float(np.max(np.abs(goal - ref))) / cfg.homing_speed
    try:
        driver.enable()
        scheduler.start()
        for _ in range(int(np.ceil(limit_s / robot.control_dt))):
            ref = ref + np.clip(goal - ref, -step, step)
            driver.send_command(ref)
            scheduler.wait()
            state = driver.read_state()
            problem = None
            if state.faults or state.estopped or not state.enabled:
                problem = (f"the device stopped (faults {list(state.faults)}, "
                           f"estopped={state.estopped}, torque on={state.enabled})")
            elif np.any(np.abs(state.velocities) > vlim):
                problem = f"a joint moved too fast ({state.velocities.round(3).tolist()})"
            elif (
                np.array_equal(ref, goal)
                and np.all(np.abs(state.positions[act] - goal) <= cfg.settle_position_tolerance)
                and np.all(np.abs(state.velocities) <= cfg.settle_velocity_tolerance)
            ):
                return ref
            if problem is not None:
                break
        else:
            problem = f"it did not reach {goal.round(4).tolist()} within {limit_s:.1f} s"
        raise RecoveryError(
            f"recovery move of '{robot.name}' stopped, torque off: {problem} (last positions "
            f"{state.positions.round(4).tolist()}). With torque off, move the joints inside "
            "their soft limits by hand, then start again."
        )
    except BaseException:
        torque_off(driver)
        raise
