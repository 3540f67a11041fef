"""Contracts every registered env must keep, at every fidelity (see sim/envs/base.py)."""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
from sim.robot_config import load_robot_config

#: Every registered env id -> the fidelities (model names) its robot config declares.
MODELS = {i: load_robot_config(task.robot).model_names for i, (_, task) in sim.ENV_IDS.items()}
ENV_FIDELITY = [(i, f) for i, names in MODELS.items() for f in names]
ENV_PAIRS = [(i, a, b) for i, m in MODELS.items() for a, b in itertools.product(m, repeat=2)]


def _make(env_id: str, fidelity: str) -> gym.Env:
    return gym.make(env_id, fidelity=fidelity)


def _rollout(env: gym.Env, seed: int, steps: int) -> tuple[list[np.ndarray], list[float]]:
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    observations, rewards = [obs], []
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return observations, rewards


@pytest.mark.parametrize(("env_id", "fidelity"), ENV_FIDELITY)
def test_make_and_check_env(env_id, fidelity):
    env = _make(env_id, fidelity)
    assert env.unwrapped.fidelity == fidelity
    check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("env_id", list(sim.ENV_IDS))
def test_every_fidelity_has_the_same_spaces(env_id):
    envs = [_make(env_id, f) for f in MODELS[env_id]]
    for env in envs[1:]:
        assert env.observation_space == envs[0].observation_space
        assert env.action_space == envs[0].action_space


@pytest.mark.parametrize(("env_id", "fidelity"), ENV_FIDELITY)
def test_same_seed_and_actions_give_the_same_episode(env_id, fidelity):
    obs_a, rew_a = _rollout(_make(env_id, fidelity), seed=7, steps=30)
    obs_b, rew_b = _rollout(_make(env_id, fidelity), seed=7, steps=30)
    assert len(obs_a) == len(obs_b) > 1
    for a, b in zip(obs_a, obs_b, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(rew_a, rew_b)
    obs_c, _ = _rollout(_make(env_id, fidelity), seed=8, steps=0)
    assert not np.array_equal(obs_a[0], obs_c[0])


@pytest.mark.parametrize(("env_id", "source", "dest"), ENV_PAIRS)
def test_reset_to_get_state_round_trips_across_fidelities(env_id, source, dest):
    src = _make(env_id, source).unwrapped
    _rollout(src, seed=3, steps=10)
    state = src.get_state()
    dst = _make(env_id, dest).unwrapped
    dst.reset_to(state)
    q, v = state.arrays(dst.joint_names)
    q_true, v_true = dst.true_joint_state()
    np.testing.assert_array_equal(q_true, q)
    np.testing.assert_array_equal(v_true, v)
    again = dst.get_state()
    q_meas, v_meas = again.arrays(dst.joint_names)
    count = dst.sensor.resolution  # 0 where the fidelity does not quantise
    assert np.all(np.abs(q_meas - q) <= 0.5 * count + 1e-12), (q_meas, q, count)
    np.testing.assert_array_equal(v_meas, v)
    assert again.task.keys() == state.task.keys()
    for key, value in state.task.items():
        np.testing.assert_array_equal(again.task[key], value)


@pytest.mark.parametrize("env_id", list(sim.ENV_IDS))
def test_time_limit_truncates_at_max_episode_steps(env_id):
    env = _make(env_id, "reduced")
    limit = sim.ENV_IDS[env_id][1].max_episode_steps
    assert env.spec.max_episode_steps == limit == env.unwrapped.task.max_episode_steps
    env.reset(seed=0)
    hold = np.zeros(env.action_space.shape, dtype=np.float32)
    for step in range(1, limit + 1):
        _, _, terminated, truncated, _ = env.step(hold)
        assert not terminated
        assert truncated == (step == limit)
