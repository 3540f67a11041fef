"""The default session (`make run`) in simulation, over seeds: does it swing up, every time?

For each seed, exactly the two configs `mfpg-robot run-default` uses, with the robot replaced
by the twin in-process (`hf.fidelity: twin`, the emulator's physics without the real-time
serial link, so seeds run in minutes and in parallel):
1. the LF pretraining (`configs/train/pretrain_furuta.yaml`, PPO on the reduced model);
2. the session (`configs/train/session_furuta.yaml`) warm-started from it, on the twin;
and evaluates the pretrained and the session's deterministic policies on the twin over fixed
starts (reset seeds 10_000, ...). An episode counts as swung up and balanced when the
pendulum stays within BALANCE_DEG of upright for the whole last BALANCE_S seconds.

    python benchmarks/default_session.py --seeds 0 1 2 3 4 --out runs/default-session \
        --json runs/default-session/results.json

A rerun skips the seeds whose result is in --out (one JSON per seed, written last).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import sim  # noqa: F401  (registers the mfpg/* envs)
from mfpg_robot.buffer import numpy_mean_fn
from mfpg_robot.config import load_train_config
from mfpg_robot.policy import GaussianPolicy
from mfpg_robot.train import train
from sim.robot_config import REPO_ROOT

PRETRAIN = REPO_ROOT / "configs" / "train" / "pretrain_furuta.yaml"
SESSION = REPO_ROOT / "configs" / "train" / "session_furuta.yaml"
EVAL_SEED = 10_000
BALANCE_S = 1.0  # the last second of the episode ...
BALANCE_DEG = 20.0  # ... within this many degrees of upright


def evaluate(policy: GaussianPolicy, episodes: int) -> dict[str, Any]:
    """Deterministic returns on the twin and how many episodes end balanced upright."""
    env = gym.make("mfpg/FurutaSwingup-v0", fidelity="twin")
    base = env.unwrapped
    mean_fn = numpy_mean_fn(policy)
    tail = int(round(BALANCE_S * base.robot.control_rate_hz))
    cos_limit = -math.cos(math.radians(BALANCE_DEG))
    pend = base.joint_names.index("pendulum")
    returns, balanced = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=EVAL_SEED + i)
        total, cos_alpha, done = 0.0, [], False
        while not done:
            obs, r, term, trunc, _ = env.step(np.clip(mean_fn(obs), -1.0, 1.0))
            total += float(r)
            cos_alpha.append(math.cos(base.get_state().arrays(base.joint_names)[0][pend]))
            done = term or trunc
        returns.append(total)
        balanced.append(len(cos_alpha) >= tail and max(cos_alpha[-tail:]) <= cos_limit)
    env.close()
    return {"mean_return": float(np.mean(returns)), "returns": returns,
            "balanced": int(sum(balanced)), "episodes": episodes}


def run_seed(seed: int, out: Path, episodes: int, session_overrides: list[str]) -> dict:
    t0 = time.perf_counter()
    pre = train(PRETRAIN, [f"seed={seed}", f"run.dir={out / f'pretrain-s{seed}'}",
                           "run.progress=false"])
    t_pre = time.perf_counter() - t0
    before = evaluate(pre.policy, episodes)
    t0 = time.perf_counter()
    ses = train(SESSION, [f"seed={seed}", "hf.fidelity=twin", "run.export=false",
                          f"init.checkpoint={pre.checkpoint}", "run.progress=false",
                          f"run.dir={out / f'session-s{seed}'}", *session_overrides])
    t_ses = time.perf_counter() - t0
    after = evaluate(ses.policy, episodes)
    lf = sum(row.get("lf/steps") or 0.0 for row in ses.history)
    return {"seed": seed, "before": before, "after": after, "pretrain_wall_s": t_pre,
            "session_wall_s": t_ses, "hf_samples": ses.hf_steps, "lf_samples_session": lf,
            "pretrain_lf_samples": pre.hf_steps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", type=Path, required=True, help="folder of the runs and results")
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes per policy")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a session config value; repeatable")
    p.add_argument("--json", type=Path, help="write the aggregate here")
    args = p.parse_args(argv)
    load_train_config(SESSION, args.overrides)  # a bad override fails before any training
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        done = args.out / f"s{seed}.json"
        if done.is_file():
            results.append(json.loads(done.read_text()))
            print(f"seed {seed}: already in {done}")
            continue
        r = run_seed(seed, args.out, args.episodes, args.overrides)
        done.write_text(json.dumps(r, indent=1))
        results.append(r)
        print(f"seed {seed}: LF-pretrained {r['before']['mean_return']:.1f} "
              f"({r['before']['balanced']}/{args.episodes} balanced) -> after the session "
              f"{r['after']['mean_return']:.1f} ({r['after']['balanced']}/{args.episodes}); "
              f"pretraining {r['pretrain_wall_s']:.0f} s, session {r['session_wall_s']:.0f} s",
              flush=True)
    before = [r["before"]["mean_return"] for r in results]
    after = [r["after"]["mean_return"] for r in results]
    up_before = sum(r["before"]["balanced"] == r["before"]["episodes"] for r in results)
    up_after = sum(r["after"]["balanced"] == r["after"]["episodes"] for r in results)
    print(f"before the session: median {np.median(before):.1f} [min {min(before):.1f}, max "
          f"{max(before):.1f}], swings up on {up_before}/{len(results)} seeds")
    print(f"after the session:  median {np.median(after):.1f} [min {min(after):.1f}, max "
          f"{max(after):.1f}], swings up on {up_after}/{len(results)} seeds")
    deltas = " ".join(f"{a - b:+.1f}" for a, b in zip(after, before, strict=True))
    print(f"after - before: {deltas}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": "python benchmarks/default_session.py "
                       + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
            "balance_criterion": f"last {BALANCE_S} s within {BALANCE_DEG} deg of upright",
            "seeds_swung_up_before": up_before, "seeds_swung_up_after": up_after,
            "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
