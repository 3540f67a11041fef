"""`mfpg-robot run-default`: the main job on the embedded default (what `make run` runs).

Today that is a short MF-PPO session in simulation (`configs/train/mfppo_furuta.yaml`: HF =
the furuta twin in-process, LF = the reduced-order model, episode pairing), ending with a
checkpoint, a learning-curve plot and a summary of what the HF and LF sides contributed.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from sim.robot_config import REPO_ROOT, ConfigError

DEFAULT_CONFIG = REPO_ROOT / "configs" / "train" / "mfppo_furuta.yaml"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run-default", help="the main job on the embedded default (make run)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="train config YAML")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set hf.total_steps=8192; repeatable",
    )
    p.set_defaults(func=run)


def summarise(history: list[dict]) -> dict[str, float]:
    """HF/LF sample counts, HF return at the start and the end, mean correlation and c."""
    if not history:
        return {}

    def mean_of(key: str) -> float:
        xs = [row[key] for row in history if key in row and math.isfinite(row[key])]
        return sum(xs) / len(xs) if xs else math.nan

    return {
        "hf_samples": history[-1]["hf_steps"],
        "lf_samples": sum(row.get("lf/steps", 0.0) for row in history),
        "hf_return_start": history[0]["return_mean"],
        "hf_return_end": history[-1]["return_recent"],
        "mean_rho": mean_of("mf/rho"),
        "mean_c": mean_of("mf/c"),
        "mean_var_ratio_grad": mean_of("mf/var_ratio_grad"),
    }


def run(args: argparse.Namespace) -> int:
    from mfpg_robot.config import load_train_config
    from mfpg_robot.train import train

    try:
        cfg = load_train_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"run-default: {cfg.algo.name} on {cfg.hf.env} in simulation, HF = {cfg.hf.fidelity} "
        f"(in-process), LF = {cfg.lf.fidelity} ({cfg.lf.pairing} pairing), "
        f"{cfg.hf.total_steps} HF steps"
    )
    result = train(cfg)
    s = summarise(result.history)
    print("summary")
    print(f"  HF samples               {s['hf_samples']:.0f}")
    print(f"  LF samples               {s['lf_samples']:.0f}")
    print(f"  HF return, first iter    {s['hf_return_start']:.1f}")
    print(f"  HF return, last 20 eps   {s['hf_return_end']:.1f}")
    print(f"  mean correlation rho     {s['mean_rho']:.3f}")
    print(f"  mean c                   {s['mean_c']:.3f}")
    print(f"  mean grad variance ratio {s['mean_var_ratio_grad']:.3f}  (MF / HF-only)")
    print(f"  run folder               {result.run_dir}")
    print(f"  policy                   {result.checkpoint}")
    if result.plot is not None:
        print(f"  learning curve           {result.plot}")
    return 0
