"""ONNX export of a trained policy, for deployment on the robot: `export_policy`.

    export_policy("runs/my-run")                     # -> runs/my-run/policy.onnx
    export_policy("runs/my-run/checkpoints/iter_000010.pt", "policy.onnx")

The graph is the deterministic policy with everything a deployment needs inside it:

    observation (batch, obs_dim) float32, raw, in the task's layout
      -> clip((observation - mean) / sqrt(var + eps), -clip, clip)   normalisation (float32)
      -> MLP mean action (tanh hidden layers)
      -> clip to [-1, 1]                                            "action" (batch, act_dim)
      -> lower + (action + 1) / 2 (upper - lower)                   "command" (batch, act_dim)

`action` is the normalised action the robot env takes; `command` the physical command in the
robot config's units (volts, N m, or servo targets; `sim.actuation.action_to_command`). Any
finite or infinite observation gives finite outputs inside those bounds (the normalisation
clips). A NaN in an observation row gives NaN outputs for that row, by design: a NaN
observation is a sensor or driver fault, and the safety layer turns a NaN action into a
latched stop with nothing sent; a substituted number would hide the fault.

Metadata (`metadata_props`, every value a JSON string; `read_metadata` parses them): robot
name and model id, joints (names, units, actuated, limits, velocity limits), actuation and
command bounds, control rate, observation and action layout, hashes of the training config and
of the robot config, package version, HF samples trained on, the source checkpoint.

Exported with the `torch.onnx` dynamo exporter (opset 18), then checked: `onnx.checker`
(full check), and onnxruntime against the torch policy on 1000 random observations spread
over the normalisation's range plus extreme rows (+-1e6, +-inf, zeros): actions agree within
`TOLERANCE`, commands within `TOLERANCE` x half the command range. The file is written
atomically (temp file, rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import sim
from mfpg_robot.policy import GaussianPolicy
from mfpg_robot.run_dir import load_checkpoint, policy_from_checkpoint
from sim.actuation import command_bounds
from sim.robot_config import ConfigError, RobotConfig, load_robot_config

INPUT_NAME = "observation"
OUTPUT_NAMES = ("action", "command")
META_PREFIX = "mfpg."
TOLERANCE = 1e-5
VERIFY_SAMPLES = 1000
OPSET = 18

log = logging.getLogger(__name__)


class ExportError(ValueError):
    """A checkpoint that cannot be exported, or an export that failed its checks."""


class ExportCheckError(RuntimeError):
    """The written graph failed its checks against the torch policy (a bug, not bad input)."""


class PolicyMismatchError(ValueError):
    """An exported policy (or checkpoint) made for another robot or observation layout."""


class DeployedPolicy(nn.Module):
    """The exported graph (module docstring): raw observation -> (action, command)."""

    def __init__(self, policy: GaussianPolicy, lower: np.ndarray, upper: np.ndarray) -> None:
        super().__init__()
        norm = policy.obs_norm
        self.register_buffer("obs_mean", norm.mean.detach().to(torch.float32).clone())
        self.register_buffer(
            "obs_scale", torch.rsqrt(norm.var.detach() + norm.eps).to(torch.float32)
        )
        self.obs_clip = float(norm.clip)
        layers: list[nn.Module] = []
        for module in policy.mu:
            if isinstance(module, nn.Linear):
                linear = nn.Linear(module.in_features, module.out_features)
                linear.load_state_dict(module.state_dict())
                layers.append(linear)
            else:  # policy.Tanh (sigmoid form): the same function, as one ONNX Tanh
                layers.append(nn.Tanh())
        self.mu = nn.Sequential(*layers)
        self.register_buffer("cmd_lower", torch.as_tensor(lower, dtype=torch.float32))
        self.register_buffer("cmd_half_span", torch.as_tensor((upper - lower) / 2.0,
                                                              dtype=torch.float32))

    def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = ((observation - self.obs_mean) * self.obs_scale).clamp(-self.obs_clip, self.obs_clip)
        action = self.mu(z).clamp(-1.0, 1.0)
        command = self.cmd_lower + (action + 1.0) * self.cmd_half_span
        return action, command


# -- what a checkpoint was trained on --------------------------------------------------------
def resolve_checkpoint(source: str | Path) -> Path:
    """A checkpoint file, or a run folder's checkpoints/final.pt (else its newest one)."""
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        ckpts = path / "checkpoints"
        if (ckpts / "final.pt").is_file():
            return ckpts / "final.pt"
        found = sorted(ckpts.glob("*.pt"), key=lambda p: p.stat().st_mtime) if ckpts.is_dir() \
            else []
        if found:
            return found[-1]
        raise ExportError(
            f"{path} holds no checkpoint (checkpoints/*.pt): pass a run folder whose training "
            "saved at least one checkpoint, or a checkpoint file"
        )
    raise ExportError(f"{path} does not exist: pass a run folder (runs/...) or a checkpoint "
                      "file (runs/.../checkpoints/final.pt)")


def _load(path: Path) -> dict[str, Any]:
    try:
        ckpt = load_checkpoint(path)
    except Exception as err:  # torch/zip/pickle errors of a damaged file, or a foreign file
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if str(path) in text:
            raise ExportError(text) from None
        raise ExportError(
            f"checkpoint {path} cannot be read ({text}): it is truncated, corrupt or not an "
            "mfpg-robot checkpoint; export another checkpoint of the run "
            "(checkpoints/iter_*.pt)"
        ) from None
    missing = [k for k in ("config", "obs_dim", "act_dim", "algo") if k not in ckpt]
    if missing or "policy" not in ckpt.get("algo", {}):
        raise ExportError(f"checkpoint {path} lacks {missing or ['algo.policy']}: it is not a "
                          "complete mfpg-robot checkpoint; export another one")
    return ckpt


def checkpoint_robot(ckpt: dict[str, Any], path: Path) -> tuple[RobotConfig, Any, str]:
    """(robot config, task, env id) a checkpoint was trained for; `ExportError` if none.

    The robot config is the one the run used: its `hf.robot` (a path or name) where that
    loads and names the checkpoint's robot; else, with a warning, the stock config of the
    checkpoint's robot (configs/robots/NAME.yaml; NAME from the checkpoint, else the task's).
    """
    cfg = ckpt["config"]
    env_id = cfg.get("hf", {}).get("env")
    entry = sim.ENV_IDS.get(env_id)
    if entry is None:
        raise ExportError(
            f"checkpoint {path} was trained on '{env_id}', not on a robot task "
            f"({', '.join(sim.ENV_IDS)}): only policies of a robot task can be exported for "
            "deployment"
        )
    task_cls = entry[1]
    name = (ckpt.get("task") or {}).get("robot") or task_cls.robot
    try:
        robot = _run_robot(cfg.get("hf", {}).get("robot"), name, path) or load_robot_config(name)
        task = task_cls(robot)
    except (ConfigError, ValueError) as err:
        raise ExportError(f"checkpoint {path}: its robot config cannot be used: {err}") from None
    obs_dim, act_dim = int(ckpt["obs_dim"]), int(ckpt["act_dim"])
    want = (task.obs_dim, len(robot.actuated_joints))
    if (obs_dim, act_dim) != want:
        raise PolicyMismatchError(
            f"checkpoint {path} has observation/action sizes {obs_dim}/{act_dim}, but "
            f"{task.name} on robot '{robot.name}' has {want[0]}/{want[1]}: it was trained on "
            "another observation layout; export a checkpoint trained on this task"
        )
    return robot, task, env_id


def _run_robot(ref: str | None, name: str, path: Path) -> RobotConfig | None:
    """The run's `hf.robot` config if it loads and is robot `name`; None (warned) otherwise."""
    if not ref:
        return None
    try:
        robot = load_robot_config(ref)
    except ConfigError as err:
        problem = f"cannot be loaded ({err})"
    else:
        if robot.name == name:
            return robot
        problem = f"is now robot '{robot.name}'"
    log.warning("checkpoint %s: its run's robot config hf.robot '%s' %s; exporting with the "
                "stock config of robot '%s', whose limits may differ from the run's", path,
                ref, problem, name)
    return None


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _version() -> str:
    try:
        return importlib.metadata.version("mfpg-robot")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def policy_metadata(ckpt: dict[str, Any], path: Path, robot: RobotConfig, task: Any,
                    env_id: str) -> dict[str, Any]:
    """The metadata stored in the ONNX file (module docstring); JSON-ready values."""
    lower, upper = command_bounds(robot)
    kind = robot.actuation.type
    cmd_units = [robot.joint(n).unit if kind == "position" else {"voltage": "V",
                 "torque": "N m"}[kind] for n in robot.actuated_joints]

    def limits(lim: Any) -> list[float] | None:
        return None if lim is None else [lim.lower, lim.upper]

    return {
        "robot": robot.name,
        "robot_model_id": robot.device.model_id,
        "joints": [
            {"name": j.name, "unit": j.unit, "actuated": j.actuated,
             "soft_limits": limits(j.soft_limits), "hard_limits": limits(j.hard_limits),
             "velocity_limit": j.velocity_limit}
            for j in robot.joints
        ],
        "actuation": {"type": kind, "command_lower": lower.tolist(),
                      "command_upper": upper.tolist(), "command_units": cmd_units,
                      "max_command_change": robot.actuation.max_command_change},
        "control_rate_hz": robot.control_rate_hz,
        "observation": {"name": INPUT_NAME, "shape": ["batch", task.obs_dim],
                        "dtype": "float32", "env": env_id, "task": task.name,
                        "joints": list(robot.joint_names), "normalisation": "inside the graph"},
        "action": {"outputs": list(OUTPUT_NAMES), "shape": ["batch", len(robot.actuated_joints)],
                   "joints": list(robot.actuated_joints), "action_range": [-1.0, 1.0],
                   "command_units": cmd_units},
        "config_hash": _hash(ckpt["config"]),
        "robot_config_hash": _hash(robot.model_dump(mode="json")),
        "package_version": _version(),
        "hf_samples": int(ckpt.get("hf_steps", 0)),
        "checkpoint": str(path),
        "algo": ckpt["config"].get("algo", {}).get("name"),
    }


def read_metadata(onnx_path: str | Path) -> dict[str, Any]:
    """The `mfpg.*` metadata of an exported policy, parsed; `ExportError` if it has none."""
    import onnx

    path = Path(onnx_path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise ExportError(f"{path} is not a readable ONNX file ({err}); pass a policy written "
                          "by `mfpg-robot export`") from None
    meta = {}
    for prop in model.metadata_props:
        if prop.key.startswith(META_PREFIX):
            meta[prop.key.removeprefix(META_PREFIX)] = json.loads(prop.value)
    if "robot" not in meta:
        raise ExportError(f"{path} has no mfpg-robot metadata: it was not written by "
                          "`mfpg-robot export`; export the policy with it")
    return meta


def check_policy_matches(meta: dict[str, Any], robot: RobotConfig, source: str) -> None:
    """`PolicyMismatchError` unless the exported policy was made for `robot`'s task layout."""
    from hardware.robot_env import task_for_robot

    try:
        ours = task_for_robot(robot)
    except ValueError as err:
        raise PolicyMismatchError(f"{source}: robot '{robot.name}' has no task: {err}") from None
    have = {
        "robot": meta["robot"],
        "model id": meta["robot_model_id"],
        "joints": [j["name"] for j in meta["joints"]],
        "actuated joints": meta["action"]["joints"],
        "task": meta["observation"]["task"],
        "observation size": meta["observation"]["shape"][1],
        "action size": meta["action"]["shape"][1],
    }
    want = {
        "robot": robot.name,
        "model id": robot.device.model_id,
        "joints": list(robot.joint_names),
        "actuated joints": list(robot.actuated_joints),
        "task": ours.name,
        "observation size": ours.obs_dim,
        "action size": len(robot.actuated_joints),
    }
    wrong = [f"{k} {have[k]!r} (robot config: {want[k]!r})" for k in have if have[k] != want[k]]
    if wrong:
        raise PolicyMismatchError(
            f"{source} was made for another robot or observation layout: " + "; ".join(wrong)
            + f". Pass the robot config it was trained for (--robot {meta['robot']}), or "
            "export a policy trained on this robot."
        )


# -- export -----------------------------------------------------------------------------------
def default_out_path(source: str | Path, checkpoint: Path) -> Path:
    """RUN_DIR/policy.onnx for a run folder (or its checkpoints), else next to the file."""
    src = Path(source)
    if src.is_dir():
        return src / "policy.onnx"
    if checkpoint.parent.name == "checkpoints" and (checkpoint.parent.parent / "config.yaml") \
            .is_file():
        stem = "policy" if checkpoint.stem == "final" else f"policy_{checkpoint.stem}"
        return checkpoint.parent.parent / f"{stem}.onnx"
    return checkpoint.with_suffix(".onnx")


def export_policy(checkpoint_or_run_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Export a checkpoint (or a run folder's final/newest one) to ONNX; returns the path."""
    path = resolve_checkpoint(checkpoint_or_run_dir)
    ckpt = _load(path)
    robot, task, env_id = checkpoint_robot(ckpt, path)
    try:
        policy = policy_from_checkpoint(ckpt)
    except Exception as err:
        raise ExportError(f"checkpoint {path}: the policy cannot be rebuilt from it ({err}); "
                          "export another checkpoint of the run") from None
    lower, upper = command_bounds(robot)
    module = DeployedPolicy(policy, lower, upper).eval()
    out = Path(out_path) if out_path is not None else default_out_path(checkpoint_or_run_dir,
                                                                        path)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = policy_metadata(ckpt, path, robot, task, env_id)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        _write_onnx(module, task.obs_dim, meta, Path(tmp))
        verify_export(Path(tmp), policy, lower, upper)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def _write_onnx(module: DeployedPolicy, obs_dim: int, meta: dict[str, Any], path: Path) -> None:
    import onnx

    example = (torch.zeros(2, obs_dim),)
    batch = torch.export.Dim("batch")
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, example, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: batch},), dynamo=True, opset_version=OPSET,
                verbose=False, optimize=True,
            )
    finally:
        quiet.setLevel(level)
    model = program.model_proto
    model.doc_string = (
        f"mfpg-robot policy for robot '{meta['robot']}' ({meta['observation']['task']}): "
        "raw observation -> normalised action in [-1, 1], physical command"
    )
    del model.metadata_props[:]
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = META_PREFIX + key, json.dumps(value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def make_session(path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session for batch-1 control loops (`threads` intra-op threads)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def verification_observations(policy: GaussianPolicy, n: int = VERIFY_SAMPLES,
                              seed: int = 0) -> np.ndarray:
    """`n` random rows over +-3 std of the normalisation (clip included), plus extreme rows."""
    rng = np.random.default_rng(seed)
    mean = policy.obs_norm.mean.numpy()
    std = np.sqrt(policy.obs_norm.var.numpy())
    rows = mean + std * rng.uniform(-3.0, 3.0, size=(n, policy.obs_dim)) * 1.5
    extremes = np.array([np.full(policy.obs_dim, v) for v in (1e6, -1e6, np.inf, -np.inf, 0.0)])
    return np.concatenate([rows, extremes]).astype(np.float32)


def verify_export(path: Path, policy: GaussianPolicy, lower: np.ndarray,
                  upper: np.ndarray) -> dict[str, float]:
    """onnxruntime vs torch on `verification_observations`; `ExportCheckError` if they differ."""
    obs = verification_observations(policy)
    action, command = make_session(path).run(None, {INPUT_NAME: obs})
    with torch.no_grad():
        want = policy.mean(torch.from_numpy(obs)).clamp(-1.0, 1.0).numpy()
    want_cmd = lower + (want.astype(np.float64) + 1.0) * 0.5 * (upper - lower)
    err_a = float(np.max(np.abs(action - want)))
    err_c = float(np.max(np.abs(command - want_cmd) / ((upper - lower) / 2.0)))
    finite = bool(np.all(np.isfinite(action)) and np.all(np.isfinite(command)))
    inside = bool(np.all(np.abs(action) <= 1.0) and np.all(command >= lower - 1e-6 * abs(lower))
                  and np.all(command <= upper + 1e-6 * abs(upper)))
    if not (err_a <= TOLERANCE and err_c <= TOLERANCE and finite and inside):
        raise ExportCheckError(
            f"the exported policy {path} disagrees with the torch policy (max |action "
            f"difference| {err_a:.2e}, command {err_c:.2e} of its half-range, tolerance "
            f"{TOLERANCE:g}; finite {finite}, inside the bounds {inside}); this is a bug of the "
            "exporter: please report it with the checkpoint"
        )
    return {"max_action_error": err_a, "max_command_error": err_c}
