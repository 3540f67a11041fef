"""Our PPO on Gymnasium MuJoCo envs at CleanRL's hyper-parameters: return against env steps.

Reference: CleanRL `ppo_continuous_action.py` (lr 3e-4 annealed, 2048 steps x 1 env, 10 epochs x
32 minibatches, clip 0.2, GAE 0.95, gamma 0.99, obs and reward normalisation) reports ~963 on
InvertedPendulum and ~2383 on Hopper after 1M steps (v4 envs, 3 seeds). Two deliberate
differences here: time-limit truncation is bootstrapped (CleanRL treats it as termination),
and the reward normaliser's discounted return restarts at every episode end.

The return printed is the mean undiscounted return of the last 20 training episodes (the
stochastic policy, as CleanRL's `charts/episodic_return`).

    python benchmarks/ppo_reference.py --env InvertedPendulum-v5 --steps 200000 --seeds 0 1 2 \
        --json benchmarks/results/ppo_inverted_pendulum.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from mfpg_robot.config import validate_train_config
from mfpg_robot.train import train


def run_seed(env: str, steps: int, seed: int, root: Path) -> dict:
    """Train one seed; return its learning curve and timing."""
    cfg = validate_train_config({
        "seed": seed,
        "algo": {"name": "ppo"},  # CleanRL defaults
        "hf": {"env": env, "fidelity": None, "steps_per_iter": 2048, "total_steps": steps},
        "run": {"dir": str(root / f"{env}-s{seed}"), "progress": False, "checkpoint_every": 0},
    }, "benchmark")
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    curve = [(r["hf_steps"], r["return_recent"]) for r in result.history]
    return {"seed": seed, "wall_s": wall, "curve": curve,
            "final_return": curve[-1][1], "steps_per_s": curve[-1][0] / wall}


def _fmt(x: float) -> str:
    return "     nan" if not math.isfinite(x) else f"{x:8.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="InvertedPendulum-v5", help="Gymnasium id (v5 MuJoCo env)")
    p.add_argument("--steps", type=int, default=200_000, help="env steps per seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--points", type=int, default=10, help="rows of the printed curve")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if args.steps < 2048:
        p.error("--steps must be >= 2048 (one iteration)")

    with tempfile.TemporaryDirectory(prefix="ppo_reference_") as tmp:
        runs = []
        for seed in args.seeds:
            r = run_seed(args.env, args.steps, seed, Path(tmp))
            print(f"seed {seed}: final return {r['final_return']:.1f} after "
                  f"{r['curve'][-1][0]} steps, {r['wall_s']:.0f} s "
                  f"({r['steps_per_s']:.0f} steps/s)", flush=True)
            runs.append(r)

    n_iter = len(runs[0]["curve"])
    rows = sorted({max(0, round(i * n_iter / args.points) - 1) for i in range(1, args.points + 1)})
    print(f"\n{args.env}: return (mean of last 20 training episodes) vs env steps")
    print("   steps " + "".join(f"  seed {s:2d}" for s in args.seeds) + "    median")
    for i in rows:
        vals = [r["curve"][i][1] for r in runs]
        print(f"{runs[0]['curve'][i][0]:8d} " + "".join(_fmt(v) + "  " for v in vals)
              + _fmt(float(np.nanmedian(vals))))
    finals = [r["final_return"] for r in runs]
    print(f"final: median {np.median(finals):.1f}, min {min(finals):.1f}, max {max(finals):.1f}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "env": args.env, "steps": args.steps, "seeds": args.seeds,
            "hyperparameters": "CleanRL ppo_continuous_action defaults",
            "machine": f"{platform.machine()}, torch 1 thread; shared CPU, timings noisy",
            "final_return_median": float(np.median(finals)),
            "runs": runs,
        }, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
