"""HF data on disk: every episode (or piece of one) written atomically as it completes.

    <run>/hf_episodes/ep_000012.npz      episode 12, whole
    <run>/hf_episodes/ep_000013_0.npz    episode 13, piece 0 (a cut split it: see below)

A `Segment` is the rows of one episode inside one iteration, in collection order, with
everything the learner used: observations, the noise eps, actions, log-probs, rewards,
termination/truncation flags, next observations and the measured states (joint positions
and velocities, task variables). An episode is written as pieces when an iteration boundary
cuts it (a simulated HF env keeps episodes running across iterations) or an interrupt stops
it; `ended` marks the segment that ends the episode. A piece that ends an episode early on
a real-time robot (the iteration boundary there ends the episode: the robot cannot pause)
has `truncated` set on its last row and `cut` True: its return is not a full episode's.

`key = (episode, part)` orders segments in time, so a resume replays every segment whose key
is at or after the checkpoint's `EpisodeStore.next_key`.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mfpg_robot.atomic import atomic_write
from sim.state import RobotState

#: Row arrays of a segment (besides the states), in `RolloutBuffer` field names.
ROW_FIELDS = ("obs", "eps", "actions", "logprobs", "rewards", "terminated", "truncated",
              "next_obs", "episode_start")
_NAME = re.compile(r"^ep_(\d{6,})(?:_(\d+))?\.npz$")


class EpisodeDataError(ValueError):
    """An episode file that cannot be read, or that does not continue the run."""


@dataclass
class Segment:
    """The rows of one episode within one iteration (see the module docstring)."""

    episode: int  # global episode index
    part: int  # piece index within the episode; -1: the whole episode in one file
    iteration: int  # 1-based iteration the rows were collected in
    row0: int  # row of the first step within that iteration's rollout
    rows: dict[str, np.ndarray]  # ROW_FIELDS -> (n, ...) arrays
    states: list[RobotState] | None  # measured state of each row; None: the env has none
    ended: bool  # the episode ended on this segment's last row (terminated/truncated/cut)
    cut: bool  # the episode was cut short by the session (iteration boundary on a robot,
    #            interrupt), not by the task or its time limit
    episode_return: float  # undiscounted return of the whole episode when `ended`, else nan
    episode_length: int  # steps of the whole episode when `ended`, else 0
    robot_time_s: float  # wall time spent in env reset/step for these rows
    env_rng: dict[str, Any] | None = None  # the env's numpy generator state after the rows

    @property
    def key(self) -> tuple[int, int]:
        return (self.episode, max(self.part, 0))

    def __len__(self) -> int:
        return int(self.rows["obs"].shape[0])

    @property
    def filename(self) -> str:
        suffix = "" if self.part < 0 else f"_{self.part}"
        return f"ep_{self.episode:06d}{suffix}.npz"


def _states_to_arrays(states: list[RobotState]) -> dict[str, np.ndarray]:
    joints = list(states[0].positions)
    out = {
        "state_q": np.array([[s.positions[j] for j in joints] for s in states]),
        "state_v": np.array([[s.velocities[j] for j in joints] for s in states]),
    }
    for k in states[0].task:
        out[f"state_task_{k}"] = np.array([s.task[k] for s in states], dtype=np.float64)
    return out


def _states_from_arrays(data: Any, joints: list[str], task_keys: list[str]) -> list[RobotState]:
    q, v = data["state_q"], data["state_v"]
    tasks = {k: data[f"state_task_{k}"] for k in task_keys}
    return [RobotState.from_arrays(joints, q[i], v[i], {k: t[i] for k, t in tasks.items()})
            for i in range(q.shape[0])]


def encode_segment(seg: Segment) -> bytes:
    """The .npz bytes of a segment (arrays as is; metadata as one JSON string)."""
    arrays = dict(seg.rows)
    meta = {
        "episode": seg.episode, "part": seg.part, "iteration": seg.iteration, "row0": seg.row0,
        "ended": seg.ended, "cut": seg.cut,
        "episode_return": None if math.isnan(seg.episode_return) else seg.episode_return,
        "episode_length": seg.episode_length, "robot_time_s": seg.robot_time_s,
        "env_rng": seg.env_rng, "joints": None, "task_keys": [],
    }
    if seg.states is not None:
        arrays.update(_states_to_arrays(seg.states))
        meta["joints"] = list(seg.states[0].positions)
        meta["task_keys"] = list(seg.states[0].task)
    arrays["meta"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def read_segment(path: Path) -> Segment:
    """Load one segment file; `EpisodeDataError` names the file if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            rows = {k: data[k] for k in ROW_FIELDS}
            states = None
            if meta["joints"] is not None:
                states = _states_from_arrays(data, meta["joints"], meta["task_keys"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise EpisodeDataError(
            f"HF episode file {path} cannot be read ({type(err).__name__}: {err}); it is "
            f"corrupt or truncated: move it out of {path.parent} to continue without it"
        ) from None
    ret = meta["episode_return"]
    return Segment(
        episode=int(meta["episode"]), part=int(meta["part"]), iteration=int(meta["iteration"]),
        row0=int(meta["row0"]), rows=rows, states=states, ended=bool(meta["ended"]),
        cut=bool(meta["cut"]), episode_return=math.nan if ret is None else float(ret),
        episode_length=int(meta["episode_length"]), robot_time_s=float(meta["robot_time_s"]),
        env_rng=meta["env_rng"],
    )


def segment_key(path: Path) -> tuple[int, int] | None:
    """(episode, part) from a segment file name; None for other files."""
    m = _NAME.match(path.name)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


class EpisodeStore:
    """The `hf_episodes/` folder of a run."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, seg: Segment) -> Path:
        """Atomically write one segment (temp file, fsync, rename)."""
        data = encode_segment(seg)
        path = self.folder / seg.filename
        atomic_write(path, lambda f: f.write(data))
        return path

    def paths_from(self, key: tuple[int, int]) -> list[Path]:
        """Segment files with key >= `key`, in time order."""
        found = [(k, p) for p in self.folder.iterdir() if (k := segment_key(p)) is not None]
        return [p for k, p in sorted(found) if k >= key]

    def read_from(self, key: tuple[int, int]) -> list[Segment]:
        """Every segment at or after `key`, in time order."""
        return [read_segment(p) for p in self.paths_from(key)]

    def remove_from(self, key: tuple[int, int]) -> int:
        """Delete the segments at or after `key` (regenerated bitwise by a resumed simulated
        run); returns how many."""
        paths = self.paths_from(key)
        for p in paths:
            p.unlink()
        return len(paths)

    def count(self) -> int:
        return sum(1 for p in self.folder.iterdir() if segment_key(p) is not None)
