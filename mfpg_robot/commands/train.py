"""`mfpg-robot train CONFIG [--set KEY=VALUE ...]`: run a training session from a train config."""

from __future__ import annotations

import argparse
import math
import sys

from sim.robot_config import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a policy from configs/train/NAME.yaml")
    p.add_argument("config", help="train config YAML, e.g. configs/train/ppo_furuta.yaml")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value (YAML syntax), e.g. --set algo.lr=1e-4; repeatable",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mfpg_robot.config import load_train_config
    from mfpg_robot.train import train

    try:
        cfg = load_train_config(args.config, args.overrides)
        result = train(cfg)
    except (ConfigError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    last = result.history[-1] if result.history else {}
    ret = last.get("return_recent", math.nan)
    print(f"run folder: {result.run_dir}")
    print(f"final checkpoint: {result.checkpoint}")
    if result.plot is not None:
        print(f"learning curve: {result.plot}")
    print(f"HF steps: {last.get('hf_steps', 0)}  recent mean return: {ret:.2f}")
    return 0
