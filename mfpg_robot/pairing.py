"""HF/LF pairing: the low-fidelity samples that form the control variate of an HF rollout.

Two modes (`lf.pairing`), both simulated with the batched LF collector (`sim.batched`):

`episode` (the paper's, arXiv 2503.05696). For every HF episode that starts inside the
rollout, an LF copy starts from the episode's measured start state and replays the HF noise
`eps` with the policy acting on the LF observations (`a_LF = mu(s_LF) + sigma * eps`); once
the LF episode outlasts its HF partner it continues with fresh noise. Pairs (for the
covariance) are the steps both episodes reached, i.e. trimmed to the shorter one. The LF
episode runs for a horizon fixed by where the HF episode started in the rollout (the rows
left, capped by the time limit), never by how the HF episode went, so a paired LF episode
is distributed exactly like an LF episode from a random start: the reference pool is
`pool_per_hf` such episodes per paired one, from starts drawn like the HF starts and with
independent noise. (A pool whose starts are distributed differently biases the estimate.)
Rows of an episode that began in an earlier rollout (a fragment) are paired the same way
from the measured state of the rollout's first row, for the whole rollout (capped by the
time limit), and their references start from that same state (docs/mfpg.md).

`synced` (ours). From every HF row's measured state s_t, a k-step LF segment replays
eps_t..eps_{t+k-1} (fresh noise past the HF episode's end), so its first action is the HF
action; M more segments from the same s_t with fresh noise give the reference. The sample
of a segment is its first step, with the advantage bootstrapped by the LF critic at the
segment's end. Given s_t, paired and reference segments are identically distributed, so the
correction is unbiased for any start-state distribution and any c.

Advantages use GAE over each LF rollout (episode or segment) with the LF critic, LF rewards
scaled like the HF ones (`reward_fn`), and the shared observation normalisation (the policy's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mfpg_robot.buffer import RolloutBuffer, gaussian_logprob
from mfpg_robot.policy import GaussianPolicy
from sim.batched import BatchedCollector, BatchRollout
from sim.tasks.base import TaskState

ValueFn = Callable[[np.ndarray], np.ndarray]
RewardFn = Callable[[np.ndarray], np.ndarray]
StartSampler = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray, TaskState]]


@dataclass
class LFPart:
    """LF policy samples: one row per (state, action) the surrogate is evaluated on."""

    obs: np.ndarray  # (n, obs_dim) float32, raw LF observations
    actions: np.ndarray  # (n, act_dim) float32, mu(obs) + sigma * eps
    logprobs: np.ndarray  # (n,) float64, log-prob under the sampling policy
    advantages: np.ndarray  # (n,) float64, GAE with the LF critic
    returns: np.ndarray  # (n,) float64, LF critic targets (advantages + values)
    anchor: np.ndarray  # (n,) int, HF row whose minibatch this sample joins; -1: none

    def __len__(self) -> int:
        return self.obs.shape[0]

    def take(self, idx: np.ndarray) -> LFPart:
        return LFPart(self.obs[idx], self.actions[idx], self.logprobs[idx],
                      self.advantages[idx], self.returns[idx], self.anchor[idx])


@dataclass
class LFSamples:
    """The LF side of one HF rollout.

    `paired[j]` is the HF row `partner[j]` replayed in LF (`partner[j] = -1`: an LF step with
    no HF partner, e.g. past the HF episode's end; it still belongs to the paired mean).
    `ref`: reference samples; `ref.anchor[j]` is the HF row whose state they start from
    (synced) or -1 (episode pool, independent of the HF rollout). `ref_per_paired`: how many
    reference rollouts were drawn per paired one (M, or the pool size per episode), the
    weight of the sum-form objective (`mfpg_robot.estimators.mf_objective`).
    """

    mode: str
    paired: LFPart
    partner: np.ndarray
    ref: LFPart
    ref_per_paired: float
    lf_steps: int  # LF control steps simulated
    rollout_returns: np.ndarray  # raw undiscounted returns of the paired LF rollouts
    rollout_lengths: np.ndarray

    @property
    def n_pairs(self) -> int:
        return int((self.partner >= 0).sum())


class Pairing(Protocol):
    def collect(
        self, buffer: RolloutBuffer, policy: GaussianPolicy, value_fn: ValueFn,
        reward_fn: RewardFn, rng: np.random.Generator,
    ) -> LFSamples: ...


def rollout_gae(
    rewards: np.ndarray, values: np.ndarray, terminated: np.ndarray, valid: np.ndarray,
    gamma: float, gae_lambda: float,
) -> np.ndarray:
    """GAE for N rollouts of up to H steps, vectorised over N.

    `rewards`, `terminated`, `valid` are (N, H); `valid[i]` is a prefix (steps taken before the
    rollout ended or was cut); `values` (N, H + 1) holds V of every observation. A rollout cut
    while alive is bootstrapped with the value of the observation after its last valid step.
    Returns (N, H) advantages, 0 on invalid steps.
    """
    n, h = rewards.shape
    next_v = np.where(terminated, 0.0, values[:, 1:])
    deltas = np.where(valid, rewards + gamma * next_v - values[:, :-1], 0.0)
    adv = np.zeros((n, h))
    last = np.zeros(n)
    for t in range(h - 1, -1, -1):
        cont = valid[:, t + 1] if t + 1 < h else np.zeros(n, dtype=bool)
        last = deltas[:, t] + gamma * gae_lambda * np.where(cont, last, 0.0)
        adv[:, t] = np.where(valid[:, t], last, 0.0)
    return adv


def _run_chunked(
    collector: BatchedCollector, policy: GaussianPolicy, q0: np.ndarray, v0: np.ndarray,
    task: TaskState, eps: np.ndarray,
) -> BatchRollout:
    """Roll out copies i with actions mu(obs) + sigma * eps[i, t], in chunks of `n_envs`."""
    frozen = policy.rollout_policy()
    std = frozen.std.astype(np.float64)
    horizon = eps.shape[1]
    parts = []
    for lo in range(0, q0.shape[0], collector.n_envs):
        sl = slice(lo, lo + collector.n_envs)
        e = eps[sl]

        def act(obs: np.ndarray, t: int, e: np.ndarray = e) -> np.ndarray:
            return frozen.mean(obs).astype(np.float64) + std * e[:, t]

        chunk_task = {k: val[sl] for k, val in task.items()}
        parts.append(collector.run(q0[sl], v0[sl], chunk_task, horizon, act))
    if len(parts) == 1:
        return parts[0]
    cat = {f: np.concatenate([getattr(p, f) for p in parts]) for f in
           ("obs", "actions", "rewards", "terminated", "alive", "q", "v")}
    return BatchRollout(**cat)


def _evaluate(
    out: BatchRollout, valid: np.ndarray, value_fn: ValueFn, reward_fn: RewardFn,
    gamma: float, gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and value targets (N, H) of a batch rollout restricted to `valid`."""
    n, h = valid.shape
    values = value_fn(out.obs[:, : h + 1].reshape(n * (h + 1), -1)).reshape(n, h + 1)
    rewards = np.where(valid, reward_fn(out.rewards[:, :h]), 0.0)
    adv = rollout_gae(rewards, values, out.terminated[:, :h] & valid, valid, gamma, gae_lambda)
    return adv, adv + values[:, :h]


def _part(
    out: BatchRollout, eps: np.ndarray, log_std: np.ndarray, adv: np.ndarray, ret: np.ndarray,
    rows: np.ndarray, steps: np.ndarray, anchor: np.ndarray,
) -> LFPart:
    return LFPart(
        obs=out.obs[rows, steps].astype(np.float32),
        actions=out.actions[rows, steps].astype(np.float32),
        logprobs=gaussian_logprob(eps[rows, steps], log_std),
        advantages=adv[rows, steps], returns=ret[rows, steps],
        anchor=anchor.astype(np.int64),
    )


def _episode_ids(buffer: RolloutBuffer) -> np.ndarray:
    """Row -> episode index within the buffer (rows before the first start: -1)."""
    return np.cumsum(buffer.episode_start) - 1


def _require_states(buffer: RolloutBuffer) -> list:
    if buffer.states is None:
        raise ValueError(
            "multi-fidelity pairing needs the HF env's measured states; the HF env has no "
            "get_state() (use an mfpg env or the robot env as hf.env)"
        )
    return buffer.states


class SyncedPairing:
    """k-step LF segments from every HF state: one with the HF noise, M with fresh noise."""

    def __init__(
        self, collector: BatchedCollector, k: int, M: int, gamma: float, gae_lambda: float
    ) -> None:
        if k < 1 or M < 1:
            raise ValueError(f"synced pairing needs k >= 1 and M >= 1, got k={k}, M={M}")
        self.collector, self.k, self.M = collector, k, M
        self.gamma, self.gae_lambda = gamma, gae_lambda

    def hf_noise_windows(self, buffer: RolloutBuffer, rng: np.random.Generator) -> np.ndarray:
        """(T, k, act_dim): eps_t..eps_{t+k-1} of each row's episode, fresh noise past its end."""
        n, k = len(buffer), self.k
        rows = np.arange(n)[:, None] + np.arange(k)[None, :]
        inside = rows < n
        rows_c = np.minimum(rows, n - 1)
        ep = _episode_ids(buffer)
        same = inside & (ep[rows_c] == ep[:, None])
        return np.where(same[..., None], buffer.eps[rows_c],
                        rng.standard_normal((n, k, buffer.eps.shape[1])))

    def collect(
        self, buffer: RolloutBuffer, policy: GaussianPolicy, value_fn: ValueFn,
        reward_fn: RewardFn, rng: np.random.Generator,
    ) -> LFSamples:
        states = _require_states(buffer)
        n, k, m = len(buffer), self.k, self.M
        q, v, task = self.collector.batch_states(states)
        idx = np.concatenate([np.arange(n), np.repeat(np.arange(n), m)])
        eps = np.concatenate([
            self.hf_noise_windows(buffer, rng),
            rng.standard_normal((n * m, k, buffer.eps.shape[1])),
        ])
        out = _run_chunked(self.collector, policy, q[idx], v[idx],
                           {key: val[idx] for key, val in task.items()}, eps)
        valid = out.alive[:, :k]
        adv, ret = _evaluate(out, valid, value_fn, reward_fn, self.gamma, self.gae_lambda)
        log_std = policy.log_std.detach().numpy().astype(np.float64)
        first = np.zeros(n * (m + 1), dtype=np.int64)
        every = np.arange(n * (m + 1))
        samples = _part(out, eps, log_std, adv, ret, every, first, idx)
        pair_rows = np.arange(n)
        raw = np.where(valid, out.rewards[:, :k], 0.0)
        return LFSamples(
            mode="synced",
            paired=samples.take(pair_rows),
            partner=pair_rows.copy(),
            ref=samples.take(np.arange(n, n * (m + 1))),
            ref_per_paired=float(m),
            lf_steps=int(valid.sum()),
            rollout_returns=raw[:n].sum(axis=1),
            rollout_lengths=valid[:n].sum(axis=1),
        )


class EpisodePairing:
    """LF episodes from the HF episode starts with the HF noise, plus reference episodes.

    Every HF episode with rows in the rollout gets one paired LF episode: from its measured
    start state if it starts in the rollout, else (a fragment: the episode began in an earlier
    rollout) from the measured state of the rollout's first row. Its horizon is the rows left
    in the rollout from there, capped by the time limit; `pool_per_hf` reference episodes with
    fresh noise and the same horizon go with each.

    References of an episode that starts in the rollout start from the pool's start
    distribution (`pool_starts`, default the LF env's own) or, with `same_starts=True` (ours),
    from the paired episode's own start state: then the correction is zero-mean given the
    starts, whatever their distribution (on a robot, the reset procedure's distribution is not
    the simulator's), but the start-state part of the variance is no longer shared.
    References of a fragment always start from the fragment's first state: mid-episode states
    have no known distribution to draw a pool from.

    `whole_episodes=True` is for buffers made of complete episodes (benchmarks, where the
    buffer's length is the sum of the episode lengths): every LF episode then gets the full
    time limit. With the default, a trainer's fixed-length rollout, the horizon is the rows
    left after the episode's start; for a buffer of whole episodes that would tie the last
    LF episode's horizon to how its HF partner went, and bias the estimate.
    """

    def __init__(
        self, collector: BatchedCollector, pool_per_hf: int, max_episode_steps: int,
        gamma: float, gae_lambda: float, pool_starts: StartSampler | None = None,
        whole_episodes: bool = False, same_starts: bool = False,
    ) -> None:
        if same_starts and pool_starts is not None:
            raise ValueError("give pool_starts or same_starts=True, not both")
        if pool_per_hf < 1 or max_episode_steps < 1:
            raise ValueError(
                f"episode pairing needs pool_per_hf >= 1 and max_episode_steps >= 1, got "
                f"{pool_per_hf} and {max_episode_steps}"
            )
        self.collector, self.pool_per_hf = collector, pool_per_hf
        self.max_episode_steps = max_episode_steps
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.pool_starts = pool_starts or collector.sample_starts
        self.whole_episodes = whole_episodes
        self.same_starts = same_starts

    def collect(
        self, buffer: RolloutBuffer, policy: GaussianPolicy, value_fn: ValueFn,
        reward_fn: RewardFn, rng: np.random.Generator,
    ) -> LFSamples:
        states = _require_states(buffer)
        n_rows, act_dim = len(buffer), buffer.eps.shape[1]
        log_std = policy.log_std.detach().numpy().astype(np.float64)
        # LF episode i pairs HF rows first[i] .. first[i] + hf_len[i] - 1 (to its end or the
        # rollout's); row 0 opens a fragment when it continues an earlier rollout's episode
        starts = np.flatnonzero(buffer.episode_start)
        fragment = not buffer.episode_start[0]
        first = np.concatenate([[0], starts]) if fragment else starts
        own = np.full(first.size, self.same_starts)  # references from the episode's own start
        own[0] |= fragment
        ends = np.append(np.flatnonzero(buffer.dones) + 1, n_rows)
        hf_len = ends[np.searchsorted(ends, first, side="right")] - first
        horizon = np.minimum(n_rows - first, self.max_episode_steps)
        if self.whole_episodes:
            horizon = np.full(first.size, self.max_episode_steps)
        h_max = int(horizon.max())

        eps = rng.standard_normal((first.size, h_max, act_dim))
        for i, (s, length) in enumerate(zip(first, hf_len, strict=True)):
            eps[i, :length] = buffer.eps[s : s + length]
        q, v, task = self.collector.batch_states([states[s] for s in first])
        out = _run_chunked(self.collector, policy, q, v, task, eps)
        steps = np.arange(h_max)[None, :]
        valid = out.alive[:, :h_max] & (steps < horizon[:, None])
        adv, ret = _evaluate(out, valid, value_fn, reward_fn, self.gamma, self.gae_lambda)
        rows, t = np.nonzero(valid)
        is_pair = t < hf_len[rows]
        partner = np.where(is_pair, first[rows] + t, -1)
        anchor = first[rows] + t % hf_len[rows]
        paired = _part(out, eps, log_std, adv, ret, rows, t, anchor)

        # references: pool_per_hf LF episodes per paired one, same horizon, fresh noise, from
        # the paired episode's own first state (fragments, same_starts) or from pool_starts
        ep = np.repeat(np.arange(first.size), self.pool_per_hf)
        pq, pv, ptask = q[ep], v[ep], {k: val[ep] for k, val in task.items()}
        pooled = np.flatnonzero(~own[ep])
        if pooled.size:
            sq, sv, stask = self.pool_starts(pooled.size, rng)
            pq[pooled], pv[pooled] = sq, sv
            for k, val in stask.items():
                ptask[k][pooled] = val
        pool_h = horizon[ep]
        peps = rng.standard_normal((ep.size, h_max, act_dim))
        pout = _run_chunked(self.collector, policy, pq, pv, ptask, peps)
        pvalid = pout.alive[:, :h_max] & (steps < pool_h[:, None])
        padv, pret = _evaluate(pout, pvalid, value_fn, reward_fn, self.gamma, self.gae_lambda)
        prow, pt = np.nonzero(pvalid)
        # grouped with the paired step at the same time of its episode (same_starts), else all
        # pooled, a fragment's too: `align_pairs` takes references all grouped or all pooled
        ref_anchor = np.full(prow.size, -1)
        if self.same_starts:
            pep = ep[prow]
            ref_anchor = first[pep] + pt % hf_len[pep]
        ref = _part(pout, peps, log_std, padv, pret, prow, pt, ref_anchor)
        raw = np.where(valid, out.rewards[:, :h_max], 0.0)
        return LFSamples(
            mode="episode", paired=paired, partner=partner, ref=ref,
            ref_per_paired=float(self.pool_per_hf),
            lf_steps=int(valid.sum() + pvalid.sum()),
            rollout_returns=raw.sum(axis=1), rollout_lengths=valid.sum(axis=1),
        )
