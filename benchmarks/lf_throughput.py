"""Closed-loop LF throughput: batched collector vs per-env Gymnasium loop vs raw mujoco.rollout.

All three run the same model (a task's "reduced" fidelity by default) on this machine, in
control steps per second (one control step = `n_substeps` MuJoCo steps):

- batched: `sim.batched.BatchedCollector.run` (a `mujoco.batch.Batch` stepped once per control
  step), a 64x64 Gaussian MLP policy evaluated once per control step for the whole batch
  (torch, `GaussianPolicy.rollout_policy().act`);
- per-env: `gymnasium.make(env_id)` stepped in a Python loop, the same policy evaluated per env
  per step (batch 1);
- raw: one open-loop `mujoco.rollout` call for the whole horizon, controls precomputed, same
  batch, number of threads and substeps (the ceiling the closed loop is measured against).

The three are interleaved `--repeats` times, so load from other processes hits them alike;
the median and the best run of each are reported (the best is the least disturbed), and
the median of the paired ratios (each batched run over the raw run just before it, which
saw the same machine conditions): the figure the >= 50% target is judged on. On a shared
2-core VM single runs vary by +-20%, so use 15 or more repeats for a figure to quote.

    python benchmarks/lf_throughput.py --robot furuta --batch 512 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import mujoco
import numpy as np
import torch
from mujoco import rollout
from torch import nn

import sim  # noqa: F401  (registers the envs)
from sim.batched import BatchedCollector

ENV_IDS = {"furuta": "mfpg/FurutaSwingup-v0", "arm2": "mfpg/Arm2Reach-v0"}


def make_policy(obs_dim: int, act_dim: int, seed: int) -> tuple[Callable, str]:
    """(act(obs, eps) -> actions, name): the project's GaussianPolicy, else a plain 64x64 MLP."""
    torch.manual_seed(seed)
    try:
        from mfpg_robot.policy import GaussianPolicy
    except ImportError:
        mu = nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                           nn.Linear(64, act_dim))
        log_std = torch.zeros(act_dim)

        @torch.no_grad()
        def act(obs: np.ndarray, eps: np.ndarray) -> np.ndarray:
            mean = mu(torch.from_numpy(obs))
            return (mean + log_std.exp() * torch.from_numpy(eps)).numpy()

        return act, "torch 64x64 tanh MLP"
    policy = GaussianPolicy(obs_dim, act_dim, hidden=(64, 64), log_std_init=np.log(0.5))
    return policy.rollout_policy().act, "mfpg_robot.policy.GaussianPolicy 64x64"


def time_batched(col: BatchedCollector, starts: tuple, horizon: int, act: Callable,
                 eps: np.ndarray) -> float:
    """Control steps per second of one closed-loop `run` (every env stepped every step)."""
    n = starts[0].shape[0]
    t0 = time.perf_counter()
    out = col.run(*starts, horizon, lambda obs, t: act(obs, eps[t]))
    elapsed = time.perf_counter() - t0
    steps_run = n * (out.alive.any(axis=0).sum())  # the loop stops once all envs terminated
    return steps_run / elapsed


def time_per_env(env_id: str, fidelity: str, steps: int, act: Callable, eps: np.ndarray,
                 seed: int) -> float:
    """Control steps per second of a plain Gymnasium loop (policy at batch 1 every step)."""
    env = gym.make(env_id, fidelity=fidelity)
    obs, _ = env.reset(seed=seed)
    t0 = time.perf_counter()
    for t in range(steps):
        a = act(obs[None], eps[t % len(eps), :1])[0]
        obs, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            obs, _ = env.reset()
    elapsed = time.perf_counter() - t0
    env.close()
    return steps / elapsed


def physics_states(model: mujoco.MjModel, qpos_adr: np.ndarray, qvel_adr: np.ndarray,
                   q0: np.ndarray, v0: np.ndarray) -> np.ndarray:
    """(N, nstate) mjSTATE_FULLPHYSICS start vectors: the model's defaults, these joints set."""
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS.value
    data = mujoco.MjData(model)
    states = np.empty((len(q0), mujoco.mj_stateSize(model, spec)))
    for i, (q, v) in enumerate(zip(q0, v0, strict=True)):
        mujoco.mj_resetData(model, data)
        data.qpos[qpos_adr], data.qvel[qvel_adr] = q, v
        mujoco.mj_getState(model, data, states[i], spec)
    return states


def time_raw(col: BatchedCollector, starts: tuple, horizon: int, nthread: int,
             seed: int) -> float:
    """Open-loop rollout rate in control steps per second (all controls precomputed)."""
    model, n = col.model, starts[0].shape[0]
    n_sub = col.n_substeps
    state0 = physics_states(model, col.env.qpos_adr, col.env.qvel_adr, starts[0], starts[1])
    rng = np.random.default_rng(seed)
    lo, hi = model.actuator_ctrlrange[:, 0], model.actuator_ctrlrange[:, 1]
    ctrl = np.repeat(rng.uniform(lo, hi, size=(n, horizon, model.nu)), n_sub, axis=1)
    state = np.empty((n, horizon * n_sub, state0.shape[1]))
    datas = [mujoco.MjData(model) for _ in range(max(1, nthread))]
    with rollout.Rollout(nthread=nthread if nthread > 1 else 0) as pool:
        t0 = time.perf_counter()
        pool.rollout([model] * n, datas, state0, ctrl, skip_checks=True, nstep=horizon * n_sub,
                     state=state, control_spec=mujoco.mjtState.mjSTATE_CTRL.value)
        elapsed = time.perf_counter() - t0
    return n * horizon / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--robot", choices=sorted(ENV_IDS), default="furuta")
    parser.add_argument("--fidelity", default="reduced")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--horizon", type=int, default=200, help="control steps per run")
    parser.add_argument("--nthread", type=int, default=os.cpu_count() or 1,
                        help="stepping threads of both (default: CPU count)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads for the policy")
    parser.add_argument("--per-env-steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    args = parser.parse_args()
    if args.batch < 1 or args.horizon < 1 or args.nthread < 1 or args.repeats < 1:
        parser.error("--batch, --horizon, --nthread and --repeats must be positive")

    torch.set_num_threads(args.torch_threads)
    env_id = ENV_IDS[args.robot]
    col = BatchedCollector(env_id, fidelity=args.fidelity, n_envs=args.batch,
                           nthread=args.nthread)
    act, policy_name = make_policy(col.obs_dim, col.act_dim, args.seed)
    rng = np.random.default_rng(args.seed)
    starts = col.sample_starts(args.batch, rng)
    eps = rng.standard_normal((args.horizon, args.batch, col.act_dim)).astype(np.float32)

    time_batched(col, starts, min(args.horizon, 10), act, eps)  # warm-up (threads, torch)
    rates: dict[str, list[float]] = {"batched": [], "per_env": [], "raw": []}
    for r in range(args.repeats):
        rates["raw"].append(time_raw(col, starts, args.horizon, args.nthread, args.seed + r))
        rates["batched"].append(time_batched(col, starts, args.horizon, act, eps))
        rates["per_env"].append(time_per_env(env_id, args.fidelity, args.per_env_steps, act,
                                             eps, args.seed + r))
    col.close()

    med = {k: statistics.median(v) for k, v in rates.items()}
    paired = [b / r for b, r in zip(rates["batched"], rates["raw"], strict=True)]
    quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
    best = {k: max(v) for k, v in rates.items()}
    result = {
        "env_id": env_id, "fidelity": args.fidelity, "batch": args.batch,
        "horizon": args.horizon, "n_substeps": col.n_substeps, "nthread": args.nthread,
        "torch_threads": args.torch_threads, "policy": policy_name, "repeats": args.repeats,
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "mujoco": mujoco.__version__, "torch": torch.__version__,
        "control_steps_per_s": {k: [round(x) for x in v] for k, v in rates.items()},
        "median_control_steps_per_s": {k: round(v) for k, v in med.items()},
        "best_control_steps_per_s": {k: round(v) for k, v in best.items()},
        "paired_batched_over_raw": statistics.median(paired),
        "paired_batched_over_raw_quartiles": quartiles,
        "batched_over_raw": med["batched"] / med["raw"],
        "batched_over_per_env": med["batched"] / med["per_env"],
        "best_batched_over_raw": best["batched"] / best["raw"],
        "best_batched_over_per_env": best["batched"] / best["per_env"],
    }
    print(f"{env_id} [{args.fidelity}] batch {args.batch}, horizon {args.horizon}, "
          f"{col.n_substeps} substep(s)/control step, {args.nthread} thread(s), "
          f"policy: {policy_name}; control steps/s, median and best of {args.repeats}")
    for k, label in (("raw", "raw open-loop rollout"), ("batched", "batched closed loop"),
                     ("per_env", "per-env Gymnasium loop")):
        print(f"  {label:24s} median {med[k]:>10,.0f}   best {best[k]:>10,.0f}")
    print(f"  batched / raw     = {result['paired_batched_over_raw']:.0%} median of paired runs "
          f"(target >= 50%); {result['batched_over_raw']:.0%} of medians, "
          f"{result['best_batched_over_raw']:.0%} of bests")
    print(f"                      paired runs: min {min(paired):.0%}, quartiles "
          f"{quartiles[0]:.0%} / {quartiles[1]:.0%} / {quartiles[2]:.0%}, max {max(paired):.0%}")
    print(f"  batched / per-env = {result['batched_over_per_env']:.1f}x median, "
          f"{result['best_batched_over_per_env']:.1f}x best  (target >= 5x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
