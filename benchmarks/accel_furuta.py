"""Accelerated update rules in PPO and MF-PPO on the Furuta swing-up, at a fixed HF budget.

HF = the twin (`mfpg/FurutaSwingup-v0`, fidelity twin), LF = the reduced-order model (synced
pairing, MF-PPO only). Every (algorithm, rule, seed) trains with CleanRL's PPO settings
(2048 HF steps per iteration, 10 epochs x 32 minibatches, lr 3e-4 annealed) and the rule's
trainer defaults (`mfpg_robot.algos.base.trainer_accel_options`). Per run:

- final HF return: the deterministic policy (mean action) on the twin, `--eval-episodes`
  episodes from fixed reset seeds (not counted in the HF budget);
- HF samples to threshold: the HF steps after which the mean return of the training episodes
  finished in the last two iterations first reaches `--threshold` (stochastic policy);
  runs that never get there count as "> budget".

Cells are median [min, max] over seeds. The table, the exact command and what the numbers
say are in docs/accel.md ("In the trainers"). Results are written after every run, so a long
run can be polled:

    python benchmarks/accel_furuta.py --json accel_furuta.json            # full grid
    python benchmarks/accel_furuta.py --algos ppo --rules none nesterov --seeds 0 1 2 3 4 \
        --hf-steps 61440 --json big.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import sim  # noqa: F401  (registers the mfpg/* envs)
from mfpg_robot.accel import ACCELERATORS
from mfpg_robot.config import validate_train_config
from mfpg_robot.policy import GaussianPolicy
from mfpg_robot.train import train

ENV = "mfpg/FurutaSwingup-v0"
ALGOS = ("ppo", "mfppo")
EVAL_SEED = 10_000
SMOOTH_ITERS = 2  # iterations whose finished episodes form the threshold test's return


def evaluate(policy: GaussianPolicy, episodes: int) -> float:
    """Mean return of the mean-action policy on the HF twin over seeded episodes."""
    env = gym.make(ENV, fidelity="twin")
    total = 0.0
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=EVAL_SEED + i)
            done = False
            while not done:
                with torch.no_grad():
                    action = policy.mean(torch.as_tensor(obs, dtype=torch.float32)[None])[0]
                action = action.numpy()
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
    finally:
        env.close()
    return total / episodes


def steps_to_threshold(curve: list[tuple[int, int, float]], threshold: float) -> int | None:
    """HF steps after which the episodes of the last SMOOTH_ITERS iterations average at least
    `threshold`; `curve` rows are (HF steps, episodes finished, their mean return)."""
    for i, (steps, _, _) in enumerate(curve):
        window = [(n, ret) for _, n, ret in curve[max(0, i - SMOOTH_ITERS + 1) : i + 1] if n]
        n_eps = sum(n for n, _ in window)
        if n_eps and sum(n * ret for n, ret in window) / n_eps >= threshold:
            return int(steps)
    return None


def run_config(args: argparse.Namespace, algo: str, rule: str, seed: int, root: Path) -> Any:
    return validate_train_config({
        "seed": seed,
        "algo": {"name": algo, "accel": rule},
        "hf": {"env": ENV, "fidelity": "twin", "steps_per_iter": args.steps_per_iter,
               "total_steps": args.hf_steps},
        "lf": {"fidelity": "reduced", "pairing": "synced", "k": args.lf_k, "M": args.lf_M,
               "nthread": args.nthread},
        "run": {"dir": str(root / f"{algo}-{rule}-s{seed}"), "progress": False,
                "checkpoint_every": 0},
    }, "benchmark")


def run_one(args: argparse.Namespace, algo: str, rule: str, seed: int, root: Path) -> dict:
    """Train one (algorithm, rule, seed) and measure it."""
    t0 = time.perf_counter()
    result = train(run_config(args, algo, rule, seed, root))
    wall = time.perf_counter() - t0
    hist = result.history
    last = hist[-1]
    return {
        "algo": algo, "rule": rule, "seed": seed, "wall_s": wall,
        "final_return": evaluate(result.policy, args.eval_episodes),
        "train_return_last": last["return_mean"],
        "curve": [(r["hf_steps"], r["episodes"], r["return_mean"]) for r in hist],
        "eta_ratio": float(np.mean([r["accel/eta_mean"] / r["lr"] for r in hist])),
        "eta_last": last["accel/eta"], "optimism_last": last["accel/optimism"],
        "momentum_last": last["accel/momentum"], "restarts": last["accel/restarts"],
        "grad_evals_per_step": float(sum(r["accel/grad_evals"] for r in hist)
                                     / sum(r["grad_steps"] for r in hist)),
        "rho_mean": float(np.nanmean([r.get("mf/rho", math.nan) for r in hist]))
        if algo == "mfppo" else None,
    }


def spread(values: list[float]) -> str:
    """median [min, max] of finite values."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "-"
    return f"{np.median(v):.1f} [{min(v):.1f}, {max(v):.1f}]"


def threshold_cell(values: list[int | None], budget: int) -> str:
    """median [min, max] with unreached runs as > budget."""
    big = budget + 1
    v = [big if x is None else x for x in values]
    fmt = lambda x: f">{budget}" if x == big else f"{x:.0f}"  # noqa: E731
    missed = sum(x is None for x in values)
    cell = f"{fmt(np.median(v))} [{fmt(min(v))}, {fmt(max(v))}]"
    return cell + (f", {len(v) - missed}/{len(v)} reached" if missed else "")


def table(runs: list[dict], budget: int, threshold: float) -> list[str]:
    """Markdown rows, one per (algorithm, rule)."""
    lines = ["| algo | rule | final HF return (eval) | HF steps to threshold | restarts "
             "| mean eta / lr | grad evals / step | wall s / run |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    keys = dict.fromkeys((r["algo"], r["rule"]) for r in runs)
    for algo, rule in keys:
        rs = [r for r in runs if r["algo"] == algo and r["rule"] == rule]
        reached = [steps_to_threshold(r["curve"], threshold) for r in rs]
        lines.append(
            f"| {algo} | {rule} | {spread([r['final_return'] for r in rs])} "
            f"| {threshold_cell(reached, budget)} "
            f"| {np.median([r['restarts'] for r in rs]):.0f} "
            f"| {np.median([r['eta_ratio'] for r in rs]):.2f} "
            f"| {np.median([r['grad_evals_per_step'] for r in rs]):.1f} "
            f"| {np.median([r['wall_s'] for r in rs]):.0f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    p.add_argument("--rules", nargs="+", default=list(ACCELERATORS), choices=ACCELERATORS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--hf-steps", type=int, default=20480, help="HF step budget per run")
    p.add_argument("--steps-per-iter", type=int, default=2048, help="HF steps per iteration")
    p.add_argument("--threshold", type=float, default=165.0,
                   help="training return (last 2 iterations' episodes) to reach")
    p.add_argument("--eval-episodes", type=int, default=3, help="deterministic twin episodes")
    p.add_argument("--lf-M", type=int, default=4, help="MF-PPO: fresh LF segments per HF state")
    p.add_argument("--lf-k", type=int, default=5, help="MF-PPO: LF segment length")
    p.add_argument("--nthread", type=int, default=1, help="threads of the LF stepper")
    p.add_argument("--json", type=Path, help="write the results here (after every run)")
    p.add_argument("--from-json", type=Path, nargs="+",
                   help="print the table of saved results (e.g. at another --threshold, or "
                        "several files of one grid run in parallel); no training")
    args = p.parse_args(argv)
    if args.from_json:
        saved = [json.loads(path.read_text()) for path in args.from_json]
        print_table([r for s in saved for r in s["runs"]], saved[0]["meta"], args.threshold)
        return 0
    if args.hf_steps < args.steps_per_iter:
        p.error("--hf-steps must be >= --steps-per-iter (one iteration)")
    torch.set_num_threads(1)

    meta = {"command": "python benchmarks/accel_furuta.py " + " ".join(argv or []),
            "machine": platform.platform(), "cpus": torch.get_num_threads(),
            "torch": torch.__version__, **{k: v for k, v in vars(args).items() if k != "json"}}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="accel_furuta_") as tmp:
        for algo in args.algos:
            for rule in args.rules:
                for seed in args.seeds:
                    r = run_one(args, algo, rule, seed, Path(tmp))
                    runs.append(r)
                    reached = steps_to_threshold(r["curve"], args.threshold)
                    print(f"{algo:6s} {rule:13s} seed {seed}: eval {r['final_return']:7.1f}  "
                          f"threshold at {reached if reached is not None else '-'}  "
                          f"restarts {r['restarts']:.0f}  eta/lr {r['eta_ratio']:.2f}  "
                          f"{r['wall_s']:.0f} s", flush=True)
                    if args.json:
                        args.json.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))

    print_table(runs, meta, args.threshold)
    return 0


def print_table(runs: list[dict], meta: dict, threshold: float) -> None:
    print(f"\nFuruta swing-up, HF budget {meta['hf_steps']} twin steps, seeds {meta['seeds']}, "
          f"threshold {threshold:g}; MF-PPO LF: reduced, synced, M={meta['lf_M']}, "
          f"k={meta['lf_k']}")
    print("\n".join(table(runs, meta["hf_steps"], threshold)))


if __name__ == "__main__":
    raise SystemExit(main())
