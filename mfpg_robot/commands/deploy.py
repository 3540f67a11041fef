"""`mfpg-robot deploy POLICY --robot CONFIG [--port PATH | --emulate] --episodes N [--yes]`.

Runs an exported policy (ONNX; a checkpoint or run folder is exported first) with onnxruntime
on the robot behind the safety layer, after the pre-flight of `mfpg_robot.robot_link` and the
operator's confirmation (skipped by `--yes`, and with `--emulate`, a dry run). Prints one line
per episode (return, how it ended, timing, safety events) and a summary; `--json PATH` writes
the full report. Exit status: 0 done, 1 a robot or link failure or the operator declined,
2 bad input (config, policy for another robot, unreadable policy, --port with --emulate),
130 interrupted (torque off, emulator stopped).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy",
        help="run an exported policy on the robot (or the emulator) behind the safety layer",
        description="Run POLICY (ONNX from `mfpg-robot export`, or a checkpoint / run folder) "
        "for N episodes on the robot of CONFIG, with the same pre-flight and safety layer as "
        "training; report returns, safety events and timing.",
    )
    p.add_argument("policy", metavar="POLICY", help="policy.onnx, a checkpoint or a run folder")
    p.add_argument("--robot", required=True, help="configs/robots/NAME.yaml, or a robot name")
    p.add_argument("--port", default=None,
                   help="device path, pty path or pyserial URL (default: serial.port of the "
                        "robot config)")
    p.add_argument("--emulate", action="store_true",
                   help="start the device emulator for the robot and run on it (dry run)")
    p.add_argument("--episodes", type=int, required=True, metavar="N", help="episodes to run")
    p.add_argument("--yes", action="store_true",
                   help="switch torque on without asking after the pre-flight")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="episode length in control steps (default: the task's horizon)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode's start")
    p.add_argument("--json", default=None, metavar="PATH", help="write the report as JSON")
    p.set_defaults(func=run)


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    from hardware.driver import RobotError
    from mfpg_robot.deploy import deploy, format_episode
    from mfpg_robot.export import ExportCheckError, ExportError, PolicyMismatchError
    from mfpg_robot.robot_link import OperatorAbort, terminal_confirm
    from sim.robot_config import ConfigError, load_robot_config

    if args.episodes < 1:
        return _fail(f"--episodes must be at least 1, got {args.episodes}", 2)
    if args.max_steps is not None and args.max_steps < 1:
        return _fail(f"--max-steps must be at least 1, got {args.max_steps}", 2)
    if args.json is not None and not Path(args.json).resolve().parent.is_dir():
        return _fail(f"--json {args.json}: its folder does not exist; create it first", 2)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    confirm = None if args.yes or args.emulate else terminal_confirm
    env_kwargs = {} if args.max_steps is None else {"max_episode_steps": args.max_steps}
    try:
        robot = load_robot_config(args.robot)
        report = deploy(args.policy, robot, episodes=args.episodes, port=args.port,
                        emulate=args.emulate, confirm=confirm, env_kwargs=env_kwargs,
                        seed=args.seed, on_episode=lambda ep: print(format_episode(ep),
                                                                    flush=True))
    except (ConfigError, ExportError, PolicyMismatchError) as err:
        return _fail(str(err), 2)
    except OperatorAbort as err:
        return _fail(f"{err}; pass --yes to skip the question", 1)
    except (RobotError, ExportCheckError) as err:
        return _fail(str(err), 1)
    returns = [ep.episode_return for ep in report.episodes]
    stops = sum(ep.ended.startswith("safety_stop") for ep in report.episodes)
    where = f"{report.port}{' (emulator)' if report.emulated else ''}"
    print(f"{len(returns)} episode(s) on {report.robot} at {where}: return mean "
          f"{sum(returns) / len(returns):.3f} (min {min(returns):.3f}, max {max(returns):.3f}), "
          f"{stops} ended by a safety stop")
    if args.json is not None:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1, default=str))
        print(f"report: {args.json}")
    return 0
