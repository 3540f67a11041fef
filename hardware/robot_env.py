"""`RobotEnv`: the robot (real, emulated or mocked) as the high-fidelity Gymnasium env.

    with SerialDriver(robot) as driver:                 # or MockDriver(robot) in tests
        env = make_robot_env(robot, driver)
        obs, info = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(action)

Same observation and action spaces, and the same `Task` reward, as the simulated env of the
task. Per step: the action passes the `SafetyLayer`, the command is sent at once, the loop
waits for the period's absolute deadline (`Scheduler`), the state is read (with the command's
acknowledgement: `RobotDriver.submit_command`) and checked, the reward is computed from the
measured state and the action actually sent.
`info["action_sent"]` (normalised) and `info["command_sent"]` (physical) are what reached the
driver, `info["safety"]` what each stage clipped and any stop, `info["timing"]` the period.

A safety stop (hard limit, stale state, over-temperature, device fault, missed deadlines,
invalid action, driver error) is carried out at once (torque off, or hold for servos), ends the
episode (`terminated=True`) and latches: `step()` raises `SafetyStopError` until `reset()`
acknowledges it. A driver error (`RobotConnectionError`: link lost, no valid reply after the
retries) also closes the driver after the stop attempt; the next `reset()` reconnects
(handshake, watchdog; a warning of logger `hardware.robot_env`) or raises the connection error
while the device is still gone. At the end of an episode (its time limit, a termination, or
`end_episode()`) the robot idles: voltage/torque robots are braked to rest under control
(`ResetProcedure.brake`: through the safety layer, bounded in time; `info["brake"]` of the step
that ended the episode says how it went, a WARNING when the joints were still moving) and then
torque goes off, so that an arm does not coast at speed; position servos hold their pose, and a
background `KeepAlive` re-sends the hold (and reads and checks the state) every
`serial.watchdog_ms / 4` until the next `reset()`, `park()` or `close()`, so that the device
watchdog does not cut torque and let the arm fall. A problem found while idling (a safety check,
a driver error) ends the keep-alive and carries out the stop (torque off, or one last hold that
the watchdog ends). After a latched stop there is no brake and no keep-alive: the stop has cut
torque, or a "hold" stop holds until the device watchdog turns torque off.

For a long pause (a policy update), `park()` moves a robot with a `reset.rest` pose there and
switches torque off: nothing has to keep running on the host. A position servo found resting on
its end stop with torque off (after parking, or after a fall) is moved out slowly by the next
`reset()` (`hardware.homing.recover_end_stops`, the pre-flight's recovery); a voltage/torque
joint found beyond its hard limit (it coasted there with torque off after a stop) is, once at
rest, moved back inside with torque on (`hardware.homing.coast_recovery`,
`ResetProcedure.recover`; the safety layer tolerates the excursion while it shrinks). Both are
recorded as a `recovery` safety event. Ctrl+C (KeyboardInterrupt) in `reset()`, `park()` or
`step()` turns torque off, records an event, re-raises; one that lands elsewhere (e.g. in the
policy) and ends the program is caught by an `atexit` hook that turns torque off too.

`realtime=False` (for `MockDriver`, whose clock is simulated) never sleeps and has no
keep-alive (no device time passes between calls). Deadlines always use `time.monotonic`; the
age of a state is measured with the clock the driver stamps `host_time_s` with:
`driver.clock` where the driver has one (`MockDriver`), else `time.monotonic` (the
`RobotDriver` contract).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import logging
import time
import weakref
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec

from hardware.driver import (
    DeviceState,
    RobotConnectionError,
    RobotDriver,
    RobotError,
    RobotFaultError,
)
from hardware.homing import (
    Braking,
    RecoveryError,
    ResetError,
    ResetProcedure,
    recover_end_stops,
    wait_at_rest,
)
from hardware.keepalive import KeepAlive
from hardware.safety import SafetyEvent, SafetyLayer, SafetyStopError, torque_off
from hardware.scheduler import Scheduler, Tick, TimingStats
from sim.actuation import command_to_action
from sim.robot_config import RobotConfig, load_robot_config
from sim.starts import sample_start_state
from sim.state import RobotState
from sim.tasks.base import Task, TaskState

_log = logging.getLogger(__name__)

#: Robot name -> its task class ("module:Class"), constructed with the robot config.
ROBOT_TASKS = {
    "furuta": "sim.tasks.furuta:FurutaSwingup",
    "arm2": "sim.tasks.arm2:Arm2Reach",
}


class RobotEnv(gym.Env[np.ndarray, np.ndarray]):
    """A task on a robot behind a `RobotDriver` (see the module docstring)."""

    metadata = {"render_modes": [], "render_fps": 50}

    def __init__(
        self,
        driver: RobotDriver,
        task: Task,
        robot: RobotConfig | None = None,
        *,
        realtime: bool = True,
        safety: SafetyLayer | None = None,
        max_episode_steps: int | None = None,
        spin_s: float = 0.0005,
    ) -> None:
        self.robot = robot if robot is not None else driver.robot
        if driver.robot.name != self.robot.name:
            raise ValueError(
                f"driver is for robot '{driver.robot.name}' but the env for '{self.robot.name}'"
            )
        if task.robot != self.robot.name:
            raise ValueError(f"task {task.name} runs on '{task.robot}', not '{self.robot.name}'")
        self.driver = driver
        self.task = task
        self.joint_names = self.robot.joint_names
        self.safety = safety if safety is not None else SafetyLayer(self.robot)
        self.reset_procedure = ResetProcedure(self.robot)
        self.scheduler = Scheduler(self.robot.control_dt, realtime=realtime, spin_s=spin_s)
        self.host_clock = getattr(driver, "clock", time.monotonic)
        self.max_episode_steps = max_episode_steps or task.max_episode_steps
        n_act = len(self.robot.actuated_joints)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(n_act,), dtype=np.float32)
        self.observation_space = spaces.Box(
            -np.inf, np.inf, shape=(task.obs_dim,), dtype=np.float32
        )
        self.metadata = {**self.metadata, "render_fps": int(round(self.robot.control_rate_hz))}
        # A physical robot is not deterministic: tell Gymnasium so. `spec.make()` builds another
        # env on the same driver (bound here: `make` deep-copies kwargs, and a copied driver
        # would share, then close, this driver's port).
        self.spec = EnvSpec(
            id=f"mfpg/Robot{task.name}-v0",
            entry_point=functools.partial(
                RobotEnv,
                driver,
                task,
                self.robot,
                realtime=realtime,
                safety=safety,
                max_episode_steps=self.max_episode_steps,
                spin_s=spin_s,
            ),
            nondeterministic=True,
            max_episode_steps=self.max_episode_steps,
        )
        self._state: DeviceState | None = None
        self._task_state: TaskState = {}
        self._steps = 0
        self._active = False  # an episode is running (torque on, commands expected)
        self._keepalive: KeepAlive | None = None  # holding servos between episodes
        self._parked = False  # park() left the robot at its rest pose, torque off
        self._exit_hook = functools.partial(_torque_off_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)

    # -- public helpers -----------------------------------------------------------------------
    @property
    def safety_events(self) -> list[SafetyEvent]:
        """Every safety event so far (stops, acknowledgements, faults cleared)."""
        return list(self.safety.events)

    def timing_stats(self) -> TimingStats:
        """Period jitter and missed deadlines over the current episode's periods (its steps,
        and the brake that ended it)."""
        return self.scheduler.stats()

    def get_state(self) -> RobotState:
        """The last measured state with the task variables (for pairing with the LF env)."""
        if self._state is None:
            raise RuntimeError("no state yet: call reset() first")
        return RobotState.from_arrays(
            self.joint_names, self._state.positions, self._state.velocities, self._task_state
        )

    # -- Gymnasium API ------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Acknowledge any latched stop, home, settle, randomise; see `hardware.homing`."""
        super().reset(seed=seed)
        try:
            return self._reset()
        except KeyboardInterrupt:
            self._interrupt("reset")
            raise

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        self.safety.ensure_not_latched()
        if not self._active:
            raise RuntimeError("the episode has ended (robot idle); call reset()")
        try:
            return self._step(action)
        except KeyboardInterrupt:
            self._interrupt("step")
            raise

    def end_episode(self) -> Braking | None:
        """End the running episode now, as its time limit would (nothing to do if none runs).

        Voltage/torque robots are braked to rest (`ResetProcedure.brake`), then torque goes off;
        returns how the brake went (None: no brake, e.g. after a latched stop, which has
        already cut torque). Position servos hold the measured pose, fed by the keep-alive
        until the next `reset()`, `park()` or `close()`.
        """
        if not self._active:
            return None
        self._active = False
        state = self._state
        braking = None
        try:
            if state is not None and self.safety.latched is None:
                if self.safety.position_servo:
                    command = self.safety.filter_command(self.safety.idle_command(state), state)
                    self.driver.send_command(command.command)
                    self.safety.commit(command.command)
                    if self.scheduler.realtime:
                        self._start_keepalive(command.command)
                    return None
                braking = self._brake(state)
            self.driver.disable()
        except RobotError:  # a stop during the brake (carried out), or the link failed
            torque_off(self.driver)
        return braking

    def _brake(self, state: DeviceState) -> Braking:
        _, braking = self.reset_procedure.brake(self, state)
        if not braking.at_rest:
            _log.warning(
                "%s: joints still moving (%s) after %.2f s of braking at the end of the "
                "episode; torque off", self.robot.name,
                ", ".join(f"{n} {v:+.2f}" for n, v in
                          zip(self.robot.actuated_joints, braking.velocities, strict=True)),
                braking.duration_s,
            )
        return braking

    def park(self) -> None:
        """Leave the robot at rest, torque off, for a long pause (e.g. a policy update).

        As a reset starts (any stop acknowledged, faults cleared, an end stop recovered, torque
        on), then a move at `reset.homing_speed` to the `reset.rest` pose, settle, torque off;
        torque goes off also when the move fails (its error is raised). `ValueError` if the
        robot has no rest pose.
        """
        if self.reset_procedure.rest is None:
            raise ValueError(
                f"robot '{self.robot.name}' has no reset.rest pose to park at; end the episode "
                "(end_episode()) or reset it instead"
            )
        try:
            state, ref = self.reset_procedure.move(self, self._torque_on(),
                                                   self.reset_procedure.rest)
            self.reset_procedure.settle(self, state, ref)  # at rest before torque goes off
            self._parked = True
        except KeyboardInterrupt:
            self._interrupt("park")
            raise
        finally:
            self._active = False
            if self.driver.connected:
                torque_off(self.driver)

    def hold(self, command: np.ndarray) -> None:
        """Position servos with torque on, between episodes: keep `command` held.

        The keep-alive of the end of an episode, e.g. after a move the caller made with the
        driver itself; it runs until the next `reset()`, `park()` or `close()`.
        """
        if not self.safety.position_servo:
            raise ValueError(f"robot '{self.robot.name}' has no position servos to hold")
        self._stop_keepalive()
        self._active = False
        command = np.asarray(command, dtype=np.float64)
        self.safety.commit(command)
        if self.scheduler.realtime:
            self._start_keepalive(command)

    def close(self) -> None:
        """Stop any keep-alive, torque off and release the driver."""
        self._stop_keepalive()
        self._active = False
        atexit.unregister(self._exit_hook)
        self.driver.close()

    # -- control loop -------------------------------------------------------------------------
    def apply_command(self, command: np.ndarray) -> DeviceState:
        """One control period with a physical command (used by the reset procedure).

        Raises `SafetyStopError` if the period trips a stop (the stop is carried out first).
        """
        self._stop_keepalive()
        result = self.safety.filter_command(command, self._require_state())
        if result.command is None:
            self.safety.execute_stop(self.driver, self._state)
            raise SafetyStopError(f"reset stopped: {result.event.detail}", result.event)
        _, event = self._cycle(result.command)
        if event is not None:
            raise SafetyStopError(f"reset stopped by {event.kind}: {event.detail}", event)
        return self._require_state()

    def _require_state(self) -> DeviceState:
        if self._state is None:
            raise RuntimeError("no state yet: call reset() first")
        return self._state

    def _cycle(self, command: np.ndarray) -> tuple[Tick | None, SafetyEvent | None]:
        """Send, wait for the deadline, read, check; carry out a stop if one latched.

        The command is submitted (`RobotDriver.submit_command`): its acknowledgement is read
        with the state after the deadline, and a refusal surfaces from `read_state`.
        """
        try:
            self.driver.submit_command(command)
        except RobotError as err:
            self._trip_on_error(err)
            return None, self.safety.latched
        self.safety.commit(command)
        tick = self.scheduler.wait()
        self.safety.missed_deadlines(tick.consecutive_missed)
        try:
            state = self.driver.read_state()
        except RobotError as err:
            self._trip_on_error(err)
            return tick, self.safety.latched
        self._state = state
        self.safety.check_state(state, self.host_clock())
        if self.safety.latched is not None:
            self.safety.execute_stop(self.driver, state)
            self._active = False
        return tick, self.safety.latched

    def _trip_on_error(self, err: RobotError) -> None:
        kind = "device_fault" if isinstance(err, RobotFaultError) else "driver_error"
        self.safety.latch(kind, f"{type(err).__name__}: {err}")
        self.safety.execute_stop(self.driver, self._state)
        self._active = False
        if isinstance(err, RobotConnectionError):
            # A lost or unreliable link: release it (`connected` False); reset() reconnects.
            self.driver.close()

    def _reset(self) -> tuple[np.ndarray, dict[str, Any]]:
        t_start = self.scheduler.clock()
        state = self._torque_on()
        start_q, _, task_state = sample_start_state(self.robot, self.task, self.np_random)
        try:
            state = self.reset_procedure.run(self, state, start_q)
        except (ResetError, SafetyStopError):
            self.end_episode()
            raise
        reset_s = self.scheduler.clock() - t_start
        self.scheduler.clear()
        self._task_state = {k: np.asarray(v, dtype=np.float64) for k, v in task_state.items()}
        self._steps = 0
        info = {"state": self.get_state(), "reset": {"duration_s": reset_s}}
        return self._observation(state), info

    def _torque_on(self) -> DeviceState:
        """Start of a reset or park: acknowledge any stop, reconnect, clear device faults,
        recover servos resting on an end stop, torque on, recover voltage/torque joints that
        coasted past a hard limit (once at rest); the measured state.

        `ResetError` for a robot that cannot start (a joint too far beyond its hard limits, too
        hot, still moving after a coast, a failed recovery move: torque off).
        """
        self._stop_keepalive()
        self._active = False
        self.safety.reset_safety()
        if not self.driver.connected:
            _log.warning(
                "%s: link was closed after a driver error; reconnecting", self.robot.name,
                extra={"port": getattr(self.driver, "port", None)},
            )
            self.driver.connect()
            self.driver.set_watchdog(self.robot.serial.watchdog_ms)
        state = self.driver.read_state()
        if state.faults or state.estopped:
            detail = f"at reset: faults {list(state.faults)}, estopped={state.estopped}"
            self.safety.record("faults_cleared", detail)
            self.driver.clear_fault()
            state = self.driver.read_state()
        recovery = self.reset_procedure.check_startable(state)
        self._check_temperature(state)
        servo = self.safety.position_servo
        if recovery and not servo:  # coasted past a hard limit: let it come to rest first
            state = wait_at_rest(self.driver, self.reset_procedure, self.scheduler,
                                 self.robot.reset.max_settle_s)
            recovery = self.reset_procedure.check_startable(state)
        if recovery:
            self._record_recovery(recovery)
        if recovery and servo:
            recover_end_stops(self.driver, recovery, self.scheduler)
        self._parked = False
        self.driver.enable()
        self._state = self.driver.read_state()
        self.safety.start(self._state)
        self.scheduler.start()
        if recovery and not servo:
            self._recover_coast(recovery)
        self._active = True
        return self._state

    def _record_recovery(self, recovery: dict[str, list[float]]) -> None:
        """A `recovery` safety event for the moves of `recovery` (and a WARNING unless the
        robot was parked there)."""
        speed = self.robot.reset.homing_speed
        moves = "; ".join(
            f"{n} {a:+.4f} -> {b:+.4f} {self.robot.joint(n).unit} at {speed:g} "
            f"{self.robot.joint(n).unit}/s" for n, (a, b) in recovery.items()
        )
        if not self.safety.position_servo:
            self.safety.record("recovery", "beyond a hard limit with torque off (it coasted "
                                           f"there); slow move back inside: {moves}")
            _log.warning("%s: %s beyond a hard limit with torque off; moving back slowly",
                         self.robot.name, ", ".join(recovery))
            return
        why = "parked at rest" if self._parked else "not parked there: it fell with torque off"
        self.safety.record("recovery", f"resting on an end stop with torque off ({why}); "
                                       f"slow move out: {moves}")
        if not self._parked:
            _log.warning("%s: %s resting on an end stop with torque off; moving out slowly",
                         self.robot.name, ", ".join(recovery))

    def _recover_coast(self, recovery: dict[str, list[float]]) -> None:
        """Torque on: move voltage/torque joints that coasted past a hard limit back inside
        (`ResetProcedure.recover`), the safety layer tolerating their shrinking excursion.
        `RecoveryError` (torque off) if a stop ends the move."""
        self.safety.allow_excursion(self._require_state())
        try:
            self._state = self.reset_procedure.recover(self, self._require_state(), recovery)
        except SafetyStopError as err:
            raise RecoveryError(
                f"recovery move of '{self.robot.name}' stopped, torque off: "
                f"{err.event.kind}: {err.event.detail}. With torque off, move the joints "
                "inside their hard limits by hand, then reset again."
            ) from err

    def _check_temperature(self, state: DeviceState) -> None:
        limit = self.robot.safety.max_temperature_c
        if state.temperatures is not None and np.max(state.temperatures) > limit:
            raise ResetError(
                f"motor temperature {np.max(state.temperatures):.1f} C is above the limit "
                f"{limit} C: let the motor cool down with torque off, then reset again"
            )

    def _step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        state = self._require_state()
        result = self.safety.filter_action(action, state)
        tick = None
        if result.command is None:
            self.safety.execute_stop(self.driver, state)
            self._active = False
            sent_action = self._stop_action()
            command = None
        else:
            tick, _ = self._cycle(result.command)
            sent_action, command = result.action, result.command
        state = self._require_state()
        robot_state = self.get_state()
        self._steps += 1
        q, v, ts = state.positions[None], state.velocities[None], self._batched_task()
        reward = float(self.task.reward(q, v, sent_action[None], ts)[0])
        event = self.safety.latched
        terminated = bool(self.task.terminated(q, v, ts)[0]) or event is not None
        truncated = not terminated and self._steps >= self.max_episode_steps
        braking = None
        if (terminated or truncated) and self._active:
            braking = self.end_episode()
        info = {
            "action_sent": sent_action,
            "command_sent": command,
            "safety": {
                **result.report(),
                "stopped": event is not None,
                "event": None if event is None else event.to_dict(),
            },
            "timing": None if tick is None else tick.to_dict(),
            "state": robot_state,
            "brake": None if braking is None else braking.to_dict(),
        }
        return self._observation(state), reward, terminated, truncated, info

    def _stop_action(self) -> np.ndarray:
        """What the robot got instead of a rejected action: zero effort, or the held target."""
        if self.safety.position_servo:
            return np.clip(command_to_action(self.robot, self.safety.previous_command), -1, 1)
        return np.zeros(self.action_space.shape)

    def _start_keepalive(self, hold: np.ndarray) -> None:
        period_s = self.robot.serial.watchdog_ms / 4000.0
        name = f"{self.robot.name}-hold-keepalive"
        self._keepalive = KeepAlive(lambda: self._hold_beat(hold), period_s, name).start()

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.stop()
            self._keepalive = None

    def _hold_beat(self, hold: np.ndarray) -> bool:
        """One keep-alive beat: re-send the hold, read and check the state; False ends it."""
        try:
            self.driver.send_command(hold)
            state = self.driver.read_state()
        except RobotError as err:
            self._trip_on_error(err)
            return False
        if self.safety.check_state(state, self.host_clock()) is not None:
            self.safety.execute_stop(self.driver, state)
            return False
        return True

    def _interrupt(self, where: str) -> None:
        self._active = False
        self.safety.latch("interrupt", f"KeyboardInterrupt during {where}(): torque off")
        torque_off(self.driver)

    def _observation(self, state: DeviceState) -> np.ndarray:
        obs = self.task.observe(state.positions[None], state.velocities[None], self._batched_task())
        return obs[0].astype(np.float32)

    def _batched_task(self) -> TaskState:
        return {k: np.asarray(v, dtype=np.float64)[None] for k, v in self._task_state.items()}


def _torque_off_at_exit(env_ref: weakref.ref[RobotEnv]) -> None:
    """Interpreter exit (e.g. an uncaught Ctrl+C outside step): torque off if still on."""
    env = env_ref()
    if env is None:
        return
    env._stop_keepalive()
    if not env.driver.connected:
        return
    if env._active:
        env.safety.latch("interrupt", "program exited during an episode: torque off")
    torque_off(env.driver)


def task_for_robot(robot: RobotConfig) -> Task:
    """The task that `robot` is trained on (`ROBOT_TASKS`), built with its config."""
    if robot.name not in ROBOT_TASKS:
        raise ValueError(f"no task known for robot '{robot.name}'; known: {sorted(ROBOT_TASKS)}")
    module, cls = ROBOT_TASKS[robot.name].split(":")
    return getattr(importlib.import_module(module), cls)(robot)


def make_robot_env(
    robot_config: RobotConfig | str, driver: RobotDriver, **kwargs: Any
) -> RobotEnv:
    """`RobotEnv` for `robot_config` (name, path or config) with its task; kwargs to RobotEnv."""
    robot = (
        robot_config if isinstance(robot_config, RobotConfig) else load_robot_config(robot_config)
    )
    return RobotEnv(driver, task_for_robot(robot), robot, **kwargs)

