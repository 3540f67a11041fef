"""The control-variate estimator on synthetic correlated data with known moments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfpg_robot.estimators import (
    CoefEMA,
    align_pairs,
    mf_objective,
    pair_moments,
    projected_moments,
    projected_sample_grads,
    projected_variance_ratio,
    random_directions,
)

MU_H, MU_L, SD_H, SD_L = 1.5, -0.7, 2.0, 3.0


def draw(rng: np.random.Generator, n: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """n pairs (f_H, f_L) with the given correlation and the module-level means and sds."""
    z1, z2 = rng.standard_normal(n), rng.standard_normal(n)
    f_h = MU_H + SD_H * z1
    f_l = MU_L + SD_L * (rho * z1 + np.sqrt(1 - rho**2) * z2)
    return f_h, f_l


def run_trials(
    rho: float, n: int, n_ref: int, trials: int, coef: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """HF-only and MF estimates of MU_H over independent trials.

    coef="known": c* = rho SD_H / SD_L. coef="ema": c from CoefEMA over earlier trials (what the
    algorithms do), which never sees the batch it is applied to.
    """
    rng = np.random.default_rng(seed)
    tracker = CoefEMA(ema=0.9, min_pairs=10)
    hf, mf = np.empty(trials), np.empty(trials)
    for i in range(trials):
        f_h, f_l = draw(rng, n, rho)
        f_ref = MU_L + SD_L * rng.standard_normal(n_ref)
        c = rho * SD_H / SD_L if coef == "known" else tracker.coef_for(pair_moments(f_h, f_l))
        hf[i] = f_h.mean()
        mf[i] = float(mf_objective(*(torch.as_tensor(x) for x in (f_h, f_l, f_ref)), c=c))
    return hf, mf


@pytest.mark.parametrize("coef", ["known", "ema"])
@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_mf_mean_unbiased_and_variance_matches_one_minus_rho_squared(coef: str, rho: float) -> None:
    n, n_ref, trials = 50, 5000, 3000
    hf, mf = run_trials(rho, n, n_ref, trials, coef)
    se = mf.std(ddof=1) / np.sqrt(trials)
    assert abs(mf.mean() - MU_H) < 3 * se
    # exact variance with a finite independent reference of size n_ref at c*:
    # Var = SD_H^2 (1 - rho^2) / n + c*^2 SD_L^2 / n_ref
    ratio = mf.var(ddof=1) / hf.var(ddof=1)
    predicted = 1 - rho**2 + rho**2 * n / n_ref
    assert ratio == pytest.approx(predicted, rel=0.1)
    assert ratio == pytest.approx(1 - rho**2, rel=0.1)


def test_mf_is_unbiased_even_with_a_wrong_coefficient() -> None:
    rng = np.random.default_rng(3)
    trials, n = 4000, 30
    est = np.empty(trials)
    for i in range(trials):
        f_h, f_l = draw(rng, n, 0.7)
        f_ref = MU_L + SD_L * rng.standard_normal(200)
        est[i] = float(mf_objective(*(torch.as_tensor(x) for x in (f_h, f_l, f_ref)), c=3.0))
    assert abs(est.mean() - MU_H) < 3 * est.std(ddof=1) / np.sqrt(trials)


def test_biased_reference_shows_up_as_bias() -> None:
    """A reference whose mean differs from the paired LF mean biases the estimate by c * diff."""
    rng = np.random.default_rng(4)
    trials, n, c, shift = 2000, 40, 0.5, 1.0
    est = np.empty(trials)
    for i in range(trials):
        f_h, f_l = draw(rng, n, 0.8)
        f_ref = MU_L + shift + SD_L * rng.standard_normal(400)
        est[i] = float(mf_objective(*(torch.as_tensor(x) for x in (f_h, f_l, f_ref)), c=c))
    se = est.std(ddof=1) / np.sqrt(trials)
    assert abs(est.mean() - MU_H) > 10 * se
    assert est.mean() - MU_H == pytest.approx(c * shift, abs=4 * se)


def test_pair_moments_recover_population_values() -> None:
    f_h, f_l = draw(np.random.default_rng(5), 200_000, 0.6)
    m = pair_moments(f_h, f_l)
    assert m.rho == pytest.approx(0.6, abs=0.01)
    assert m.c_opt == pytest.approx(0.6 * SD_H / SD_L, abs=0.01)
    with pytest.raises(ValueError, match="must align"):
        pair_moments(f_h[:3], f_l[:4])


def test_coef_ema_rules() -> None:
    tracker = CoefEMA(ema=0.5, min_pairs=20)
    rng = np.random.default_rng(6)
    # too few pairs: c = 0, nothing learned
    assert tracker.coef_for(pair_moments(*draw(rng, 10, 0.9))) == 0.0
    assert not tracker.initialised
    # first usable batch: its own estimate
    m1 = pair_moments(*draw(rng, 500, 0.9))
    assert tracker.coef_for(m1) == pytest.approx(m1.c_opt)
    # later batches: the value from earlier batches, then the moments are smoothed
    m2 = pair_moments(*draw(rng, 500, 0.9))
    assert tracker.coef_for(m2) == pytest.approx(m1.c_opt)
    cov, var_l = 0.5 * (m1.cov + m2.cov), 0.5 * (m1.var_l + m2.var_l)
    assert tracker.value == pytest.approx(cov / var_l)
    assert tracker.rho == pytest.approx(0.9, abs=0.05)
    # negatively correlated batches pull c to 0 (and it stays >= 0)
    for _ in range(3):
        tracker.update(pair_moments(*draw(rng, 500, -0.9)))
    assert tracker.value == 0.0 and tracker.rho < 0
    restored = CoefEMA(ema=0.5, min_pairs=20)
    restored.load_state_dict(tracker.state_dict())
    assert restored.rho == tracker.rho
    with pytest.raises(ValueError, match="ema"):
        CoefEMA(ema=1.0)


def test_sum_form_is_unbiased_with_random_lf_counts() -> None:
    """LF episodes of random length: the sum form stays unbiased where the ratio of means is
    not (here the per-sample value is tied to the episode's length)."""
    rng = np.random.default_rng(8)
    trials, n_eps, pool, c = 4000, 2, 8, 1.0

    def episodes(n: int) -> np.ndarray:
        lengths = rng.choice([1, 9], size=n)  # short episodes carry large values
        return np.concatenate([np.full(k, rng.normal(10.0, 1.0) / k) for k in lengths])

    sums, means = np.empty(trials), np.empty(trials)
    f_h = torch.zeros(10)
    for i in range(trials):
        f_p, f_r = torch.as_tensor(episodes(n_eps)), torch.as_tensor(episodes(n_eps * pool))
        sums[i] = float(mf_objective(f_h, f_p, f_r, c, ref_per_paired=pool))
        means[i] = float(mf_objective(f_h, f_p, f_r, c))
    assert abs(sums.mean()) < 3 * sums.std(ddof=1) / np.sqrt(trials)
    assert abs(means.mean()) > 10 * means.std(ddof=1) / np.sqrt(trials)


def test_mf_objective_requires_lf_samples_when_c_nonzero() -> None:
    f = torch.ones(5)
    assert float(mf_objective(f, torch.zeros(0), torch.zeros(0), c=0.0)) == 1.0
    with pytest.raises(ValueError, match="paired and reference"):
        mf_objective(f, torch.zeros(0), torch.zeros(0), c=0.5)
    with pytest.raises(ValueError, match="ref_per_paired"):
        mf_objective(f, f, f, c=0.5, ref_per_paired=0.0)


def test_projected_sample_grads_match_autograd() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x, w = torch.randn(6, 3), torch.randn(6)

    def per_sample(module: torch.nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * module(x).squeeze(-1)

    dirs = random_directions(net, 2, torch.Generator().manual_seed(1))
    proj = projected_sample_grads(net, per_sample, (x, w), dirs)
    assert proj.shape == (2, 6)
    for i in range(6):
        net.zero_grad()
        per_sample(net, x[i : i + 1], w[i : i + 1]).sum().backward()
        for d, v in enumerate(dirs):
            exact = sum(float((p.grad * v[k]).sum()) for k, p in net.named_parameters())
            assert proj[d, i] == pytest.approx(exact, rel=1e-4, abs=1e-5)


def test_align_pairs_and_projected_variance_ratio() -> None:
    rng = np.random.default_rng(7)
    n, m, rho = 20_000, 4, 0.8
    z = rng.standard_normal((2, n))
    p_h = z[0][None]
    p_l = (rho * z[0] + np.sqrt(1 - rho**2) * z[1])[None]
    partner = np.arange(n)
    # grouped reference: m independent draws per pair with the paired marginal
    p_ref = rng.standard_normal((1, n * m))
    x_h, x_l = align_pairs(p_h, p_l, partner, p_ref, np.repeat(np.arange(n), m))
    moments = projected_moments(x_h, x_l)
    # Var(h - c (l - mean_m r)) = 1 - 2 c rho + c^2 (1 + 1/m), minimised at rho m / (m + 1)
    assert projected_variance_ratio(moments, c=rho) == pytest.approx(1 - rho**2 + rho**2 / m,
                                                                     rel=0.05)
    assert moments.c_opt == pytest.approx(rho * m / (m + 1), rel=0.05)
    pool = rng.standard_normal((1, 100 * n))
    x_h, x_l = align_pairs(p_h, p_l, partner, pool, np.full(100 * n, -1))
    pooled = projected_moments(x_h, x_l, pool=pool)
    assert projected_variance_ratio(pooled, c=rho) == pytest.approx(1 - rho**2, rel=0.05)
    assert pooled.c_opt == pytest.approx(rho, rel=0.05)
    # a small pool adds its mean's variance: c^2 Var(pool) n / m, so a smaller optimal c
    small = rng.standard_normal((1, n))
    x_h, x_l = align_pairs(p_h, p_l, partner, small, np.full(n, -1))
    small_pool = projected_moments(x_h, x_l, pool=small)
    assert small_pool.c_opt == pytest.approx(rho / 2, rel=0.05)
    assert projected_variance_ratio(small_pool, c=rho) == pytest.approx(1, abs=0.03)
    # unpaired LF samples (partner -1) are left out of the pairs
    half = np.where(partner % 2 == 0, partner, -1)
    x_h, x_l = align_pairs(p_h, p_l, half, pool, np.full(100 * n, -1))
    assert x_h.shape == (1, n // 2) and np.array_equal(x_h, p_h[:, ::2])
