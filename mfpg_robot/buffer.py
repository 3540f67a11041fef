"""High-fidelity rollout collection that records everything pairing needs.

Per step the buffer holds the observation, the env's measured `RobotState` (from
`get_state()`, when the env has one), the Gaussian noise `eps`, the action
`a = mu(s) + sigma * eps`, its log-prob, the raw reward, the termination/truncation flags and
the observation that followed (the final observation at an episode end, so a time-limit
truncation can be bootstrapped). `episode_start[t]` marks rows that begin an episode (the
state of such a row is that episode's start state).

Episodes run across iterations (CleanRL style): the collector keeps the current observation
between `collect` calls, so a rollout may begin and end mid-episode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from mfpg_robot.policy import GaussianPolicy, Tanh
from sim.state import RobotState


@dataclass
class RolloutBuffer:
    """T consecutive HF steps (row t = step t); numpy arrays with a leading T axis."""

    obs: np.ndarray  # (T, obs_dim) float32, raw (unnormalised)
    eps: np.ndarray  # (T, act_dim) float64, the N(0, I) noise of each step
    actions: np.ndarray  # (T, act_dim) float32, mu(obs) + sigma * eps (before env clipping)
    logprobs: np.ndarray  # (T,) float64, log N(actions; mu(obs), sigma^2) under the sampler
    rewards: np.ndarray  # (T,) float64, raw env rewards
    terminated: np.ndarray  # (T,) bool
    truncated: np.ndarray  # (T,) bool (time limit; never True together with terminated)
    next_obs: np.ndarray  # (T, obs_dim) float32, observation after step t (final obs at ends)
    episode_start: np.ndarray  # (T,) bool, row t is the first step of an episode
    states: list[RobotState] | None  # length T, the measured state at obs[t]; None if no API
    episode_returns: list[float] = field(default_factory=list)  # episodes finished in here
    episode_lengths: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return self.obs.shape[0]

    @property
    def dones(self) -> np.ndarray:
        """Row t ends an episode (terminated or truncated)."""
        return self.terminated | self.truncated

    def episode_start_states(self) -> list[tuple[int, RobotState]]:
        """(row, start state) of every episode that starts inside this buffer."""
        if self.states is None:
            return []
        return [(int(t), self.states[t]) for t in np.flatnonzero(self.episode_start)]


def gaussian_logprob(eps: np.ndarray, log_std: np.ndarray) -> np.ndarray:
    """log N(mu + sigma eps; mu, sigma^2) summed over the last axis (depends only on eps)."""
    d = eps.shape[-1]
    return -0.5 * np.sum(eps**2, axis=-1) - np.sum(log_std) - 0.5 * d * math.log(2 * math.pi)


def numpy_mean_fn(policy: GaussianPolicy) -> Callable[[np.ndarray], np.ndarray]:
    """A float64 numpy copy of `policy.mean` (raw obs -> mu) with the current weights.

    Acting step by step through torch costs ~0.3 ms per call in framework overhead; this
    snapshot costs a few microseconds, and agrees with `policy.mean` to float32 precision.
    """
    norm = policy.obs_norm
    mean, std = norm.mean.numpy().copy(), np.sqrt(norm.var.numpy() + norm.eps)
    clip = norm.clip
    layers: list[tuple[np.ndarray, np.ndarray] | None] = []  # None = tanh
    for m in policy.mu:
        if isinstance(m, torch.nn.Linear):
            w = m.weight.detach().numpy().astype(np.float64).T
            layers.append((w, m.bias.detach().numpy().astype(np.float64)))
        elif isinstance(m, (Tanh, torch.nn.Tanh)):
            layers.append(None)
        else:
            raise TypeError(f"numpy_mean_fn supports Linear and Tanh layers, got {m}")

    def mean_fn(obs: np.ndarray) -> np.ndarray:
        x = np.clip((obs - mean) / std, -clip, clip).astype(np.float32).astype(np.float64)
        for layer in layers:
            x = np.tanh(x) if layer is None else x @ layer[0] + layer[1]
        return x

    return mean_fn


def _state_getter(env: gym.Env):
    """The env's `get_state` (through wrappers), or None for envs without one."""
    return getattr(env.unwrapped, "get_state", None)


class HFCollector:
    """Steps one HF env with the current policy and seeded noise; keeps episodes running.

    The first reset uses `seed`; later resets continue the env's own seeded generator.
    Action noise comes from `rng` (a seeded numpy Generator), so every eps is reproducible.
    """

    def __init__(self, env: gym.Env, policy: GaussianPolicy, rng: np.random.Generator,
                 seed: int) -> None:
        if not isinstance(env.action_space, gym.spaces.Box):
            raise TypeError(f"continuous (Box) actions needed, got {env.action_space}")
        self.env, self.policy, self.rng = env, policy, rng
        self.act_dim = int(np.prod(env.action_space.shape))
        self._get_state = _state_getter(env)
        self._obs, _ = env.reset(seed=seed)
        self._new_episode = True
        self._ep_return, self._ep_len = 0.0, 0
        self.total_steps = 0

    def collect(self, n_steps: int) -> RolloutBuffer:
        """Run `n_steps` env steps and return them as a buffer."""
        env, policy = self.env, self.policy
        obs_dim = int(np.prod(self._obs.shape))
        obs = np.zeros((n_steps, obs_dim), dtype=np.float32)
        next_obs = np.zeros_like(obs)
        eps = self.rng.standard_normal((n_steps, self.act_dim))
        actions = np.zeros((n_steps, self.act_dim), dtype=np.float32)
        rewards = np.zeros(n_steps, dtype=np.float64)
        terminated = np.zeros(n_steps, dtype=bool)
        truncated = np.zeros(n_steps, dtype=bool)
        starts = np.zeros(n_steps, dtype=bool)
        states: list[RobotState] | None = [] if self._get_state is not None else None
        returns, lengths = [], []
        log_std = policy.log_std.detach().numpy().astype(np.float64)
        mean_fn = numpy_mean_fn(policy)
        for t in range(n_steps):
            obs[t] = self._obs
            starts[t] = self._new_episode
            if states is not None:
                states.append(self._get_state())
            actions[t] = mean_fn(obs[t]) + np.exp(log_std) * eps[t]
            o, r, term, trunc, _ = env.step(actions[t])
            rewards[t], terminated[t] = float(r), bool(term)
            truncated[t] = bool(trunc) and not terminated[t]
            next_obs[t] = o
            self._ep_return += float(r)
            self._ep_len += 1
            if term or trunc:
                returns.append(self._ep_return)
                lengths.append(self._ep_len)
                self._ep_return, self._ep_len = 0.0, 0
                o, _ = env.reset()
            self._obs, self._new_episode = o, bool(term or trunc)
        self.total_steps += n_steps
        return RolloutBuffer(
            obs=obs, eps=eps, actions=actions, logprobs=gaussian_logprob(eps, log_std),
            rewards=rewards, terminated=terminated, truncated=truncated, next_obs=next_obs,
            episode_start=starts, states=states, episode_returns=returns,
            episode_lengths=lengths,
        )
