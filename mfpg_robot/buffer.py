"""High-fidelity rollout collection that records everything pairing needs.

Per step the buffer holds the observation, the env's measured `RobotState` (from
`get_state()`, or the qpos and qvel of a plain Gymnasium MuJoCo env), the Gaussian noise `eps`,
the action `a = mu(s) + sigma * eps`, its log-prob, the raw reward, the termination/truncation
flags and the observation that followed (the final observation at an episode end, so a time-limit
truncation can be bootstrapped). `episode_start[t]` marks rows that begin an episode (the
state of such a row is that episode's start state).

Episodes run across iterations (CleanRL style): the collector keeps the current observation
between `collect` calls, so a rollout may begin and end mid-episode.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from mfpg_robot.env_snapshot import np_random_state, restore, set_np_random_state, snapshot
from mfpg_robot.episodes import ROW_FIELDS, EpisodeDataError, Segment
from mfpg_robot.policy import GaussianPolicy, Tanh
from sim.gym_collector import mujoco_state_getter
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
    """The env's `get_state` (through wrappers); for a plain Gymnasium MuJoCo env its qpos and
    qvel by joint name (`sim.gym_collector.mujoco_state_getter`); None for other envs."""
    return getattr(env.unwrapped, "get_state", None) or mujoco_state_getter(env)


ResetFn = Callable[[gym.Env, int | None], tuple[np.ndarray, dict[str, Any]]]
EndEpisodeFn = Callable[[gym.Env], None]
SegmentSink = Callable[[Segment], None]


def plain_reset(env: gym.Env, seed: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    return env.reset(seed=seed)


class HFCollector:
    """Steps one HF env with the current policy and seeded noise; keeps episodes running.

    The first reset uses `seed`; later resets continue the env's own seeded generator.
    Action noise comes from `rng` (a seeded numpy Generator, drawn for a whole rollout at
    once), so every eps is reproducible. An episode starts (`reset(env, seed)`) at the first
    step that needs one, not at the end of the rollout before it.

    `end_episode(env)`: given, the running episode ends at the rollout's last row (truncated
    there, bootstrapped like a time limit) and `end_episode` tells the env, as it does when
    collection stops on an error or interrupt; then `rest(env)`, if given, leaves the env at
    rest while the learner updates. A real-time robot cannot pause mid-episode; episodes of a
    simulated env (None) run on across rollouts.

    `sink(segment)` receives the rows of every episode as it ends, and of the running one at
    the end of a rollout or when collection is interrupted (`mfpg_robot.episodes`).
    `queue_replay(segments)` makes the next rollouts start with recorded segments instead of
    stepping the env (a resumed session re-uses what it collected before a crash); their
    noise must be the noise `rng` draws for those rows, else `EpisodeDataError`.
    `state_dict()` / `load_state_dict()` hold the collector's episode and counters, and the
    env's state where `mfpg_robot.env_snapshot` can capture it.
    """

    def __init__(self, env: gym.Env, policy: GaussianPolicy, rng: np.random.Generator,
                 seed: int, *, end_episode: EndEpisodeFn | None = None,
                 rest: EndEpisodeFn | None = None, sink: SegmentSink | None = None,
                 reset: ResetFn = plain_reset) -> None:
        if not isinstance(env.action_space, gym.spaces.Box):
            raise TypeError(f"continuous (Box) actions needed, got {env.action_space}")
        self.env, self.policy, self.rng, self.seed = env, policy, rng, seed
        self.end_episode, self.rest, self.sink, self.reset_fn = end_episode, rest, sink, reset
        self.act_dim = int(np.prod(env.action_space.shape))
        self.obs_dim = int(np.prod(env.observation_space.shape))
        self._get_state = _state_getter(env)
        self._obs: np.ndarray | None = None  # None: the next step starts an episode
        self._seeded = False  # the env has had its seeded first reset
        self._ep_return, self._ep_len = 0.0, 0
        self._replay: deque[Segment] = deque()
        self.total_steps = 0
        self.iteration = 0  # rollouts collected
        self.episode = 0  # index of the running (or next) episode
        self.part = 0  # next piece index of the running episode
        self.robot_time_s = 0.0  # wall time in env.reset / env.step

    # -- rollouts ---------------------------------------------------------------------------
    def collect(self, n_steps: int) -> RolloutBuffer:
        """Run `n_steps` env steps (replayed ones first) and return them as a buffer."""
        self.iteration += 1
        log_std = self.policy.log_std.detach().numpy().astype(np.float64)
        std = np.exp(log_std)
        rows = _Rows(n_steps, self.obs_dim, self.act_dim, self._get_state is not None)
        rows.eps[:] = self.rng.standard_normal((n_steps, self.act_dim))
        rows.logprobs[:] = gaussian_logprob(rows.eps, log_std)
        returns: list[float] = []
        lengths: list[int] = []
        t = replayed = self._replay_into(rows, returns, lengths)
        seg_start, seg_time = t, 0.0
        mean_fn = numpy_mean_fn(self.policy)
        env = self.env
        try:
            while t < n_steps:
                if self._obs is None:
                    seg_time += self._start_episode()
                    rows.episode_start[t] = True
                rows.obs[t] = self._obs
                if rows.states is not None:
                    rows.states.append(self._get_state())
                rows.actions[t] = mean_fn(rows.obs[t]) + std * rows.eps[t]
                t0 = time.perf_counter()
                o, r, term, trunc, _ = env.step(rows.actions[t])
                seg_time += time.perf_counter() - t0
                rows.rewards[t], rows.terminated[t] = float(r), bool(term)
                rows.truncated[t] = bool(trunc) and not rows.terminated[t]
                rows.next_obs[t] = o
                self._ep_return += float(r)
                self._ep_len += 1
                self._obs = o
                t += 1
                natural = bool(term or trunc)
                if natural or (self.end_episode is not None and t == n_steps):
                    if not natural:
                        self.end_episode(env)
                        rows.truncated[t - 1] = True
                    if natural:
                        returns.append(self._ep_return)
                        lengths.append(self._ep_len)
                    self._emit(rows, seg_start, t, seg_time, ended=True, cut=not natural)
                    seg_start, seg_time = t, 0.0
        except BaseException:
            if self.end_episode is not None and self._obs is not None:
                self.end_episode(env)
            if t > seg_start:  # the running episode is lost to the env: keep its rows
                rows.truncated[t - 1] |= not rows.terminated[t - 1]
                self._emit(rows, seg_start, t, seg_time, ended=True, cut=True)
            raise
        if t > seg_start:  # the running episode goes on in the next rollout
            self._emit(rows, seg_start, t, seg_time, ended=False, cut=False)
        if self.rest is not None and t > replayed:  # the env ran
            t0 = time.perf_counter()
            self.rest(env)
            self.robot_time_s += time.perf_counter() - t0
        self.total_steps += n_steps
        return rows.buffer(returns, lengths)

    def _start_episode(self) -> float:
        """Reset the env (seeded the first time); returns the time it took."""
        t0 = time.perf_counter()
        self._obs, _ = self.reset_fn(self.env, None if self._seeded else self.seed)
        self._seeded = True
        self._ep_return, self._ep_len = 0.0, 0
        return time.perf_counter() - t0

    def _emit(self, rows: _Rows, lo: int, hi: int, seconds: float, *, ended: bool,
              cut: bool) -> None:
        """Hand rows lo..hi-1 of the running episode to the sink as one segment."""
        whole = ended and self.part == 0 and bool(rows.episode_start[lo])
        self.robot_time_s += seconds
        if self.sink is not None:
            self.sink(Segment(
                episode=self.episode, part=-1 if whole else self.part,
                iteration=self.iteration, row0=lo, rows=rows.fields(lo, hi),
                states=None if rows.states is None else rows.states[lo:hi],
                ended=ended, cut=cut,
                episode_return=self._ep_return if ended else math.nan,
                episode_length=self._ep_len if ended else 0, robot_time_s=seconds,
                env_rng=np_random_state(self.env) if self._seeded else None,
            ))
        if ended:
            self._obs, self._ep_return, self._ep_len = None, 0.0, 0
            self.episode, self.part = self.episode + 1, 0
        else:
            self.part += 1

    # -- replay -----------------------------------------------------------------------------
    def queue_replay(self, segments: list[Segment]) -> None:
        """Serve these recorded segments (in order) before stepping the env again."""
        self._replay.extend(segments)

    @property
    def replaying(self) -> bool:
        return bool(self._replay)

    def _replay_into(self, rows: _Rows, returns: list[float], lengths: list[int]) -> int:
        """Copy this rollout's queued segments into `rows`; returns the next row to fill."""
        t = 0
        while self._replay and self._replay[0].iteration <= self.iteration:
            seg = self._replay.popleft()
            n = len(seg)
            if seg.iteration != self.iteration or seg.row0 != t or t + n > len(rows):
                raise _gap(seg, self.iteration, t)
            if not np.array_equal(seg.rows["eps"], rows.eps[t : t + n]):
                raise EpisodeDataError(
                    f"HF episode file {seg.filename}: its action noise is not the noise the "
                    f"checkpoint's generator draws for those rows; the hf_episodes folder is "
                    f"not this run's continuation from the checkpoint"
                )
            if seg.rows["episode_start"][0] and self._ep_len:  # the previous episode was lost
                self._drop_running_episode(rows, t)
            elif not seg.rows["episode_start"][0] and not self._ep_len:
                raise _gap(seg, self.iteration, t)
            rows.put(t, seg)
            self._ep_return += float(seg.rows["rewards"].sum())
            self._ep_len += n
            self.robot_time_s += seg.robot_time_s
            if seg.env_rng is not None:
                set_np_random_state(self.env, seg.env_rng)
                self._seeded = True
            t += n
            if seg.ended:
                if not seg.cut:
                    returns.append(seg.episode_return)
                    lengths.append(seg.episode_length)
                self._obs, self._ep_return, self._ep_len = None, 0.0, 0
                self.episode, self.part = self.episode + 1, 0
            else:
                self.part += 1
        if self._replay and t < len(rows):
            raise _gap(self._replay[0], self.iteration, t)
        if self._ep_len and self._obs is None and not self._replay:
            self._drop_running_episode(rows, t)  # replayed up to where a crash stopped it
        return t

    def _drop_running_episode(self, rows: _Rows, t: int) -> None:
        """End a replayed episode whose continuation was lost (truncated at its last row)."""
        if t > 0:
            rows.truncated[t - 1] |= not rows.terminated[t - 1]
        self._obs, self._ep_return, self._ep_len = None, 0.0, 0
        self.episode, self.part = self.episode + 1, 0

    # -- checkpoint state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters, the running episode and the env's state (see the class docstring)."""
        running = self._obs is not None
        return {
            "obs": None if not running else torch.as_tensor(np.array(self._obs)),
            "ep_return": self._ep_return, "ep_len": self._ep_len,
            "total_steps": self.total_steps, "iteration": self.iteration,
            "episode": self.episode, "part": self.part, "robot_time_s": self.robot_time_s,
            "seeded": self._seeded,
            "env": snapshot(self.env) if running else None,
            "env_rng": np_random_state(self.env) if self._seeded else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`. A running episode without an env snapshot goes on
        only in replayed segments; without them the next step starts a new episode."""
        self.total_steps, self.iteration = int(state["total_steps"]), int(state["iteration"])
        self.episode, self.part = int(state["episode"]), int(state["part"])
        self.robot_time_s = float(state["robot_time_s"])
        self._seeded = bool(state["seeded"])
        self._ep_return, self._ep_len = float(state["ep_return"]), int(state["ep_len"])
        self._obs = None
        if state["env"] is not None:
            self.env.reset(seed=self.seed)  # the wrappers' bookkeeping; then the snapshot
            restore(self.env, state["env"])
            self._obs = state["obs"].numpy()
        elif state["obs"] is None:
            self._ep_return, self._ep_len = 0.0, 0
        if self._seeded and state["env_rng"] is not None:
            set_np_random_state(self.env, state["env_rng"])

    @property
    def snapshot_supported(self) -> bool:
        """True if a running episode of this env survives a checkpoint (bitwise resume)."""
        return snapshot(self.env) is not None


def _gap(seg: Segment, iteration: int, row: int) -> EpisodeDataError:
    return EpisodeDataError(
        f"HF episode file {seg.filename} holds rows {seg.row0}..{seg.row0 + len(seg) - 1} of "
        f"iteration {seg.iteration} (episode {seg.episode}), but row {row} of iteration "
        f"{iteration} was expected next: the hf_episodes folder does not continue the "
        f"checkpoint (a file is missing or belongs to another run)"
    )


class _Rows:
    """The preallocated arrays of one rollout."""

    def __init__(self, n: int, obs_dim: int, act_dim: int, with_states: bool) -> None:
        self.obs = np.zeros((n, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros_like(self.obs)
        self.eps = np.zeros((n, act_dim))
        self.actions = np.zeros((n, act_dim), dtype=np.float32)
        self.rewards = np.zeros(n, dtype=np.float64)
        self.terminated = np.zeros(n, dtype=bool)
        self.truncated = np.zeros(n, dtype=bool)
        self.episode_start = np.zeros(n, dtype=bool)
        self.logprobs = np.zeros(n)
        self.states: list[RobotState] | None = [] if with_states else None

    def __len__(self) -> int:
        return self.obs.shape[0]

    def fields(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        return {k: getattr(self, k)[lo:hi].copy() for k in ROW_FIELDS}

    def put(self, t: int, seg: Segment) -> None:
        n = len(seg)
        for k in ROW_FIELDS:
            getattr(self, k)[t : t + n] = seg.rows[k]
        if self.states is not None:
            if seg.states is None:
                raise EpisodeDataError(f"HF episode file {seg.filename} has no measured states")
            self.states.extend(seg.states)

    def buffer(self, returns: list[float], lengths: list[int]) -> RolloutBuffer:
        return RolloutBuffer(
            obs=self.obs, eps=self.eps, actions=self.actions, logprobs=self.logprobs,
            rewards=self.rewards, terminated=self.terminated, truncated=self.truncated,
            next_obs=self.next_obs, episode_start=self.episode_start, states=self.states,
            episode_returns=returns, episode_lengths=lengths,
        )
