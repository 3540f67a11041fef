"""`train(config) -> TrainResult`: one training run, from config to saved policy.

The loop (every algorithm):
    collect `hf.steps_per_iter` HF steps (seeded noise eps recorded)
    -> algorithm.update(rollout, progress)     (gradient steps, lr annealing, obs-norm update)
    -> log a row (HF steps, returns, losses, KL, lr, time) to the run folder and progress bar
    -> checkpoint every `run.checkpoint_every` iterations, and at the end (plus a plot).

Seeding: torch (network init, minibatch shuffles), a numpy Generator for the action noise,
and the first env reset all derive from `cfg.seed`, so two runs with the same config on the
same machine produce identical parameters.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

import sim  # noqa: F401  (registers the mfpg/* envs)
from mfpg_robot.algos import Algorithm, make_algorithm
from mfpg_robot.buffer import HFCollector
from mfpg_robot.config import TrainConfig, load_train_config
from mfpg_robot.policy import Critic, GaussianPolicy
from mfpg_robot.run_dir import CHECKPOINT_FORMAT, RunDir
from sim.robot_config import ConfigError

RECENT_EPISODES = 20  # episodes averaged in `return_recent`


@dataclass
class TrainResult:
    """What a finished run leaves: the trained networks, the metrics and where they are."""

    policy: GaussianPolicy
    critic: Critic
    algorithm: Algorithm
    config: TrainConfig
    history: list[dict[str, Any]]
    run_dir: Path
    checkpoint: Path
    plot: Path | None


def make_env(env_id: str, fidelity: str | None, key: str = "hf") -> gym.Env:
    """`gymnasium.make(env_id, fidelity=...)`, with config-level errors naming `key`."""
    if fidelity == "robot":
        raise ConfigError(
            f"{key}.fidelity: 'robot' needs the hardware RobotEnv (serial robot or emulator), "
            f"which this install does not provide yet; use {key}.fidelity: twin for a "
            f"simulated dry run"
        )
    kwargs = {} if fidelity is None else {"fidelity": fidelity}
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as err:
        raise ConfigError(f"{key}.env: cannot make '{env_id}': {err}") from None
    except TypeError as err:
        if "fidelity" not in str(err):
            raise
        raise ConfigError(
            f"{key}.fidelity: env '{env_id}' takes no fidelity argument; "
            f"set {key}.fidelity: null for plain Gymnasium envs"
        ) from None


def make_hf_env(cfg: TrainConfig) -> gym.Env:
    """The HF env of a run (the hook where the robot / emulator env will plug in)."""
    return make_env(cfg.hf.env, cfg.hf.fidelity, "hf")


def default_run_dir(cfg: TrainConfig) -> Path:
    """runs/<algo>-<env>-s<seed>-<YYYYmmdd-HHMMSS> under the current directory."""
    env = cfg.hf.env.replace("/", "_")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.algo.name}-{env}-s{cfg.seed}-{stamp}"


def checkpoint_payload(
    cfg: TrainConfig, algo: Algorithm, iteration: int, hf_steps: int, noise: np.random.Generator
) -> dict[str, Any]:
    """Everything to rebuild the policy and continue the run (tensors and plain data)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "obs_dim": algo.policy.obs_dim,
        "act_dim": algo.policy.act_dim,
        "iteration": iteration,
        "hf_steps": hf_steps,
        "algo": algo.state_dict(),
        "noise_rng": noise.bit_generator.state,
    }


def _mean(xs: list[float] | deque[float]) -> float:
    return float(np.mean(xs)) if len(xs) else math.nan


def train(
    config: TrainConfig | str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> TrainResult:
    """Run the training described by `config` (a TrainConfig, or a YAML path + overrides)."""
    if isinstance(config, TrainConfig):
        if overrides:
            raise ValueError("overrides apply to a config file; pass a path, or a changed "
                             "TrainConfig (cfg.model_copy(update=...)) without overrides")
        cfg = config
    else:
        cfg = load_train_config(config, overrides)
    env = make_hf_env(cfg)
    try:
        return _train(cfg, env)
    finally:
        env.close()


def _train(cfg: TrainConfig, env: gym.Env) -> TrainResult:
    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = int(np.prod(env.action_space.shape))
    torch.set_num_threads(cfg.run.torch_threads)
    torch.manual_seed(cfg.seed)
    noise = np.random.default_rng(cfg.seed)
    algo = make_algorithm(cfg, obs_dim, act_dim)
    collector = HFCollector(env, algo.policy, noise, seed=cfg.seed)
    try:
        run = RunDir(cfg.run.dir or default_run_dir(cfg), cfg)
        try:
            return _loop(cfg, algo, collector, run, noise)
        finally:
            run.close()
    finally:
        algo.close()


def _loop(
    cfg: TrainConfig, algo: Algorithm, collector: HFCollector, run: RunDir,
    noise: np.random.Generator,
) -> TrainResult:
    n_iter, per_iter = cfg.num_iterations, cfg.hf.steps_per_iter
    recent: deque[float] = deque(maxlen=RECENT_EPISODES)
    bar = tqdm(total=n_iter * per_iter, unit="step", disable=not cfg.run.progress,
               desc=f"{cfg.algo.name} {cfg.hf.env}", dynamic_ncols=True)
    start = time.perf_counter()
    completed = 0  # iterations fully done (learned from and logged)
    try:
        for iteration in range(1, n_iter + 1):
            t0 = time.perf_counter()
            buffer = collector.collect(per_iter)
            t_collect = time.perf_counter() - t0
            metrics = algo.update(buffer, progress=(iteration - 1) / n_iter)
            recent.extend(buffer.episode_returns)
            elapsed = time.perf_counter() - t0
            row = {
                "iteration": iteration,
                "hf_steps": collector.total_steps,
                "episodes": len(buffer.episode_returns),
                "return_mean": _mean(buffer.episode_returns),
                "return_recent": _mean(recent),
                "ep_len_mean": _mean(buffer.episode_lengths),
                **metrics,
                "time_collect_s": t_collect,
                "time_iter_s": elapsed,
                "sps": per_iter / elapsed,
                "time_s": time.perf_counter() - start,
            }
            run.log(row)
            completed = iteration
            bar.update(per_iter)
            kl = metrics.get("approx_kl", math.nan)
            bar.set_postfix(ret=f"{row['return_recent']:.1f}", kl=f"{kl:.4f}")
            if cfg.run.progress and iteration % cfg.run.log_every == 0:
                bar.write(
                    f"iter {iteration:4d}  steps {row['hf_steps']:8d}  "
                    f"return {row['return_recent']:9.2f}  kl {kl:.4f}  "
                    f"lr {metrics['lr']:.2e}  {row['sps']:6.0f} steps/s"
                )
            every = cfg.run.checkpoint_every
            if every and iteration % every == 0 and iteration < n_iter:
                payload = checkpoint_payload(cfg, algo, iteration, collector.total_steps, noise)
                run.save_checkpoint(payload, f"iter_{iteration:06d}")
    except KeyboardInterrupt:
        payload = checkpoint_payload(cfg, algo, completed, completed * per_iter, noise)
        run.save_checkpoint(payload, "interrupted")
        raise
    finally:
        bar.close()
    payload = checkpoint_payload(cfg, algo, completed, collector.total_steps, noise)
    ckpt = run.save_checkpoint(payload, "final")
    plot = run.plot()
    return TrainResult(algo.policy, algo.critic, algo, cfg, run.history, run.path, ckpt, plot)
