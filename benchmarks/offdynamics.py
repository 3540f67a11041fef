"""Off-dynamics HF envs (the MFPG paper's setting): a stock Gymnasium MuJoCo env is the LF
model, the same model with one physical change is the HF env.

Importing this module registers `OffDynamics/<Base>-<variant>-v5` for each base in BASES and
each variant in VARIANTS; an id with the module prefix (`env_id`), e.g.
`benchmarks.offdynamics:OffDynamics/Hopper-gravity_x2-v5`, imports it on `gymnasium.make`
(what the benchmark's train configs and evaluation use). A variant is the stock env, built
from the stock XML, whose compiled model then gets the change: every other number stays
bitwise the stock one (an XML written back by `MjSpec.to_xml` rounds angles to 6 digits).

Variants:
- gravity_x0.5, gravity_x2: gravity scaled;
- friction_x0.5, friction_x2: the friction terms scaled: every geom's friction coefficients,
  and joint damping (InvertedPendulum has no contacts: its only friction is the damping of
  the cart's rail and the pole's hinge);
- joints_narrow: every limited joint's range scaled by 0.5 about the joint's zero (which the
  stock start pose is at, so every start stays within the limits).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import mujoco

MODULE = "benchmarks.offdynamics"
BASES = ("InvertedPendulum-v5", "Hopper-v5")


def _gravity(k: float) -> Callable[[mujoco.MjModel], None]:
    def edit(model: mujoco.MjModel) -> None:
        model.opt.gravity *= k
    return edit


def _friction(k: float) -> Callable[[mujoco.MjModel], None]:
    def edit(model: mujoco.MjModel) -> None:
        model.geom_friction *= k
        model.dof_damping *= k
    return edit


def _narrow_joints(model: mujoco.MjModel) -> None:
    model.jnt_range[model.jnt_limited.astype(bool)] *= 0.5


VARIANTS: dict[str, Callable[[mujoco.MjModel], None]] = {
    "gravity_x0.5": _gravity(0.5),
    "gravity_x2": _gravity(2.0),
    "friction_x0.5": _friction(0.5),
    "friction_x2": _friction(2.0),
    "joints_narrow": _narrow_joints,
}


def env_id(base: str, variant: str) -> str:
    """The registered id of a variant, with the module prefix that registers it on make."""
    name, version = base.rsplit("-", 1)
    return f"{MODULE}:OffDynamics/{name}-{variant}-{version}"


def make_variant(base: str, variant: str, **kwargs: Any) -> gym.Env:
    """The stock env of `base` with `variant` applied to its model (the entry point)."""
    env = gym.make(base, **kwargs).unwrapped  # no wrappers: gym.make adds the variant's own
    VARIANTS[variant](env.model)
    return env


def register_all() -> None:
    for base in BASES:
        stock = gym.spec(base)
        for variant in VARIANTS:
            vid = env_id(base, variant).split(":", 1)[1]
            if vid not in gym.registry:
                gym.register(id=vid, entry_point=make_variant,
                             kwargs={"base": base, "variant": variant},
                             max_episode_steps=stock.max_episode_steps,
                             reward_threshold=stock.reward_threshold)


register_all()
