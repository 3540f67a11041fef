"""`mfpg-robot check-config FILE`: print the resolved config, or its errors (exit 2)."""

from __future__ import annotations

import argparse
import sys

import yaml

from sim.robot_config import ConfigError, load_robot_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-config", help="validate a robot config and print it resolved")
    p.add_argument("file", help="configs/robots/NAME.yaml, or a robot name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_robot_config(args.file)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0
