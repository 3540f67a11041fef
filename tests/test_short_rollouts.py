"""MF training with HF rollouts shorter or longer than an episode, and the episode-pairing
correction's zero mean when episodes span several rollouts (HF = twin, LF = reduced)."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

import sim  # noqa: F401  (registers the envs)
from mfpg_robot.buffer import HFCollector
from mfpg_robot.config import TrainConfig, validate_train_config
from mfpg_robot.estimators import mf_objective
from mfpg_robot.pairing import EpisodePairing, LFSamples
from mfpg_robot.pg_variance import zero_value
from mfpg_robot.policy import GaussianPolicy
from mfpg_robot.train import train
from sim.batched import BatchedCollector

FURUTA = "mfpg/FurutaSwingup-v0"  # 1000-step episodes
ARM2 = "mfpg/Arm2Reach-v0"  # 200-step episodes


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def short_config(env: str, algo: str, pairing: str, steps_per_iter: int, run_dir) -> TrainConfig:
    """A tiny run: a few iterations of `steps_per_iter` HF steps, minimal LF work."""
    iterations = 3 if steps_per_iter < 512 else 2
    return validate_train_config({
        "seed": 1,
        "algo": {"name": algo, "num_minibatches": 4, "update_epochs": 1, "hidden": [16]},
        "hf": {"env": env, "steps_per_iter": steps_per_iter,
               "total_steps": iterations * steps_per_iter},
        "lf": {"pairing": pairing, "k": 2, "M": 2, "lf_pool_per_hf": 1, "nthread": 1},
        "run": {"dir": str(run_dir), "progress": False, "checkpoint_every": 0},
    }, "test")


@pytest.mark.parametrize("steps_per_iter", [64, 100, 512, 1000, 2048])
@pytest.mark.parametrize("pairing", ["episode", "synced"])
@pytest.mark.parametrize("env", [FURUTA, ARM2], ids=["furuta", "arm2"])
@pytest.mark.parametrize("algo", ["mfppo", "mfreinforce"])
def test_mf_trains_with_any_rollout_length(tmp_path, algo: str, env: str, pairing: str,
                                           steps_per_iter: int) -> None:
    """Rollouts with no episode start, no end, or several episodes: every iteration pairs
    LF samples with its rows and yields finite losses and c."""
    cfg = short_config(env, algo, pairing, steps_per_iter, tmp_path / "run")
    rows = train(cfg).history
    assert len(rows) == cfg.num_iterations
    for row in rows:
        for key in ("loss/policy", "loss/value", "lf/critic_loss", "mf/c", "mf/rho"):
            assert np.isfinite(row[key]), (key, row)
        assert row["mf/c"] >= 0 and row["lf/samples"] > 0
        assert 0 < row["mf/n_pairs"] <= steps_per_iter
        if pairing == "synced":
            assert row["mf/n_pairs"] == steps_per_iter


def _correction(lf: LFSamples, n_hf: int) -> float:
    """The LF term mf_objective subtracts at c = 1: (sum f_P - sum f_R / R) / n_HF, with
    f = A log pi (LF advantages, log-probs at the sampling policy)."""
    f_p = torch.as_tensor(lf.paired.advantages * lf.paired.logprobs)
    f_r = torch.as_tensor(lf.ref.advantages * lf.ref.logprobs)
    return -float(mf_objective(torch.zeros(n_hf, dtype=torch.float64), f_p, f_r, 1.0,
                               lf.ref_per_paired))


def test_episode_correction_is_zero_mean_when_episodes_span_rollouts() -> None:
    """Consecutive 100-row Furuta rollouts under fixed weights (episodes ~200 steps: most
    rollouts open mid-episode, some hold a start). Each rollout's correction has mean zero
    given the past, so the corrections are uncorrelated and their mean is zero within a few
    standard errors. Control: treating the opening fragment like an episode start (references
    from the start distribution, not from its first state) is biased, and detected."""
    torch.manual_seed(0)
    policy = GaussianPolicy(6, 1)
    with torch.no_grad():
        policy.mu[-1].bias.fill_(0.2)  # drift the arm: mid-episode states differ from starts
    rows, trials = 100, 60
    hf = HFCollector(gym.make(FURUTA, fidelity="twin"), policy, np.random.default_rng(1),
                     seed=1)
    rng = np.random.default_rng(101)
    fixed, naive = [], []
    opened_mid_episode = with_start = 0
    with BatchedCollector(FURUTA, fidelity="reduced", n_envs=64, nthread=1) as lf:
        pairing = EpisodePairing(lf, 4, 1000, 0.99, 0.95)
        for _ in range(trials):
            buf = hf.collect(rows)
            opened_mid_episode += not buf.episode_start[0]
            with_start += bool(buf.episode_start.any())
            out = pairing.collect(buf, policy, zero_value, lambda r: r, rng)
            assert out.n_pairs > 0
            fixed.append(_correction(out, rows))
            as_start = dataclasses.replace(buf, episode_start=buf.episode_start.copy())
            as_start.episode_start[0] = True
            naive.append(_correction(pairing.collect(as_start, policy, zero_value,
                                                     lambda r: r, rng), rows))
    assert opened_mid_episode > trials // 2 and with_start > 10
    z = {name: np.mean(x) / (np.std(x, ddof=1) / np.sqrt(trials))
         for name, x in (("fixed", fixed), ("naive", naive))}
    assert abs(z["fixed"]) < 3.5, z
    assert z["naive"] > 4, z
