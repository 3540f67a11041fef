"""Snapshot and restore a simulated HF env mid-episode, so that a resumed run is bitwise.

A checkpoint is taken at an iteration boundary, where a simulated episode is usually still
running. `snapshot(env)` captures what the next `step` depends on:
- the MuJoCo integration state (`mj_getState(mjSTATE_INTEGRATION)`: time, joints, actuator
  and control inputs, the solver's warmstart; an `mj_step` from it is bitwise the same);
- for `sim.envs.base.RobotSimEnv`: the sensor's delay line, the measured joint state and the
  task variables;
- the env's numpy generator (`np_random`, the next reset's start) and the step count of the
  `TimeLimit` wrapper.
Envs without a MuJoCo model (and the robot) have no snapshot (`None`): a resumed run then
starts a new episode where the old one was lost.

Values are plain Python data and tensors, so a checkpoint loads with `weights_only=True`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch
from gymnasium.wrappers import TimeLimit

from sim.envs.base import RobotSimEnv

_INTEGRATION = mujoco.mjtState.mjSTATE_INTEGRATION.value


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(x, dtype=np.float64, copy=True))


def _array(t: torch.Tensor) -> np.ndarray:
    return t.numpy().astype(np.float64, copy=True)


def _time_limit(env: gym.Env) -> TimeLimit | None:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, TimeLimit):
            return env
        env = env.env
    return None


def np_random_state(env: gym.Env) -> dict[str, Any]:
    """The state of the env's numpy generator (what its next unseeded reset draws from)."""
    return env.unwrapped.np_random.bit_generator.state


def set_np_random_state(env: gym.Env, state: dict[str, Any]) -> None:
    env.unwrapped.np_random.bit_generator.state = state


def snapshot(env: gym.Env) -> dict[str, Any] | None:
    """Everything the env's next step and reset depend on; None if it cannot be captured."""
    base = env.unwrapped
    model, data = getattr(base, "model", None), getattr(base, "data", None)
    if not isinstance(model, mujoco.MjModel) or not isinstance(data, mujoco.MjData):
        return None
    physics = np.empty(mujoco.mj_stateSize(model, _INTEGRATION))
    mujoco.mj_getState(model, data, physics, _INTEGRATION)
    limit = _time_limit(env)
    snap: dict[str, Any] = {
        "physics": _tensor(physics),
        "np_random": np_random_state(env),
        "elapsed_steps": None if limit is None else limit._elapsed_steps,
        "sim": None,
    }
    if isinstance(base, RobotSimEnv):
        snap["sim"] = {
            "sensor": [[_tensor(q), _tensor(v)] for q, v in base.sensor._buffer],
            "q_meas": _tensor(base._q_meas),
            "v_meas": _tensor(base._v_meas),
            "task": {k: _tensor(v) for k, v in base._task_state.items()},
        }
    return snap


def restore(env: gym.Env, snap: dict[str, Any]) -> None:
    """Put a `snapshot` back. The env must have been reset once (wrappers check that)."""
    base = env.unwrapped
    physics = _array(snap["physics"])
    if physics.size != mujoco.mj_stateSize(base.model, _INTEGRATION):
        raise ValueError("the env snapshot is of another MuJoCo model")
    mujoco.mj_setState(base.model, base.data, physics, _INTEGRATION)
    set_np_random_state(env, snap["np_random"])
    limit = _time_limit(env)
    if limit is not None and snap["elapsed_steps"] is not None:
        limit._elapsed_steps = int(snap["elapsed_steps"])
    sim = snap["sim"]
    if sim is not None:
        if not isinstance(base, RobotSimEnv):
            raise ValueError("the env snapshot is of a RobotSimEnv; this env is not one")
        base.sensor._buffer = deque(
            [(_array(q), _array(v)) for q, v in sim["sensor"]], maxlen=base.sensor._buffer.maxlen
        )
        base._q_meas, base._v_meas = _array(sim["q_meas"]), _array(sim["v_meas"])
        base._task_state = {k: _array(v) for k, v in sim["task"].items()}
