"""Policy-gradient algorithms, selected by `algo.name` in the train config.

Each is an `mfpg_robot.algos.base.Algorithm` built as `cls(cfg, obs_dim, act_dim)`.
"""

from __future__ import annotations

from mfpg_robot.algos.base import Algorithm
from mfpg_robot.algos.mfppo import MFPPO
from mfpg_robot.algos.mfreinforce import MFReinforce
from mfpg_robot.algos.ppo import PPO
from mfpg_robot.algos.reinforce import Reinforce
from mfpg_robot.config import TrainConfig

__all__ = ["ALGORITHMS", "Algorithm", "make_algorithm"]

#: `algo.name` -> algorithm class (the names `mfpg_robot.config.ALGO_NAMES` allows).
ALGORITHMS: dict[str, type[Algorithm]] = {
    "ppo": PPO,
    "mfppo": MFPPO,
    "reinforce": Reinforce,
    "mfreinforce": MFReinforce,
}


def make_algorithm(cfg: TrainConfig, obs_dim: int, act_dim: int) -> Algorithm:
    """Build the algorithm `cfg.algo.name` for an env with these dimensions."""
    name = cfg.algo.name
    if name not in ALGORITHMS:
        raise ValueError(f"algo.name '{name}' is not an algorithm; choose one of "
                         f"{', '.join(ALGORITHMS)}")
    return ALGORITHMS[name](cfg, obs_dim, act_dim)
