"""`mfpg-robot emulator --robot CONFIG`: the device emulator on a pseudo-terminal.

Prints `port: <path>` as its first line, then serves the robot's protocol there until Ctrl+C
or SIGTERM (torque off, exit 0). See `hardware.emulator` for the fault injection options;
`--stats-file PATH` writes what the device received, rejected and executed there on exit;
`--parent-pid PID` stops it (cleanly) once process PID is no longer its parent.
"""

from __future__ import annotations

import argparse
import os
import sys

from sim.robot_config import ConfigError, load_robot_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "emulator",
        help="emulate the robot's firmware on a pseudo-terminal (dry runs, no robot)",
        description="Open a pseudo-terminal, print 'port: PATH' first, and behave like the "
        "robot's firmware there (twin physics in real time, watchdog, limits, faults).",
    )
    p.add_argument("--robot", required=True, help="configs/robots/NAME.yaml, or a robot name")
    p.add_argument("--drop-rate", type=float, default=0.0, help="probability a reply is lost")
    p.add_argument("--corrupt-rate", type=float, default=0.0,
                   help="probability a reply has one corrupted byte")
    p.add_argument("--corrupt-rx-rate", type=float, default=0.0,
                   help="probability a chunk of received bytes (usually one request) has one "
                   "corrupted byte")
    p.add_argument("--delay-rate", type=float, default=0.0,
                   help="probability a reply is held back by --delay-ms")
    p.add_argument("--delay-ms", type=float, default=0.0, help="delay of a delayed reply (ms)")
    p.add_argument("--disconnect-after", type=float, default=None, metavar="S",
                   help="close the port after S seconds (an unplugged cable)")
    p.add_argument("--overtemp-after", type=float, default=None, metavar="S",
                   help="motors overheat past the limit after S seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault injection")
    p.add_argument("--stats-file", default=None, metavar="PATH",
                   help="on exit, write JSON counts of frames received, frames rejected (bad "
                   "header/CRC), commands received and executed, replies sent/dropped/corrupted")
    p.add_argument("--parent-pid", type=int, default=None, metavar="PID",
                   help="stop (torque off, exit 0) once process PID is no longer this "
                   "emulator's parent, e.g. when the program that started it died")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hardware.emulator import FaultInjection, run_emulator  # MuJoCo: only when used

    try:
        robot = load_robot_config(args.robot)
        faults = FaultInjection(
            drop_rate=args.drop_rate,
            corrupt_rate=args.corrupt_rate,
            corrupt_rx_rate=args.corrupt_rx_rate,
            delay_rate=args.delay_rate,
            delay_ms=args.delay_ms,
            disconnect_after_s=args.disconnect_after,
            overtemp_after_s=args.overtemp_after,
            seed=args.seed,
        )
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.stats_file is not None:
        folder = os.path.dirname(os.path.abspath(args.stats_file))
        if not os.path.isdir(folder):
            print(
                f"error: --stats-file {args.stats_file}: folder {folder} does not exist; "
                "create it or pass a path in an existing folder",
                file=sys.stderr,
            )
            return 2
    return run_emulator(robot, faults, sys.stdout, args.stats_file, args.parent_pid)
