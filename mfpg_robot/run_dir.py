"""A training run is a folder: resolved config, metrics, checkpoints, learning-curve plot.

    <run>/config.yaml          the resolved TrainConfig (defaults filled in)
    <run>/metrics.jsonl        one JSON object per iteration, appended and flushed live
    <run>/metrics.csv          the same table (union of keys), rewritten at each checkpoint
    <run>/checkpoints/iter_NNNNNN.pt, final.pt
    <run>/learning_curve.png   mean episode return against HF steps

Every file except the append-only JSONL is written atomically (temp file in the same folder,
then `os.replace`), so a crash never leaves a half-written checkpoint or table behind.
A checkpoint carries the policy with its observation-normalisation statistics and the
dimensions needed to rebuild it (`policy_from_checkpoint`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from mfpg_robot.config import TrainConfig, dump_yaml
from mfpg_robot.policy import GaussianPolicy

CHECKPOINT_FORMAT = 1


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write(fileobj)` into a temp file, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_value(v: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


class RunDir:
    """The folder of one run; refuses to reuse a folder that already holds a run."""

    def __init__(self, path: str | Path, cfg: TrainConfig) -> None:
        self.path = Path(path)
        if (self.path / "config.yaml").exists():
            raise FileExistsError(
                f"run folder {self.path} already holds a run; set run.dir to a new folder "
                f"(e.g. --set run.dir={self.path}-2) or delete it"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = self.path / "checkpoints"
        text = dump_yaml(cfg).encode()
        atomic_write(self.path / "config.yaml", lambda f: f.write(text))
        self._jsonl = (self.path / "metrics.jsonl").open("a")
        self.history: list[dict[str, Any]] = []

    def log(self, row: dict[str, Any]) -> None:
        """Append one iteration's metrics (flushed at once)."""
        self.history.append(row)
        self._jsonl.write(json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n")
        self._jsonl.flush()

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

    def save_checkpoint(self, payload: dict[str, Any], name: str) -> Path:
        """Atomically write `checkpoints/<name>.pt` and refresh metrics.csv."""
        path = self.checkpoint_dir / f"{name}.pt"
        atomic_write(path, lambda f: torch.save(payload, f))
        self.write_csv()
        return path

    def plot(self, x_key: str = "hf_steps", y_key: str = "return_mean") -> Path | None:
        """Learning curve PNG (matplotlib Agg); None if no episode has finished yet."""
        points = [(r[x_key], r[y_key]) for r in self.history
                  if isinstance(r.get(y_key), float) and math.isfinite(r[y_key])]
        if not points:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker=".", lw=1)
        ax.set_xlabel("HF environment steps")
        ax.set_ylabel("mean episode return")
        ax.set_title(self.path.name)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        path = self.path / "learning_curve.png"
        atomic_write(path, lambda f: f.write(buf.getvalue()))
        return path

    def close(self) -> None:
        self._jsonl.close()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `RunDir.save_checkpoint` (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an mfpg-robot checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def policy_from_checkpoint(ckpt: dict[str, Any] | str | Path) -> GaussianPolicy:
    """Rebuild the trained policy, observation-normalisation statistics included."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    algo = ckpt["config"]["algo"]
    policy = GaussianPolicy(ckpt["obs_dim"], ckpt["act_dim"], tuple(algo["hidden"]),
                            algo["log_std_init"])
    policy.load_state_dict(ckpt["algo"]["policy"])
    return policy.eval()
