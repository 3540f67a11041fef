"""`mfpg-robot run-default`: the main job on the embedded default (what `make run` runs).

Until the dry-run training session against the emulated robot exists, this runs the most
complete end-to-end job there is and says what it did.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import sim


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run-default", help="the main job on the embedded default (make run)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("run-default: one random-policy episode per task and fidelity (simulation only)")
    rng = np.random.default_rng(args.seed)
    for env_id in sim.ENV_IDS:
        for fidelity in ("twin", "reduced", "reduced_gap"):
            env = gym.make(env_id, fidelity=fidelity)
            env.action_space.seed(args.seed)
            obs, _ = env.reset(seed=args.seed)
            total, steps, done = 0.0, 0, False
            while not done:
                action = rng.uniform(-1, 1, size=env.action_space.shape).astype(np.float32)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += reward
                steps += 1
                done = terminated or truncated
            print(f"  {env_id:26s} {fidelity:12s} steps {steps:5d}  return {total:9.2f}")
            env.close()
    return 0
