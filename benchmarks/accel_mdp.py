"""Iterations to near-optimality of accelerated update rules on random tabular MDPs.

Exact softmax policy gradients (no sampling noise) on `--n-mdps` random MDPs: for every
base step size in `--lrs` (the same for all rules and all MDPs; nothing is tuned per MDP),
every rule runs from the uniform policy until V*(rho) - V(rho) < tol, capped at
`--max-iters` steps. Reported per rule: median [min, max] steps over the MDPs and the
number of MDPs that hit the cap (counted as "> cap"; a median above the cap prints as
">cap"). Extragradient evaluates the gradient twice per step (column grads/step);
restarts = Nesterov restarts summed over the MDPs (a run stops at the last tolerance).

    python benchmarks/accel_mdp.py --json accel_mdp.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from typing import Any

import torch

from mfpg_robot.accel import make_accelerator
from mfpg_robot.tabular_mdp import iterations_to_gap, random_mdp

# (label, rule, cfg as a function of the base lr, gradient evaluations per step)
RULES: list[tuple[str, str, Any, int]] = [
    ("plain PG", "none", lambda lr: {}, 1),
    ("optimistic (lambda=1)", "optimistic", lambda lr: {"optimism": 1.0}, 1),
    ("extragradient", "extragradient", lambda lr: {}, 2),
    ("nesterov + restart", "nesterov", lambda lr: {}, 1),
    ("meta (eta in [0.1, 10] lr)", "meta", lambda lr: {}, 1),
    ("meta (eta in [0.1, 1000] lr)", "meta", lambda lr: {"eta_max": 1000.0 * lr}, 1),
]


def summarise(its: list[int | None], cap: int) -> dict[str, Any]:
    """Median / min / max over MDPs; cap hits count as +inf (reported as None)."""
    vals = sorted(math.inf if it is None else it for it in its)

    def finite(x: float) -> float | None:
        return None if math.isinf(x) else x

    return {
        "median": finite(statistics.median(vals)),
        "min": finite(vals[0]),
        "max": finite(vals[-1]),
        "cap_hits": sum(it is None for it in its),
    }


def fmt(summary: dict[str, Any], cap: int) -> str:
    def num(x: float | None) -> str:
        return f">{cap}" if x is None else f"{x:g}"

    hits = f" cap {summary['cap_hits']}" if summary["cap_hits"] else ""
    return f"{num(summary['median'])} [{num(summary['min'])}, {num(summary['max'])}]{hits}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    mdps = [
        random_mdp(args.states, args.actions, args.gamma, seed=args.seed + i)
        for i in range(args.n_mdps)
    ]
    results = []
    for lr in args.lrs:
        for label, name, make_cfg, grads_per_step in RULES:
            cfg = make_cfg(lr)
            start = time.perf_counter()
            per_tol: dict[float, list[int | None]] = {tol: [] for tol in args.tols}
            final_stats = []
            for mdp in mdps:
                theta = torch.zeros(
                    mdp.n_states, mdp.n_actions, dtype=torch.float64, requires_grad=True
                )
                acc = make_accelerator(name, [theta], torch.optim.SGD([theta], lr=lr), **cfg)
                hits = iterations_to_gap(mdp, theta, acc.step, args.tols, args.max_iters)
                for tol in args.tols:
                    per_tol[tol].append(hits[tol])
                final_stats.append(acc.stats())
            results.append(
                {
                    "lr": lr,
                    "rule": label,
                    "name": name,
                    "cfg": cfg,
                    "grads_per_step": grads_per_step,
                    "iterations": {str(t): v for t, v in per_tol.items()},
                    "summary": {str(t): summarise(v, args.max_iters) for t, v in per_tol.items()},
                    "final_stats": final_stats,
                    "restarts": sum(int(s["restarts"]) for s in final_stats),
                    "seconds": time.perf_counter() - start,
                }
            )
            print_row(results[-1], args)
    return {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "results": results,
    }


def print_header(args: argparse.Namespace) -> None:
    tols = "".join(f" | {'tol ' + format(t, 'g'):<31}" for t in args.tols)
    print(f"{'lr':>6} | {'rule':<28} | grads/step{tols} | restarts | seconds")


def print_row(row: dict[str, Any], args: argparse.Namespace) -> None:
    cells = "".join(f" | {fmt(row['summary'][str(t)], args.max_iters):<31}" for t in args.tols)
    print(
        f"{row['lr']:>6g} | {row['rule']:<28} | {row['grads_per_step']:>10}{cells}"
        f" | {row['restarts']:>8} | {row['seconds']:.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-mdps", type=int, default=10)
    parser.add_argument("--states", type=int, default=10)
    parser.add_argument("--actions", type=int, default=4)
    parser.add_argument("--gamma", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0, help="MDP i uses seed + i")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-2, 1e-4])
    parser.add_argument("--max-iters", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny ops: 1)")
    parser.add_argument("--json", type=str, default=None, help="write results to this path")
    args = parser.parse_args()
    if args.n_mdps < 1 or args.max_iters < 1:
        parser.error("--n-mdps and --max-iters must be >= 1")
    if any(lr <= 0 for lr in args.lrs) or any(t <= 0 for t in args.tols):
        parser.error("--lrs and --tols must be positive")
    torch.set_num_threads(args.threads)
    print(
        f"{args.n_mdps} random MDPs {args.states}x{args.actions}, gamma {args.gamma}, exact "
        f"gradients, SGD, uniform start; steps to V*-V < tol: median [min, max] over MDPs, "
        f"cap {args.max_iters}"
    )
    print_header(args)
    out = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
