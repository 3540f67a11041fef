"""A training run is a folder: everything to understand it, and to continue it after a crash.

    <run>/config.yaml            the resolved TrainConfig (defaults filled in; notes on top)
    <run>/metrics.jsonl          one JSON object per iteration, appended and flushed live
    <run>/metrics.csv            the same table (union of keys), rewritten at each checkpoint
    <run>/tensorboard/           the same metrics as TensorBoard events (x: HF steps)
    <run>/hf_episodes/ep_*.npz   every HF episode, written as it completes (`episodes`)
    <run>/checkpoints/iter_NNNNNN.pt, final.pt
    <run>/safety.jsonl           every safety and link event (robot sessions), flushed live
    <run>/preflight.json         what the robot's pre-flight checked (robot sessions)
    <run>/learning_curve.png     HF return against HF samples; rho and c per iteration (MF)

Every file except the append-only JSONL logs is written atomically (temp file in the same
folder, then `os.replace`), so a crash never leaves a half-written checkpoint or table.
A checkpoint holds everything to continue the run (`mfpg_robot.train`) and the policy with
its observation normalisation and dimensions (`policy_from_checkpoint`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import pickle
import re
import threading
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml

from mfpg_robot.atomic import atomic_write
from mfpg_robot.config import TrainConfig, dump_yaml
from mfpg_robot.policy import GaussianPolicy

CHECKPOINT_FORMAT = 1
_ITER = re.compile(r"^iter_(\d{6,})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or not of this kind of run."""


class RunDirError(ValueError):
    """A folder that is not a run folder (or not one that can be continued)."""


def _json_value(v: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _row_from_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: math.nan if v is None else v for k, v in row.items()}


class RunDir:
    """The folder of one run: `create` a new one, or `open` one to continue it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoint_dir = self.path / "checkpoints"
        self.episode_dir = self.path / "hf_episodes"
        self.history: list[dict[str, Any]] = []
        self._jsonl: io.TextIOWrapper | None = None
        self._safety: io.TextIOWrapper | None = None
        self._safety_lock = threading.Lock()
        self.safety_events = 0
        self._tb: Any = None

    @classmethod
    def create(cls, path: str | Path, cfg: TrainConfig, notes: list[str] | None = None) -> RunDir:
        """A new run folder with its resolved config; refuses a folder that holds a run."""
        run = cls(Path(path))
        if (run.path / "config.yaml").exists():
            raise FileExistsError(
                f"run folder {run.path} already holds a run; continue it with "
                f"`mfpg-robot train --resume {run.path}`, or set run.dir to a new folder "
                f"(e.g. --set run.dir={run.path}-2)"
            )
        run.path.mkdir(parents=True, exist_ok=True)
        header = "".join(f"# {line}\n" for line in notes or [])
        text = (header + dump_yaml(cfg)).encode()
        atomic_write(run.path / "config.yaml", lambda f: f.write(text))
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run folder (to resume); `RunDirError` if `path` is not one."""
        run = cls(Path(path))
        if not run.path.is_dir():
            raise RunDirError(f"--resume {run.path}: no such folder; pass a run folder "
                              f"(runs/<name>, the folder a session printed when it started)")
        if not (run.path / "config.yaml").is_file():
            raise RunDirError(
                f"--resume {run.path}: not a run folder (no config.yaml in it); pass the "
                f"folder a session printed when it started, e.g. runs/<name>"
            )
        return run

    def stored_config(self) -> dict[str, Any]:
        """The parsed config.yaml of this run."""
        return yaml.safe_load((self.path / "config.yaml").read_text())

    def update_config(self, cfg: TrainConfig, notes: list[str]) -> None:
        """Rewrite config.yaml with `cfg` (a resume's allowed changes), keeping its notes and
        adding `notes`."""
        path = self.path / "config.yaml"
        kept = [line for line in path.read_text().splitlines(keepends=True)
                if line.startswith("# ")]
        text = ("".join(kept) + "".join(f"# {n}\n" for n in notes) + dump_yaml(cfg)).encode()
        atomic_write(path, lambda f: f.write(text))

    # -- metrics --------------------------------------------------------------------------
    def start_logging(self, upto_iteration: int = 0) -> None:
        """Open the logs. A resumed run keeps the rows of iterations <= `upto_iteration` (the
        checkpoint's) and drops later ones, which the resumed run logs again."""
        path = self.path / "metrics.jsonl"
        if path.exists():
            rows = [_row_from_json(json.loads(line))
                    for line in path.read_text().splitlines() if line.strip()]
            self.history = [r for r in rows if r.get("iteration", 0) <= upto_iteration]
            text = "".join(json.dumps({k: _json_value(v) for k, v in r.items()}) + "\n"
                           for r in self.history).encode()
            atomic_write(path, lambda f: f.write(text))
        self._jsonl = path.open("a")
        safety = self.path / "safety.jsonl"
        if safety.exists():
            self.safety_events = sum(1 for line in safety.read_text().splitlines() if line)
        self._safety = safety.open("a")
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

        last = self.history[-1]["hf_steps"] if self.history else 0
        self._tb = SummaryWriter(str(self.path / "tensorboard"), purge_step=int(last) + 1)

    def log(self, row: dict[str, Any]) -> None:
        """Append one iteration's metrics (JSONL flushed at once, TensorBoard at x=hf_steps)."""
        self.history.append(row)
        assert self._jsonl is not None, "start_logging() first"
        self._jsonl.write(json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n")
        self._jsonl.flush()
        step = int(row["hf_steps"])
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "hf_steps":
                self._tb.add_scalar(k, v, step)
        self._tb.flush()

    def log_safety(self, event: dict[str, Any]) -> None:
        """Append one safety/link event to safety.jsonl and flush (safe from any thread)."""
        line = json.dumps({k: _json_value(v) for k, v in event.items()}, default=str) + "\n"
        with self._safety_lock:
            self.safety_events += 1
            if self._safety is not None:
                self._safety.write(line)
                self._safety.flush()

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        """Atomically write `<run>/<name>` (e.g. the pre-flight record)."""
        text = json.dumps(data, indent=2, default=str).encode()
        path = self.path / name
        atomic_write(path, lambda f: f.write(text))
        return path

    def write_csv(self) -> Path:
        """Rewrite metrics.csv from the history (columns: union of keys, first-seen order)."""
        keys: dict[str, None] = {}
        for row in self.history:
            keys.update(dict.fromkeys(row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(keys))
        writer.writeheader()
        writer.writerows(self.history)
        path = self.path / "metrics.csv"
        atomic_write(path, lambda f: f.write(buf.getvalue().encode()))
        return path

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, data: bytes, name: str) -> Path:
        """Atomically write `checkpoints/<name>.pt` (serialised bytes) and refresh the CSV."""
        path = self.checkpoint_dir / f"{name}.pt"
        atomic_write(path, lambda f: f.write(data))
        self.write_csv()
        return path

    def iteration_checkpoints(self) -> list[tuple[int, Path]]:
        """(iteration, path) of every `iter_NNNNNN.pt`, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoint_dir.iterdir()
                 if (m := _ITER.match(p.name))]
        return sorted(found)

    # -- plot -----------------------------------------------------------------------------
    def plot(self) -> Path | None:
        """learning_curve.png: mean HF return against HF steps, and for multi-fidelity runs
        the correlation rho and the coefficient c per iteration; None before any episode."""
        rows = self.history
        points = [(r["hf_steps"], r["return_mean"]) for r in rows if _finite(r.get("return_mean"))]
        if not points:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        mf = any(_finite(r.get("mf/rho")) for r in rows)
        fig, axes = plt.subplots(1, 2 if mf else 1, figsize=(11 if mf else 6, 4), dpi=100,
                                 squeeze=False)
        ax = axes[0][0]
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker=".", lw=1)
        ax.set_xlabel("HF samples (environment steps)")
        ax.set_ylabel("mean HF episode return")
        ax.set_title(self.path.name)
        ax.grid(alpha=0.3)
        if mf:
            ax = axes[0][1]
            for key, label in (("mf/rho", "correlation rho"), ("mf/c", "coefficient c")):
                pts = [(r["iteration"], r[key]) for r in rows if _finite(r.get(key))]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker=".", lw=1, label=label)
            ax.set_xlabel("iteration")
            ax.set_title("HF/LF control variate")
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        path = self.path / "learning_curve.png"
        atomic_write(path, lambda f: f.write(buf.getvalue()))
        return path

    def close(self) -> None:
        for f in (self._jsonl, self._safety):
            if f is not None:
                f.close()
        self._jsonl = self._safety = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def serialise(payload: dict[str, Any]) -> bytes:
    """A checkpoint payload as the bytes `RunDir.save_checkpoint` writes."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `RunDir.save_checkpoint` (tensors and plain data only).

    `CheckpointError` names the file and the fix for a missing, truncated or corrupt file and
    for a file that is not an mfpg-robot checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass a .pt file from a run "
                              f"folder's checkpoints/ (or the run folder itself)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            pickle.UnpicklingError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({first}); use another checkpoint of "
            f"the run (checkpoints/iter_*.pt), or move this one out of the folder"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not an mfpg-robot checkpoint (format {CHECKPOINT_FORMAT}); pass a .pt "
            f"file from a run folder's checkpoints/"
        )
    return ckpt


def checkpoint_task(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint was trained on: {"env", "robot", "joints", "obs_dim", "act_dim"}."""
    task = ckpt.get("task") or {"env": ckpt["config"]["hf"]["env"], "robot": None,
                                "joints": None}
    return {**task, "obs_dim": int(ckpt["obs_dim"]), "act_dim": int(ckpt["act_dim"])}


def check_checkpoint_task(ckpt: dict[str, Any], path: str | Path, want: dict[str, Any],
                          fix: str) -> None:
    """`CheckpointError` unless the checkpoint's task, robot, joints and observation/action
    dimensions are `want`'s (keys of `checkpoint_task`; None in `want`: not checked)."""
    have = checkpoint_task(ckpt)
    names = {"env": "task (hf.env)", "robot": "robot", "joints": "joints",
             "obs_dim": "observation size", "act_dim": "action size"}
    wrong = [f"{names[k]} {have[k]!r} (this run: {want[k]!r})" for k in names
             if want.get(k) is not None and have.get(k) is not None and have[k] != want[k]]
    if wrong:
        raise CheckpointError(
            f"checkpoint {path} is of another robot or observation layout: "
            + "; ".join(wrong) + f". {fix}"
        )


def policy_from_checkpoint(ckpt: dict[str, Any] | str | Path) -> GaussianPolicy:
    """Rebuild the trained policy, observation-normalisation statistics included."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    algo = ckpt["config"]["algo"]
    policy = GaussianPolicy(ckpt["obs_dim"], ckpt["act_dim"], tuple(algo["hidden"]),
                            algo["log_std_init"])
    policy.load_state_dict(ckpt["algo"]["policy"])
    return policy.eval()
