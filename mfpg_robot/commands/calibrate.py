"""`mfpg-robot calibrate RUN_DIR --model NAME [--params P ...] --out FILE.xml`.

Fits a few physical parameters of one of the robot's models (e.g. the LF model) to the HF
episodes a session recorded in RUN_DIR/hf_episodes/, writes the calibrated MJCF, prints the
prediction error and parameters before and after, and how to use the model
(`mfpg_robot.calibrate`, docs/calibration.md). The robot is RUN_DIR's (its config.yaml:
`hf.robot`, else the robot of `hf.env`'s task), unless `--robot` names one; a session on the
robot or its emulator (`hf.fidelity: robot`) has its actions replayed through the host safety
layer, as they reached the device.

Exit status: 0 done, 2 bad input (folder, episodes, model, parameter, output path).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.robot_config import RobotConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit an LF model's physical parameters to a session's recorded HF episodes",
        description="Fit link lengths, masses, damping, friction or actuator gains of one of "
        "the robot's MuJoCo models so that it predicts the recorded joint states over short "
        "open-loop replays of the recorded actions; write the calibrated model.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder with hf_episodes/")
    p.add_argument("--model", required=True,
                   help="the robot's model to fit (a name under models:, e.g. reduced_gap)")
    p.add_argument("--params", nargs="+", default=None, metavar="KIND.JOINT",
                   help="parameters to fit, e.g. length.pendulum mass.arm damping.arm "
                   "(default: per robot; docs/calibration.md)")
    p.add_argument("--out", required=True, metavar="FILE.xml", help="calibrated model to write")
    p.add_argument("--name", default=None,
                   help="model name to suggest for models: (default: from FILE)")
    p.add_argument("--robot", default=None,
                   help="robot config name or YAML (default: the run's robot)")
    p.add_argument("-k", "--steps", type=int, default=20,
                   help="control steps of each open-loop replay (default: 20)")
    p.add_argument("--max-starts", type=int, default=2000,
                   help="most replays (drawn from the recorded rows; default: 2000)")
    p.add_argument("--latency", type=int, default=None,
                   help="the device's sensor latency in control steps (default: fitted, 0..3)")
    p.add_argument("--max-evals", type=int, default=300,
                   help="model evaluations per optimiser round (two rounds; default: 300)")
    p.set_defaults(func=run)


def _run_robot(run_dir: Path, robot_arg: str | None) -> tuple[RobotConfig, bool]:
    """The robot of the run (module docstring), and whether its HF env was a device
    (`hf.fidelity: robot`: its commands went through the host safety layer)."""
    import yaml

    import sim  # noqa: F401  (registers the mfpg envs)
    from mfpg_robot.calibrate import CalibrationError
    from mfpg_robot.config import env_robot
    from sim.robot_config import load_robot_config

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        if robot_arg is None:
            raise CalibrationError(f"{run_dir}: no config.yaml in it, so its robot is unknown; "
                                   "pass a run folder of `mfpg-robot train`, or name the robot "
                                   "with --robot NAME")
        return load_robot_config(robot_arg), False
    try:
        hf = yaml.safe_load(cfg_path.read_text())["hf"]
        device = hf.get("fidelity") == "robot"
    except (yaml.YAMLError, TypeError, KeyError, AttributeError) as err:
        raise CalibrationError(f"{cfg_path}: not a run's config ({err})") from None
    if robot_arg is not None or hf.get("robot"):
        return load_robot_config(robot_arg or hf["robot"]), device
    robot = env_robot(str(hf.get("env")))
    if robot is None:
        raise CalibrationError(f"{cfg_path}: hf.env '{hf.get('env')}' is not a robot task "
                               "(mfpg/*); only robot tasks record measured joint states")
    return robot, device


def _model_name(args: argparse.Namespace, out: Path) -> str:
    from mfpg_robot.calibrate import CalibrationError
    from sim.robot_config import MODEL_NAME_PATTERN

    if args.name is not None:
        if not re.match(MODEL_NAME_PATTERN, args.name):
            raise CalibrationError(f"--name {args.name!r}: a model name is lower case letters, "
                                   "digits and _, starting with a letter (e.g. calibrated)")
        return args.name
    name = re.sub(r"[^a-z0-9_]", "_", out.stem.lower()).strip("_")
    return name if re.match(MODEL_NAME_PATTERN, name) else "calibrated"


def run(args: argparse.Namespace) -> int:
    from mfpg_robot.calibrate import (
        CalibrationError,
        calibrate,
        load_replay_data,
        write_model,
    )
    from mfpg_robot.episodes import EpisodeDataError
    from sim.robot_config import MODELS_DIR, REPO_ROOT, ConfigError

    run_dir, out = Path(args.run_dir), Path(args.out).expanduser().resolve()
    try:
        if out.suffix.lower() != ".xml":
            raise CalibrationError(f"--out {args.out}: the calibrated model is MJCF; give a "
                                   "file name ending in .xml")
        for key in ("steps", "max_starts", "max_evals"):
            if getattr(args, key) < 1:
                raise CalibrationError(f"--{key.replace('_', '-')} must be >= 1, got "
                                       f"{getattr(args, key)}")
        if args.latency is not None and args.latency < 0:
            raise CalibrationError(f"--latency must be >= 0, got {args.latency}")
        robot, device = _run_robot(run_dir, args.robot)
        taken = {name: robot.model_path(name).resolve() for name in robot.model_names}
        clash = [name for name, path in taken.items() if path == out]
        if clash:
            raise CalibrationError(f"--out {args.out} is the robot's model '{clash[0]}'; write "
                                   "the calibrated model to a new file")
        name = _model_name(args, out)
        data = load_replay_data(run_dir, robot, device=device)
        print(f"calibrating model '{args.model}' of robot '{robot.name}' on {data.files} "
              f"episode files ({data.steps} HF steps) of {run_dir}", flush=True)
        result = calibrate(data, robot, args.model, args.params, k=args.steps,
                           max_starts=args.max_starts, latency=args.latency,
                           max_evals=args.max_evals, log=lambda s: print(s, flush=True))
    except (CalibrationError, ConfigError, EpisodeDataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_model(result, out)
    entry = out.relative_to(MODELS_DIR) if out.is_relative_to(MODELS_DIR) else out
    print(result.summary())
    print(f"written: {out}")
    print("to use it, add under models: in the robot config "
          f"(configs/robots/{robot.name}.yaml):")
    print(f"  {name}: {entry}")
    pretrain = REPO_ROOT / "configs" / "train" / f"pretrain_{robot.name}.yaml"
    example = (f" (e.g. mfpg-robot train {pretrain.relative_to(REPO_ROOT)} "
               f"--set hf.fidelity={name})" if pretrain.is_file() else "")
    print(f"then train on it in simulation: --set hf.fidelity={name}{example}, or use it as "
          f"the LF model of a multi-fidelity session: --set lf.fidelity={name}")
    return 0
