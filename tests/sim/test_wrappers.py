"""ExploringStarts: starts spread over the joint ranges, seeded, only for simulated envs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sim  # noqa: F401
from sim.wrappers import ExploringStarts


def _starts(env: gym.Env, n: int, seed: int) -> np.ndarray:
    states = []
    env.reset(seed=seed)
    for _ in range(n):
        _, info = env.reset()
        states.append(info["state"].arrays(env.unwrapped.joint_names)[0])
    return np.array(states)


def test_exploring_starts_cover_the_pendulum_circle_and_stay_inside_soft_limits() -> None:
    env = ExploringStarts(gym.make("mfpg/FurutaSwingup-v0", fidelity="reduced"), 1.0)
    q = _starts(env, 200, seed=0)
    arm, pend = q[:, 0], q[:, 1]
    soft = env.unwrapped.robot.joint("arm").soft_limits
    assert soft.lower <= arm.min() and arm.max() <= soft.upper
    assert np.mean(np.abs(pend) > 2.5) > 0.1, "some starts near upright"
    assert np.ptp(arm) > 3.0


def test_probability_zero_starts_like_the_robot_and_seeding_reproduces() -> None:
    plain = _starts(gym.make("mfpg/FurutaSwingup-v0", fidelity="reduced"), 20, seed=3)
    none = _starts(ExploringStarts(gym.make("mfpg/FurutaSwingup-v0", fidelity="reduced"), 0.0),
                   20, seed=3)
    assert np.all(np.abs(plain[:, 1]) < 0.1) and np.all(np.abs(none[:, 1]) < 0.1)
    half_a = _starts(ExploringStarts(gym.make("mfpg/FurutaSwingup-v0", fidelity="reduced"), 0.5),
                     50, seed=3)
    half_b = _starts(ExploringStarts(gym.make("mfpg/FurutaSwingup-v0", fidelity="reduced"), 0.5),
                     50, seed=3)
    assert np.array_equal(half_a, half_b)
    wide = np.abs(half_a[:, 1]) > 0.1
    assert 0.2 < wide.mean() < 0.8


def test_plain_gymnasium_env_is_refused() -> None:
    with pytest.raises(TypeError, match="simulated mfpg env"):
        ExploringStarts(gym.make("InvertedPendulum-v5"), 0.5)


def test_goal_starts_put_the_pendulum_near_upright_at_rest() -> None:
    env = ExploringStarts(gym.make("mfpg/FurutaSwingup-v0", fidelity="reduced"), 0.0, goal=1.0)
    q = _starts(env, 100, seed=1)
    upright_error = np.abs(np.mod(q[:, 1], 2 * np.pi) - np.pi)
    assert upright_error.max() <= 0.4 + 1e-9 and np.abs(q[:, 0]).max() <= 0.5
    mixed = ExploringStarts(gym.make("mfpg/FurutaSwingup-v0", fidelity="reduced"), 0.3, goal=0.4)
    err = np.abs(np.mod(_starts(mixed, 300, seed=2)[:, 1], 2 * np.pi) - np.pi)
    hanging = np.mean(err > np.pi - 0.1)
    assert 0.2 < hanging < 0.45  # 30% robot resets, plus exploring starts that hang


def test_goal_starts_need_a_task_that_defines_them_and_shares_at_most_one() -> None:
    with pytest.raises(ValueError, match="no goal start"):
        ExploringStarts(gym.make("mfpg/Arm2Reach-v0", fidelity="reduced"), 0.0, goal=0.5)
    with pytest.raises(ValueError, match="probability \\+ goal <= 1"):
        ExploringStarts(gym.make("mfpg/FurutaSwingup-v0", fidelity="reduced"), 0.6, goal=0.5)


def test_train_config_refuses_goal_starts_on_the_robot_and_shares_above_one() -> None:
    from mfpg_robot.config import validate_train_config
    from sim.robot_config import ConfigError

    base = {"seed": 0, "algo": {"name": "ppo"},
            "hf": {"env": "mfpg/FurutaSwingup-v0", "total_steps": 4096}}
    with pytest.raises(ConfigError, match="simulated mfpg envs only"):
        validate_train_config({**base, "hf": {**base["hf"], "fidelity": "robot",
                                              "goal_starts": 0.3}}, "t")
    with pytest.raises(ConfigError, match="more than 1"):
        validate_train_config({**base, "hf": {**base["hf"], "goal_starts": 0.6,
                                              "exploring_starts": 0.6}}, "t")
