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


#: Exploring starts: velocities drawn within this fraction of each joint's velocity limit.
EXPLORING_VELOCITY_FRACTION = 0.05


def sample_exploring_start(
    robot: RobotConfig, task: Task, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, TaskState]:
    """A start spread over the whole state space: each joint uniform within its soft limits
    (a full turn for continuous joints), velocities uniform within
    `EXPLORING_VELOCITY_FRACTION` of the joint's velocity limit, then the task's variables.

    For training in simulation only (e.g. on the LF model before a robot session): starts
    near every state, the upright pendulum included, let the critic learn early what the
    goal is worth. A robot always starts from its reset procedure (`sample_start_state`).
    """
    q = np.empty(len(robot.joints))
    v = np.empty(len(robot.joints))
    for i, joint in enumerate(robot.joints):
        lim = joint.soft_limits
        q[i] = rng.uniform(-np.pi, np.pi) if lim is None else rng.uniform(lim.lower, lim.upper)
        v[i] = rng.uniform(-1, 1) * EXPLORING_VELOCITY_FRACTION * joint.velocity_limit
    return q, v, task.sample_task_state(rng)
