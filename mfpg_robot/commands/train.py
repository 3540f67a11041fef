"""`mfpg-robot train CONFIG [--port PATH | --emulate] [--resume RUN_DIR] [--set K=V ...] [--yes]`.

Runs a training session from a train config (`configs/train/NAME.yaml`). With
`hf.fidelity: robot` the HF env is the robot on `--port` (else `hf.port`, else the robot
config's `serial.port`), or with `--emulate` the device emulator; the operator confirms the
pre-flight summary before torque goes on, unless `--yes` (the emulator needs no
confirmation). `--resume RUN_DIR` continues a run from its folder (CONFIG is then optional;
`--set` may change only the budget and logging keys).

Exit status: 0 done, 1 runtime failure (robot, link, session stopped), 2 bad input (config,
arguments, run folder, checkpoint), 130 interrupted (Ctrl+C or SIGTERM: torque off, the run
folder is complete, and one line says how to resume).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options `train` and `dry-run` share."""
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run in RUN_DIR (after a crash, Ctrl+C, or with a larger "
                   "--set hf.total_steps)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value (YAML syntax), e.g. --set algo.lr=1e-4; repeatable",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a policy from configs/train/NAME.yaml (simulation or robot)",
        description="Train a policy. With hf.fidelity: robot the HF data comes from the robot "
        "(--port) or the device emulator (--emulate), behind the safety layer.",
    )
    p.add_argument("config", nargs="?", default=None,
                   help="train config YAML, e.g. configs/train/session_furuta.yaml "
                   "(optional with --resume: the run folder's config)")
    add_arguments(p)
    device = p.add_mutually_exclusive_group()
    device.add_argument("--port", default=None,
                        help="the robot's serial port (hf.fidelity: robot), e.g. /dev/ttyUSB0")
    device.add_argument("--emulate", action="store_true",
                        help="start the device emulator and train on it (a dry run)")
    p.add_argument("--yes", action="store_true",
                   help="do not ask for confirmation after the robot's pre-flight")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from hardware.driver import RobotError
    from mfpg_robot.episodes import EpisodeDataError
    from mfpg_robot.robot_link import OperatorAbort, terminal_confirm
    from mfpg_robot.run_dir import CheckpointError, RunDirError
    from mfpg_robot.train import Interrupted, SessionAborted, train
    from sim.robot_config import ConfigError

    if args.config is None and args.resume is None:
        return _fail("train needs a CONFIG file, or --resume RUN_DIR to continue a run", 2)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mfpg_robot").setLevel(logging.INFO)  # session and robot events
    confirm = None if args.yes or args.emulate else terminal_confirm
    try:
        with logging_redirect_tqdm():
            result = train(args.config, args.overrides, resume=args.resume, port=args.port,
                           emulate=args.emulate, confirm=confirm)
    except (ConfigError, FileExistsError, RunDirError, CheckpointError,
            EpisodeDataError) as err:
        return _fail(str(err), 2)
    except OperatorAbort as err:
        return _fail(f"{err}; pass --yes to skip the question", 1)
    except SessionAborted as err:
        return _fail(str(err), 1)
    except RobotError as err:
        return _fail(str(err), 1)
    except Interrupted as err:
        print(f"interrupted: the run folder {err.run_dir} holds everything up to now; resume "
              f"with: {err.resume}", file=sys.stderr)
        return 130
    last = result.history[-1] if result.history else {}
    print(f"run folder: {result.run_dir}")
    print(f"final checkpoint: {result.checkpoint}")
    if result.onnx is not None:
        print(f"exported policy: {result.onnx}")
    if result.plot is not None:
        print(f"learning curve: {result.plot}")
    where = "robot" if result.config.hf.fidelity == "robot" else "env"
    print(f"HF steps: {result.hf_steps}  {where} time: {result.robot_time_s:.1f} s  "
          f"recent mean return: {last.get('return_recent', math.nan):.2f}  safety events: "
          f"{result.safety_events}")
    return 0


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
