"""Gymnasium wrappers for training in simulation."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from sim.envs.base import RobotSimEnv
from sim.starts import sample_exploring_start
from sim.state import RobotState


class ExploringStarts(gym.Wrapper):
    """Start a share `probability` of the episodes from `sample_exploring_start`.

    The draw uses the env's own seeded generator, so a seeded run is reproducible. The other
    episodes start as the env's `reset` does (the robot's reset distribution).

    Arguments:
        env: an env whose `unwrapped` is a `RobotSimEnv` (a simulated mfpg task).
        probability: share of episodes with an exploring start, in [0, 1].
    """

    def __init__(self, env: gym.Env, probability: float) -> None:
        super().__init__(env)
        if not isinstance(env.unwrapped, RobotSimEnv):
            raise TypeError(
                f"exploring starts need a simulated mfpg env (RobotSimEnv), got "
                f"{type(env.unwrapped).__name__}"
            )
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        self.probability = probability

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        base: RobotSimEnv = self.env.unwrapped
        if base.np_random.uniform() < self.probability:
            q, v, task = sample_exploring_start(base.robot, base.task, base.np_random)
            obs, info = base.reset_to(RobotState.from_arrays(base.joint_names, q, v, task))
        return obs, info
