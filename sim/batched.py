"""Batched low-fidelity collection: N copies of one model stepped together, closed loop.

`BatchedCollector` keeps the copies in a `mujoco.batch.Batch` (one state row per copy, stepped
on a persistent thread pool that includes the calling thread), advances every live copy by
one control step with a single `Batch.step` call, then evaluates the policy once for the
whole batch. Actions, commands, observations, rewards and terminations go through exactly
the code of `RobotSimEnv.step` (clip to [-1, 1], `sim.actuation.action_to_command`, the shared
`Task`, the model's sensor effects), so a batch row reproduces the per-env Gymnasium loop:

    collector = BatchedCollector("mfpg/FurutaSwingup-v0", fidelity="reduced", n_envs=512)
    q0, v0, task_state = collector.sample_starts(512, np.random.default_rng(0))
    out = collector.run(q0, v0, task_state, horizon=200, act_fn=lambda obs, t: policy(obs))

Agreement with the per-env loop is bitwise, joint limits and contacts included: a state row
holds the integration state (the solver's warmstart too), and a step is `mj_step` on it, so a
MuJoCo warning (e.g. an unstable simulation) resets that copy exactly as `mj_step` does.
`mujoco.rollout`, used before, restarted the warmstart at every call and was slower here (a
closed loop calls it once per control step; see benchmarks/lf_throughput.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import mujoco
import numpy as np
from mujoco import batch as mj_batch

from sim.actuation import action_to_command, command_bounds
from sim.envs.base import RobotSimEnv, SensorModel
from sim.robot_config import RobotConfig
from sim.starts import sample_start_state
from sim.state import RobotState
from sim.tasks.base import Task, TaskState

ActFn = Callable[[np.ndarray, int], np.ndarray]
_NO_STAGE = mujoco.mjtStage.mjSTAGE_NONE.value


@dataclass(frozen=True)
class BatchRollout:
    """N closed-loop trajectories of T control steps, batch-major.

    `alive[i, t]` is True for every step up to and including the one on which env i
    terminated; on later steps every field (obs[:, t + 1], actions, rewards, terminated, q, v)
    is zero. An env alive at the last step was cut by the horizon (truncated, not terminated).
    `q`, `v` are the measured joint state the task saw (the true state for models without
    sensor effects), in the robot config's joint order.
    """

    obs: np.ndarray  # (N, T + 1, obs_dim) float32
    actions: np.ndarray  # (N, T, act_dim) float64: act_fn's output, before clipping
    rewards: np.ndarray  # (N, T) float64
    terminated: np.ndarray  # (N, T) bool
    alive: np.ndarray  # (N, T) bool
    q: np.ndarray  # (N, T + 1, n_joints) float64
    v: np.ndarray  # (N, T + 1, n_joints) float64

    @property
    def lengths(self) -> np.ndarray:
        """(N,) number of steps each env took (horizon unless it terminated earlier)."""
        return self.alive.sum(axis=1)


class _BatchSensor:
    """`SensorModel` for a batch: the same quantisation and a ring buffer for the latency."""

    def __init__(self, sensor: SensorModel) -> None:
        self._sensor = sensor
        self.identity = sensor.latency_steps == 0 and not np.any(sensor.resolution > 0)
        self._ring: np.ndarray | None = None
        self._head = 0

    def reset(self, q: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.identity:
            return q, v
        n_slots = self._sensor.latency_steps + 1
        self._ring = np.repeat(np.stack([q, v])[None], n_slots, axis=0)
        self._head = 0
        return self._sensor.quantise(q), v.copy()

    def measure(self, q: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.identity:
            return q, v
        assert self._ring is not None
        # The slot about to be overwritten holds the state latency_steps control steps old.
        self._ring[self._head, 0], self._ring[self._head, 1] = q, v
        self._head = (self._head + 1) % self._ring.shape[0]
        old = self._ring[self._head]
        return self._sensor.quantise(old[0]), old[1].copy()


class BatchedCollector:
    """Steps up to `n_envs` copies of one task's model together; the policy runs once per step.

    `env`: a registered env id (e.g. "mfpg/FurutaSwingup-v0") or a `(task, robot)` pair
    (robot: a name, a YAML path, a `RobotConfig`, or None for the task's own robot).
    `nthread`: stepping threads, the calling thread included (default: the CPU count; 1 runs
    on the calling thread alone). Every call to `run` may use any batch size N with
    1 <= N <= n_envs (copies 0..N-1 of the batch); one `run` at a time per collector. Call
    `close()` (or use it as a context manager) to release the thread pool.
    """

    def __init__(
        self,
        env: str | tuple[Task, str | RobotConfig | None],
        fidelity: str = "reduced",
        n_envs: int = 512,
        nthread: int | None = None,
    ) -> None:
        if not isinstance(n_envs, (int, np.integer)) or n_envs < 1:
            raise ValueError(f"n_envs must be a positive integer, got {n_envs!r}")
        nthread = (os.cpu_count() or 1) if nthread is None else nthread
        if not isinstance(nthread, (int, np.integer)) or nthread < 1:
            raise ValueError(f"nthread must be a positive integer or None, got {nthread!r}")
        self.env = _make_env(env, fidelity)
        self.task, self.robot, self.model = self.env.task, self.env.robot, self.env.model
        self.fidelity = fidelity
        self.n_envs = int(n_envs)
        self.nthread = int(min(nthread, n_envs))
        self.n_substeps = self.env.n_substeps
        self.joint_names = self.env.joint_names
        self.obs_dim = self.task.obs_dim
        self.act_dim = int(self.env.action_space.shape[0])
        probe = self.task.sample_task_state(np.random.default_rng(0))
        self._task_dims = {k: np.shape(val) for k, val in probe.items()}
        self._sensor = _BatchSensor(self.env.sensor)

        self._sims: mj_batch.Batch | None = mj_batch.Batch(
            self.model, nsim=self.n_envs, nthread=self.nthread
        )
        # live views of the state rows (qpos, qvel, ctrl of every copy)
        self._qpos = self._sims.bind("qpos")
        self._qvel = self._sims.bind("qvel")
        self._ctrl = self._sims.bind("ctrl")
        self._command_bounds = command_bounds(self.robot)
        # column selectors of the joints and actuators: slices (views, no copy) where contiguous
        self._qpos_adr = _columns(self.env.qpos_adr)
        self._qvel_adr = _columns(self.env.qvel_adr)
        self._ctrl_cols = _columns(self.env.act_ids)

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once `close()` has released the batch and its thread pool."""
        return self._sims is None

    def close(self) -> None:
        """Release the batch and its thread pool (the collector cannot run afterwards)."""
        self._sims = None
        self._qpos = self._qvel = self._ctrl = np.empty(0)

    def __enter__(self) -> BatchedCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- start states ---------------------------------------------------------------------
    def sample_starts(
        self, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, TaskState]:
        """`n` starts from the envs' own distribution (`sim.starts.sample_start_state`)."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"rng must be a numpy Generator (np.random.default_rng(seed)), got {rng!r}"
            )
        starts = [sample_start_state(self.robot, self.task, rng) for _ in range(int(n))]
        return _stack_starts(starts, self.joint_names, self._task_dims)

    def batch_states(self, states: list[RobotState]) -> tuple[np.ndarray, np.ndarray, TaskState]:
        """Stack `RobotState`s (e.g. measured HF starts; joints matched by name) for `run`."""
        starts = []
        for s in states:
            q, v = s.arrays(self.joint_names)
            task = {k: np.asarray(val, dtype=np.float64) for k, val in s.task.items()}
            starts.append((q, v, task))
        return _stack_starts(starts, self.joint_names, self._task_dims)

    # -- collection -----------------------------------------------------------------------
    def run(
        self,
        q0: np.ndarray,
        v0: np.ndarray,
        task_state: TaskState,
        horizon: int,
        act_fn: ActFn,
    ) -> BatchRollout:
        """Roll N envs out for `horizon` control steps from (q0, v0, task_state), closed loop.

        `act_fn(obs, t)` gets the (N, obs_dim) float32 observations of step t and returns
        (N, act_dim) normalised actions; it is called once per step for the whole batch
        (rows of envs that already terminated are ignored). Stops early once all terminated.
        """
        if self._sims is None:
            raise RuntimeError("the collector is closed (close() released its thread pool); "
                               "make a new BatchedCollector")
        sims = self._sims
        q0, v0, task = self._check_inputs(q0, v0, task_state, horizon, act_fn)
        n, horizon = q0.shape[0], int(horizon)
        qpos, qvel, ctrl = self._qpos[:n], self._qvel[:n], self._ctrl[:n]
        qadr, vadr, cols = self._qpos_adr, self._qvel_adr, self._ctrl_cols
        step_ids = None if n == self.n_envs else np.arange(n, dtype=np.int32)  # None: all
        sims.reset(step_ids, stage=_NO_STAGE)  # the model's defaults (time 0, ctrl 0) ...
        qpos[:, qadr], qvel[:, vadr] = q0, v0  # ... with the start joints

        # batch-major buffers, written a column (step) at a time
        obs = np.zeros((n, horizon + 1, self.obs_dim), dtype=np.float32)
        actions = np.zeros((n, horizon, self.act_dim))
        terminated = np.zeros((n, horizon), dtype=bool)
        qs = np.zeros((n, horizon + 1, len(self.joint_names)))
        vs = np.zeros_like(qs)
        lengths = np.full(n, horizon)  # steps each env took
        done = np.zeros(n, dtype=bool)
        clipped = np.empty((n, self.act_dim))

        q, v = self._sensor.reset(q0, v0)
        qs[:, 0], vs[:, 0] = q, v
        obs_t = self._observe(q, v, task)
        obs[:, 0] = obs_t
        steps = horizon  # steps run: fewer if every env terminated early
        for t in range(horizon):
            act = self._checked_action(act_fn(obs_t, t), n, t, done)
            actions[:, t] = act
            np.minimum(np.maximum(act, -1.0, out=clipped), 1.0, out=clipped)  # = np.clip
            ctrl[:, cols] = action_to_command(self.robot, clipped, self._command_bounds)
            sims.step(step_ids, nstep=self.n_substeps)
            q, v = self._sensor.measure(qpos[:, qadr], qvel[:, vadr])
            qs[:, t + 1], vs[:, t + 1] = q, v
            obs_t = self._observe(q, v, task)
            obs[:, t + 1] = obs_t
            ended = np.greater(self.task.terminated(q, v, task), done)  # newly terminated
            if ended.any():
                terminated[ended, t] = True
                lengths[ended] = t + 1
                done |= ended
                if done.all():
                    steps = t + 1
                    break
                step_ids = np.flatnonzero(~done).astype(np.int32)  # step live copies only
        rewards = self._rewards(qs, vs, actions, task, steps)
        return self._finish(obs, actions, rewards, terminated, lengths, qs, vs)

    # -- helpers --------------------------------------------------------------------------
    def _observe(self, q: np.ndarray, v: np.ndarray, task: TaskState) -> np.ndarray:
        """The task's (N, obs_dim) observations as a contiguous float32 array."""
        return np.ascontiguousarray(self.task.observe(q, v, task), dtype=np.float32)

    def _rewards(
        self, qs: np.ndarray, vs: np.ndarray, actions: np.ndarray, task: TaskState, steps: int,
    ) -> np.ndarray:
        """(N, T) rewards of the first `steps` steps, scored in one vectorised call.

        The task's reward is a pure row-wise function of (q, v, clipped action, task), so one
        call over every (env, step) row gives what a call per step would, at a fraction of
        the cost; rows after an env terminated are scored too and zeroed by `_finish`.
        """
        n, horizon = actions.shape[:2]
        rows = n * steps
        rewards = np.zeros((n, horizon))
        rewards[:, :steps] = self.task.reward(
            qs[:, 1:steps + 1].reshape(rows, -1),
            vs[:, 1:steps + 1].reshape(rows, -1),
            np.clip(actions[:, :steps].reshape(rows, -1), -1.0, 1.0),
            {k: np.repeat(val, steps, axis=0) for k, val in task.items()},
        ).reshape(n, steps)
        return rewards

    def _checked_action(self, act: np.ndarray, n: int, t: int, done: np.ndarray) -> np.ndarray:
        act = np.asarray(act)
        if act.shape != (n, self.act_dim):
            raise ValueError(
                f"act_fn returned shape {act.shape} at step {t}; expected (N, act_dim) = "
                f"({n}, {self.act_dim})"
            )
        if math.isfinite(act.sum()):  # one reduction for the common case: all finite
            return act
        bad = ~np.isfinite(act).all(axis=1)
        if np.any(bad & ~done):
            raise ValueError(f"act_fn returned non-finite actions for envs "
                             f"{np.flatnonzero(bad & ~done)[:10].tolist()} at step {t}")
        return np.where(bad[:, None], 0.0, act)

    def _check_inputs(
        self, q0: np.ndarray, v0: np.ndarray, task_state: TaskState, horizon: int, act_fn: ActFn
    ) -> tuple[np.ndarray, np.ndarray, TaskState]:
        q0 = np.asarray(q0, dtype=np.float64)
        v0 = np.asarray(v0, dtype=np.float64)
        nj = len(self.joint_names)
        if q0.ndim != 2 or q0.shape[1] != nj:
            raise ValueError(
                f"q0 must have shape (N, {nj}) (joints {self.joint_names}), got {q0.shape}"
            )
        n = q0.shape[0]
        if not 1 <= n <= self.n_envs:
            raise ValueError(f"batch size N={n} must be in [1, n_envs={self.n_envs}]; "
                             f"build the collector with a larger n_envs")
        if v0.shape != q0.shape:
            raise ValueError(f"v0 must have the shape of q0 {q0.shape}, got {v0.shape}")
        if not (np.isfinite(q0).all() and np.isfinite(v0).all()):
            raise ValueError("q0 and v0 must be finite")
        if not isinstance(horizon, (int, np.integer)) or isinstance(horizon, bool) or horizon < 1:
            raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
        if not callable(act_fn):
            raise TypeError(f"act_fn must be callable as act_fn(obs, t), got {act_fn!r}")
        if not isinstance(task_state, dict) or set(task_state) != set(self._task_dims):
            got = sorted(task_state) if isinstance(task_state, dict) else type(task_state).__name__
            raise ValueError(f"task_state must be a dict with keys {sorted(self._task_dims)} "
                             f"for task {self.task.name}, got {got}")
        task = {}
        for k, dims in self._task_dims.items():
            val = np.asarray(task_state[k], dtype=np.float64)
            if val.shape != (n, *dims):
                raise ValueError(f"task_state['{k}'] must have shape {(n, *dims)}, got {val.shape}")
            task[k] = val
        return q0, v0, task

    @staticmethod
    def _finish(
        obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, terminated: np.ndarray,
        lengths: np.ndarray, qs: np.ndarray, vs: np.ndarray,
    ) -> BatchRollout:
        """Zero every value after each env's termination; package the buffers."""
        horizon = actions.shape[1]
        for i in np.flatnonzero(lengths < horizon):
            n_steps = lengths[i]
            obs[i, n_steps + 1:], qs[i, n_steps + 1:], vs[i, n_steps + 1:] = 0.0, 0.0, 0.0
            actions[i, n_steps:], rewards[i, n_steps:] = 0.0, 0.0
        alive = np.arange(horizon) < lengths[:, None]
        return BatchRollout(obs=obs, actions=actions, rewards=rewards, terminated=terminated,
                            alive=alive, q=qs, v=vs)


def _columns(index: np.ndarray) -> slice | np.ndarray:
    """`index` as a slice where it is a run of consecutive integers, else as an array."""
    index = np.asarray(index)
    if np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def _make_env(env: str | tuple[Task, str | RobotConfig | None], fidelity: str) -> RobotSimEnv:
    if isinstance(env, str):
        made = gym.make(env, fidelity=fidelity).unwrapped
        if not isinstance(made, RobotSimEnv):
            raise TypeError(f"env id '{env}' is a {type(made).__name__}, not a RobotSimEnv")
        return made
    if isinstance(env, tuple) and len(env) == 2 and isinstance(env[0], Task):
        return RobotSimEnv(env[0], fidelity, env[1])
    raise TypeError(f"env must be a registered env id or a (task, robot) pair, got {env!r}")


def _stack_starts(
    starts: list[tuple[np.ndarray, np.ndarray, TaskState]],
    joint_names: tuple[str, ...],
    task_dims: dict[str, tuple[int, ...]],
) -> tuple[np.ndarray, np.ndarray, TaskState]:
    nj = len(joint_names)
    q0 = np.array([s[0] for s in starts], dtype=np.float64).reshape(len(starts), nj)
    v0 = np.array([s[1] for s in starts], dtype=np.float64).reshape(len(starts), nj)
    task = {
        k: np.array([s[2][k] for s in starts], dtype=np.float64).reshape(len(starts), *dims)
        for k, dims in task_dims.items()
    }
    return q0, v0, task
