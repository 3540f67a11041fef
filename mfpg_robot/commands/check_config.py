"""`mfpg-robot check-config FILE`: print the resolved config, or its errors (exit 2).

Robot configs (configs/robots/*.yaml, or a robot name) and train configs
(configs/train/*.yaml, recognised by their top-level keys) are both accepted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from sim.robot_config import ConfigError, load_robot_config, read_yaml


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-config", help="validate a robot or train config, print it resolved")
    p.add_argument("file", help="configs/robots/NAME.yaml, a robot name or configs/train/NAME.yaml")
    p.set_defaults(func=run)


def _resolved(file: str) -> dict:
    from mfpg_robot.config import is_train_mapping, load_train_config

    path = Path(file)
    if path.is_file() and is_train_mapping(read_yaml(path)):
        return load_train_config(path).to_dict()
    return load_robot_config(file).model_dump(mode="json")


def run(args: argparse.Namespace) -> int:
    try:
        resolved = _resolved(args.file)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(resolved, sort_keys=False), end="")
    return 0
