"""Host-side safety layer: filters every command, watches every measured state, latches stops.

Every action passes, in order (rules in docs/safety.md):

1. `action`: reject NaN/inf or a wrong shape (latched stop, nothing sent); clip to [-1, 1]
   (physical commands: clip to the command bounds, `sim.actuation.command_bounds`).
2. `rate`: |command - previous command| <= `actuation.max_command_change` per control step.
3. `soft_limit`: position servos: targets clamped to the joint soft limits. Voltage/torque:
   braking-distance rule: with measured q, v the joint needs
   s = |v| t_react + v^2 / (2 brake_decel) to stop (`safety.brake_decel` of the robot config);
   where q + sign(v) s reaches the soft limit, effort towards that limit is forbidden, and if
   the joint still moves towards it the full opposite effort is commanded (a brake).
4. `velocity`: a joint above `safety.velocity_margin` x its velocity limit gets no command
   pushing it further in its direction of motion (effort <= 0, or a target not beyond its
   position).
5. `workspace`: position robots with a `workspace`: the commanded pose's site (forward
   kinematics of the twin model) must be inside the box; otherwise the command is pulled back
   along the segment from the previous command.

Stages 1-2 are hard: later stages narrow the allowed interval but never leave it, so a command
that reaches the driver is always within the command bounds and the rate limit.

`check_state` latches a stop on a hard-limit violation (position outside hard limits,
|velocity| > velocity limit), over-temperature, over-current, a stale state, a device fault or
unexpected torque loss; `missed_deadlines` on more consecutive misses than tolerated. A latched
stop refuses every command until `reset_safety()` acknowledges it. `allow_excursion(state)`
(the recovery of a joint that coasted past a hard limit) tolerates the joints' present
excursions beyond their hard limits, as long as they do not grow by more than
`reset.settle_position_tolerance`; the allowance shrinks as they come back, and `start()` ends it.

Every event is kept in `events` and passed to each callable in `listeners` as it happens
(from whichever thread records it, e.g. the keep-alive's), e.g. to log it or write it to disk;
a listener that raises is logged (logger `hardware.safety`) and never keeps a stop from
being carried out.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import mujoco
import numpy as np

from hardware.driver import DeviceState, RobotDriver, RobotError
from sim.actuation import command_bounds, command_to_action
from sim.robot_config import RobotConfig

_log = logging.getLogger(__name__)

STAGES = ("action", "rate", "soft_limit", "velocity", "workspace")
#: Stops that keep torque on (servos hold) when `safety.stop_mode` is "hold"; every other
#: kind (device fault, over-temperature/current, stale state, driver error, Ctrl+C) cuts torque.
HOLDABLE_KINDS = frozenset(
    {"invalid_action", "hard_position_limit", "velocity_limit", "missed_deadlines"}
)


class SafetyStopError(RobotError):
    """A safety stop is latched: commands are refused until it is acknowledged by a reset."""

    def __init__(self, message: str, event: SafetyEvent) -> None:
        super().__init__(message)
        self.event = event


@dataclass(frozen=True)
class SafetyEvent:
    """One safety event: host time (`time.monotonic`), kind, human-readable detail, stop."""

    time_s: float
    kind: str
    detail: str
    stop: str  # "torque_off", "hold", or "none" (not a stop, e.g. an acknowledgement)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FilterResult:
    """A filtered command: `command` physical and `action` normalised, None when rejected."""

    command: np.ndarray | None
    action: np.ndarray | None
    clipped: dict[str, bool]
    event: SafetyEvent | None = None

    def report(self) -> dict[str, Any]:
        """What each stage changed, for `info["safety"]`."""
        return {
            "clipped": dict(self.clipped),
            "any_clipped": any(self.clipped.values()),
            "rejected": self.command is None,
        }


def _narrow(lo: float, hi: float, a: float, b: float) -> tuple[float, float]:
    """[lo, hi] intersected with [a, b]; where that is empty, the point of [lo, hi] nearest it."""
    if b < lo:
        return lo, lo
    if a > hi:
        return hi, hi
    return max(lo, a), min(hi, b)


def torque_off(driver: RobotDriver) -> bool:
    """Disable torque; if that fails, e-stop; returns False if both failed (link lost)."""
    try:
        driver.disable()
        return True
    except RobotError:
        try:
            driver.estop()
            return True
        except RobotError:
            return False


class WorkspaceGuard:
    """Is the `workspace.site` of the twin model inside the workspace box for given targets?"""

    def __init__(self, robot: RobotConfig) -> None:
        if robot.workspace is None:
            raise ValueError(f"robot '{robot.name}' has no workspace")
        self.lower = np.array(robot.workspace.lower)
        self.upper = np.array(robot.workspace.upper)
        self._model = mujoco.MjModel.from_xml_path(str(robot.model_path("twin")))
        self._data = mujoco.MjData(self._model)
        self._site = mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_SITE, robot.workspace.site)
        if self._site < 0:
            raise ValueError(
                f"workspace.site '{robot.workspace.site}' not found in {robot.models['twin']}"
            )
        adr = []
        for name in robot.actuated_joints:
            jid = mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_JOINT, name)
            adr.append(self._model.jnt_qposadr[jid])
        self._qadr = np.array(adr)

    def site_position(self, targets: np.ndarray) -> np.ndarray:
        """World position of the site with the actuated joints at `targets`."""
        self._data.qpos[self._qadr] = targets
        mujoco.mj_kinematics(self._model, self._data)
        return self._data.site_xpos[self._site].copy()

    def inside(self, targets: np.ndarray) -> bool:
        p = self.site_position(targets)
        return bool(np.all(p >= self.lower) and np.all(p <= self.upper))

    def pull_back(self, start: np.ndarray, end: np.ndarray, iterations: int = 20) -> np.ndarray:
        """The point furthest along start -> end still inside (bisection; `start` inside)."""
        lo, hi = 0.0, 1.0
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            if self.inside(start + mid * (end - start)):
                lo = mid
            else:
                hi = mid
        return start + lo * (end - start)


class SafetyLayer:
    """Host-side command filter and state monitor for one robot (see the module docstring)."""

    def __init__(
        self,
        robot: RobotConfig,
        *,
        reaction_periods: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.robot = robot
        self.clock = clock
        self.position_servo = robot.actuation.type == "position"
        # The config guarantees brake_decel for effort robots; servos never brake by distance.
        self.brake_decel = robot.safety.brake_decel or math.inf
        self.velocity_margin = robot.safety.velocity_margin
        self.lower, self.upper = command_bounds(robot)
        self.max_change = robot.actuation.max_command_change
        span = float(np.max(self.upper - self.lower))
        # Sense (1 step latency) + act (1 step) + ramp the command across its range.
        self.reaction_periods = (
            reaction_periods
            if reaction_periods is not None
            else 2 + math.ceil(span / self.max_change)
        )
        act = [robot.joint_names.index(n) for n in robot.actuated_joints]
        self._act_idx = np.array(act)
        inf = np.inf
        soft = [robot.joint(n).soft_limits for n in robot.actuated_joints]
        self._soft_lo = np.array([s.lower if s else -inf for s in soft])
        self._soft_hi = np.array([s.upper if s else inf for s in soft])
        self._vlim = np.array([j.velocity_limit for j in robot.joints])
        hard = [j.hard_limits for j in robot.joints]
        self._hard_lo = np.array([h.lower if h else -inf for h in hard])
        self._hard_hi = np.array([h.upper if h else inf for h in hard])
        self._allowed_excursion = np.zeros(len(robot.joints))
        self.workspace = (
            WorkspaceGuard(robot) if self.position_servo and robot.workspace else None
        )
        self.events: list[SafetyEvent] = []
        self.listeners: list[Callable[[SafetyEvent], None]] = []
        self.latched: SafetyEvent | None = None
        self._prev = np.clip(np.zeros(len(act)), self.lower, self.upper)
        self._last_device_time: float | None = None
        self._device_time_advanced_at = 0.0

    # -- episode bookkeeping ----------------------------------------------------------------
    @property
    def previous_command(self) -> np.ndarray:
        """The last command passed to the driver (the rate limit's reference)."""
        return self._prev.copy()

    def idle_command(self, state: DeviceState) -> np.ndarray:
        """Hold the measured position (servos) or zero effort."""
        if self.position_servo:
            return np.clip(state.positions[self._act_idx], self.lower, self.upper)
        return np.zeros(len(self._act_idx))

    def start(self, state: DeviceState) -> np.ndarray:
        """After torque on: the rate limit starts from the idle command for `state`; no joint
        may be beyond its hard limits (an `allow_excursion` ends)."""
        self._prev = self.idle_command(state)
        self._last_device_time = None
        self._allowed_excursion[:] = 0.0
        return self._prev.copy()

    def allow_excursion(self, state: DeviceState) -> np.ndarray:
        """Tolerate the joints' excursions beyond their hard limits in `state` (module
        docstring); returns them (0 for joints inside)."""
        self._allowed_excursion = self._excursion(state.positions)
        return self._allowed_excursion.copy()

    def _excursion(self, q: np.ndarray) -> np.ndarray:
        return np.maximum(np.maximum(self._hard_lo - q, q - self._hard_hi), 0.0)

    def reset_safety(self) -> SafetyEvent | None:
        """Acknowledge a latched stop (recorded as an event); returns it, or None if none."""
        if self.latched is None:
            return None
        ack = SafetyEvent(
            self.clock(), "acknowledged", f"latched '{self.latched.kind}' stop cleared", "none"
        )
        self._add(ack)
        self.latched = None
        return ack

    def _add(self, event: SafetyEvent) -> None:
        self.events.append(event)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("safety event listener %r failed on %s", listener, event.kind)

    def stop_mode_for(self, kind: str) -> str:
        """"hold" for holdable kinds on position servos in hold mode, else "torque_off"."""
        hold = (
            self.robot.safety.stop_mode == "hold"
            and self.position_servo
            and kind in HOLDABLE_KINDS
        )
        return "hold" if hold else "torque_off"

    def latch(self, kind: str, detail: str) -> SafetyEvent:
        """Latch a stop (the first one wins; later ones are recorded too) and return it."""
        event = SafetyEvent(self.clock(), kind, detail, self.stop_mode_for(kind))
        self._add(event)
        if self.latched is None:
            self.latched = event
        return event

    def record(self, kind: str, detail: str) -> SafetyEvent:
        """Record an event that is not a stop (e.g. faults cleared at reset)."""
        event = SafetyEvent(self.clock(), kind, detail, "none")
        self._add(event)
        return event

    def execute_stop(self, driver: RobotDriver, state: DeviceState | None) -> str:
        """Carry out the latched stop on `driver`; returns "hold" or "torque_off" as done.

        Hold sends the measured position, through the rate limit and the soft limits, once;
        the device watchdog turns torque off later if the host stops commanding. If holding
        fails, torque goes off; if that fails too, an e-stop is attempted.
        """
        if self.latched is None:
            raise RuntimeError("execute_stop() called without a latched stop")
        if self.latched.stop == "hold" and state is not None:
            try:
                command = self._filter(self.idle_command(state), state, {"action": False})
                driver.send_command(command.command)
                self._prev = command.command
                return "hold"
            except RobotError:
                pass
        torque_off(driver)
        return "torque_off"

    # -- command filter -------------------------------------------------------------------
    def filter_action(self, action: Any, state: DeviceState) -> FilterResult:
        """Normalised policy action -> the physical command to send (or a rejection)."""
        self.ensure_not_latched()
        n = len(self._act_idx)
        try:
            a = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            a = np.full(n, np.nan)
        if a.shape != (n,) or not np.all(np.isfinite(a)):
            return self._reject(f"action must be {n} finite numbers, got {action!r}")
        clipped_a = np.clip(a, -1.0, 1.0)
        command = self.lower + (clipped_a + 1.0) * 0.5 * (self.upper - self.lower)
        return self._filter(command, state, {"action": bool(np.any(clipped_a != a))})

    def filter_command(self, command: Any, state: DeviceState) -> FilterResult:
        """A physical command (e.g. from the homing controller) through the same stages."""
        self.ensure_not_latched()
        c = np.asarray(command, dtype=np.float64)
        n = len(self._act_idx)
        if c.shape != (n,) or not np.all(np.isfinite(c)):
            return self._reject(f"command must be {n} finite numbers, got {command!r}")
        bounded = np.clip(c, self.lower, self.upper)
        return self._filter(bounded, state, {"action": bool(np.any(bounded != c))})

    def _reject(self, detail: str) -> FilterResult:
        event = self.latch("invalid_action", detail)
        return FilterResult(None, None, {s: False for s in STAGES}, event)

    def ensure_not_latched(self) -> None:
        """Raise `SafetyStopError` while a stop is latched."""
        if self.latched is not None:
            raise SafetyStopError(
                f"safety stop latched ({self.latched.kind}: {self.latched.detail}); "
                "reset the env (or call reset_safety()) to acknowledge it",
                self.latched,
            )

    def _filter(
        self, command: np.ndarray, state: DeviceState, clipped: dict[str, bool]
    ) -> FilterResult:
        for name in STAGES[1:]:
            clipped[name] = False
        out = np.empty(len(self._act_idx))
        lows = np.empty_like(out)
        highs = np.empty_like(out)
        q_all, v_all = state.positions, state.velocities
        for j, joint in enumerate(self._act_idx):
            q, v = float(q_all[joint]), float(v_all[joint])
            prev = float(self._prev[j])
            lo = max(float(self.lower[j]), prev - self.max_change)
            hi = min(float(self.upper[j]), prev + self.max_change)
            c = float(command[j])
            for name, (a, b) in (
                ("rate", (lo, hi)),
                ("soft_limit", self._soft_interval(j, q, v)),
                ("velocity", self._velocity_interval(j, q, v)),
            ):
                lo, hi = _narrow(lo, hi, a, b)
                new = min(max(c, lo), hi)
                clipped[name] |= new != c
                c = new
            out[j], lows[j], highs[j] = c, lo, hi
        if self.workspace is not None and not self.workspace.inside(out):
            anchor = np.clip(self._prev, lows, highs)
            if self.workspace.inside(anchor):
                anchor = self.workspace.pull_back(anchor, out)
            out = np.clip(anchor, lows, highs)
            clipped["workspace"] = True
        action = np.clip(command_to_action(self.robot, out), -1.0, 1.0)
        return FilterResult(out, action, clipped)

    def commit(self, command: np.ndarray) -> None:
        """Record that `command` was sent (the next rate-limit reference)."""
        self._prev = np.array(command, dtype=np.float64)

    def _soft_interval(self, j: int, q: float, v: float) -> tuple[float, float]:
        """Allowed command of actuated joint `j` by the soft limits (braking rule for effort)."""
        soft_lo, soft_hi = float(self._soft_lo[j]), float(self._soft_hi[j])
        if self.position_servo:
            return soft_lo, soft_hi
        t_react = self.reaction_periods * self.robot.control_dt
        stop = q + math.copysign(abs(v) * t_react + v * v / (2.0 * self.brake_decel), v)
        full = float(self.upper[j])  # effort bounds are symmetric
        lo, hi = -math.inf, math.inf
        if stop >= soft_hi:
            hi = -full if v > 0 else 0.0
        if stop <= soft_lo:
            lo = full if v < 0 else 0.0
        return lo, hi

    def _velocity_interval(self, j: int, q: float, v: float) -> tuple[float, float]:
        """No command pushing joint `j` further once it is above the velocity margin."""
        fast = self.velocity_margin * float(self._vlim[self._act_idx[j]])
        ref = q if self.position_servo else 0.0
        if v > fast:
            return -math.inf, ref
        if v < -fast:
            return ref, math.inf
        return -math.inf, math.inf

    # -- state monitor --------------------------------------------------------------------
    def check_state(
        self, state: DeviceState, now: float | None = None, *, expect_enabled: bool = True
    ) -> SafetyEvent | None:
        """Latch a stop if `state` violates a hard condition; returns the event, if any."""
        now = self.clock() if now is None else now
        problems: list[tuple[str, str]] = []
        names = self.robot.joint_names
        q, v = state.positions, state.velocities
        excursion = self._excursion(q)
        allowed = self._allowed_excursion
        slack = self.robot.reset.settle_position_tolerance
        for i in np.flatnonzero(excursion > np.where(allowed > 0, allowed + slack, 0.0)):
            problems.append((
                "hard_position_limit",
                f"{names[i]} at {q[i]:.4f} outside hard limits "
                f"[{self._hard_lo[i]}, {self._hard_hi[i]}]"
                + (f", further out than the {allowed[i]:.4f} allowed" if allowed[i] else ""),
            ))
        self._allowed_excursion = np.minimum(allowed, excursion)
        for i in np.flatnonzero(np.abs(v) > self._vlim):
            problems.append((
                "velocity_limit",
                f"{names[i]} |velocity| {abs(v[i]):.3f} > limit {self._vlim[i]}",
            ))
        cfg = self.robot.safety
        if state.temperatures is not None and np.max(state.temperatures) > cfg.max_temperature_c:
            problems.append((
                "over_temperature",
                f"temperature {np.max(state.temperatures):.1f} C > {cfg.max_temperature_c} C",
            ))
        if (
            cfg.max_current_a is not None
            and state.currents is not None
            and np.max(np.abs(state.currents)) > cfg.max_current_a
        ):
            problems.append((
                "over_current",
                f"|current| {np.max(np.abs(state.currents)):.3f} A > {cfg.max_current_a} A",
            ))
        problems.extend(self._staleness(state, now))
        if state.faults or state.estopped:
            problems.append(("device_fault", f"device faults {list(state.faults)}, "
                                             f"estopped={state.estopped}"))
        elif expect_enabled and not state.enabled:
            problems.append(("device_fault", "device turned torque off unexpectedly"))
        if not problems:
            return None
        return self.latch(problems[0][0], "; ".join(d for _, d in problems))

    def _staleness(self, state: DeviceState, now: float) -> list[tuple[str, str]]:
        """Too old a reply, a device clock that ran backwards, or one frozen for too long.

        A repeated device timestamp alone is fine: a device sampling at the control rate
        may be read twice within one of its periods.
        """
        limit = self.robot.safety.stale_state_s
        age = now - state.host_time_s
        last = self._last_device_time
        problems = []
        if age > limit:
            problems.append(
                ("stale_state", f"state is {age * 1e3:.1f} ms old (limit {limit * 1e3:.1f} ms)")
            )
        if last is not None and state.device_time_s < last:
            problems.append((
                "stale_state",
                f"device clock ran backwards ({last:.6f} -> {state.device_time_s:.6f} s)",
            ))
        if last is None or state.device_time_s > last:
            self._last_device_time = state.device_time_s
            self._device_time_advanced_at = now
        elif now - self._device_time_advanced_at > limit:
            problems.append((
                "stale_state",
                f"device clock frozen at {last:.6f} s for "
                f"{(now - self._device_time_advanced_at) * 1e3:.1f} ms",
            ))
        return problems

    def missed_deadlines(self, consecutive: int) -> SafetyEvent | None:
        """Latch a stop when more consecutive deadlines were missed than tolerated."""
        tolerance = self.robot.safety.deadline_tolerance
        if consecutive <= tolerance:
            return None
        detail = f"{consecutive} consecutive missed deadlines (tolerance {tolerance})"
        return self.latch("missed_deadlines", detail)
