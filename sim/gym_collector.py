"""Low-fidelity collection on a plain Gymnasium MuJoCo env (`gymnasium.envs.mujoco.MujocoEnv`).

`GymCollector` has the interface of `sim.batched.BatchedCollector` that the pairings use
(`sample_starts`, `batch_states`, `run`, `obs_dim`, `act_dim`, `n_envs`, `close`), for an env
such as the stock `InvertedPendulum-v5` standing in as the LF model of a modified copy
(`benchmarks.offdynamics`). It keeps one env and N integration-state rows (`mj_getState` /
`mj_setState` of `mjSTATE_INTEGRATION`: positions, velocities, controls, warmstart, time) and
advances each live row with the env's own `step`, so obs, reward and termination are the
stock env's code; the policy runs once per control step for the whole batch:

    collector = GymCollector("InvertedPendulum-v5", n_envs=512)
    q0, v0, task = collector.sample_starts(512, np.random.default_rng(0))
    out = collector.run(q0, v0, task, horizon=1000, act_fn=lambda obs, t: policy(obs))

A row started from (q0, v0) is `env.reset` with that state (`mj_resetData`, then
`set_state`), so it reproduces the per-env Gymnasium loop bitwise. The pairing state is
(qpos, qvel) by joint name, so every joint must be a hinge or a slide (one position and one
velocity each); an env with free or ball joints, or with state outside MjData (e.g. a goal
kept in a Python attribute), cannot be paired this way. Rows are stepped one after another
in Python (`InvertedPendulum-v5`: ~25 us per step, `Hopper-v5`: ~110 us here).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.envs.mujoco import MujocoEnv
from gymnasium.envs.registration import EnvSpec

from sim.batched import ActFn, BatchRollout
from sim.state import RobotState
from sim.tasks.base import TaskState

_STATE = mujoco.mjtState.mjSTATE_INTEGRATION
_ONE_DOF = (mujoco.mjtJoint.mjJNT_HINGE.value, mujoco.mjtJoint.mjJNT_SLIDE.value)


def env_spec(env_id: str) -> EnvSpec:
    """`gymnasium.spec` of an id, importing its module first for `module:Name-v0` ids (the
    form `gymnasium.make` accepts)."""
    module, sep, name = env_id.partition(":")
    if sep:
        importlib.import_module(module)
        return gym.spec(name)
    return gym.spec(env_id)


def joint_names(model: mujoco.MjModel, env_id: str = "the env") -> tuple[str, ...]:
    """The joints in qpos order (unnamed joint j: `joint<j>`); ValueError unless every joint
    is a hinge or a slide."""
    bad = [j for j in range(model.njnt) if model.jnt_type[j] not in _ONE_DOF]
    if bad:
        names = [model.joint(j).name or f"joint{j}" for j in bad]
        raise ValueError(
            f"{env_id} has free or ball joints ({', '.join(names)}); the LF collector pairs "
            f"states joint by joint and supports hinge and slide joints only"
        )
    return tuple(model.joint(j).name or f"joint{j}" for j in range(model.njnt))


def make_mujoco_env(env_id: str) -> MujocoEnv:
    """`gymnasium.make(env_id).unwrapped`, which must be a `MujocoEnv` (TypeError if not)."""
    env = gym.make(env_id).unwrapped
    if not isinstance(env, MujocoEnv):
        env.close()
        raise TypeError(
            f"'{env_id}' is a {type(env).__name__}, not a Gymnasium MuJoCo env (MujocoEnv): "
            f"a plain Gymnasium LF env must be a MuJoCo model that can be reset to a state"
        )
    return env


def mujoco_layout(env_id: str) -> tuple[int, int, tuple[str, ...]]:
    """(nq, nv, joint names) of a plain Gymnasium MuJoCo env id (TypeError / ValueError as
    `make_mujoco_env` / `joint_names`)."""
    env = make_mujoco_env(env_id)
    try:
        return env.model.nq, env.model.nv, joint_names(env.model, f"'{env_id}'")
    finally:
        env.close()


def mujoco_state_getter(env: gym.Env) -> Callable[[], RobotState] | None:
    """A `get_state()` for a Gymnasium MuJoCo env (through its wrappers): the current qpos and
    qvel by joint name; None for other envs and for models with free or ball joints."""
    base = env.unwrapped
    if not isinstance(base, MujocoEnv):
        return None
    try:
        names = joint_names(base.model)
    except ValueError:
        return None

    def get_state() -> RobotState:
        return RobotState.from_arrays(names, base.data.qpos, base.data.qvel)

    return get_state


class GymCollector:
    """Runs up to `n_envs` rollouts of a plain Gymnasium MuJoCo env, closed loop, the policy
    evaluated once per step for the whole batch (module docstring). One `run` at a time."""

    def __init__(self, env_id: str, n_envs: int = 512) -> None:
        if not isinstance(n_envs, (int, np.integer)) or n_envs < 1:
            raise ValueError(f"n_envs must be a positive integer, got {n_envs!r}")
        self.env_id = env_id
        self.env = make_mujoco_env(env_id)
        try:
            self.joint_names = joint_names(self.env.model, f"'{env_id}'")
        except ValueError:
            self.env.close()
            raise
        self.model, self.data = self.env.model, self.env.data
        self.n_envs = int(n_envs)
        self.obs_dim = int(np.prod(self.env.observation_space.shape))
        self.act_dim = int(np.prod(self.env.action_space.shape))
        self._state_size = mujoco.mj_stateSize(self.model, _STATE)
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self.env.close()
        self._closed = True

    def __enter__(self) -> GymCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- start states ---------------------------------------------------------------------
    def sample_starts(
        self, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, TaskState]:
        """`n` starts from the env's own reset distribution (`reset_model` drawing from
        `rng`)."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"rng must be a numpy Generator (np.random.default_rng(seed)), got {rng!r}"
            )
        env, n = self.env, int(n)
        q = np.empty((n, self.model.nq))
        v = np.empty((n, self.model.nv))
        saved = env._np_random, env._np_random_seed
        env._np_random = rng
        try:
            for i in range(n):
                mujoco.mj_resetData(self.model, self.data)
                env.reset_model()
                q[i], v[i] = self.data.qpos, self.data.qvel
        finally:
            env._np_random, env._np_random_seed = saved
        return q, v, {}

    def batch_states(self, states: list[RobotState]) -> tuple[np.ndarray, np.ndarray, TaskState]:
        """Stack `RobotState`s (e.g. measured HF states; joints matched by name) for `run`."""
        nj = len(self.joint_names)
        q = np.empty((len(states), nj))
        v = np.empty((len(states), nj))
        for i, s in enumerate(states):
            q[i], v[i] = s.arrays(self.joint_names)
        return q, v, {}

    # -- collection -----------------------------------------------------------------------
    def run(
        self, q0: np.ndarray, v0: np.ndarray, task_state: TaskState, horizon: int,
        act_fn: ActFn,
    ) -> BatchRollout:
        """Roll N envs out for `horizon` steps from (q0, v0), closed loop (`BatchRollout`);
        `act_fn(obs, t)` maps the (N, obs_dim) float32 observations of step t to (N, act_dim)
        actions (rows of envs that already terminated are ignored). Stops once all
        terminated."""
        if self._closed:
            raise RuntimeError("the collector is closed; make a new GymCollector")
        q0, v0 = self._check_inputs(q0, v0, task_state, horizon, act_fn)
        n, horizon = q0.shape[0], int(horizon)
        env, model, data = self.env, self.model, self.data
        obs = np.zeros((n, horizon + 1, self.obs_dim), dtype=np.float32)
        actions = np.zeros((n, horizon, self.act_dim))
        rewards = np.zeros((n, horizon))
        terminated = np.zeros((n, horizon), dtype=bool)
        qs = np.zeros((n, horizon + 1, model.nq))
        vs = np.zeros((n, horizon + 1, model.nv))
        lengths = np.full(n, horizon)
        states = np.empty((n, self._state_size))
        for i in range(n):  # env.reset with the given state
            mujoco.mj_resetData(model, data)
            env.set_state(q0[i], v0[i])
            obs[i, 0] = env._get_obs()
            qs[i, 0], vs[i, 0] = data.qpos, data.qvel
            mujoco.mj_getState(model, data, states[i], _STATE)
        live = np.arange(n)
        for t in range(horizon):
            act = self._checked_action(act_fn(obs[:, t], t), n, t, live)
            actions[live, t] = act[live]
            for i in live:
                mujoco.mj_setState(model, data, states[i], _STATE)
                o, r, term, _, _ = env.step(act[i])
                mujoco.mj_getState(model, data, states[i], _STATE)
                obs[i, t + 1], rewards[i, t], terminated[i, t] = o, r, term
                qs[i, t + 1], vs[i, t + 1] = data.qpos, data.qvel
            ended = terminated[live, t]
            if ended.any():
                lengths[live[ended]] = t + 1
                live = live[~ended]
                if live.size == 0:
                    break
        alive = np.arange(horizon) < lengths[:, None]
        return BatchRollout(obs=obs, actions=actions, rewards=rewards, terminated=terminated,
                            alive=alive, q=qs, v=vs)

    # -- helpers --------------------------------------------------------------------------
    def _checked_action(self, act: np.ndarray, n: int, t: int, live: np.ndarray) -> np.ndarray:
        act = np.asarray(act, dtype=np.float64)
        if act.shape != (n, self.act_dim):
            raise ValueError(f"act_fn returned shape {act.shape} at step {t}; expected "
                             f"(N, act_dim) = ({n}, {self.act_dim})")
        if math.isfinite(act[live].sum()):
            return act
        bad = live[~np.isfinite(act[live]).all(axis=1)]
        raise ValueError(f"act_fn returned non-finite actions for envs {bad[:10].tolist()} at "
                         f"step {t}")

    def _check_inputs(
        self, q0: np.ndarray, v0: np.ndarray, task_state: TaskState, horizon: int, act_fn: ActFn
    ) -> tuple[np.ndarray, np.ndarray]:
        q0 = np.asarray(q0, dtype=np.float64)
        v0 = np.asarray(v0, dtype=np.float64)
        nj = len(self.joint_names)
        if q0.ndim != 2 or q0.shape[1] != nj:
            raise ValueError(
                f"q0 must have shape (N, {nj}) (joints {self.joint_names}), got {q0.shape}"
            )
        if not 1 <= q0.shape[0] <= self.n_envs:
            raise ValueError(f"batch size N={q0.shape[0]} must be in [1, n_envs={self.n_envs}]; "
                             f"build the collector with a larger n_envs")
        if v0.shape != q0.shape:
            raise ValueError(f"v0 must have the shape of q0 {q0.shape}, got {v0.shape}")
        if not (np.isfinite(q0).all() and np.isfinite(v0).all()):
            raise ValueError("q0 and v0 must be finite")
        if not isinstance(horizon, (int, np.integer)) or isinstance(horizon, bool) or horizon < 1:
            raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
        if not callable(act_fn):
            raise TypeError(f"act_fn must be callable as act_fn(obs, t), got {act_fn!r}")
        if task_state:
            raise ValueError(f"a plain Gymnasium env has no task variables; task_state must be "
                             f"empty, got keys {sorted(task_state)}")
        return q0, v0
