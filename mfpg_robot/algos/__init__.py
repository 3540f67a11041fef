"""Policy-gradient algorithms, selected by `algo.name` in the train config.

Each algorithm lives in `mfpg_robot/algos/<name>.py` and exposes
`build_algorithm(cfg: TrainConfig, obs_dim: int, act_dim: int) -> Algorithm`
(see `mfpg_robot.algos.base.Algorithm`). Modules are imported only when selected, so a
missing optional algorithm does not break the others.
"""

from __future__ import annotations

import importlib

from mfpg_robot.algos.base import Algorithm
from mfpg_robot.config import ALGO_NAMES, TrainConfig

__all__ = ["ALGO_NAMES", "Algorithm", "make_algorithm"]


def make_algorithm(cfg: TrainConfig, obs_dim: int, act_dim: int) -> Algorithm:
    """Build the algorithm `cfg.algo.name` for an env with these dimensions."""
    name = cfg.algo.name
    module_name = f"mfpg_robot.algos.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise RuntimeError(
            f"algo.name '{name}' is not available in this install ({module_name} is missing); "
            f"choose one of the installed algorithms, e.g. ppo or reinforce"
        ) from None
    return module.build_algorithm(cfg, obs_dim, act_dim)
