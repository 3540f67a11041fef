"""The HF env of a session: a simulated fidelity, or the robot (real or emulated) behind the
safety layer.

    with open_hf_env(cfg, port=None, emulate=True, on_event=run.log_safety) as hf:
        hf.env.reset(seed=0)          # RobotSimEnv (gymnasium.make) or hardware RobotEnv
        hf.preflight                  # the robot's pre-flight record (None in simulation)

`hf.fidelity: robot`: the robot config is `hf.robot` (a path or name) or the robot of the
task `hf.env` (mfpg/FurutaSwingup-v0: furuta, mfpg/Arm2Reach-v0: arm2); the port is the
`port` argument (`--port`), else `hf.port`, else the robot config's `serial.port`;
`emulate=True` starts the device emulator (`mfpg_robot.robot_link.connect_robot`).

On the robot, an iteration's last episode ends with the rollout (`end_robot_episode`), and
the robot is parked at rest while the learner updates (`park_robot`). A reset on the robot
can fail (the reset procedure did not settle, a safety stop during the move home, a lost
link): `robot_reset` retries it `RESET_ATTEMPTS` times in all, with a WARNING each time, then
raises `SessionAbort`, and the session saves everything and stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

import sim  # noqa: F401  (registers the mfpg/* envs)
from hardware.driver import RobotError
from mfpg_robot.buffer import EndEpisodeFn, ResetFn, plain_reset
from mfpg_robot.config import TrainConfig
from sim import ENV_IDS
from sim.robot_config import ConfigError, RobotConfig, load_robot_config
from sim.wrappers import ExploringStarts

log = logging.getLogger("mfpg_robot.session")

#: Attempts at one robot reset before the session stops, and the pause between attempts.
RESET_ATTEMPTS = 3
RESET_RETRY_PAUSE_S = 1.0


class SessionAbort(RuntimeError):
    """The robot cannot go on (a reset failed every attempt); the session stops cleanly."""


@dataclass
class HFEnv:
    """An open HF env and what the session needs to know about it."""

    env: gym.Env
    robot: RobotConfig | None  # the robot (real, emulated or simulated) of an mfpg task
    reset: ResetFn
    end_episode: EndEpisodeFn | None  # a device: episodes end with each rollout (None: sim)
    rest: EndEpisodeFn | None  # a device: at rest while the learner updates (None: sim)
    preflight: dict[str, Any] | None = None
    port: str | None = None


def make_env(env_id: str, fidelity: str | None, key: str = "hf") -> gym.Env:
    """`gymnasium.make(env_id, fidelity=...)` of a simulated fidelity, with config-level
    errors naming `key`."""
    if fidelity == "robot":
        raise ConfigError(f"{key}.fidelity: 'robot' is the device, not a simulated model; "
                          f"open it with open_hf_env")
    kwargs = {} if fidelity is None else {"fidelity": fidelity}
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as err:
        raise ConfigError(f"{key}.env: cannot make '{env_id}': {err}") from None
    except TypeError as err:
        if "fidelity" not in str(err):
            raise
        raise ConfigError(
            f"{key}.fidelity: env '{env_id}' takes no fidelity argument; "
            f"set {key}.fidelity: null for plain Gymnasium envs"
        ) from None


def robot_config_for(cfg: TrainConfig) -> RobotConfig:
    """The robot of an `hf.fidelity: robot` session (module docstring)."""
    if cfg.hf.env not in ENV_IDS:
        raise ConfigError(
            f"hf.env '{cfg.hf.env}' has no robot: hf.fidelity: robot runs the tasks "
            f"{', '.join(ENV_IDS)} on their robots"
        )
    task_robot = ENV_IDS[cfg.hf.env][1].robot
    robot = load_robot_config(cfg.hf.robot or task_robot)
    if robot.name != task_robot:
        raise ConfigError(
            f"hf.robot '{cfg.hf.robot}' is robot '{robot.name}', but hf.env '{cfg.hf.env}' is "
            f"a task of robot '{task_robot}'; set hf.robot to a {task_robot} config (or null)"
        )
    return robot


def robot_reset(attempts: int = RESET_ATTEMPTS,
                pause_s: float = RESET_RETRY_PAUSE_S) -> ResetFn:
    """`env.reset` with bounded retries on robot errors (module docstring)."""

    def reset(env: gym.Env, seed: int | None) -> tuple[np.ndarray, dict[str, Any]]:
        for attempt in range(1, attempts + 1):
            try:
                return env.reset(seed=seed if attempt == 1 else None)
            except RobotError as err:
                what = f"{type(err).__name__}: {err}"
                if attempt == attempts:
                    raise SessionAbort(
                        f"the robot could not be reset ({attempts} attempts; last: {what}). "
                        f"Check the robot (power, cable, e-stop, nothing in the way, joints "
                        f"free to move home) before resuming"
                    ) from err
                log.warning("robot reset failed (attempt %d of %d): %s; retrying",
                            attempt, attempts, what)
                time.sleep(pause_s)
        raise AssertionError("unreachable")

    return reset


def end_robot_episode(env: gym.Env) -> None:
    """End the robot's running episode before its time limit (the session's cut at a rollout's
    end, or collection stopping): torque off, or the servos held (`RobotEnv.end_episode`), so
    that the robot never waits with torque on for commands while the learner updates."""
    env.unwrapped.end_episode()


def park_robot(reset: ResetFn) -> EndEpisodeFn:
    """Leave the robot at rest between rollouts, with nothing on the host keeping it there.

    A robot with a rest pose (`reset.rest`; arm2) moves there and goes limp (`RobotEnv.park`);
    if that fails, torque is off and the next reset (with its retries) recovers it, so the
    failure is only logged. Others run the reset procedure (move home, settle: a swinging
    pendulum is damped), then idle (torque off, or servos held). Idle right after an episode
    instead, a furuta arm drifts with the swinging pendulum while the learner updates, possibly
    past its hard limits; and servos held by the keep-alive thread fall when a loaded host
    starves it past the device watchdog (docs/sessions.md)."""

    def park(env: gym.Env) -> None:
        robot_env = env.unwrapped
        if robot_env.robot.reset.rest is None:
            reset(env, None)
            robot_env.end_episode()
            return
        try:
            robot_env.park()
        except RobotError as err:
            log.warning("parking the robot at its rest pose failed (%s: %s); torque is off, "
                        "the next reset moves it", type(err).__name__, err)

    return park


@contextmanager
def open_hf_env(
    cfg: TrainConfig,
    *,
    port: str | None = None,
    emulate: bool = False,
    confirm: Callable[[str], bool] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> Iterator[HFEnv]:
    """The session's HF env, closed on exit (robot: torque off, emulator stopped)."""
    if cfg.hf.fidelity != "robot":
        if port is not None or emulate:
            raise ConfigError(
                f"--port/--emulate name a device, but hf.fidelity is '{cfg.hf.fidelity}' "
                f"(simulated); set hf.fidelity: robot for a session on the robot or emulator"
            )
        if env_kwargs:
            raise ConfigError("env_kwargs are RobotEnv options (hf.fidelity: robot only)")
        env = make_env(cfg.hf.env, cfg.hf.fidelity)
        if cfg.hf.exploring_starts > 0 or cfg.hf.goal_starts > 0:
            try:
                env = ExploringStarts(env, cfg.hf.exploring_starts, cfg.hf.goal_starts)
            except ValueError as err:
                env.close()
                raise ConfigError(f"hf.goal_starts: {err}") from None
        robot = getattr(env.unwrapped, "robot", None)
        try:
            yield HFEnv(env=env, robot=robot if isinstance(robot, RobotConfig) else None,
                        reset=plain_reset, end_episode=None, rest=None)
        finally:
            env.close()
        return
    from mfpg_robot.robot_link import connect_robot  # pyserial, the emulator: only when used

    robot = robot_config_for(cfg)
    with connect_robot(robot, port=port if emulate else (port or cfg.hf.port), emulate=emulate,
                       confirm=confirm, on_event=on_event, env_kwargs=env_kwargs) as link:
        reset = robot_reset()
        yield HFEnv(env=link.env, robot=robot, reset=reset, end_episode=end_robot_episode,
                    rest=park_robot(reset), preflight=link.preflight.to_dict(),
                    port=link.port)
