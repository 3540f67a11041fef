"""`mfpg-robot run-default`: the main job on the embedded default (what `make run` runs).

A whole robot session, dry-run against the device emulator:
1. LF pretraining: PPO on the reduced-order model only (`configs/train/pretrain_furuta.yaml`),
   no robot time. Cached: the run lives in `runs/cache/pretrain-<hash of its config>/`, and a
   later run-default with the same pretraining config reuses its final checkpoint.
2. The pretrained policy on the emulated robot: `--eval-episodes` deterministic episodes
   through the deployment path (ONNX in onnxruntime, `RobotEnv`, safety layer, emulator).
3. The session: `configs/train/session_furuta.yaml` warm-started from that policy
   (`init.checkpoint`), with HF = the emulator over a pseudo-terminal (`train --emulate`).
4. The session's exported policy on the emulated robot, as in step 2.
5. A summary: HF and LF samples, robot (emulator) time, HF return before and after the
   session, the estimator's mean correlation and c, and the paths of the run folder, the ONNX
   policy and the learning-curve plot.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from sim.robot_config import REPO_ROOT, ConfigError, RobotConfig

PRETRAIN_CONFIG = REPO_ROOT / "configs" / "train" / "pretrain_furuta.yaml"
SESSION_CONFIG = REPO_ROOT / "configs" / "train" / "session_furuta.yaml"
CACHE_DIR = Path("runs") / "cache"
EVAL_SEED = 10_000  # evaluation episode i is reset with seed EVAL_SEED + i


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run-default",
        help="the main job (make run): LF pretraining, then a dry-run session on the emulator",
    )
    p.add_argument("--pretrain-config", type=Path, default=PRETRAIN_CONFIG,
                   help="train config of the LF pretraining (simulated HF fidelity)")
    p.add_argument("--config", type=Path, default=SESSION_CONFIG,
                   help="train config of the robot session (hf.fidelity: robot)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of both the pretraining and the session (default: the configs')")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a session config value, e.g. --set hf.total_steps=4000; repeatable",
    )
    p.add_argument(
        "--pretrain-set", dest="pretrain_overrides", action="append", default=[],
        metavar="KEY=VALUE", help="override a pretraining config value; repeatable",
    )
    p.add_argument("--eval-episodes", type=int, default=3,
                   help="deterministic episodes on the emulated robot before and after the "
                   "session (default 3; 0 skips both evaluations)")
    p.add_argument("--eval-max-steps", type=int, default=None, metavar="N",
                   help="cut each evaluation episode after N steps (default: the task's "
                   "time limit)")
    p.set_defaults(func=run)


def summarise(history: list[dict[str, Any]]) -> dict[str, float]:
    """HF/LF sample counts, the session's own first and last returns, mean rho and c."""
    if not history:
        return {}

    def mean_of(key: str) -> float:
        xs = [row[key] for row in history
              if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]
        return sum(xs) / len(xs) if xs else math.nan

    return {
        "hf_samples": history[-1]["hf_steps"],
        "lf_samples": sum(row.get("lf/steps") or 0.0 for row in history),
        "train_return_first": history[0].get("return_mean", math.nan),
        "train_return_last": history[-1].get("return_recent", math.nan),
        "mean_rho": mean_of("mf/rho"),
        "mean_c": mean_of("mf/c"),
    }


def pretrain_cache_dir(cfg_dict: dict[str, Any]) -> Path:
    """The cache folder of a pretraining config: a hash of everything but `run`."""
    key = {k: v for k, v in cfg_dict.items() if k != "run"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return CACHE_DIR / f"pretrain-{digest}"


def pretrain(config: Path, overrides: list[str]) -> Path:
    """The LF-pretrained checkpoint: from the cache, else trained now (and cached)."""
    from mfpg_robot.config import load_train_config
    from mfpg_robot.train import train

    cfg = load_train_config(config, overrides)
    if cfg.hf.fidelity == "robot":
        raise ConfigError(f"{config}: the pretraining runs in simulation; set hf.fidelity to "
                          f"a model of the robot (e.g. reduced), not robot")
    folder = pretrain_cache_dir(cfg.to_dict())
    final = folder / "checkpoints" / "final.pt"
    if final.is_file():
        print(f"[1/4] LF pretraining: cached, {final}")
        return final
    if folder.exists():  # an earlier pretraining was interrupted: continue it
        print(f"[1/4] LF pretraining: resuming {folder}")
        result = train(resume=folder)
    else:
        print(f"[1/4] LF pretraining: {cfg.algo.name} on the '{cfg.hf.fidelity}' model, "
              f"{cfg.hf.total_steps} LF steps (no robot time), into {folder}")
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"dir": str(folder)})})
        result = train(cfg)
    return result.checkpoint


def evaluate_on_emulator(policy: Path, robot: RobotConfig, episodes: int, label: str,
                         max_steps: int | None = None) -> float:
    """Mean return of `episodes` deterministic episodes of `policy` on the emulated robot."""
    from mfpg_robot.deploy import deploy, format_episode

    env_kwargs = None if max_steps is None else {"max_episode_steps": max_steps}
    report = deploy(policy, robot, episodes=episodes, emulate=True, seed=EVAL_SEED,
                    env_kwargs=env_kwargs)
    for ep in report.episodes:
        print(f"      {label}: {format_episode(ep)}")
    return sum(ep.episode_return for ep in report.episodes) / len(report.episodes)


def run(args: argparse.Namespace) -> int:
    from hardware.driver import RobotError
    from mfpg_robot.episodes import EpisodeDataError
    from mfpg_robot.export import ExportError
    from mfpg_robot.run_dir import CheckpointError, RunDirError
    from mfpg_robot.train import Interrupted, SessionAborted

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mfpg_robot").setLevel(logging.INFO)  # session and robot events
    try:
        return _run(args)
    except (ConfigError, FileExistsError, RunDirError, CheckpointError, EpisodeDataError,
            ExportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (SessionAborted, RobotError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"interrupted: the run folder {err.run_dir} holds everything up to now; resume "
              f"with: {err.resume}", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from mfpg_robot.config import load_train_config
    from mfpg_robot.hf_env import robot_config_for
    from mfpg_robot.train import train

    seed = [] if args.seed is None else [f"seed={args.seed}"]
    session_cfg = load_train_config(args.config, [*seed, *args.overrides])
    if session_cfg.hf.fidelity != "robot":
        raise ConfigError(f"{args.config}: run-default is a dry run on the emulated robot; "
                          f"hf.fidelity must be robot, not {session_cfg.hf.fidelity}")
    if args.eval_episodes < 0:
        raise ConfigError("--eval-episodes must be >= 0")
    if args.eval_max_steps is not None and args.eval_max_steps < 1:
        raise ConfigError("--eval-max-steps must be >= 1")
    robot = robot_config_for(session_cfg)
    t0 = time.perf_counter()
    checkpoint = pretrain(args.pretrain_config, [*seed, *args.pretrain_overrides])
    t_pretrain = time.perf_counter() - t0
    before = math.nan
    if args.eval_episodes:
        print(f"[2/4] the pretrained policy on the emulated robot, {args.eval_episodes} episodes")
        before = evaluate_on_emulator(checkpoint, robot, args.eval_episodes, "before",
                                      args.eval_max_steps)
    print(f"[3/4] dry-run session: {session_cfg.algo.name}, {session_cfg.hf.total_steps} HF "
          f"steps on the emulated robot, LF = {session_cfg.lf.fidelity}, warm start from "
          f"{checkpoint}")
    session_cfg = session_cfg.model_copy(update={
        "init": session_cfg.init.model_copy(update={"checkpoint": str(checkpoint)})})
    result = train(session_cfg, emulate=True)
    after = math.nan
    if args.eval_episodes and result.onnx is not None:
        print(f"[4/4] the session's policy on the emulated robot, {args.eval_episodes} episodes")
        after = evaluate_on_emulator(result.onnx, robot, args.eval_episodes, "after",
                                     args.eval_max_steps)
    s = summarise(result.history)
    print("summary")
    print(f"  LF pretraining            {t_pretrain:.0f} s (0 HF samples)")
    print(f"  HF samples                {s['hf_samples']:.0f}")
    print(f"  LF samples                {s['lf_samples']:.0f}  (session)")
    print(f"  robot (emulator) time     {result.robot_time_s:.0f} s")
    print(f"  HF return before session  {before:.1f}  (deterministic, {args.eval_episodes} "
          f"episodes on the emulated robot)")
    print(f"  HF return after session   {after:.1f}")
    print(f"  mean correlation rho      {s['mean_rho']:.3f}")
    print(f"  mean c                    {s['mean_c']:.3f}")
    print(f"  safety events             {result.safety_events}")
    print(f"  run folder                {result.run_dir}")
    print(f"  policy (ONNX)             {result.onnx}")
    print(f"  learning curve            {result.plot}")
    return 0
