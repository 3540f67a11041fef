"""`Arm2ReachEnv`: the two-joint arm reach task at one simulated fidelity.

    env = gymnasium.make("mfpg/Arm2Reach-v0", fidelity="reduced")

Fidelities (configs/robots/arm2.yaml -> sim/models/): "twin" (servo PD loop saturating at
stall torque, back-EMF speed limit ~5 rad/s, gravity, friction, encoder quantisation, one-step
latency, 2 ms timestep), "reduced" (kinematic first-order servo tracking with the datasheet
speed limit, no gravity, 10 ms timestep) and "reduced_gap" (reduced with servos believed
twice as fast: time constant halved, speed limit doubled).
"""

from __future__ import annotations

from sim.envs.base import RobotSimEnv
from sim.robot_config import RobotConfig, load_robot_config
from sim.tasks.arm2 import Arm2Reach


class Arm2ReachEnv(RobotSimEnv):
    """Reach a random target with the arm's tip; see `sim.tasks.arm2` for the task."""

    def __init__(
        self, fidelity: str = "twin", robot_config: str | RobotConfig | None = None
    ) -> None:
        robot = (
            robot_config
            if isinstance(robot_config, RobotConfig)
            else load_robot_config(robot_config or Arm2Reach.robot)
        )
        super().__init__(Arm2Reach(robot), fidelity, robot)
