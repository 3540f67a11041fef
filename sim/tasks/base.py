"""The task interface: vectorised functions of measured joint state.

Every function takes arrays with a leading batch dimension: joint positions `q` and
velocities `v` of shape (B, n_joints) in the robot config's joint order, normalised actions
of shape (B, act_dim), and task variables as a dict of (B, k) arrays. The same code scores a
simulated step, a batch of LF steps, and a step measured on the robot.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from sim.robot_config import RobotConfig, load_robot_config

TaskState = dict[str, np.ndarray]


class Task(ABC):
    """A task defined on a robot's joints."""

    #: Gymnasium id suffix, e.g. "FurutaSwingup".
    name: str
    #: The robot config (configs/robots/<robot>.yaml) this task runs on.
    robot: str
    #: Joints the task is written for, in the order the robot config must list them.
    joints: tuple[str, ...]
    obs_dim: int
    #: Episode horizon; also the registered TimeLimit of the task's Gymnasium id.
    max_episode_steps: int

    def _robot_config(self, robot_config: RobotConfig | None) -> RobotConfig:
        """The given config, or this task's robot's; refused unless it has `joints` in order."""
        cfg = robot_config if robot_config is not None else load_robot_config(self.robot)
        if cfg.joint_names != self.joints:
            raise ValueError(
                f"{self.name} needs joints {self.joints} in that order; robot "
                f"'{cfg.name}' has {cfg.joint_names}"
            )
        return cfg

    def sample_task_state(self, rng: np.random.Generator) -> TaskState:
        """Task variables drawn at reset (e.g. a reach target), unbatched (k,) arrays."""
        return {}

    #: Whether `sample_goal_start` is defined (a start near the goal, for training in sim).
    has_goal_start = False

    def sample_goal_start(
        self, robot: RobotConfig, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, TaskState]:
        """A start near the task's goal (joint positions, velocities, task variables), for
        training in simulation; only tasks with `has_goal_start` define one."""
        raise TypeError(f"task {self.name} defines no goal start (has_goal_start is False)")

    @abstractmethod
    def observe(self, q: np.ndarray, v: np.ndarray, task: TaskState) -> np.ndarray:
        """(B, obs_dim) float32 observations."""

    @abstractmethod
    def reward(
        self, q: np.ndarray, v: np.ndarray, action: np.ndarray, task: TaskState
    ) -> np.ndarray:
        """(B,) float64 rewards for arriving in (q, v) after applying `action`."""

    def terminated(self, q: np.ndarray, v: np.ndarray, task: TaskState) -> np.ndarray:
        """(B,) bool: the episode ends for a reason of the task (not a time limit)."""
        return np.zeros(q.shape[0], dtype=bool)
