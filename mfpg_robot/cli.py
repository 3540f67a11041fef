"""`mfpg-robot`: one CLI for training, dry runs, the device emulator, export and deployment.

Each subcommand lives in `mfpg_robot/commands/<name>.py` with `add_parser(subparsers)` that
registers it and sets `func`. Exit status: 0 ok, 1 runtime failure, 2 bad input (config,
arguments), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = (
    "check_config",
    "emulator",
    "probe",
    "train",
    "dry_run",
    "run_default",
    "export",
    "deploy",
    "bench",
    "calibrate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfpg-robot",
        description="Multi-fidelity policy gradients for one physical robot.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mfpg_robot.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
