"""MF policy gradients on the Furuta pendulum (HF = twin, LF = reduced) and MF-PPO/REINFORCE."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import sim  # noqa: F401  (registers the envs)
from mfpg_robot.algos.mfppo import group_minibatches
from mfpg_robot.config import TrainConfig, validate_train_config
from mfpg_robot.estimators import CoefEMA
from mfpg_robot.pairing import EpisodePairing, LFPart, LFSamples, SyncedPairing
from mfpg_robot.pg_variance import (
    hf_advantages,
    hf_gradient,
    mf_trial,
    simulate_hf_buffer,
    zero_value,
)
from mfpg_robot.policy import GaussianPolicy
from mfpg_robot.train import train
from sim.batched import BatchedCollector

ENV = "mfpg/FurutaSwingup-v0"
SHORT_ENV = "mfpg-test/FurutaShort-v0"  # the same env with 100-step episodes
HORIZON, GAMMA = 100, 0.99

if SHORT_ENV not in gym.registry:
    gym.register(SHORT_ENV, entry_point="sim.envs.furuta:FurutaSwingupEnv",
                 max_episode_steps=HORIZON)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def identity(r: np.ndarray) -> np.ndarray:
    return r


@pytest.fixture(scope="module")
def gradients():
    """Reference gradient (10 chunks of 100 HF episodes) and 16 small batches per estimator.

    REINFORCE at a fixed random-init policy, advantages = discounted returns (no baseline).
    """
    torch.manual_seed(0)
    policy = GaussianPolicy(6, 1)
    rng = np.random.default_rng(0)
    with (BatchedCollector(ENV, fidelity="twin", n_envs=512, nthread=1) as hf,
          BatchedCollector(ENV, fidelity="reduced", n_envs=4096, nthread=1) as lf):
        chunks = []
        for _ in range(10):
            buf = simulate_hf_buffer(hf, policy, 100, HORIZON, rng)
            chunks.append(hf_gradient(policy, buf, hf_advantages(buf, zero_value, GAMMA)))
        pairings = {"synced": SyncedPairing(lf, 10, 4, GAMMA, 1.0),
                    "episode": EpisodePairing(lf, 8, HORIZON, GAMMA, 1.0, whole_episodes=True)}
        trials: dict[str, list] = {name: [] for name in pairings}
        for _ in range(16):
            buf = simulate_hf_buffer(hf, policy, 4, HORIZON, rng)
            adv = hf_advantages(buf, zero_value, GAMMA)
            for name, pairing in pairings.items():
                samples = pairing.collect(buf, policy, zero_value, identity, rng)
                trials[name].append(mf_trial(policy, buf, samples, adv))
    chunks = np.stack(chunks)
    return chunks.mean(0), chunks.std(0, ddof=1) / np.sqrt(len(chunks)), trials


def ema_estimates(trials: list) -> np.ndarray:
    """MF gradients with c from the EMA over earlier batches (as the algorithms apply it)."""
    tracker = CoefEMA(ema=0.9, min_pairs=20)
    return np.stack([t.g_mf(tracker.coef_for(t.moments)) for t in trials])


@pytest.mark.parametrize("mode", ["synced", "episode"])
def test_mf_gradient_is_unbiased(gradients, mode: str) -> None:
    g_ref, se_ref, trials = gradients
    est = ema_estimates(trials[mode])
    dirs = np.random.default_rng(1).standard_normal((6, g_ref.size))
    for v in dirs:
        proj = est @ v
        se = np.sqrt(proj.var(ddof=1) / len(proj) + float((se_ref * v) @ (se_ref * v)))
        assert abs(proj.mean() - g_ref @ v) < 3.5 * se


def test_synced_mf_gradient_has_lower_mse_than_hf_only(gradients) -> None:
    g_ref, _, trials = gradients
    g_hf = np.stack([t.g_hf for t in trials["synced"]])
    mse_hf = np.mean(np.sum((g_hf - g_ref) ** 2, axis=1))
    mse_synced = np.mean(np.sum((ema_estimates(trials["synced"]) - g_ref) ** 2, axis=1))
    assert mse_synced < 0.6 * mse_hf
    assert np.mean([t.moments.rho for t in trials["synced"]]) > 0.3


def _part(n: int, anchor: np.ndarray) -> LFPart:
    z = np.zeros(n)
    return LFPart(np.zeros((n, 6), np.float32), np.zeros((n, 1), np.float32), z, z, z, anchor)


@pytest.mark.parametrize("pooled", [False, True])
def test_minibatches_keep_each_hf_row_with_its_lf_samples(pooled: bool) -> None:
    n_hf, m, n_mb = 50, 3, 4
    p_anchor = np.concatenate([np.arange(n_hf), [7, 7, 30]])  # three unpaired extras
    r_anchor = np.full(200, -1) if pooled else np.repeat(np.arange(n_hf), m)
    lf = LFSamples("x", _part(p_anchor.size, p_anchor), np.where(p_anchor < n_hf, p_anchor, -1),
                   _part(r_anchor.size, r_anchor), 4.0, 0, np.zeros(0), np.zeros(0, np.int64))
    mbs = group_minibatches(n_hf, lf, n_mb, torch.Generator().manual_seed(0))
    assert len(mbs) == n_mb
    seen_h, seen_p, seen_r = [], [], []
    for ih, ip, ir in mbs:
        rows = set(ih.tolist())
        assert set(p_anchor[ip.numpy()]) <= rows
        if pooled:
            assert abs(len(ir) - 200 / n_mb) <= 1
        else:
            assert set(r_anchor[ir.numpy()]) == rows
        seen_h += ih.tolist()
        seen_p += ip.tolist()
        seen_r += ir.tolist()
    assert sorted(seen_h) == list(range(n_hf))
    assert sorted(seen_p) == list(range(p_anchor.size))
    assert sorted(seen_r) == list(range(r_anchor.size))


def tiny_config(algo: str, pairing: str, run_dir, seed: int = 3, **lf) -> TrainConfig:
    return validate_train_config({
        "seed": seed,
        "algo": {"name": algo, "num_minibatches": 4, "update_epochs": 2},
        "hf": {"env": SHORT_ENV, "fidelity": "twin", "steps_per_iter": 200, "total_steps": 400},
        "lf": {"env": ENV, "fidelity": "reduced", "pairing": pairing, "k": 8, "M": 4,
               "lf_pool_per_hf": 4, "nthread": 1, **lf},
        "run": {"dir": str(run_dir), "progress": False, "checkpoint_every": 0},
    }, "test")


LOGGED = ("mf/rho", "mf/c", "mf/var_reduction_pred", "mf/var_ratio_grad", "return_mean",
          "lf/return_mean", "hf/samples", "lf/samples", "lf/steps")


@pytest.mark.parametrize(("pairing", "same_starts"),
                         [("synced", False), ("episode", False), ("episode", True)])
def test_mfppo_trains_and_logs_positive_correlation(tmp_path, pairing: str,
                                                    same_starts: bool) -> None:
    cfg = tiny_config("mfppo", pairing, tmp_path / "run", same_starts=same_starts)
    result = train(cfg)
    if pairing == "episode":
        assert result.algorithm.lf.pairing.same_starts is same_starts
    assert result.algorithm.lf.collector.closed, "train() must release the LF thread pool"
    rows = result.history
    assert len(rows) == 2
    for row in rows:
        assert all(np.isfinite(row[k]) for k in LOGGED), {k: row[k] for k in LOGGED}
        assert row["hf/samples"] == 200 and row["lf/samples"] > 200
        assert row["mf/c"] >= 0
    assert np.mean([row["mf/rho"] for row in rows]) > 0.1
    assert rows[1]["mf/c"] > 0


def test_mfreinforce_trains(tmp_path) -> None:
    rows = train(tiny_config("mfreinforce", "synced", tmp_path / "run")).history
    assert len(rows) == 2 and all(np.isfinite(r["mf/rho"]) for r in rows)
    assert rows[-1]["mf/c"] >= 0 and rows[-1]["lf/samples"] == 200 * 5


@pytest.mark.parametrize("algo", ["mfppo", "mfreinforce"])
def test_c_from_gradient_applies_the_gradient_variance_optimum(tmp_path, algo: str) -> None:
    cfg = tiny_config(algo, "episode", tmp_path / "run")
    cfg = cfg.model_copy(update={"mf": cfg.mf.model_copy(update={"c_from": "gradient"})})
    rows = train(cfg).history
    for row in rows:  # each batch's own estimate is its gradient moments' c (floored at 0)
        assert row["mf/c_batch"] == pytest.approx(max(row["mf/c_grad"], 0.0), rel=1e-9)
    first = rows[0]  # no history: the first batch applies its own estimate ...
    assert first["mf/c"] == pytest.approx(first["mf/c_batch"], rel=1e-9) and first["mf/c"] > 0
    # ... which is the measured optimum, so the measured variance ratio is 1 - rho_grad^2 < 1
    assert first["mf/var_ratio_grad"] < 1.0
    assert rows[1]["mf/c"] > 0


def test_mfppo_is_deterministic_for_a_seed(tmp_path) -> None:
    runs = [train(tiny_config("mfppo", "synced", tmp_path / f"run{i}")) for i in range(2)]
    for a, b in zip(runs[0].policy.state_dict().values(), runs[1].policy.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    for key in ("mf/rho", "mf/c", "loss/policy", "lf/return_mean"):
        assert [r[key] for r in runs[0].history] == [r[key] for r in runs[1].history]
    state = runs[0].algorithm.state_dict()
    runs[1].algorithm.load_state_dict(state)
    assert runs[1].algorithm.lf.coef.value == runs[0].algorithm.lf.coef.value
