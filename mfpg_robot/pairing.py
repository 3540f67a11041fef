"""HF/LF pairing: the low-fidelity samples that form the control variate of an HF rollout.

Two modes (`lf.pairing`), both simulated with the batched LF collector (`sim.batched`; for a
plain Gymnasium MuJoCo LF env, `sim.gym_collector`):

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

Draws and chunks. A collection is an `LFJob`: one row per LF rollout, grouped into items,
with the HF start states and HF noise the rows replay. Everything random is keyed, not
streamed: `collect` takes a key (the trainer's is (seed, iteration); a Generator stands for
a fresh key), and item i (episode: one LF episode, paired or reference; synced: one HF row's
paired segment and its M references) draws its starts and fresh noise from
`np.random.default_rng([*key, i])`. The rows are simulated in chunks of whole items of at
most `batch` rows (`simulate`), one after another on the collector (`LocalLF`) or spread over
Ray actors (`mfpg_robot.lf_ray.RayLF`). A chunk's samples depend on its own rows only, so
the samples are bitwise the same however the chunks are spread; they depend on `batch` at
float rounding (the policy and critic run once per chunk, and a matrix product may round a
row differently in a batch of another size).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from mfpg_robot.buffer import RolloutBuffer, gaussian_logprob
from mfpg_robot.policy import GaussianPolicy, RolloutPolicy
from sim.batched import BatchedCollector
from sim.gym_collector import GymCollector
from sim.tasks.base import TaskState

ValueFn = Callable[[np.ndarray], np.ndarray]
RewardFn = Callable[[np.ndarray], np.ndarray]
LFCollector = BatchedCollector | GymCollector
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
        reward_fn: RewardFn, key: Sequence[int] | np.random.Generator,
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


def lf_key(key: Sequence[int] | np.random.Generator) -> tuple[int, ...]:
    """The key of one LF collection: the given integers (the trainer's: seed, iteration), or
    one drawn from a Generator (one-off collections; each call draws a new key)."""
    if isinstance(key, np.random.Generator):
        return (int(key.integers(2**63)),)
    out = tuple(int(k) for k in key)
    if not out or min(out) < 0:
        raise ValueError(f"an LF key is one or more non-negative integers, got {key!r}")
    return out


def identity_rewards(rewards: np.ndarray) -> np.ndarray:
    """The `RewardFn` of unscaled rewards."""
    return rewards


class CriticValues:
    """A critic as a `ValueFn`: float64 values of raw observations, in blocks of 65536 rows.

    Picklable (it ships a critic to the LF workers); it evaluates the critic it holds, so
    take a new one after the critic changes.
    """

    def __init__(self, critic: torch.nn.Module) -> None:
        self.critic = critic

    @torch.no_grad()
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        out = [self.critic(torch.as_tensor(obs[i : i + 65536])).double().numpy()
               for i in range(0, obs.shape[0], 65536)]
        return np.concatenate(out) if out else np.zeros(0)


@dataclass(frozen=True)
class LFModel:
    """What simulating LF rollouts needs from the learner, fixed for one collection."""

    policy: RolloutPolicy  # the frozen actor: a = mu(obs) + sigma * eps
    log_std: np.ndarray  # (act_dim,) float64, for the samples' log-probs
    value_fn: ValueFn  # the LF critic
    reward_fn: RewardFn  # LF reward scaling
    start_sampler: StartSampler | None = None  # None: the collector's own start distribution


@dataclass
class LFJob:
    """LF rollouts to simulate, one row each, grouped into items that share a generator.

    The rows of item i are contiguous and share a horizon; its generator
    `np.random.default_rng([*key, i])` draws, in this order, the start states of its rows
    with `draw_start` (one `start_sampler(n, generator)` call), then the noise of all its
    rows, (rows, horizon, act_dim) standard normal. The first `known_len[r]` steps of row r
    replay given noise instead (`known`: the rows with known_len > 0, in order). Every row is
    simulated for `steps` control steps; its valid steps are those before its horizon while
    it is alive. Its samples are its valid steps (`first_only`: its first step).
    """

    key: tuple[int, ...]
    item: np.ndarray  # (R,) int, nondecreasing
    q0: np.ndarray  # (R, n_joints) start joint positions (rows with draw_start: ignored)
    v0: np.ndarray  # (R, n_joints)
    task: TaskState  # (R, ...) per key
    draw_start: np.ndarray  # (R,) bool
    horizon: np.ndarray  # (R,) int
    known_len: np.ndarray  # (R,) int
    known: np.ndarray  # (P, steps, act_dim) float64
    steps: int
    first_only: bool
    gamma: float
    gae_lambda: float

    def __len__(self) -> int:
        return self.item.shape[0]

    def slice(self, lo: int, hi: int) -> LFJob:
        """Rows lo..hi-1 (whole items) as a job of their own."""
        k = np.searchsorted(np.flatnonzero(self.known_len), [lo, hi])
        return dataclasses.replace(
            self, item=self.item[lo:hi], q0=self.q0[lo:hi], v0=self.v0[lo:hi],
            task={key: val[lo:hi] for key, val in self.task.items()},
            draw_start=self.draw_start[lo:hi], horizon=self.horizon[lo:hi],
            known_len=self.known_len[lo:hi], known=self.known[k[0] : k[1]],
        )

    def chunks(self, batch: int) -> list[tuple[int, int]]:
        """Row ranges of whole items, each of at most `batch` rows (an item larger than
        `batch` alone); they depend on the items and `batch` only."""
        n = len(self)
        starts = _item_starts(self.item).tolist()
        bounds, lo = [], 0
        for s, e in zip(starts, [*starts[1:], n], strict=True):
            if e - lo > batch and s > lo:
                bounds.append((lo, s))
                lo = s
        return [*bounds, (lo, n)]


@dataclass
class LFRows:
    """The samples of simulated LF rows (`simulate`): per sample its row and step, per row
    its valid steps and raw return."""

    row: np.ndarray  # (S,) int, row in the job of each sample (row-major order)
    step: np.ndarray  # (S,) int
    part: LFPart  # the samples (anchor: -1, set by the pairing)
    lengths: np.ndarray  # (R,) valid steps of each row
    raw_returns: np.ndarray  # (R,) undiscounted raw reward over its valid steps

    @staticmethod
    def concat(parts: list[LFRows], offsets: list[int]) -> LFRows:
        """The rows of consecutive chunks as one, rows numbered from the first chunk's."""
        return LFRows(
            row=np.concatenate([p.row + o for p, o in zip(parts, offsets, strict=True)]),
            step=np.concatenate([p.step for p in parts]),
            part=LFPart(*(np.concatenate([getattr(p.part, f.name) for p in parts])
                          for f in dataclasses.fields(LFPart))),
            lengths=np.concatenate([p.lengths for p in parts]),
            raw_returns=np.concatenate([p.raw_returns for p in parts]),
        )


def _item_starts(item: np.ndarray) -> np.ndarray:
    """The first row of every item (items: nondecreasing ids of consecutive rows)."""
    return np.flatnonzero(np.diff(item, prepend=item[:1] - 1))


def draw_inputs(
    job: LFJob, sampler: StartSampler, act_dim: int,
) -> tuple[np.ndarray, np.ndarray, TaskState, np.ndarray]:
    """Start states and noise (R, steps, act_dim) of every row of `job` (`LFJob` says how)."""
    q0, v0 = job.q0.copy(), job.v0.copy()
    task = {k: val.copy() for k, val in job.task.items()}
    eps = np.zeros((len(job), job.steps, act_dim))
    starts = _item_starts(job.item).tolist()
    for a, b in zip(starts, [*starts[1:], len(job)], strict=True):
        gen = np.random.default_rng([*job.key, int(job.item[a])])
        draw = a + np.flatnonzero(job.draw_start[a:b])
        if draw.size:
            q0[draw], v0[draw], drawn = sampler(draw.size, gen)
            for k, val in drawn.items():
                task[k][draw] = val
        h = int(job.horizon[a])
        eps[a:b, :h] = gen.standard_normal((b - a, h, act_dim))
    rows = np.flatnonzero(job.known_len)
    if rows.size:
        mask = np.arange(job.steps)[None, :] < job.known_len[rows, None]
        eps[rows] = np.where(mask[..., None], job.known, eps[rows])
    return q0, v0, task, eps


def simulate(collector: LFCollector, job: LFJob, model: LFModel) -> LFRows:
    """Simulate every row of `job` in one batch on `collector` and evaluate its samples
    (advantages by GAE over each row with `model.value_fn`, rewards by `model.reward_fn`)."""
    sampler = model.start_sampler or collector.sample_starts
    q0, v0, task, eps = draw_inputs(job, sampler, collector.act_dim)
    frozen, h = model.policy, job.steps
    std = frozen.std.astype(np.float64)

    def act(obs: np.ndarray, t: int) -> np.ndarray:
        return frozen.mean(obs).astype(np.float64) + std * eps[:, t]

    out = collector.run(q0, v0, task, h, act)
    valid = out.alive[:, :h] & (np.arange(h)[None, :] < job.horizon[:, None])
    n = len(job)
    need = np.zeros((n, h + 1), dtype=bool)  # observations of valid steps and their successors
    need[:, :h] = valid
    need[:, 1:] |= valid
    values = np.zeros((n, h + 1))  # the critic only where GAE reads it
    values[need] = model.value_fn(out.obs[:, : h + 1][need])
    rewards = np.where(valid, model.reward_fn(out.rewards[:, :h]), 0.0)
    adv = rollout_gae(rewards, values, out.terminated[:, :h] & valid, valid, job.gamma,
                      job.gae_lambda)
    ret = adv + values[:, :h]
    if job.first_only:
        rows, t = np.arange(n), np.zeros(n, dtype=np.int64)
    else:
        rows, t = np.nonzero(valid)
    part = LFPart(
        obs=out.obs[rows, t].astype(np.float32),
        actions=out.actions[rows, t].astype(np.float32),
        logprobs=gaussian_logprob(eps[rows, t], model.log_std),
        advantages=adv[rows, t], returns=ret[rows, t],
        anchor=np.full(rows.size, -1, dtype=np.int64),
    )
    raw = np.where(valid, out.rewards[:, :h], 0.0).sum(axis=1)
    return LFRows(rows, t, part, valid.sum(axis=1), raw)


class LFRunner(Protocol):
    """Simulates the chunks of an LF job (`simulate` on each) and returns them in order."""

    def run(self, job: LFJob, chunks: list[tuple[int, int]], model: LFModel
            ) -> list[LFRows]: ...


class LocalLF:
    """The chunks one after another on one collector (`lf.backend: local`)."""

    def __init__(self, collector: LFCollector) -> None:
        self.collector = collector

    def run(self, job: LFJob, chunks: list[tuple[int, int]], model: LFModel) -> list[LFRows]:
        return [simulate(self.collector, job.slice(lo, hi), model) for lo, hi in chunks]


def run_job(runner: LFRunner, job: LFJob, batch: int, model: LFModel) -> LFRows:
    """Every row of `job`, simulated in chunks of at most `batch` rows by `runner`."""
    chunks = job.chunks(batch)
    return LFRows.concat(runner.run(job, chunks, model), [lo for lo, _ in chunks])


def _episode_ids(buffer: RolloutBuffer) -> np.ndarray:
    """Row -> episode index within the buffer (rows before the first start: -1)."""
    return np.cumsum(buffer.episode_start) - 1


def _require_states(buffer: RolloutBuffer) -> list:
    if buffer.states is None:
        raise ValueError(
            "multi-fidelity pairing needs the HF env's measured states; the HF env has no "
            "get_state() (use an mfpg env, the robot env or a Gymnasium MuJoCo env with hinge and "
            "slide joints as hf.env)"
        )
    return buffer.states


def _model(policy: GaussianPolicy, value_fn: ValueFn, reward_fn: RewardFn,
           start_sampler: StartSampler | None = None) -> LFModel:
    return LFModel(policy.rollout_policy(), policy.log_std.detach().numpy().astype(np.float64),
                   value_fn, reward_fn, start_sampler)


def _check_batch(collector: LFCollector, batch: int | None, runner: LFRunner | None,
                 ) -> tuple[int, LFRunner]:
    """(batch, runner) with their defaults: the collector's n_envs, `LocalLF` on it."""
    batch = collector.n_envs if batch is None else int(batch)
    if batch < 1 or (runner is None and batch > collector.n_envs):
        raise ValueError(f"batch must be in [1, n_envs={collector.n_envs}] of the collector "
                         f"that simulates it, got {batch}")
    return batch, runner or LocalLF(collector)


class SyncedPairing:
    """k-step LF segments from every HF state: one with the HF noise, M with fresh noise.

    `batch`: most LF rows simulated together (default: the collector's n_envs); `runner`:
    where the chunks run (default: one after another on `collector`, which otherwise only
    maps HF states to LF starts).
    """

    def __init__(
        self, collector: LFCollector, k: int, M: int, gamma: float, gae_lambda: float,
        batch: int | None = None, runner: LFRunner | None = None,
    ) -> None:
        if k < 1 or M < 1:
            raise ValueError(f"synced pairing needs k >= 1 and M >= 1, got k={k}, M={M}")
        self.collector, self.k, self.M = collector, k, M
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.batch, self.runner = _check_batch(collector, batch, runner)
        if M + 1 > self.batch:
            raise ValueError(f"synced pairing simulates the M + 1 = {M + 1} segments of an HF "
                             f"state in one batch, more than batch = {self.batch}")

    def job(self, buffer: RolloutBuffer, key: Sequence[int] | np.random.Generator) -> LFJob:
        """The LF rows of `buffer`: item t = HF row t, its paired segment then M references.

        The paired segment replays eps_t..eps_{t+k-1} of row t's episode (fresh noise past
        its end or the rollout's); the references draw all their noise.
        """
        states = _require_states(buffer)
        n, k, m = len(buffer), self.k, self.M
        q, v, task = self.collector.batch_states(states)
        rows = np.arange(n)[:, None] + np.arange(k)[None, :]
        rows_c = np.minimum(rows, n - 1)
        ep = _episode_ids(buffer)
        same = (rows < n) & (ep[rows_c] == ep[:, None])  # a prefix of each window
        item = np.repeat(np.arange(n), m + 1)
        known_len = np.zeros(item.size, dtype=np.int64)
        known_len[:: m + 1] = same.sum(axis=1)  # >= 1: row t itself
        return LFJob(
            key=lf_key(key), item=item, q0=q[item], v0=v[item],
            task={name: val[item] for name, val in task.items()},
            draw_start=np.zeros(item.size, dtype=bool), horizon=np.full(item.size, k),
            known_len=known_len, known=np.where(same[..., None], buffer.eps[rows_c], 0.0),
            steps=k, first_only=True, gamma=self.gamma, gae_lambda=self.gae_lambda,
        )

    def hf_noise_windows(self, buffer: RolloutBuffer,
                         key: Sequence[int] | np.random.Generator) -> np.ndarray:
        """(T, k, act_dim): the paired segments' noise, eps_t..eps_{t+k-1} of each row's
        episode and fresh noise past its end."""
        job = self.job(buffer, key)
        eps = draw_inputs(job, self.collector.sample_starts, buffer.eps.shape[1])[3]
        return eps[:: self.M + 1]

    def collect(
        self, buffer: RolloutBuffer, policy: GaussianPolicy, value_fn: ValueFn,
        reward_fn: RewardFn, key: Sequence[int] | np.random.Generator,
    ) -> LFSamples:
        """The LF samples of `buffer`; `key`: the draws' key (`lf_key`)."""
        job = self.job(buffer, key)
        out = run_job(self.runner, job, self.batch, _model(policy, value_fn, reward_fn))
        out.part.anchor = job.item[out.row]
        n, m1 = len(buffer), self.M + 1
        paired = np.arange(0, len(job), m1)
        return LFSamples(
            mode="synced",
            paired=out.part.take(paired),
            partner=np.arange(n),
            ref=out.part.take(np.flatnonzero(np.arange(len(job)) % m1)),
            ref_per_paired=float(self.M),
            lf_steps=int(out.lengths.sum()),
            rollout_returns=out.raw_returns[paired],
            rollout_lengths=out.lengths[paired],
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

    `batch`, `runner`: as in `SyncedPairing`; a custom `pool_starts` runs with `LocalLF` only.
    """

    def __init__(
        self, collector: LFCollector, pool_per_hf: int, max_episode_steps: int,
        gamma: float, gae_lambda: float, pool_starts: StartSampler | None = None,
        whole_episodes: bool = False, same_starts: bool = False, batch: int | None = None,
        runner: LFRunner | None = None,
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
        self.pool_starts = pool_starts  # None: the collector's own start distribution
        self.whole_episodes = whole_episodes
        self.same_starts = same_starts
        self.batch, self.runner = _check_batch(collector, batch, runner)

    def collect(
        self, buffer: RolloutBuffer, policy: GaussianPolicy, value_fn: ValueFn,
        reward_fn: RewardFn, key: Sequence[int] | np.random.Generator,
    ) -> LFSamples:
        """The LF samples of `buffer`; `key`: the draws' key (`lf_key`). Item i < E is paired
        LF episode i; the references of episode i are items E + i * pool_per_hf + j."""
        states = _require_states(buffer)
        n_rows, act_dim = len(buffer), buffer.eps.shape[1]
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

        n_ep = first.size
        known = np.zeros((n_ep, h_max, act_dim))
        for i, (s, length) in enumerate(zip(first, hf_len, strict=True)):
            known[i, :length] = buffer.eps[s : s + length]
        q, v, task = self.collector.batch_states([states[s] for s in first])
        # rows: the paired episodes, then pool_per_hf references of each with its horizon,
        # from its own first state (fragments, same_starts) or drawn from the pool's starts
        ep = np.repeat(np.arange(n_ep), self.pool_per_hf)
        src = np.concatenate([np.arange(n_ep), ep])  # the paired episode of every row
        job = LFJob(
            key=lf_key(key), item=np.arange(src.size), q0=q[src], v0=v[src],
            task={name: val[src] for name, val in task.items()},
            draw_start=np.concatenate([np.zeros(n_ep, dtype=bool), ~own[ep]]),
            horizon=horizon[src],
            known_len=np.concatenate([hf_len, np.zeros(ep.size, dtype=np.int64)]),
            known=known, steps=h_max, first_only=False, gamma=self.gamma,
            gae_lambda=self.gae_lambda,
        )
        model = _model(policy, value_fn, reward_fn, self.pool_starts)
        out = run_job(self.runner, job, self.batch, model)

        is_pair = out.row < n_ep
        rows, t = out.row[is_pair], out.step[is_pair]
        paired = out.part.take(np.flatnonzero(is_pair))
        paired.anchor = first[rows] + t % hf_len[rows]
        partner = np.where(t < hf_len[rows], first[rows] + t, -1)
        ref = out.part.take(np.flatnonzero(~is_pair))
        # grouped with the paired step at the same time of its episode (same_starts), else all
        # pooled, a fragment's too: `align_pairs` takes references all grouped or all pooled
        if self.same_starts:
            pep, pt = src[out.row[~is_pair]], out.step[~is_pair]
            ref.anchor = first[pep] + pt % hf_len[pep]
        return LFSamples(
            mode="episode", paired=paired, partner=partner, ref=ref,
            ref_per_paired=float(self.pool_per_hf),
            lf_steps=int(out.lengths.sum()),
            rollout_returns=out.raw_returns[:n_ep], rollout_lengths=out.lengths[:n_ep],
        )
