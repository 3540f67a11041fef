"""Run an exported policy on the robot (or its emulator): `deploy`.

    report = deploy("runs/my-run/policy.onnx", load_robot_config("furuta"), emulate=True,
                    episodes=3)

The policy runs in onnxruntime (one intra-op thread, `mfpg_robot.export.make_session`) on a
`RobotEnv` opened by `connect_robot`: the same pre-flight, operator confirmation and safety
layer as a training session. Before anything is connected, the ONNX metadata must match the
robot config (robot name and model id, joints, actuated joints, task, observation and action
sizes), else `PolicyMismatchError`. A checkpoint or run folder is accepted too: it is exported
to a temporary ONNX file first (`export_policy`).

Each episode: reset (home, settle, random start), then the deterministic action of the policy
every control period until the episode ends (time limit, task termination or a safety stop;
the next reset acknowledges a stop). Reported per episode (`EpisodeReport`): return, steps,
how it ended, the safety and link events (its reset's included), wall time per control step
(policy + env step, deadline wait included: the period as the loop sees it) p50/p99, host
work per period before the deadline wait p50/p99 (`Scheduler` busy time), policy inference
p50/p99, and missed deadlines.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mfpg_robot.export import (
    INPUT_NAME,
    ExportError,
    check_policy_matches,
    export_policy,
    make_session,
    read_metadata,
)
from mfpg_robot.robot_link import check_port_choice, connect_robot
from sim.robot_config import RobotConfig


@dataclass
class EpisodeReport:
    """One deployed episode (times in seconds)."""

    episode: int
    steps: int
    episode_return: float
    ended: str  # "time_limit", "terminated", or "safety_stop: KIND"
    events: list[dict[str, Any]]
    step_p50_s: float
    step_p99_s: float
    busy_p50_s: float
    busy_p99_s: float
    inference_p50_s: float
    inference_p99_s: float
    missed_deadlines: int
    reset_s: float


@dataclass
class DeployReport:
    """A deployment run: where, what, and every episode."""

    policy: str
    robot: str
    port: str
    emulated: bool
    metadata: dict[str, Any]
    preflight: dict[str, Any]
    episodes: list[EpisodeReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def onnx_policy(source: str | Path) -> Iterator[Path]:
    """An ONNX file as given, or a checkpoint / run folder exported to a temporary one."""
    path = Path(source)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ExportError(f"policy file {path} not found; export one with "
                              "`mfpg-robot export RUN_DIR`")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mfpg-deploy-") as tmp:
        yield export_policy(path, Path(tmp) / "policy.onnx")


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def deploy(
    policy: str | Path,
    robot: RobotConfig,
    *,
    episodes: int,
    port: str | None = None,
    emulate: bool = False,
    confirm: Callable[[str], bool] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    on_episode: Callable[[EpisodeReport], None] | None = None,
) -> DeployReport:
    """Run `episodes` episodes of the exported `policy` on `robot` (module docstring)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    check_port_choice(port, emulate)
    with onnx_policy(policy) as path:
        meta = read_metadata(path)
        check_policy_matches(meta, robot, str(policy))
        session = make_session(path)
        events: list[dict[str, Any]] = []

        def record(event: dict[str, Any]) -> None:
            events.append(event)
            if on_event is not None:
                on_event(event)

        with connect_robot(robot, port=port, emulate=emulate, confirm=confirm,
                           on_event=record, env_kwargs=env_kwargs) as link:
            report = DeployReport(policy=str(policy), robot=robot.name, port=link.port,
                                  emulated=emulate, metadata=meta,
                                  preflight=link.preflight.to_dict())
            for i in range(episodes):
                events.clear()
                episode = _run_episode(link.env, session, i, seed + i, events)
                report.episodes.append(episode)
                if on_episode is not None:
                    on_episode(episode)
    return report


def _run_episode(env: Any, session: Any, index: int, seed: int,
                 events: list[dict[str, Any]]) -> EpisodeReport:
    t0 = time.perf_counter()
    obs, _ = env.reset(seed=seed)
    reset_s = time.perf_counter() - t0
    total, steps = 0.0, 0
    step_times: list[float] = []
    infer_times: list[float] = []
    feed = {INPUT_NAME: obs[None]}
    while True:
        t0 = time.perf_counter()
        action = session.run(["action"], feed)[0][0]
        t1 = time.perf_counter()
        obs, reward, terminated, truncated, info = env.step(action)
        step_times.append(time.perf_counter() - t0)
        infer_times.append(t1 - t0)
        feed = {INPUT_NAME: obs[None]}
        total += float(reward)
        steps += 1
        if terminated or truncated:
            break
    stop = info["safety"]["event"]
    ended = (f"safety_stop: {stop['kind']}" if stop is not None
             else "terminated" if terminated else "time_limit")
    timing = env.timing_stats()
    return EpisodeReport(
        episode=index, steps=steps, episode_return=total, ended=ended,
        events=list(events),
        step_p50_s=_pct(step_times, 50), step_p99_s=_pct(step_times, 99),
        busy_p50_s=timing.busy_p50_s, busy_p99_s=timing.busy_p99_s,
        inference_p50_s=_pct(infer_times, 50), inference_p99_s=_pct(infer_times, 99),
        missed_deadlines=timing.missed, reset_s=reset_s,
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def format_episode(ep: EpisodeReport) -> str:
    """One line per episode for the terminal."""
    kinds = sorted({e["kind"] for e in ep.events})
    return (
        f"episode {ep.episode}: return {ep.episode_return:9.3f} over {ep.steps} steps, "
        f"ended by {ep.ended}; step p50/p99 {_ms(ep.step_p50_s)}/{_ms(ep.step_p99_s)} ms, "
        f"host work {_ms(ep.busy_p50_s)}/{_ms(ep.busy_p99_s)} ms, policy "
        f"{_ms(ep.inference_p50_s)}/{_ms(ep.inference_p99_s)} ms, {ep.missed_deadlines} missed "
        f"deadlines; events: {', '.join(kinds) if kinds else 'none'}"
    )
