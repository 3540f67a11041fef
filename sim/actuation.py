"""Normalised policy actions <-> physical commands, from the robot config.

Policies act in [-1, 1]^act_dim. For voltage/torque robots a command is `a * command_limit`;
for position servos a command is a joint target, `a` mapped affinely onto the soft limits.
The MuJoCo `ctrl` of every fidelity, and the COMMAND payload sent to a device, are in these
physical units.
"""

from __future__ import annotations

import numpy as np

from sim.robot_config import RobotConfig


def command_bounds(robot: RobotConfig) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper physical command per actuated joint."""
    if robot.actuation.type == "position":
        lims = [robot.joint(n).soft_limits for n in robot.actuated_joints]
        if any(lim is None for lim in lims):
            raise ValueError("position-actuated joints need soft_limits")
        lo = np.array([lim.lower for lim in lims])
        hi = np.array([lim.upper for lim in lims])
    else:
        c = robot.actuation.command_limit
        lo = np.full(len(robot.actuated_joints), -c)
        hi = np.full(len(robot.actuated_joints), c)
    return lo, hi


def action_to_command(
    robot: RobotConfig,
    action: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Map normalised actions (..., act_dim) in [-1, 1] to physical commands.

    `bounds`: `command_bounds(robot)`, for callers that map every control step.
    """
    lo, hi = command_bounds(robot) if bounds is None else bounds
    return lo + (np.asarray(action, dtype=np.float64) + 1.0) * 0.5 * (hi - lo)


def command_to_action(robot: RobotConfig, command: np.ndarray) -> np.ndarray:
    """Inverse of `action_to_command`."""
    lo, hi = command_bounds(robot)
    return 2.0 * (np.asarray(command, dtype=np.float64) - lo) / (hi - lo) - 1.0
