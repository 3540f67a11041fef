"""The start-state distribution of every episode, shared by the envs and the batched collector.

`RobotSimEnv.reset` and `BatchedCollector.sample_starts` both draw from `sample_start_state`,
so low-fidelity pools start exactly like high-fidelity episodes: home pose plus uniform noise
within the robot config's reset bounds, then the task's own variables.
"""

from __future__ import annotations

import numpy as np

from sim.robot_config import RobotConfig
from sim.tasks.base import Task, TaskState


def sample_start_state(
    robot: RobotConfig, task: Task, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, TaskState]:
    """One start: joint positions and velocities (robot joint order) and task variables.

    Draw order (position noise per joint, velocity noise per joint, then the task) is fixed,
    so a seeded `rng` reproduces the same start wherever it is used.
    """
    rst = robot.reset
    names = robot.joint_names
    q = np.array([rst.home.get(n, 0.0) for n in names], dtype=np.float64)
    q += np.array([rng.uniform(-1, 1) * rst.position_noise.get(n, 0.0) for n in names])
    v = np.array([rng.uniform(-1, 1) * rst.velocity_noise.get(n, 0.0) for n in names])
    return q, v, task.sample_task_state(rng)
