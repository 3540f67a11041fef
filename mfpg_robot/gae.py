"""Generalised advantage estimation over a flat rollout that may span several episodes.

Time-limit truncation is not termination: at a truncated step the return is bootstrapped
with the value of the observation the episode was cut at, while the advantage recursion
stops there (the next row of the buffer belongs to a new episode). CleanRL treats both as
termination, which biases values near the time limit; SB3 and Pardo et al. (2018,
"Time limits in reinforcement learning") bootstrap, as here.
"""

from __future__ import annotations

import numpy as np


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    episode_end: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and lambda-returns for a rollout of T steps (1-D float arrays of length T).

    `values[t]` = V(s_t); `next_values[t]` = V(s_{t+1}) of the observation that followed
    step t (for the last step of an episode: the final observation, whatever the reason it
    ended); `terminated[t]`: s_{t+1} is terminal (no bootstrap); `episode_end[t]`: the
    episode ended at step t (terminated or truncated), so row t+1 starts a new one. The
    last row is bootstrapped from `next_values[-1]` unless terminated.

        delta_t = r_t + gamma (1 - terminated_t) next_values_t - values_t
        A_t     = delta_t + gamma lambda (1 - episode_end_t) A_{t+1},  A_T = 0
        returns = A + values

    With `gae_lambda = 1` the returns are discounted Monte-Carlo returns (bootstrapped only at
    truncation and at the end of the rollout).
    """
    rewards, values, next_values = (np.asarray(x, dtype=np.float64) for x in
                                    (rewards, values, next_values))
    terminated = np.asarray(terminated, dtype=bool)
    episode_end = np.asarray(episode_end, dtype=bool) | terminated
    n = rewards.shape[0]
    for name, arr in (("values", values), ("next_values", next_values),
                      ("terminated", terminated), ("episode_end", episode_end)):
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) like rewards, got {arr.shape}")
    deltas = rewards + gamma * np.where(terminated, 0.0, next_values) - values
    carry = gamma * gae_lambda * ~episode_end
    advantages = np.zeros(n, dtype=np.float64)
    last = 0.0
    for t in range(n - 1, -1, -1):
        last = deltas[t] + carry[t] * last
        advantages[t] = last
    return advantages, advantages + values
