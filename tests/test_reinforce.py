"""REINFORCE with a critic baseline: Monte-Carlo targets, per-sample surrogate, learning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mfpg_robot.algos import make_algorithm
from mfpg_robot.algos.reinforce import Reinforce, reinforce_surrogate
from mfpg_robot.buffer import RolloutBuffer
from mfpg_robot.config import load_train_config, validate_train_config
from mfpg_robot.train import train
from sim.robot_config import REPO_ROOT

FURUTA = "mfpg/FurutaSwingup-v0"


def _cfg(tmp_path: Path | None = None, seed: int = 0, **algo):
    return validate_train_config({
        "seed": seed,
        "algo": {"name": "reinforce", "norm_reward": False, "anneal_lr": False, **algo},
        "hf": {"env": FURUTA, "fidelity": "reduced", "steps_per_iter": 2048,
               "total_steps": 6 * 2048},
        "run": {"dir": str(tmp_path / f"run{seed}") if tmp_path else None,
                "progress": False, "checkpoint_every": 0},
    }, "test")


def _buffer(rewards: list[float], terminated: list[bool], truncated: list[bool]) -> RolloutBuffer:
    n = len(rewards)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, 6)).astype(np.float32)
    next_obs = rng.normal(size=(n, 6)).astype(np.float32)  # final obs where an episode ends
    ends = np.array(terminated) | np.array(truncated)
    next_obs[:-1][~ends[:-1]] = obs[1:][~ends[:-1]]  # otherwise the next row's obs
    return RolloutBuffer(
        obs=obs, eps=rng.normal(size=(n, 1)), actions=rng.normal(size=(n, 1)).astype(np.float32),
        logprobs=np.zeros(n), rewards=np.array(rewards, dtype=np.float64),
        terminated=np.array(terminated), truncated=np.array(truncated),
        next_obs=next_obs,
        episode_start=np.zeros(n, dtype=bool), states=None,
    )


def test_surrogate_is_advantage_times_logprob() -> None:
    logp = torch.tensor([-1.0, -2.0, 0.5])
    adv = torch.tensor([2.0, -1.0, 4.0])
    torch.testing.assert_close(reinforce_surrogate(logp, adv), torch.tensor([-2.0, 2.0, 2.0]))


def test_targets_are_discounted_returns_with_truncation_bootstrap() -> None:
    algo = make_algorithm(_cfg(gamma=0.5, norm_adv=False), 6, 1)
    assert isinstance(algo, Reinforce)
    buf = _buffer([1, 2, 3, 4, 5], [False, True, False, False, False],
                  [False, False, False, True, False])
    batch = algo.prepare(buf)
    with torch.no_grad():
        v = algo.critic(torch.as_tensor(buf.obs)).double().numpy()
        v_next = algo.critic(torch.as_tensor(buf.next_obs)).double().numpy()
    # episode 1 terminates at row 1; episode 2 is truncated at row 3 (bootstrap V(final obs));
    # row 4 is cut by the rollout end (bootstrap V(next obs))
    g3 = 4 + 0.5 * v_next[3]
    expected = [1 + 0.5 * 2, 2, 3 + 0.5 * g3, g3, 5 + 0.5 * v_next[4]]
    np.testing.assert_allclose(batch.returns.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(batch.advantages.numpy(), np.array(expected) - v, rtol=1e-4,
                               atol=1e-5)


def test_one_step_per_batch_and_normalised_advantages(tmp_path: Path) -> None:
    algo = make_algorithm(_cfg(update_epochs=3), 6, 1)
    buf = _buffer([1, 0, 2, 5, 1], [False] * 5, [False] * 5)
    batch = algo.prepare(buf)
    assert float(batch.advantages.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(batch.advantages.std()) == pytest.approx(1.0, abs=1e-5)
    metrics = algo.update(buf, progress=0.0)
    assert metrics["grad_steps"] == 3.0
    assert algo.optimizer.state[algo.policy.log_std]["step"] == 3


def test_shipped_reinforce_config_builds() -> None:
    cfg = load_train_config(REPO_ROOT / "configs" / "train" / "reinforce_furuta.yaml")
    algo = make_algorithm(cfg, 6, 1)
    assert isinstance(algo, Reinforce) and algo.reward_scaler is None


@pytest.mark.parametrize("seed", [0, 1])
def test_reinforce_improves_furuta_reduced_return(tmp_path: Path, seed: int) -> None:
    """Six iterations of 2048 steps; the initial policy's noise drives the arm into its
    limits (return ~60-110), the trained one mostly keeps it inside (~130-180)."""
    hist = train(_cfg(tmp_path, seed=seed, lr=3e-3)).history
    initial = hist[0]["return_mean"]
    final = np.mean([r["return_mean"] for r in hist[-2:]])
    assert final > initial + 30, [round(r["return_mean"], 1) for r in hist]
