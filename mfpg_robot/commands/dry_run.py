"""`mfpg-robot dry-run [CONFIG] [--resume RUN_DIR] [--set K=V ...]`: a session on the emulator.

The same as `mfpg-robot train CONFIG --emulate --yes`, with the default session config
`configs/train/session_furuta.yaml`: the device emulator is started on a pseudo-terminal and
the whole robot code path runs against it (pre-flight, `SerialDriver`, safety layer, resets,
run folder, export). The emulator never outlives the dry run, even one killed outright.
"""

from __future__ import annotations

import argparse

from mfpg_robot.commands.train import add_arguments
from mfpg_robot.commands.train import run as run_train
from sim.robot_config import REPO_ROOT

DEFAULT_SESSION = REPO_ROOT / "configs" / "train" / "session_furuta.yaml"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dry-run", help="a training session against the device emulator (train --emulate --yes)",
        description="Train against the device emulator, exactly as on the robot: "
        "`train CONFIG --emulate --yes`, CONFIG defaulting to "
        "configs/train/session_furuta.yaml.",
    )
    p.add_argument("config", nargs="?", default=None,
                   help=f"train config YAML (default: {DEFAULT_SESSION.relative_to(REPO_ROOT)}"
                   "; with --resume: the run folder's config)")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = args.config
    if config is None and args.resume is None:
        config = str(DEFAULT_SESSION)
    return run_train(argparse.Namespace(config=config, resume=args.resume,
                                        overrides=args.overrides, port=None, emulate=True,
                                        yes=True))
