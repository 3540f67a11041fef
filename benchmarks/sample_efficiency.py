"""Sample efficiency: the HF return each method reaches for the HF samples it is given.

Every run trains one method on one task with one seed, then evaluates on the HF env the
deterministic policy (mean action, clipped to the action space) over fixed starts (reset
seeds 10_000, 10_001, ...: the same for every method). The learning curve is that evaluation
at checkpoints along the run, against HF samples; warm-started methods start at 0 HF samples
with the LF-pretrained policy.

    python -m benchmarks.sample_efficiency --quick --out runs/bench-quick       # from the repo
    mfpg-robot bench sample-efficiency --out runs/bench --jobs 2                # the full suite
    mfpg-robot bench sample-efficiency --out runs/bench --tasks furuta-twin-calibrated
    mfpg-robot bench sample-efficiency --out runs/bench --ray auto  # runs on a Ray cluster

Tasks are the entries of TASKS (the full suite: SUITE), or any `<robot>-<HF model>-<LF
model>` of a robot task (ROBOT_TASKS; the model names of its robot config). The off-dynamics
tasks (HF: a stock Gymnasium env with one physical change, `benchmarks.offdynamics`; LF: the
stock env, reset to HF states by `sim.gym_collector`) run every method. Methods, their HF
budget and their hyper-parameters are the METHODS table below; LF_PRETRAIN is the LF-only
training that `ppo_lf_only`, `ppo_lf_finetune` and `mfppo_lf_finetune` share (cached per
task and seed).

Each run is its own process (`run-one`, `pretrain`) writing into DIR:

    DIR/runs/<task>/<method>/s<seed>/        the train run folder (final checkpoint kept)
    DIR/runs/<task>/<method>/s<seed>.json    its result, written last: present = done
    DIR/pretrain/<task>/s<seed>/, s<seed>.json   the LF-pretrained policy of (task, seed)
    DIR/logs/<task>/<method>-s<seed>.log     the run's output
    DIR/results.json, DIR/<task>.png         the aggregate and one learning-curve plot per task

With `--ray [ADDRESS]` every run is a Ray task instead, its files coming back to DIR
(benchmarks/sweep_ray.py); the runs are the same. A rerun skips every run whose result is in
DIR (so an interrupted sweep continues where it stopped) and refuses results made with other
settings (budget, evaluation, hyper-parameters, `--set`). Intermediate checkpoints are
deleted once evaluated.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import offdynamics
from sim.robot_config import ConfigError

REPO = Path(__file__).resolve().parents[1]
FURUTA = "mfpg/FurutaSwingup-v0"
ARM2 = "mfpg/Arm2Reach-v0"
EVAL_SEED = 10_000  # evaluation episode i starts from env.reset(seed=EVAL_SEED + i)
FORMAT = 1  # of the result files; part of every run's settings


@dataclass(frozen=True)
class Task:
    """An HF env, the LF env that stands for it, the HF budget B and the evaluation."""

    hf_env: str
    hf_fidelity: str | None  # None: a plain Gymnasium env (no fidelity argument)
    lf_env: str
    lf_fidelity: str | None
    budget: int  # B, HF steps
    seeds: int  # seeds 0..seeds-1 in the full suite
    eval_episodes: int = 10
    eval_horizon: int | None = None  # None: the env's own time limit
    curve_points: int = 8  # evaluations along [0, B]; beyond B, one per B
    overrides: dict[str, Any] = field(default_factory=dict)  # every method on this task
    methods: tuple[str, ...] | None = None  # the methods that can run here; None: all
    pretrain_overrides: dict[str, Any] = field(default_factory=dict)  # its LF pretraining's


@dataclass(frozen=True)
class Method:
    """How a method trains: algorithm, HF budget in units of B, train-config overrides."""

    algo: str | None  # None: no training of its own (evaluates the LF-pretrained policy)
    budget_factor: int
    overrides: dict[str, Any] = field(default_factory=dict)
    warm_start: bool = False  # starts from the LF-pretrained policy (init.checkpoint)


# ---- the tables to tune ------------------------------------------------------------------
#: Train-config overrides of every run (before the task's and the method's own).
COMMON: dict[str, Any] = {"run.torch_threads": 1, "run.export": False}

#: Fine-tuning a swung-up LF policy on HF data (the default session's settings): exploration
#: std 0.22 around it, lr 1e-4, 4 epochs of 4 minibatches per batch.
GENTLE: dict[str, Any] = {"init.log_std": -1.5, "algo.lr": 1e-4, "algo.update_epochs": 4,
                          "algo.num_minibatches": 4}

#: The methods and their hyper-parameters (train-config keys -> values; the rest: defaults).
METHODS: dict[str, Method] = {
    "ppo_hf": Method("ppo", 1),
    "ppo_hf_10x": Method("ppo", 10),
    # the recommended configuration: MF-PPO fine-tuning of the LF-pretrained policy, as the
    # default robot session (configs/train/session_furuta.yaml) does
    "mfppo": Method("mfppo", 1, {"lf.pairing": "episode", **GENTLE}, warm_start=True),
    "mfppo_episode": Method("mfppo", 1, {"lf.pairing": "episode"}),
    "mfppo_synced": Method("mfppo", 1, {"lf.pairing": "synced"}),
    "reinforce_hf": Method("reinforce", 1),
    "mfreinforce": Method("mfreinforce", 1, {"lf.pairing": "episode"}),
    "ppo_lf_only": Method(None, 0, warm_start=True),
    "ppo_lf_finetune": Method("ppo", 1, GENTLE, warm_start=True),
    "mfppo_lf_finetune": Method("mfppo", 1, {"lf.pairing": "episode", **GENTLE},
                                warm_start=True),
    # B HF steps collected with the LF-pretrained policy ground the LF model (CALIBRATED)
    "ppo_lf_calibrated": Method("ppo", 1, warm_start=True),
}


@dataclass(frozen=True)
class Calibrated:
    """LF-pretrained policy -> B HF steps collected with it (exploration log-std `log_std`)
    -> the task's LF model calibrated on them (`mfpg_robot.calibrate`, parameters `params`,
    None: its defaults; `max_evals` model evaluations per optimiser round) -> PPO on the
    calibrated model continued from the pretrained policy for `lf_factor` x B LF steps
    (LF_PRETRAIN's settings) -> evaluation on HF."""

    lf_factor: int
    log_std: float
    params: tuple[str, ...] | None = None
    max_evals: int = 300


#: The methods that calibrate the LF model (robot tasks only; their Method is the LF training).
CALIBRATED: dict[str, Calibrated] = {"ppo_lf_calibrated": Calibrated(5, GENTLE["init.log_std"])}

#: Overrides of one method on one task (applied after the method's): (task, method) -> values.
TASK_METHOD: dict[tuple[str, str], dict[str, Any]] = {}

#: PPO on the LF env only (LF steps = budget_factor x B): the warm-started methods' start
#: (configs/train/pretrain_furuta.yaml at B = 40 960, with its exploring and goal starts).
LF_PRETRAIN = Method("ppo", 20)
FURUTA_STARTS = {"hf.exploring_starts": 0.3, "hf.goal_starts": 0.2}
ARM2_STARTS = {"hf.exploring_starts": 0.3}  # the reach task defines no goal start

#: Robot tasks; `<robot>-<HF model>-<LF model>` of any two models of the robot is a task too.
ROBOT_TASKS: dict[str, Task] = {
    "furuta": Task(FURUTA, "twin", FURUTA, "reduced", budget=40_960, seeds=5,
                   pretrain_overrides=FURUTA_STARTS),
    "arm2": Task(ARM2, "twin", ARM2, "reduced", budget=40_960, seeds=3,
                 pretrain_overrides=ARM2_STARTS),
}

#: Off-dynamics bases: stock Gymnasium env (the LF model) -> (task name prefix, B).
#: Pendulum B from ppo_hf learning curves on gravity_x2 (seeds 0-2): at 10 240 HF steps
#: 56-132, at 20 480 and beyond 997-1000 (the plateau). Hopper's B is not measured yet.
OFF_DYNAMICS = {"InvertedPendulum-v5": ("pendulum", 10_240), "Hopper-v5": ("hopper", 102_400)}

TASKS: dict[str, Task] = {
    "furuta-twin-reduced": ROBOT_TASKS["furuta"],
    "furuta-twin-reduced_gap": dataclasses.replace(ROBOT_TASKS["furuta"],
                                                   lf_fidelity="reduced_gap"),
    "arm2-twin-reduced": ROBOT_TASKS["arm2"],
    **{f"{prefix}-{variant}": Task(offdynamics.env_id(base, variant), None, base, None,
                                   budget=b, seeds=3)
       for base, (prefix, b) in OFF_DYNAMICS.items() for variant in offdynamics.VARIANTS},
}

#: The tasks of the full suite (the default of --tasks).
SUITE = ("furuta-twin-reduced", "furuta-twin-reduced_gap", "arm2-twin-reduced")

QUICK_TASKS = ("furuta-twin-reduced",)
QUICK_METHODS = ("ppo_hf", "ppo_hf_10x", "ppo_lf_only", "ppo_lf_finetune", "mfppo")
QUICK_SEEDS = (0, 1, 2)


class BenchError(ValueError):
    """Bad input to the benchmark (exit status 2); the message says what and how to fix it."""


# ---- names -> definitions ----------------------------------------------------------------
def resolve_task(name: str) -> Task:
    """A TASKS entry, or `<robot>-<HF model>-<LF model>` built from ROBOT_TASKS[robot]."""
    if name in TASKS:
        return TASKS[name]
    robot, _, pair = name.partition("-")
    hf, _, lf = pair.partition("-")
    if robot in ROBOT_TASKS and hf and lf:
        import sim  # noqa: F401  (the robot of an mfpg env's task)
        from mfpg_robot.config import env_robot

        base = ROBOT_TASKS[robot]
        models = env_robot(base.hf_env).model_names
        unknown = [m for m in (hf, lf) if m not in models]
        if not unknown:
            return dataclasses.replace(base, hf_fidelity=hf, lf_fidelity=lf)
        raise BenchError(f"task '{name}': robot '{robot}' has no model {unknown[0]!r}; its "
                         f"models: {', '.join(models)}")
    raise BenchError(f"unknown task '{name}'; tasks: {', '.join(TASKS)}, or "
                     f"<robot>-<HF model>-<LF model> with robot one of {', '.join(ROBOT_TASKS)}")


def check_methods(names: list[str]) -> None:
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise BenchError(f"unknown method(s) {', '.join(unknown)}; methods: {', '.join(METHODS)}")


@dataclass(frozen=True)
class Settings:
    """What every run of one sweep shares besides its task, method and seed."""

    budget: int | None = None  # None: each task's own B
    eval_episodes: int | None = None  # None: each task's own
    eval_horizon: int | None = None
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE, applied last to every run

    def budget_of(self, task: Task) -> int:
        return self.budget or task.budget

    def eval_of(self, task: Task) -> tuple[int, int | None]:
        return self.eval_episodes or task.eval_episodes, self.eval_horizon or task.eval_horizon

    def args(self) -> list[str]:
        """The command-line form, for the run processes."""
        out = [] if self.budget is None else ["--budget", str(self.budget)]
        if self.eval_episodes is not None:
            out += ["--eval-episodes", str(self.eval_episodes)]
        if self.eval_horizon is not None:
            out += ["--eval-horizon", str(self.eval_horizon)]
        for item in self.overrides:
            out += ["--set", item]
        return out


# ---- train configs -----------------------------------------------------------------------
def _set_items(values: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def run_overrides(task_name: str, method_name: str, settings: Settings) -> list[str]:
    """The `--set` items of one run in the order applied: COMMON, the task's, the method's,
    TASK_METHOD's, `--set`."""
    task = resolve_task(task_name)
    pretrain = method_name == "pretrain"
    method = LF_PRETRAIN if pretrain else METHODS[method_name]
    return [*_set_items(COMMON), *_set_items(task.overrides),
            *_set_items(task.pretrain_overrides if pretrain else {}),
            *_set_items(method.overrides),
            *_set_items(TASK_METHOD.get((task_name, method_name), {})), *settings.overrides]


def checkpoint_every(iters_per_b: int, points: int) -> int:
    """The largest divisor of `iters_per_b` at most iters_per_b / points (at least 1)."""
    every = max(1, iters_per_b // max(1, points))
    while iters_per_b % every:
        every -= 1
    return every


def train_config(task_name: str, method_name: str, seed: int, settings: Settings,
                 run_dir: Path, init: Path | None = None) -> dict[str, Any]:
    """The validated train config of one run, as a plain mapping (raises ConfigError).

    The harness owns `run.dir`, `run.progress` and `run.checkpoint_every` (the curve's
    evaluation points: `curve_points` along B; the LF pretraining keeps its final one only).
    """
    from mfpg_robot.config import apply_overrides, validate_train_config

    task = resolve_task(task_name)
    pretrain = method_name == "pretrain"
    method = LF_PRETRAIN if pretrain else METHODS[method_name]
    b = settings.budget_of(task)
    env, fidelity = (task.lf_env, task.lf_fidelity) if pretrain else (task.hf_env,
                                                                      task.hf_fidelity)
    data: dict[str, Any] = {
        "seed": seed,
        "algo": {"name": method.algo},
        "hf": {"env": env, "fidelity": fidelity, "total_steps": method.budget_factor * b},
        "lf": {"env": task.lf_env, "fidelity": task.lf_fidelity},
        "run": {},
    }
    if task.lf_fidelity is None:
        data["lf"].pop("fidelity")
    data = apply_overrides(data, run_overrides(task_name, method_name, settings))
    if init is not None:
        data["init"] = {**data.get("init", {}), "checkpoint": str(init)}
    data["run"].update(dir=str(run_dir), progress=False)
    source = f"train config of {task_name} {method_name} s{seed}"
    per_iter = validate_train_config(data, source).hf.steps_per_iter
    every = 0 if pretrain else checkpoint_every(max(1, b // per_iter), task.curve_points)
    data["run"]["checkpoint_every"] = every
    return validate_train_config(data, source).to_dict()


def run_spec(task_name: str, method_name: str, seed: int, settings: Settings) -> dict[str, Any]:
    """Everything a run's result depends on; a stored result is reused only if equal."""
    task = resolve_task(task_name)
    method = LF_PRETRAIN if method_name == "pretrain" else METHODS[method_name]
    episodes, horizon = settings.eval_of(task)
    # resolved below, or not a property of the run
    resolved = ("seeds", "budget", "eval_episodes", "eval_horizon", "methods")
    task_def = {k: v for k, v in dataclasses.asdict(task).items() if k not in resolved}
    return {
        "format": FORMAT, "task": task_name, "method": method_name, "seed": seed,
        "task_def": task_def, "method_def": dataclasses.asdict(method),
        "lf_pretrain": dataclasses.asdict(LF_PRETRAIN) if method.warm_start else None,
        "budget": settings.budget_of(task), "eval_episodes": episodes, "eval_horizon": horizon,
        "overrides": run_overrides(task_name, method_name, settings),
        **({"calibration": dataclasses.asdict(CALIBRATED[method_name])}
           if method_name in CALIBRATED else {}),
    }


# ---- files -------------------------------------------------------------------------------
def run_paths(out: Path, task: str, method: str, seed: int) -> tuple[Path, Path, Path]:
    """(result JSON, run folder, log) of one run; method "pretrain" is the LF pretraining."""
    base = out / "pretrain" / task if method == "pretrain" else out / "runs" / task / method
    return base / f"s{seed}.json", base / f"s{seed}", out / "logs" / task / f"{method}-s{seed}.log"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `path` atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def stored_result(path: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The result at `path` if there is one made with `spec`; BenchError if made otherwise."""
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if result.get("spec") != spec:
        differ = sorted(k for k in {*spec, *result.get("spec", {})}
                        if spec.get(k) != result.get("spec", {}).get(k))
        raise BenchError(f"{path} was made with other settings ({', '.join(differ)} differ); "
                         f"use another --out folder, or delete that file to rerun it")
    return result


# ---- one run -----------------------------------------------------------------------------
def evaluate(policy: Any, task: Task, episodes: int, horizon: int | None) -> list[float]:
    """Returns of the mean-action policy on the HF env, episode i from reset seed EVAL_SEED+i."""
    import gymnasium as gym
    import numpy as np
    import torch

    import sim  # noqa: F401  (registers the mfpg/* envs)

    kwargs = {} if task.hf_fidelity is None else {"fidelity": task.hf_fidelity}
    if horizon is not None:
        kwargs["max_episode_steps"] = horizon
    envs = [gym.make(task.hf_env, **kwargs) for _ in range(episodes)]
    try:
        obs = np.stack([env.reset(seed=EVAL_SEED + i)[0] for i, env in enumerate(envs)])
        low, high = envs[0].action_space.low, envs[0].action_space.high
        returns, alive = np.zeros(episodes), np.ones(episodes, dtype=bool)
        while alive.any():
            with torch.inference_mode():
                mean = policy.mean(torch.as_tensor(obs, dtype=torch.float32)).numpy()
            actions = np.clip(mean, low, high)
            for i in np.flatnonzero(alive):
                obs[i], reward, terminated, truncated, _ = envs[i].step(actions[i])
                returns[i] += float(reward)
                alive[i] = not (terminated or truncated)
        return returns.tolist()
    finally:
        for env in envs:
            env.close()


def _train(cfg_data: dict[str, Any], run_dir: Path) -> tuple[Any, float]:
    """Train from scratch in `run_dir` (a stale folder of an unfinished run is removed)."""
    from mfpg_robot.config import validate_train_config
    from mfpg_robot.train import train

    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    result = train(validate_train_config(cfg_data, str(run_dir)))
    return result, time.perf_counter() - t0


def _curve(run_dir: Path, task: Task, cfg: dict[str, Any], b: int, episodes: int,
           horizon: int | None) -> list[tuple[int, float, list[float]]]:
    """(HF steps, mean return, returns) at the run's checkpoints up to B, at each multiple of
    B beyond, and at the end; every checkpoint but the final one is then deleted."""
    from mfpg_robot.run_dir import load_checkpoint, policy_from_checkpoint

    iters_per_b = max(1, b // cfg["hf"]["steps_per_iter"])
    points, final = [], run_dir / "checkpoints" / "final.pt"
    for path in sorted((run_dir / "checkpoints").glob("*.pt")):
        ckpt = load_checkpoint(path)
        steps, iteration = int(ckpt["hf_steps"]), int(ckpt["iteration"])
        if path == final or iteration <= iters_per_b or iteration % iters_per_b == 0:
            returns = evaluate(policy_from_checkpoint(ckpt), task, episodes, horizon)
            points.append((steps, sum(returns) / len(returns), returns))
        if path != final:
            path.unlink()
    return sorted(points, key=lambda p: p[0])


@contextmanager
def robot_models(robot: str, models: dict[str, Path], folder: Path) -> Iterator[None]:
    """Robot configs looked up in `folder` (a copy of configs/robots/ whose `robot` names
    `models` too) while inside: how a run trains on a model it made, leaving the shipped
    configs alone."""
    import yaml

    import sim.robot_config as robot_config

    folder.mkdir(parents=True, exist_ok=True)
    for path in robot_config.ROBOTS_DIR.glob("*.yaml"):
        shutil.copy(path, folder / path.name)
    data = yaml.safe_load((folder / f"{robot}.yaml").read_text())
    data["models"].update({name: str(path) for name, path in models.items()})
    (folder / f"{robot}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    before = robot_config.ROBOTS_DIR
    robot_config.ROBOTS_DIR = folder
    try:
        yield
    finally:
        robot_config.ROBOTS_DIR = before


def run_calibrated(checkpoint: Path, task_name: str, method_name: str, seed: int,
                   settings: Settings, run_dir: Path) -> dict[str, Any]:
    """A CALIBRATED method's run in `run_dir` from the LF-pretrained `checkpoint`: HF
    collection, calibration, LF training, evaluation (see `Calibrated`)."""
    import gymnasium as gym
    import numpy as np

    import sim  # noqa: F401  (registers the mfpg/* envs)
    from mfpg_robot.buffer import HFCollector
    from mfpg_robot.calibrate import calibrate, load_replay_data, write_model
    from mfpg_robot.config import env_robot
    from mfpg_robot.episodes import EpisodeStore
    from mfpg_robot.run_dir import load_checkpoint, policy_from_checkpoint

    task, how = resolve_task(task_name), CALIBRATED[method_name]
    robot = env_robot(task.hf_env)
    if robot is None or task.hf_fidelity is None:
        raise BenchError(f"{method_name} calibrates a robot's LF model; task '{task_name}' "
                         "has none")
    b = settings.budget_of(task)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    policy = policy_from_checkpoint(load_checkpoint(checkpoint))
    policy.log_std.data.fill_(how.log_std)
    env = gym.make(task.hf_env, fidelity=task.hf_fidelity)
    store = EpisodeStore(run_dir / "hf" / "hf_episodes")
    try:
        HFCollector(env, policy, np.random.default_rng(seed), seed, sink=store.write).collect(b)
    finally:
        env.close()
    collect_s = time.perf_counter() - t0
    data = load_replay_data(run_dir / "hf", robot)
    fit = calibrate(data, robot, task.lf_fidelity, how.params, max_evals=how.max_evals,
                    seed=seed)
    name = f"{task.lf_fidelity}_calibrated"
    xml = write_model(fit, run_dir / f"{name}.xml")
    with robot_models(robot.name, {name: xml}, run_dir / "robots"):
        cfg = train_config(task_name, "pretrain", seed, settings, run_dir / "lf", init=checkpoint)
        cfg["hf"].update(fidelity=name, total_steps=how.lf_factor * b)
        result, wall = _train(cfg, run_dir / "lf")
    returns = evaluate(result.policy, task, *settings.eval_of(task))
    return {"hf_samples": b, "lf_train_samples": int(result.history[-1]["hf_steps"]),
            "train_wall_s": collect_s + fit.wall_s + wall, "collect_s": collect_s,
            "lf_train_s": wall, "final": (sum(returns) / len(returns), returns),
            "calibration": {"error_before": fit.error_before, "error_after": fit.error_after,
                            "before": fit.before, "after": fit.after, "latency": fit.latency,
                            "wall_s": fit.wall_s}}


def lf_samples(history: list[dict[str, Any]]) -> int:
    """LF control steps a run simulated (the multi-fidelity algorithms log them)."""
    return int(sum(row.get("lf/steps") or 0 for row in history))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def pretrain(out: Path, task_name: str, seed: int, settings: Settings) -> dict[str, Any]:
    """The LF-pretrained policy of (task, seed): from DIR, else trained now (file-locked)."""
    spec = run_spec(task_name, "pretrain", seed, settings)
    result_path, run_dir, _ = run_paths(out, task_name, "pretrain", seed)
    with _locked(result_path.with_suffix(".lock")):
        found = stored_result(result_path, spec)
        if found is not None:
            return found
        from mfpg_robot.run_dir import policy_from_checkpoint

        task = resolve_task(task_name)
        result, wall = _train(train_config(task_name, "pretrain", seed, settings, run_dir),
                              run_dir)
        t0 = time.perf_counter()
        policy = policy_from_checkpoint(result.checkpoint)
        returns = evaluate(policy, task, *settings.eval_of(task))
        done = {
            "spec": spec, "lf_samples": int(result.history[-1]["hf_steps"]), "wall_s": wall,
            "eval_s": time.perf_counter() - t0, "hf_return": sum(returns) / len(returns),
            "hf_returns": returns, "checkpoint": str(result.checkpoint.relative_to(out)),
        }
        write_json(result_path, done)
        return done


def run_one(out: Path, task_name: str, method_name: str, seed: int,
            settings: Settings) -> dict[str, Any]:
    """Train and evaluate one (task, method, seed) unless its result is in DIR."""
    spec = run_spec(task_name, method_name, seed, settings)
    result_path, run_dir, _ = run_paths(out, task_name, method_name, seed)
    found = stored_result(result_path, spec)
    if found is not None:
        return found
    task, method = resolve_task(task_name), METHODS[method_name]
    b = settings.budget_of(task)
    base = pretrain(out, task_name, seed, settings) if method.warm_start else None
    record: dict[str, Any] = {"spec": spec, "hf_samples": 0, "lf_samples": 0, "wall_s": 0.0,
                              "curve": []}
    if base is not None:
        record.update(lf_samples=base["lf_samples"], wall_s=base["wall_s"],
                      pretrain_wall_s=base["wall_s"],
                      curve=[(0, base["hf_return"], base["hf_returns"])])
    if method_name in CALIBRATED:
        record.update(run_calibrated(out / base["checkpoint"], task_name, method_name, seed,
                                     settings, run_dir))
        record["curve"].append((record["hf_samples"], *record.pop("final")))
        record["lf_samples"] += record["lf_train_samples"]
        record["wall_s"] += record["train_wall_s"]
    elif method.algo is not None:
        init = out / base["checkpoint"] if base is not None else None
        cfg = train_config(task_name, method_name, seed, settings, run_dir, init=init)
        result, wall = _train(cfg, run_dir)
        t0 = time.perf_counter()
        curve = _curve(run_dir, task, cfg, b, *settings.eval_of(task))
        if curve and curve[0][0] == 0:  # the run's own start checkpoint
            record["curve"] = []
        record["curve"] += curve
        record.update(hf_samples=int(result.history[-1]["hf_steps"]),
                      lf_samples=record["lf_samples"] + lf_samples(result.history),
                      wall_s=record["wall_s"] + wall, train_wall_s=wall,
                      eval_s=time.perf_counter() - t0)
    last = record["curve"][-1]
    record.update(final_return=last[1], final_returns=last[2],
                  curve=[[steps, ret] for steps, ret, _ in record["curve"]])
    write_json(result_path, record)
    return record


# ---- the sweep ---------------------------------------------------------------------------
@dataclass
class Job:
    task: str
    method: str  # a METHODS name, or "pretrain"
    seed: int
    needs: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.task} {self.method} s{self.seed}"


def runnable(task: str, methods: list[str]) -> list[str]:
    """The methods of `methods` that `task` can run."""
    allowed = resolve_task(task).methods
    robot = resolve_task(task).hf_fidelity is not None  # CALIBRATED methods need a robot's model
    return [m for m in methods if (allowed is None or m in allowed)
            and (robot or m not in CALIBRATED)]


def plan(tasks: list[str], methods: list[str], seeds: dict[str, list[int]]) -> list[Job]:
    """Every run of the sweep, LF pretraining first (the warm-started runs need it)."""
    jobs: list[Job] = []
    for t in tasks:
        if any(METHODS[m].warm_start for m in runnable(t, methods)):
            jobs += [Job(t, "pretrain", s) for s in seeds[t]]
    for t in tasks:
        # larger budgets first, so that the sweep ends on short runs
        for m in sorted(runnable(t, methods), key=lambda m: -METHODS[m].budget_factor):
            for s in seeds[t]:
                needs = (Job(t, "pretrain", s).key,) if METHODS[m].warm_start else ()
                jobs.append(Job(t, m, s, needs))
    return jobs


def check_configs(jobs: list[Job], settings: Settings, out: Path) -> None:
    """Validate every run's train config before anything runs (BenchError on the first bad)."""
    for job in jobs:
        if job.method != "pretrain" and METHODS[job.method].algo is None:
            continue
        try:
            train_config(job.task, job.method, job.seed, settings, out)
        except ConfigError as err:
            raise BenchError(str(err)) from None


def run_command(job: Job, out: Path, settings: Settings) -> list[str]:
    """The command line of one run's process (`run-one` or `pretrain`) writing into `out`."""
    kind = ["pretrain"] if job.method == "pretrain" else ["run-one", "--method", job.method]
    return [sys.executable, "-m", "benchmarks.sample_efficiency", *kind, "--out", str(out),
            "--task", job.task, "--seed", str(job.seed), *settings.args()]


def summary(out: Path, job: Job) -> str:
    """One line on a finished run: its HF return and wall time."""
    data = json.loads(run_paths(out, job.task, job.method, job.seed)[0].read_text())
    ret = data["hf_return"] if job.method == "pretrain" else data["final_return"]
    return f"HF return {ret:.1f}, {data['wall_s']:.0f} s"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def pending_jobs(jobs: list[Job], out: Path, settings: Settings) -> tuple[list[Job], set[str]]:
    """(the jobs to run, the keys of those whose result is in `out` already)."""
    pending, done = [], set()
    for job in jobs:
        spec = run_spec(job.task, job.method, job.seed, settings)
        if stored_result(run_paths(out, job.task, job.method, job.seed)[0], spec) is None:
            pending.append(job)
        else:
            done.add(job.key)
    return pending, done


def run_jobs(jobs: list[Job], out: Path, settings: Settings, workers: int) -> list[str]:
    """Run the jobs as subprocesses, `workers` at a time; returns the keys that failed.

    Ctrl+C or SIGTERM stops the running jobs (their unfinished runs leave no result) and
    raises KeyboardInterrupt.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    pending, done = pending_jobs(jobs, out, settings)
    failed: list[str] = []
    print(f"{len(jobs)} runs: {len(done)} already in {out}, {len(pending)} to run "
          f"({workers} at a time)", flush=True)
    running: dict[str, tuple[Job, subprocess.Popen, float, Any]] = {}
    total, finished = len(pending), 0
    try:
        while pending or running:
            for job in list(pending):
                if len(running) >= workers:
                    break
                if any(n in failed for n in job.needs):
                    pending.remove(job)
                    failed.append(job.key)
                    finished += 1
                    print(f"[{finished}/{total}] skipped {job.key}: its LF pretraining failed")
                elif all(n in done for n in job.needs):
                    pending.remove(job)
                    log = run_paths(out, job.task, job.method, job.seed)[2]
                    log.parent.mkdir(parents=True, exist_ok=True)
                    f = log.open("w")
                    proc = subprocess.Popen(run_command(job, out, settings), stdout=f,
                                            stderr=subprocess.STDOUT, env=env)
                    running[job.key] = (job, proc, time.perf_counter(), f)
            time.sleep(0.2)
            for key, (job, proc, t0, f) in list(running.items()):
                if proc.poll() is None:
                    continue
                f.close()
                del running[key]
                finished += 1
                log = run_paths(out, job.task, job.method, job.seed)[2]
                if proc.returncode == 0:
                    done.add(key)
                    print(f"[{finished}/{total}] done {key}: {summary(out, job)}", flush=True)
                else:
                    failed.append(key)
                    tail = log.read_text().strip().splitlines()[-5:]
                    print(f"[{finished}/{total}] FAILED {key} (exit {proc.returncode}, "
                          f"{time.perf_counter() - t0:.0f} s); log {log}:\n    "
                          + "\n    ".join(tail), flush=True)
    except KeyboardInterrupt:
        for _, proc, _, _ in running.values():
            proc.terminate()
        for _, proc, _, f in running.values():
            proc.wait()
            f.close()
        raise
    return failed


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}"


def _commit() -> str | None:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=False)
    return proc.stdout.strip() or None


# ---- command line ------------------------------------------------------------------------
def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="folder of the sweep (DIR)")
    p.add_argument("--budget", type=int, help="HF budget B of every task (default: per task)")
    p.add_argument("--eval-episodes", type=int, help="evaluation episodes (default: per task)")
    p.add_argument("--eval-horizon", type=int,
                   help="evaluation episode length (default: the env's time limit)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="train-config override of every run; repeatable")


def sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mfpg-robot bench sample-efficiency",
        description="Final HF return per method at equal HF budgets (see the module docstring "
                    "of benchmarks/sample_efficiency.py).")
    _common_args(p)
    p.add_argument("--quick", action="store_true",
                   help=f"{', '.join(QUICK_TASKS)}: {', '.join(QUICK_METHODS)}, seeds "
                        f"{' '.join(map(str, QUICK_SEEDS))} (flags below override)")
    others = " ".join(t for t in TASKS if t not in SUITE)
    p.add_argument("--tasks", nargs="+", help=f"default: {' '.join(SUITE)}; also: {others}, "
                   "and <robot>-<HF model>-<LF model>")
    p.add_argument("--methods", nargs="+", help=f"default: {' '.join(METHODS)}")
    p.add_argument("--seeds", nargs="+", type=int, help="default: 0..n-1, n per task")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs in parallel (processes; with --ray the cluster's CPUs decide)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="each run a Ray task on the cluster at ADDRESS (auto, HOST:PORT, "
                        "ray://HOST:10001; none: the one ray.init() finds or starts); the "
                        "runs' files come back to --out (docs/scale-out.md)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing; aggregate what DIR holds")
    return p


def run_parser(kind: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"sample_efficiency {kind}")
    _common_args(p)
    p.add_argument("--task", required=True)
    if kind == "run-one":
        p.add_argument("--method", required=True)
    p.add_argument("--seed", type=int, required=True)
    return p


def _settings(args: argparse.Namespace) -> Settings:
    for key in ("budget", "eval_episodes", "eval_horizon"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise BenchError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    return Settings(args.budget, args.eval_episodes, args.eval_horizon, tuple(args.overrides))


def sweep(argv: list[str]) -> int:
    from benchmarks.sample_efficiency_report import report

    args = sweep_parser().parse_args(argv)
    settings = _settings(args)
    tasks = args.tasks or list(QUICK_TASKS if args.quick else SUITE)
    methods = args.methods or list(QUICK_METHODS if args.quick else METHODS)
    defs = {t: resolve_task(t) for t in tasks}
    check_methods(methods)
    if args.jobs < 1:
        raise BenchError(f"--jobs must be >= 1, got {args.jobs}")
    seeds = {t: args.seeds or (list(QUICK_SEEDS) if args.quick else list(range(d.seeds)))
             for t, d in defs.items()}
    out = args.out.resolve()
    jobs = plan(tasks, methods, seeds)
    for t in tasks:
        left_out = sorted(set(methods) - set(runnable(t, methods)))
        if left_out:
            print(f"not run on {t} (it runs {', '.join(defs[t].methods or ())}): "
                  f"{', '.join(left_out)}")
    if not jobs:
        raise BenchError("none of the methods can run on the tasks given")
    failed: list[str] = []
    if not args.report_only:
        check_configs(jobs, settings, out)
        if args.ray is None:
            failed = run_jobs(jobs, out, settings, args.jobs)
        else:
            from benchmarks.sweep_ray import run_jobs_ray

            failed = run_jobs_ray(jobs, out, settings, args.ray or None)
    context = {"command": " ".join(["mfpg-robot bench sample-efficiency", *argv]),
               "machine": _machine(), "commit": _commit()}
    report(out, tasks, methods, seeds, settings, context)
    if failed:
        print(f"{len(failed)} run(s) failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] in (["run-one"], ["pretrain"]):
            args = run_parser(argv[0]).parse_args(argv[1:])
            out, settings = args.out.resolve(), _settings(args)
            resolve_task(args.task)
            if argv[0] == "pretrain":
                pretrain(out, args.task, args.seed, settings)
            else:
                check_methods([args.method])
                run_one(out, args.task, args.method, args.seed, settings)
            return 0
        return sweep(argv)
    except (BenchError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
