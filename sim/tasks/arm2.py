"""Two-joint arm reach, on measured joint state only.

Joints (configs/robots/arm2.yaml order): `shoulder` q1 and `elbow` q2, hinges about the world
y axis, q = 0 pointing straight up, positive towards +x. The tip follows from ANALYTIC forward
kinematics with the constants below (the same geometry as every sim/models/arm2_*.xml), so
the real robot's env scores its measured joint angles with this exact code:

    x = L1 sin q1 + L2 sin(q1 + q2),   z = Z0 + L1 cos q1 + L2 cos(q1 + q2)

Actions: two normalised servo targets in [-1, 1] (mapped onto the soft limits by
`sim.actuation`). Task variable `target`: (x, z) in metres, drawn uniformly over the part of
the workspace box (robot config `workspace`, x-z plane) that the tip can reach with both
joints at least `TARGET_MARGIN` inside their soft limits (rejection sampling over inverse
kinematics), so every target is reachable.

Observation (10,), float32:
    [sin q1, sin q2, cos q1, cos q2, v1 / 5, v2 / 5, (target - shoulder) / R, (tip - target) / R]
with R = L1 + L2 (the reach) and 5 rad/s = `VELOCITY_SCALE` (the servo's no-load speed).

Reward per step (higher is better, at most 0):
    r = -|tip - target| / R - 0.01 * mean(clip(v / 5, -2, 2)^2) - 0.005 * mean(a^2)
The distance term dominates (1 cm costs 0.042); the velocity term asks to arrive at rest;
the small action term keeps servo targets away from the soft limits (it shifts the optimum by
~1 mm). No termination: episodes end by the time limit (200 steps = 4 s at 50 Hz).
"""

from __future__ import annotations

import numpy as np

from sim.robot_config import RobotConfig
from sim.tasks.base import Task, TaskState

SHOULDER_XZ = (0.0, 0.30)
LINK_LENGTHS = (0.12, 0.12)
REACH = LINK_LENGTHS[0] + LINK_LENGTHS[1]
VELOCITY_SCALE = 5.0
DISTANCE_WEIGHT = 1.0
VELOCITY_WEIGHT = 0.01
ACTION_WEIGHT = 0.005
TARGET_MARGIN = 0.1
SHOULDER, ELBOW = 0, 1
_CANDIDATES_PER_ROUND = 64
_MAX_ROUNDS = 100


def forward_kinematics(q: np.ndarray) -> np.ndarray:
    """Tip (x, z) in metres, shape (B, 2), for joint angles q of shape (B, 2)."""
    q = np.asarray(q, dtype=np.float64)
    (l1, l2), (x0, z0) = LINK_LENGTHS, SHOULDER_XZ
    q12 = q[:, SHOULDER] + q[:, ELBOW]
    x = x0 + l1 * np.sin(q[:, SHOULDER]) + l2 * np.sin(q12)
    z = z0 + l1 * np.cos(q[:, SHOULDER]) + l2 * np.cos(q12)
    return np.stack([x, z], axis=1)


def inverse_kinematics(xz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both joint solutions (elbow q2 >= 0, elbow q2 <= 0), each (B, 2), for tips (B, 2).

    Rows of unreachable tips (farther than L1 + L2 or nearer than |L1 - L2|) are NaN.
    """
    xz = np.asarray(xz, dtype=np.float64)
    (l1, l2), (x0, z0) = LINK_LENGTHS, SHOULDER_XZ
    dx, dz = xz[:, 0] - x0, xz[:, 1] - z0
    c2 = (dx**2 + dz**2 - l1**2 - l2**2) / (2.0 * l1 * l2)
    c2 = np.where(np.abs(c2) <= 1.0, c2, np.nan)
    solutions = []
    for q2 in (np.arccos(c2), -np.arccos(c2)):
        q1 = np.arctan2(dx, dz) - np.arctan2(l2 * np.sin(q2), l1 + l2 * np.cos(q2))
        q1 = (q1 + np.pi) % (2.0 * np.pi) - np.pi
        solutions.append(np.stack([q1, q2], axis=1))
    return solutions[0], solutions[1]


class Arm2Reach(Task):
    """Bring the arm's tip to a random reachable target in the x-z plane."""

    name = "Arm2Reach"
    robot = "arm2"
    obs_dim = 10
    joints = ("shoulder", "elbow")
    max_episode_steps = 200  # 4 s at 50 Hz

    def __init__(self, robot_config: RobotConfig | None = None) -> None:
        cfg = self._robot_config(robot_config)
        lower, upper = [], []
        for name in cfg.joint_names:
            lim = cfg.joint(name).soft_limits
            if lim is None or lim.upper - lim.lower <= 2 * TARGET_MARGIN:
                raise ValueError(
                    f"robot '{cfg.name}': joint '{name}' needs soft_limits wider than "
                    f"{2 * TARGET_MARGIN} rad for Arm2Reach, got {lim}"
                )
            lower.append(lim.lower + TARGET_MARGIN)
            upper.append(lim.upper - TARGET_MARGIN)
        self.target_joint_lower = np.array(lower)
        self.target_joint_upper = np.array(upper)
        self.target_box_lower, self.target_box_upper = self._target_box(cfg)

    @staticmethod
    def _target_box(cfg: RobotConfig) -> tuple[np.ndarray, np.ndarray]:
        """(x, z) sampling box: the reach disc's bounding box within the workspace bounds."""
        centre = np.array(SHOULDER_XZ)
        lo, hi = centre - REACH, centre + REACH
        if cfg.workspace is not None:
            ws_lo = np.array([cfg.workspace.lower[0], cfg.workspace.lower[2]])
            ws_hi = np.array([cfg.workspace.upper[0], cfg.workspace.upper[2]])
            lo, hi = np.maximum(lo, ws_lo), np.minimum(hi, ws_hi)
        if np.any(lo >= hi):
            raise ValueError(
                f"robot '{cfg.name}': workspace x-z bounds {lo.tolist()}..{hi.tolist()} do not "
                f"overlap the arm's reach; widen configs/robots/{cfg.name}.yaml workspace"
            )
        return lo, hi

    def reachable(self, xz: np.ndarray) -> np.ndarray:
        """(B,) bool: some IK solution lies within the soft limits shrunk by TARGET_MARGIN."""
        ok = np.zeros(len(xz), dtype=bool)
        for q in inverse_kinematics(xz):
            within = (q >= self.target_joint_lower) & (q <= self.target_joint_upper)
            ok |= np.all(within, axis=1)
        return ok

    def sample_task_state(self, rng: np.random.Generator) -> TaskState:
        """A target (x, z) uniform over the reachable part of the workspace box."""
        for _ in range(_MAX_ROUNDS):
            xz = rng.uniform(
                self.target_box_lower, self.target_box_upper, size=(_CANDIDATES_PER_ROUND, 2)
            )
            hits = np.flatnonzero(self.reachable(xz))
            if hits.size:
                return {"target": xz[hits[0]]}
        raise RuntimeError(
            "no reachable target found in the workspace box; check the arm2 workspace bounds "
            "and soft limits in the robot config"
        )

    def observe(self, q: np.ndarray, v: np.ndarray, task: TaskState) -> np.ndarray:
        """(B, 10) observations; see the module docstring."""
        target = self._target(task, len(q))
        tip = forward_kinematics(q)
        obs = np.concatenate(
            [
                np.sin(q),
                np.cos(q),
                v / VELOCITY_SCALE,
                (target - np.array(SHOULDER_XZ)) / REACH,
                (tip - target) / REACH,
            ],
            axis=1,
        )
        return obs.astype(np.float32)

    def reward(
        self, q: np.ndarray, v: np.ndarray, action: np.ndarray, task: TaskState
    ) -> np.ndarray:
        """(B,) rewards <= 0; see the module docstring."""
        target = self._target(task, len(q))
        distance = np.linalg.norm(forward_kinematics(q) - target, axis=1)
        speed2 = np.mean(np.clip(v / VELOCITY_SCALE, -2.0, 2.0) ** 2, axis=1)
        effort2 = np.mean(np.clip(action, -1.0, 1.0) ** 2, axis=1)
        return (
            -DISTANCE_WEIGHT * distance / REACH
            - VELOCITY_WEIGHT * speed2
            - ACTION_WEIGHT * effort2
        ).astype(np.float64)

    @staticmethod
    def _target(task: TaskState, batch: int) -> np.ndarray:
        if "target" not in task:
            raise KeyError("Arm2Reach needs task variable 'target' (x, z); reset the env first")
        target = np.asarray(task["target"], dtype=np.float64)
        if target.shape != (batch, 2):
            raise ValueError(f"task 'target' must have shape ({batch}, 2), got {target.shape}")
        return target
