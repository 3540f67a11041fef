"""Furuta pendulum swing-up and balance, on measured joint state only.

Joints (configs/robots/furuta.yaml order): `arm` (theta, 0 = centred) and `pendulum`
(alpha, 0 = hanging down, +-pi = upright). One action: the normalised arm voltage a in [-1, 1].

Observation (6,), float32:
    [sin theta, cos theta, sin alpha, cos alpha, theta_dot / 10, alpha_dot / 10]
Velocities are divided by `VELOCITY_SCALE` = 10 rad/s so that a swing-up (pendulum up to
~20 rad/s, arm a few rad/s) gives O(1) values.

Reward per step, in [0, 1]:
    r = 0.2 + 0.8 * up - 0.1 * x^2 - 0.05 * w - 0.05 * a^2
    up = (1 - cos alpha) / 2                          1 upright, 0 hanging
    x  = clip(theta / theta_max, -1, 1)               theta_max: arm hard limit on that side
    w  = (clip(theta_dot / vmax_arm, -1, 1)^2 + clip(alpha_dot / vmax_pend, -1, 1)^2) / 2
    a  = clip(action, -1, 1)
vmax_* are the joints' velocity limits. The maximum 1 is reached only upright, arm centred,
at rest, with zero voltage. The constant 0.2 offsets the penalties so that every step is worth
>= 0: ending an episode early never pays, so termination needs no extra penalty.

Termination: the arm outside its hard limits (the safety layer's latched-stop condition).
"""

from __future__ import annotations

import numpy as np

from sim.robot_config import RobotConfig
from sim.tasks.base import Task, TaskState

VELOCITY_SCALE = 10.0
UPRIGHT_WEIGHT = 0.8
ARM_WEIGHT = 0.1
VELOCITY_WEIGHT = 0.05
ACTION_WEIGHT = 0.05
REWARD_OFFSET = ARM_WEIGHT + VELOCITY_WEIGHT + ACTION_WEIGHT
ARM, PENDULUM = 0, 1
#: Goal starts (training in simulation): pendulum within GOAL_ANGLE of upright, arm within
#: GOAL_ARM of centre, velocities within GOAL_ARM_SPEED / GOAL_PENDULUM_SPEED (uniform).
GOAL_ANGLE, GOAL_ARM = 0.4, 0.5
GOAL_ARM_SPEED, GOAL_PENDULUM_SPEED = 0.5, 1.0


class FurutaSwingup(Task):
    """Swing the pendulum up from hanging and balance it with the arm centred."""

    name = "FurutaSwingup"
    robot = "furuta"
    obs_dim = 6
    joints = ("arm", "pendulum")
    max_episode_steps = 1000  # 4 s at 250 Hz

    def __init__(self, robot_config: RobotConfig | None = None) -> None:
        cfg = self._robot_config(robot_config)
        limits = cfg.joint("arm").hard_limits
        if limits is None or not limits.lower < 0.0 < limits.upper:
            raise ValueError(
                f"robot '{cfg.name}': joint 'arm' needs hard_limits with lower < 0 < upper "
                f"(0 = centred) for FurutaSwingup, got {limits}"
            )
        self.arm_lower = limits.lower
        self.arm_upper = limits.upper
        self.velocity_limits = np.array([cfg.joint(n).velocity_limit for n in cfg.joint_names])

    has_goal_start = True

    def sample_goal_start(
        self, robot: RobotConfig, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, TaskState]:
        """Near upright and at rest (module constants GOAL_*), arm near the centre."""
        q = np.array([rng.uniform(-GOAL_ARM, GOAL_ARM),
                      np.pi + rng.uniform(-GOAL_ANGLE, GOAL_ANGLE)])
        v = np.array([rng.uniform(-GOAL_ARM_SPEED, GOAL_ARM_SPEED),
                      rng.uniform(-GOAL_PENDULUM_SPEED, GOAL_PENDULUM_SPEED)])
        return q, v, self.sample_task_state(rng)

    def observe(self, q: np.ndarray, v: np.ndarray, task: TaskState) -> np.ndarray:
        """(B, 6) observations; see the module docstring."""
        obs = np.empty((q.shape[0], self.obs_dim), dtype=np.float32)
        # computed in float64, rounded once into the float32 columns
        np.sin(q, out=obs[:, 0:4:2])  # sin theta, sin alpha
        np.cos(q, out=obs[:, 1:4:2])  # cos theta, cos alpha
        np.divide(v, VELOCITY_SCALE, out=obs[:, 4:6])
        return obs

    def reward(
        self, q: np.ndarray, v: np.ndarray, action: np.ndarray, task: TaskState
    ) -> np.ndarray:
        """(B,) rewards in [0, 1]; see the module docstring."""
        theta = q[:, ARM]
        up = 0.5 * (1.0 - np.cos(q[:, PENDULUM]))
        limit = np.where(theta >= 0.0, self.arm_upper, -self.arm_lower)
        # min(z^2, 1) == clip(z, -1, 1)^2, without np.clip's overhead on small batches
        x2 = np.minimum((theta / limit) ** 2, 1.0)
        w = 0.5 * np.minimum((v / self.velocity_limits) ** 2, 1.0).sum(axis=1)
        a2 = np.minimum(np.square(action), 1.0).sum(axis=1)
        return (
            REWARD_OFFSET
            + UPRIGHT_WEIGHT * up
            - ARM_WEIGHT * x2
            - VELOCITY_WEIGHT * w
            - ACTION_WEIGHT * a2
        ).astype(np.float64)

    def terminated(self, q: np.ndarray, v: np.ndarray, task: TaskState) -> np.ndarray:
        """(B,) True where the arm is outside its hard limits."""
        theta = q[:, ARM]
        return (theta < self.arm_lower) | (theta > self.arm_upper)
