"""Variance and MSE of the MF policy gradient against HF-only, per pairing mode.

At a fixed random-init policy on the Furuta pendulum (HF = twin, LF = reduced by default):
a reference gradient from a large HF sample, then `--trials` batches of `--episodes` HF
episodes each; per batch the HF-only REINFORCE gradient and, per LF variant, the MF gradient
with c from the EMA over earlier batches (what the algorithms do: c never sees its own
batch), from gradient projections (EMA), and the in-hindsight best single c (a bound).
Prints, per variant, variance and MSE ratios to HF-only, rho of the scalar surrogates,
1 - rho^2 and LF steps per HF step.

    .venv/bin/python benchmarks/estimator_variance.py                 # default sweep
    .venv/bin/python benchmarks/estimator_variance.py --adv critic --horizon 400 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import sim  # noqa: F401  (registers the envs)
from mfpg_robot.estimators import CoefEMA
from mfpg_robot.pairing import EpisodePairing, SyncedPairing
from mfpg_robot.pg_variance import (
    TrialEstimate,
    fit_value_function,
    hf_advantages,
    hf_gradient,
    mf_trial,
    oracle_coef,
    simulate_hf_buffer,
    vector_moments,
    zero_value,
)
from mfpg_robot.policy import GaussianPolicy
from sim.batched import BatchedCollector

ENV = "mfpg/FurutaSwingup-v0"
#: c rules compared, each from moments smoothed over earlier batches: per-sample scalar
#: surrogates (the paper's), per-sample gradient projections, block sums of the scalar
#: surrogates, whole batch gradients (<g_hf, delta> / |delta|^2); and the in-hindsight best c.
C_RULES = ("ema_f", "ema_grad", "ema_block", "ema_vec", "oracle")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hf", default="twin", help="HF fidelity")
    p.add_argument("--lf", default="reduced", help="LF fidelity")
    p.add_argument("--horizon", type=int, default=200, help="episode length (steps, 250 Hz)")
    p.add_argument("--episodes", type=int, default=4, help="HF episodes per batch")
    p.add_argument("--trials", type=int, default=30, help="batches")
    p.add_argument("--ref-episodes", type=int, default=2000, help="HF episodes of the reference")
    p.add_argument("--adv", choices=["mc", "critic"], default="critic",
                   help="mc: discounted returns, no baseline; critic: fitted HF/LF critics "
                        "(HF: MC return minus V_H; LF: bootstrapped with V_L)")
    p.add_argument("--lf-value", choices=["lf", "hf"], default="lf",
                   help="critic of the LF advantages: fitted on LF data, or the HF one")
    p.add_argument("--gae-lambda", type=float, default=1.0, help="lambda of the advantages")
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--synced", default="10x16,20x16,40x8",
                   help="synced variants kxM, comma-separated ('' for none)")
    p.add_argument("--pool", type=int, default=16, help="episode pairing: pool per paired episode")
    p.add_argument("--no-episode", action="store_true", help="skip episode pairing")
    p.add_argument("--ema", type=float, default=0.9, help="EMA of c across batches")
    p.add_argument("--block", type=int, default=25,
                   help="rows per block for the block-sum moments of c")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="rollout threads")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p.parse_args()


def summarise(trials: list[TrialEstimate], g_ref: np.ndarray, ema: float) -> dict[str, float]:
    """Variance/MSE ratios to HF-only for the c rules, plus pair statistics."""
    g_hf = np.stack([t.g_hf for t in trials])
    mse_hf = float(np.mean(np.sum((g_hf - g_ref) ** 2, axis=1)))
    var_hf = float(np.sum(np.var(g_hf, axis=0, ddof=1)))
    se_hf = np.std(g_hf, axis=0, ddof=1) / np.sqrt(len(trials))

    def ratios(cs: list[float]) -> tuple[float, float, float]:
        g = np.stack([t.g_mf(c) for t, c in zip(trials, cs, strict=True)])
        mse = float(np.mean(np.sum((g - g_ref) ** 2, axis=1)))
        bias = np.mean(g, axis=0) - g_ref
        se = np.std(g, axis=0, ddof=1) / np.sqrt(len(trials))
        return (mse / mse_hf, float(np.sum(np.var(g, axis=0, ddof=1))) / var_hf,
                float(np.mean(np.abs(bias) / np.maximum(se, 1e-30))))

    def ema_coefs(key: str, min_pairs: int = 20) -> list[float]:
        tracker = CoefEMA(ema=ema, min_pairs=min_pairs)
        return [tracker.coef_for(getattr(t, key)) for t in trials]

    c_f, c_g = ema_coefs("moments"), ema_coefs("grad_moments")
    c_b = ema_coefs("block_moments", min_pairs=2)
    tracker = CoefEMA(ema=ema, min_pairs=2)  # moments of whole gradient vectors
    c_v = [tracker.coef_for(vector_moments(t)) for t in trials]
    c_o = oracle_coef(trials, g_ref)
    out: dict[str, float] = {
        "mean_abs_z_hf": float(np.mean(np.abs(g_hf.mean(0) - g_ref) / np.maximum(se_hf, 1e-30)))
    }
    for name, cs in zip(C_RULES, (c_f, c_g, c_b, c_v, [c_o] * len(trials)), strict=True):
        mse, var, z = ratios(cs)
        out |= {f"mse_ratio_{name}": mse, f"var_ratio_{name}": var, f"c_{name}": float(np.mean(cs)),
                f"mean_abs_z_{name}": z}
    rho = float(np.mean([t.moments.rho for t in trials]))
    out |= {"rho_f": rho, "pred_1_minus_rho2": 1 - rho**2,
            "rho_grad": float(np.mean([t.grad_moments.rho for t in trials]))}
    return out


def combined(
    trials_a: list[TrialEstimate], trials_b: list[TrialEstimate], g_ref: np.ndarray, ema: float
) -> dict[str, float]:
    """Both corrections at once, g_hf - c1 delta_a - c2 delta_b, on the same HF batches.

    c solves E[delta delta^T] c = E[delta g_hf] (2x2, whole-gradient moments smoothed over
    earlier batches; the first batch uses its own); also the in-hindsight best pair.
    """
    g_hf = np.stack([t.g_hf for t in trials_a])
    deltas = np.stack([[a.delta, b.delta] for a, b in zip(trials_a, trials_b, strict=True)])
    mse_hf = float(np.mean(np.sum((g_hf - g_ref) ** 2, axis=1)))
    gram = np.einsum("tid,tjd->tij", deltas, deltas)
    cross = np.einsum("tid,td->ti", deltas, g_hf)
    a_ema, b_ema, cs = None, None, []
    for t in range(len(trials_a)):
        a_use, b_use = (gram[t], cross[t]) if a_ema is None else (a_ema, b_ema)
        cs.append(np.linalg.lstsq(a_use, b_use, rcond=None)[0])
        a_ema = gram[t] if a_ema is None else ema * a_ema + (1 - ema) * gram[t]
        b_ema = cross[t] if b_ema is None else ema * b_ema + (1 - ema) * cross[t]
    g = g_hf - np.einsum("ti,tid->td", np.array(cs), deltas)
    c_o = np.linalg.lstsq(gram.sum(0), np.einsum("tid,td->i", deltas, g_hf - g_ref), rcond=None)[0]
    g_o = g_hf - np.einsum("i,tid->td", c_o, deltas)
    return {"mse_ratio_ema_vec": float(np.mean(np.sum((g - g_ref) ** 2, axis=1))) / mse_hf,
            "mse_ratio_oracle": float(np.mean(np.sum((g_o - g_ref) ** 2, axis=1))) / mse_hf,
            "c_oracle": c_o.tolist()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    policy = GaussianPolicy(6, 1)
    hfc = BatchedCollector(ENV, fidelity=args.hf, n_envs=4096, nthread=args.threads)
    lfc = BatchedCollector(ENV, fidelity=args.lf, n_envs=8192, nthread=args.threads)
    t0 = time.perf_counter()
    hf_v, lf_v = zero_value, zero_value
    if args.adv == "critic":
        hf_v = fit_value_function(policy, simulate_hf_buffer(hfc, policy, 100, args.horizon, rng),
                                  args.gamma, seed=args.seed)
        lf_v = fit_value_function(policy, simulate_hf_buffer(lfc, policy, 100, args.horizon, rng),
                                  args.gamma, seed=args.seed + 1)
        if args.lf_value == "hf":
            lf_v = hf_v
    ref = simulate_hf_buffer(hfc, policy, args.ref_episodes, args.horizon, rng,
                             with_states=False)
    g_ref = hf_gradient(policy, ref, hf_advantages(ref, hf_v, args.gamma, args.gae_lambda))
    print(f"reference: {len(ref)} HF steps, |g_ref| = {np.linalg.norm(g_ref):.4g} "
          f"({time.perf_counter() - t0:.1f} s)")

    variants: dict[str, object] = {}
    for spec in filter(None, args.synced.split(",")):
        k, m = (int(x) for x in spec.split("x"))
        variants[f"synced k={k} M={m}"] = SyncedPairing(lfc, k, m, args.gamma, args.gae_lambda)
    if not args.no_episode:
        for same in (False, True):
            variants[f"episode pool={args.pool}" + (" same-start" if same else "")] = (
                EpisodePairing(lfc, args.pool, args.horizon, args.gamma, args.gae_lambda,
                               whole_episodes=True, same_starts=same))
    batches = [simulate_hf_buffer(hfc, policy, args.episodes, args.horizon, rng)
               for _ in range(args.trials)]
    hf_steps = sum(len(b) for b in batches)
    results: dict[str, dict] = {}
    all_trials: dict[str, list[TrialEstimate]] = {}
    for name, pairing in variants.items():
        t1 = time.perf_counter()
        trials: list[TrialEstimate] = []
        lf_steps = 0
        gen = torch.Generator().manual_seed(args.seed)
        for buf in batches:
            lf = pairing.collect(buf, policy, lf_v, lambda r: r, rng)
            lf_steps += lf.lf_steps
            adv = hf_advantages(buf, hf_v, args.gamma, args.gae_lambda)
            trials.append(mf_trial(policy, buf, lf, adv, n_dirs=4, generator=gen,
                                   block=args.block))
        res = summarise(trials, g_ref, args.ema)
        res |= {"lf_steps_per_hf_step": lf_steps / hf_steps, "time_s": time.perf_counter() - t1}
        results[name] = res
        all_trials[name] = trials
        mse = "  ".join(f"{c} {res['mse_ratio_' + c]:.3f}" for c in C_RULES)
        coefs = "/".join(f"{res['c_' + c]:.3g}" for c in C_RULES)
        print(f"{name:22s} MSE ratio [{mse}] | var ratio (ema_f) {res['var_ratio_ema_f']:.3f}"
              f" | rho_f {res['rho_f']:.3f} (1-rho^2 {res['pred_1_minus_rho2']:.3f}) "
              f"rho_grad {res['rho_grad']:.3f} | c {coefs} | mean |bias|/se "
              f"{res['mean_abs_z_ema_f']:.2f} (HF-only {res['mean_abs_z_hf']:.2f}) | "
              f"LF/HF {res['lf_steps_per_hf_step']:.0f} | {res['time_s']:.0f} s", flush=True)
    synced = [n for n in all_trials if n.startswith("synced")]
    episode = [n for n in all_trials if n.startswith("episode")]
    for s_name in synced[:1]:
        for e_name in episode[:1]:
            res = combined(all_trials[e_name], all_trials[s_name], g_ref, args.ema)
            results[f"{e_name} + {s_name}"] = res
            print(f"{e_name} + {s_name}: MSE ratio [ema_vec {res['mse_ratio_ema_vec']:.3f}  "
                  f"oracle {res['mse_ratio_oracle']:.3f}]", flush=True)
    if args.json:
        payload = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "note": "shared with other jobs; timings are noisy"},
            "hf_steps_per_batch": hf_steps / args.trials,
            "g_ref_norm": float(np.linalg.norm(g_ref)),
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    hfc.close()
    lfc.close()


if __name__ == "__main__":
    main()
