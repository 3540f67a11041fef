"""`FurutaSwingupEnv`: the Furuta swing-up task at one simulated fidelity.

    env = gymnasium.make("mfpg/FurutaSwingup-v0", fidelity="reduced")

Fidelities (configs/robots/furuta.yaml -> sim/models/): "twin" (motor back-EMF, friction,
rotor inertia, encoder quantisation, one-step latency), "reduced" (rigid bodies, plain
volts->torque gain) and "reduced_gap" (reduced with a 30% shorter pendulum, masses x2).
"""

from __future__ import annotations

from sim.envs.base import RobotSimEnv
from sim.robot_config import RobotConfig, load_robot_config
from sim.tasks.furuta import FurutaSwingup


class FurutaSwingupEnv(RobotSimEnv):
    """Swing-up and balance of the Furuta pendulum; see `sim.tasks.furuta` for the task."""

    def __init__(
        self, fidelity: str = "twin", robot_config: str | RobotConfig | None = None
    ) -> None:
        robot = (
            robot_config
            if isinstance(robot_config, RobotConfig)
            else load_robot_config(robot_config or FurutaSwingup.robot)
        )
        super().__init__(FurutaSwingup(robot), fidelity, robot)
