"""The multi-fidelity control variate (MFPG, arXiv 2503.05696).

Every policy-gradient algorithm here maximises the mean of a per-sample surrogate `f`
(`A * log pi(a|s)` for REINFORCE, the clipped ratio term for PPO). With high-fidelity (HF)
samples `f_H`, low-fidelity (LF) samples `f_P` paired with HF samples (same start state, same
action noise), and LF reference samples `f_R` drawn independently of the HF noise, the
multi-fidelity objective is

    L = mean(f_H) - c * (mean(f_P) - mean(f_R))

(or its sum form, see `mf_objective`).
The correction has zero expectation whenever paired and reference LF samples have the same
distribution (the pairing's job), so `L` and its gradient are unbiased for any `c` that does
not depend on the current batch. Its variance is smallest at `c* = Cov(f_H, f_P) / Var(f_P)`,
where (with an exact reference mean) it falls to `(1 - rho^2)` times the HF-only variance.

`c` is estimated from pair moments smoothed over iterations (`CoefEMA`). The value
used for a batch comes from earlier batches only, so it is a constant given the past and the
estimate stays exactly unbiased; only the very first batch, with no history, uses its own
estimate (a bias of order 1/N, once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

ArrayLike = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class PairMoments:
    """Sample moments of aligned HF/LF pairs."""

    n: int
    cov: float
    var_h: float
    var_l: float

    @property
    def rho(self) -> float:
        """Pearson correlation (0 when either side has no variance)."""
        den = np.sqrt(self.var_h * self.var_l)
        return float(self.cov / den) if den > 0 else 0.0

    @property
    def c_opt(self) -> float:
        """Variance-minimising coefficient Cov / Var(f_L) (0 when f_L is constant)."""
        return float(self.cov / self.var_l) if self.var_l > 0 else 0.0


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def pair_moments(f_h: ArrayLike, f_l: ArrayLike) -> PairMoments:
    """Covariance and variances of aligned samples `f_h[i]`, `f_l[i]` (unbiased, ddof=1)."""
    h, low = _as_numpy(f_h).ravel(), _as_numpy(f_l).ravel()
    if h.shape != low.shape:
        raise ValueError(f"paired samples must align, got {h.shape[0]} HF and {low.shape[0]} LF")
    n = h.shape[0]
    if n < 2:
        return PairMoments(n=n, cov=0.0, var_h=0.0, var_l=0.0)
    cov = np.cov(h, low, ddof=1)
    return PairMoments(n=n, cov=float(cov[0, 1]), var_h=float(cov[0, 0]), var_l=float(cov[1, 1]))


class CoefEMA:
    """Control-variate coefficient from exponentially smoothed pair moments.

    `update(m)` folds a batch's moments (Cov, Var_H, Var_L) into their EMAs; batches with
    fewer than `min_pairs` pairs are ignored. `value = Cov_ema / Var_L_ema`, or 0 when the
    smoothed correlation is not positive (a negatively correlated LF side is not trusted).
    Smoothing the moments rather than the ratio keeps one noisy batch (a small Var_L) from
    throwing c far off.
    """

    def __init__(self, ema: float = 0.95, min_pairs: int = 20) -> None:
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        if min_pairs < 2:
            raise ValueError(f"min_pairs must be >= 2 (a covariance needs 2), got {min_pairs}")
        self.ema = ema
        self.min_pairs = min_pairs
        self._m: np.ndarray | None = None  # smoothed (cov, var_h, var_l)

    @staticmethod
    def _coef(cov: float, var_l: float) -> float:
        return cov / var_l if cov > 0 and var_l > 0 else 0.0

    @property
    def value(self) -> float:
        return 0.0 if self._m is None else self._coef(self._m[0], self._m[2])

    @property
    def rho(self) -> float:
        """Correlation of the smoothed moments (0 before the first batch)."""
        if self._m is None:
            return 0.0
        return PairMoments(self.min_pairs, *self._m).rho

    @property
    def initialised(self) -> bool:
        return self._m is not None

    def batch_coef(self, m: PairMoments) -> float | None:
        """This batch's own estimate, or None when it has too few pairs."""
        return None if m.n < self.min_pairs else self._coef(m.cov, m.var_l)

    def update(self, m: PairMoments) -> float:
        """Fold in a batch; return the new smoothed value."""
        if m.n >= self.min_pairs:
            new = np.array([m.cov, m.var_h, m.var_l])
            self._m = new if self._m is None else self.ema * self._m + (1 - self.ema) * new
        return self.value

    def coef_for(self, m: PairMoments) -> float:
        """The `c` to apply to the batch with moments `m`, then fold the batch in.

        Earlier batches decide `c` (unbiased); without history the batch's own estimate is
        used; with too few pairs, 0.
        """
        if m.n < self.min_pairs:
            return 0.0
        c = self.value if self.initialised else (self.batch_coef(m) or 0.0)
        self.update(m)
        return c

    def state_dict(self) -> dict[str, list[float] | None]:
        return {"moments": None if self._m is None else self._m.tolist()}

    def load_state_dict(self, state: dict[str, list[float] | None]) -> None:
        m = state.get("moments")
        self._m = None if m is None else np.asarray(m, dtype=np.float64)


def mf_objective(
    f_h: torch.Tensor, f_paired: torch.Tensor, f_ref: torch.Tensor, c: float,
    ref_per_paired: float | None = None,
) -> torch.Tensor:
    """The MF objective (differentiable; c is a constant).

    Mean form (`ref_per_paired=None`): `mean(f_h) - c * (mean(f_paired) - mean(f_ref))`.
    Sum form: `mean(f_h) - c * (sum(f_paired) - sum(f_ref) / ref_per_paired) / len(f_h)`,
    for reference samples drawn `ref_per_paired` times as often as the paired ones by
    construction (M per HF state; a pool of R episodes per paired episode). Its correction
    has mean exactly zero even when the number of LF samples is random (LF episodes that
    terminate), where a ratio of two means is biased by O(1/n).
    """
    hf = f_h.mean()
    if c == 0.0:
        return hf
    if f_paired.numel() == 0 or f_ref.numel() == 0:
        raise ValueError(
            f"c={c} needs paired and reference LF samples, got {f_paired.numel()} paired and "
            f"{f_ref.numel()} reference; set c=0 or collect LF data"
        )
    if ref_per_paired is None:
        return hf - c * (f_paired.mean() - f_ref.mean())
    if ref_per_paired <= 0:
        raise ValueError(f"ref_per_paired must be > 0, got {ref_per_paired}")
    return hf - c * (f_paired.sum() - f_ref.sum() / ref_per_paired) / f_h.numel()


def group_means(values: ArrayLike, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean of `values[..., j]` over each group id in 0..n_groups-1 (NaN for empty groups)."""
    v = _as_numpy(values)
    flat = v.reshape(-1, v.shape[-1])
    sums = np.zeros((flat.shape[0], n_groups))
    np.add.at(sums.T, groups, flat.T)
    counts = np.bincount(groups, minlength=n_groups).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums / counts
    return out.reshape(*v.shape[:-1], n_groups)


def align_pairs(
    f_h: ArrayLike, f_p: ArrayLike, partner: np.ndarray, f_ref: ArrayLike, ref_anchor: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Aligned (HF, LF) values whose covariance sets `c`, along the last axis.

    `partner[j]`: the HF sample paired with LF sample j (-1: unpaired). `ref_anchor[j]`: the
    HF sample whose state reference sample j starts from (synced), or -1 for an independent
    pool (episode). With grouped references the LF value of a pair is `f_p - mean(f_ref of its
    state)`, the quantity the correction actually subtracts (the part of f_L explained by the
    state cancels and must not count as correlation); with a pool it is `f_p`.
    """
    h, p, r = _as_numpy(f_h), _as_numpy(f_p), _as_numpy(f_ref)
    partner = np.asarray(partner)
    ref_anchor = np.asarray(ref_anchor)
    mask = partner >= 0
    x_h = h[..., partner[mask]]
    x_l = p[..., mask]
    grouped = ref_anchor >= 0
    if grouped.any():
        if not grouped.all():
            raise ValueError("reference samples must all be grouped by HF sample or all pooled")
        x_l = x_l - group_means(r, ref_anchor, h.shape[-1])[..., partner[mask]]
    return x_h, x_l


def block_sums(x: ArrayLike, rows: np.ndarray, block: int) -> np.ndarray:
    """Sums of `x[..., j]` over blocks of `block` consecutive HF rows (`rows[j]` // block).

    Samples of one rollout are correlated over time (an advantage sums future rewards, and
    synced segments share noise windows), so the covariance that sets the variance of a batch
    mean includes cross-time terms that per-sample moments miss; moments of block sums keep
    those within a block.
    """
    v = _as_numpy(x)
    _, inv = np.unique(np.asarray(rows) // block, return_inverse=True)
    flat = v.reshape(-1, v.shape[-1])
    out = np.zeros((flat.shape[0], int(inv.max()) + 1 if inv.size else 0))
    np.add.at(out.T, inv, flat.T)
    return out.reshape(*v.shape[:-1], out.shape[-1])


def projected_moments(
    x_h: np.ndarray, x_l: np.ndarray, pool: np.ndarray | None = None
) -> PairMoments:
    """Pair moments of per-sample gradients, from their projections on random directions.

    `x_h`, `x_l`: aligned per-sample gradient projections (n_dirs, n) on random Gaussian
    directions (see `align_pairs`); `pool`: (n_dirs, m) projections of an independent
    reference pool, whose mean adds `c^2 Var(pool) / m` to the estimate's variance (folded
    into `var_l` as `Var(pool) n / m`). Since `E[(g.v)(h.v)] = g.h`, summing over directions
    estimates traces: `cov` is `tr Cov(g_H, g_L)`, the variances `tr Var`, samples treated
    as independent. `c_opt` is then the `c` that minimises the MF gradient's variance.
    """
    n = x_h.shape[-1]
    if n < 2:
        return PairMoments(n=n, cov=0.0, var_h=0.0, var_l=0.0)
    var_h = float(np.var(x_h, axis=-1, ddof=1).sum())
    var_l = float(np.var(x_l, axis=-1, ddof=1).sum())
    cov = sum(float(np.cov(a, b, ddof=1)[0, 1]) for a, b in zip(x_h, x_l, strict=True))
    if pool is not None and pool.shape[-1] > 1:
        var_l += float(np.var(pool, axis=-1, ddof=1).sum()) * n / pool.shape[-1]
    return PairMoments(n=n, cov=cov, var_h=var_h, var_l=var_l)


def projected_variance_ratio(m: PairMoments, c: float) -> float:
    """Per-sample variance of the MF gradient over HF-only's, `tr Var(MF) / tr Var(HF)`, for
    the gradient moments `m` (`projected_moments`) and coefficient `c`; nan without them."""
    if m.n < 2 or m.var_h <= 0:
        return float("nan")
    return (m.var_h - 2 * c * m.cov + c**2 * m.var_l) / m.var_h


@dataclass(frozen=True)
class MFStats:
    """Per-iteration diagnostics of the control variate (all floats, for logging)."""

    rho: float
    c: float
    c_batch: float
    var_reduction_pred: float
    var_ratio_grad: float
    c_grad: float
    n_pairs: int

    def as_dict(self, prefix: str = "mf/") -> dict[str, float]:
        return {prefix + k: float(v) for k, v in asdict(self).items()}


class _CallMethod(nn.Module):
    """Wraps `fn(module, *args)` as `forward`, so `torch.func.functional_call` can use it."""

    def __init__(self, module: nn.Module, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.fn(self.module, *args)


def projected_sample_grads(
    module: nn.Module,
    per_sample_fn: Callable[..., torch.Tensor],
    args: tuple[torch.Tensor, ...],
    directions: list[dict[str, torch.Tensor]],
) -> np.ndarray:
    """Per-sample directional derivatives `grad f_i . v` for each direction `v`.

    `per_sample_fn(module, *args)` returns the (n,) per-sample surrogates; `directions` are
    dicts of tensors shaped like `module`'s trainable parameters. One forward-mode pass per
    direction, no per-sample backward. Returns (n_dirs, n).
    """
    wrapper = _CallMethod(module, per_sample_fn)
    params = {
        "module." + k: p.detach() for k, p in module.named_parameters() if p.requires_grad
    }

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.func.functional_call(wrapper, p, args)

    out = []
    for v in directions:
        tangent = {"module." + k: t for k, t in v.items()}
        _, jv = torch.func.jvp(f, (params,), (tangent,))
        out.append(jv.detach().double().numpy())
    return np.stack(out) if out else np.zeros((0, args[0].shape[0]))


def random_directions(
    module: nn.Module, n_dirs: int, generator: torch.Generator
) -> list[dict[str, torch.Tensor]]:
    """`n_dirs` standard-normal directions in the space of `module`'s trainable parameters."""
    return [
        {
            k: torch.randn(p.shape, generator=generator, dtype=p.dtype)
            for k, p in module.named_parameters()
            if p.requires_grad
        }
        for _ in range(n_dirs)
    ]
