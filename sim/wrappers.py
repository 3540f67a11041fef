"""Gymnasium wrappers for training in simulation."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from sim.envs.base import RobotSimEnv
from sim.starts import sample_exploring_start
from sim.state import RobotState


class ExploringStarts(gym.Wrapper):
    """Start some episodes away from the robot's reset distribution.

    Per episode, one uniform draw decides: with probability `goal` a start near the task's
    goal (`Task.sample_goal_start`: for the Furuta swing-up, the pendulum near upright), with
    probability `probability` a start spread over the joint ranges (`sample_exploring_start`),
    otherwise the env's own reset (the robot's reset distribution). Draws use the env's own
    seeded generator, so a seeded run is reproducible.

    Arguments:
        env: an env whose `unwrapped` is a `RobotSimEnv` (a simulated mfpg task).
        probability: share of episodes with an exploring start, in [0, 1].
        goal: share of episodes with a goal start, in [0, 1 - probability].
    """

    def __init__(self, env: gym.Env, probability: float, goal: float = 0.0) -> None:
        super().__init__(env)
        base = env.unwrapped
        if not isinstance(base, RobotSimEnv):
            raise TypeError(
                f"exploring starts need a simulated mfpg env (RobotSimEnv), got "
                f"{type(base).__name__}"
            )
        if not (0.0 <= probability <= 1.0 and 0.0 <= goal <= 1.0 - probability):
            raise ValueError(f"need 0 <= probability, 0 <= goal and probability + goal <= 1, "
                             f"got {probability} and {goal}")
        if goal > 0 and not base.task.has_goal_start:
            raise ValueError(f"task {base.task.name} defines no goal start; set goal to 0")
        self.probability, self.goal = probability, goal

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        base: RobotSimEnv = self.env.unwrapped
        u = base.np_random.uniform()
        if u < self.goal:
            q, v, task = base.task.sample_goal_start(base.robot, base.np_random)
        elif u < self.goal + self.probability:
            q, v, task = sample_exploring_start(base.robot, base.task, base.np_random)
        else:
            return obs, info
        return base.reset_to(RobotState.from_arrays(base.joint_names, q, v, task))
