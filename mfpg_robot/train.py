"""`train(config) -> TrainResult`: one training session, from config to exported policy.

The loop (every algorithm):
    collect `hf.steps_per_iter` HF steps (seeded noise eps recorded; every episode written to
    the run folder as it completes, `mfpg_robot.episodes`)
    -> algorithm.update(rollout, progress)     (gradient steps, lr annealing, obs-norm update)
    -> log a row (HF steps, returns, losses, rho and c, robot time) to the run folder
    -> checkpoint every `run.checkpoint_every` iterations, and at the end (plus a plot and the
       exported ONNX policy).

The HF env is a simulated fidelity or, with `hf.fidelity: robot`, the robot or its emulator
behind the safety layer (`mfpg_robot.hf_env`). On the robot an iteration's last episode ends
at the iteration's last step (the robot rests while the learner updates), and the episode
pairing's LF references start from each paired episode's own measured start
(`lf.same_starts: true`, forced and noted in config.yaml): the robot's reset does not draw its
starts from the simulator's start distribution.

Seeding: torch (network init, minibatch shuffles), a numpy Generator for the action noise,
and the first env reset all derive from `cfg.seed`, so two runs with the same config on the
same machine produce identical parameters.

Checkpoints and resume: after every iteration the whole state (networks, optimisers,
normalisers, the accel rule, c's EMA, every random generator, the collector's episode and a
simulated env's physics) is serialised in memory; it is written every `checkpoint_every`
iterations, at the end, and when the session stops early (Ctrl+C, SIGTERM, a robot that
cannot be reset, an error), so the newest checkpoint is always the state at an iteration
boundary. `train(resume=RUN_DIR)` continues from it: a simulated HF env regenerates what came
after bitwise (the run ends with the parameters of an uninterrupted run); with the robot,
the HF episodes recorded after the checkpoint are replayed from `hf_episodes/` (the updates
they fed are recomputed identically) and the interrupted iteration is completed on the robot.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mfpg_robot.algos import Algorithm, make_algorithm
from mfpg_robot.buffer import HFCollector
from mfpg_robot.config import TrainConfig, load_train_config
from mfpg_robot.episodes import EpisodeStore, Segment
from mfpg_robot.hf_env import HFEnv, SessionAbort, open_hf_env
from mfpg_robot.policy import Critic, GaussianPolicy
from mfpg_robot.resume import prepare_resume
from mfpg_robot.run_dir import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    RunDir,
    check_checkpoint_task,
    serialise,
)
from mfpg_robot.warm_start import warm_start

log = logging.getLogger("mfpg_robot.session")

RECENT_EPISODES = 20  # episodes averaged in `return_recent`
MF_ALGOS = ("mfppo", "mfreinforce")


@dataclass
class TrainResult:
    """What a finished run leaves: the trained networks, the metrics and where they are."""

    policy: GaussianPolicy
    critic: Critic
    algorithm: Algorithm
    config: TrainConfig
    history: list[dict[str, Any]]
    run_dir: Path
    checkpoint: Path
    plot: Path | None
    onnx: Path | None  # the exported policy (robot tasks, run.export)
    hf_steps: int
    robot_time_s: float  # wall time spent in the HF env's resets and steps (this run, all lives)
    safety_events: int


class Interrupted(KeyboardInterrupt):
    """Ctrl+C or SIGTERM stopped the session; everything up to then is saved in `run_dir`;
    `resume` is the command that continues it."""

    def __init__(self, run_dir: Path, resume: str) -> None:
        super().__init__(f"interrupted; resume with: {resume}")
        self.run_dir, self.resume = run_dir, resume


class SessionAborted(RuntimeError):
    """The session could not go on (e.g. the robot cannot be reset); everything is saved."""

    def __init__(self, reason: str, run_dir: Path, resume: str) -> None:
        super().__init__(f"{reason}; everything collected is saved in {run_dir}; resume with: "
                         f"{resume}")
        self.run_dir, self.resume = run_dir, resume


def resume_command(run_dir: Path, emulated: bool = False) -> str:
    """The command that continues the run in `run_dir` (on the emulator if it ran there)."""
    return f"mfpg-robot train --resume {run_dir}" + (" --emulate" if emulated else "")


def default_run_dir(cfg: TrainConfig) -> Path:
    """runs/<algo>-<env>-s<seed>-<YYYYmmdd-HHMMSS> under the current directory."""
    env = cfg.hf.env.replace("/", "_")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kind = "-robot" if cfg.hf.fidelity == "robot" else ""
    return Path("runs") / f"{cfg.algo.name}-{env}{kind}-s{cfg.seed}-{stamp}"


def resolve_session(cfg: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """The session's own rules applied to a config: (config, notes for config.yaml)."""
    notes: list[str] = []
    if (cfg.hf.fidelity == "robot" and cfg.algo.name in MF_ALGOS
            and cfg.lf.pairing == "episode" and not cfg.lf.same_starts):
        cfg = cfg.model_copy(update={"lf": cfg.lf.model_copy(update={"same_starts": True})})
        notes.append(
            "lf.same_starts: true (forced): the robot's reset (move home, settle, measure) "
            "does not draw start states from the simulator's start distribution, so the "
            "episode pairing's LF references start from each paired episode's own measured "
            "start (unbiased for any start distribution)"
        )
    for note in notes:
        log.warning(note)
    return cfg, notes


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (torque off, save, exit 130) while the session runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train(
    config: TrainConfig | str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    resume: str | Path | None = None,
    port: str | None = None,
    emulate: bool = False,
    confirm: Callable[[str], bool] | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> TrainResult:
    """Run (or with `resume=RUN_DIR` continue) the session described by `config`.

    `config`: a TrainConfig, or a YAML path with `overrides` (`a.b=c`); with `resume` it may
    be None (the run folder's config). `port` / `emulate` / `confirm` / `env_kwargs`: the
    robot's port, the device emulator, the operator's confirmation of the pre-flight and
    `RobotEnv` options, for `hf.fidelity: robot`.
    """
    run: RunDir | None = None
    notes: list[str] = []
    if resume is not None:
        if isinstance(config, TrainConfig):
            raise ValueError("resume takes the run folder's config; pass a path or None")
        res = prepare_resume(resume, config, overrides, resolve_session)
        cfg, run = res.config, res.run
        ckpt = None if res.checkpoint is None else (res.checkpoint, res.checkpoint_path)
        if res.changed:
            run.update_config(cfg, [f"resumed with {k}: {a!r} -> {b!r}"
                                    for k, (a, b) in res.changed.items()])
        where = res.checkpoint_path or "the start (no checkpoint yet)"
        log.info("resuming %s from %s", run.path, where)
    else:
        if isinstance(config, TrainConfig):
            if overrides:
                raise ValueError("overrides apply to a config file; pass a path, or a changed "
                                 "TrainConfig (cfg.model_copy(update=...)) without overrides")
            cfg = config
        elif config is None:
            raise ValueError("train() needs a config (or resume=RUN_DIR)")
        else:
            cfg = load_train_config(config, overrides)
        cfg, notes = resolve_session(cfg)
        ckpt = None
    events = _EventRelay()
    try:
        with sigterm_as_interrupt(), open_hf_env(
            cfg, port=port, emulate=emulate, confirm=confirm, on_event=events,
            env_kwargs=env_kwargs,
        ) as hf:
            session = Session(cfg, hf, ckpt)  # networks, warm start: checked before any file
            try:
                if run is None:
                    run = RunDir.create(cfg.run.dir or default_run_dir(cfg), cfg, notes)
                run.start_logging(upto_iteration=session.iteration)
                events.attach(run.log_safety)
                if hf.preflight is not None:
                    run.write_json("preflight.json", hf.preflight)
            except BaseException:
                session.algo.close()
                raise
            return session.run(run)
    finally:
        events.detach()
        if run is not None:
            run.close()


class _EventRelay:
    """`on_event` for the robot link: keeps events until the run folder exists, then writes
    them (and every later one) there."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._sink: Callable[[dict[str, Any]], None] | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            if self._sink is None:
                self._pending.append(event)
            else:
                self._sink(event)

    def attach(self, sink: Callable[[dict[str, Any]], None]) -> None:
        with self._lock:
            for event in self._pending:
                sink(event)
            self._pending.clear()
            self._sink = sink

    def detach(self) -> None:
        with self._lock:
            self._sink = None


class Session:
    """One life of a training run (fresh, or resumed from a checkpoint); see the module doc."""

    def __init__(self, cfg: TrainConfig, hf: HFEnv,
                 ckpt: tuple[dict[str, Any], Path] | None) -> None:
        """`ckpt`: (checkpoint, its path) to continue from; None: a new run."""
        self.cfg, self.hf = cfg, hf
        self.realtime = hf.end_episode is not None  # a device, not a simulation
        env = hf.env
        self.obs_dim = int(np.prod(env.observation_space.shape))
        self.act_dim = int(np.prod(env.action_space.shape))
        robot = hf.robot
        self.task = {"env": cfg.hf.env, "robot": robot.name if robot else None,
                     "joints": list(robot.joint_names) if robot else None,
                     "obs_dim": self.obs_dim, "act_dim": self.act_dim}
        torch.set_num_threads(cfg.run.torch_threads)
        torch.manual_seed(cfg.seed)
        self.noise = np.random.default_rng(cfg.seed)
        self.algo = make_algorithm(cfg, self.obs_dim, self.act_dim)
        self.collector = HFCollector(env, self.algo.policy, self.noise, cfg.seed,
                                     end_episode=hf.end_episode, rest=hf.rest,
                                     sink=self._on_segment,
                                     reset=hf.reset)
        self.recent: deque[float] = deque(maxlen=RECENT_EPISODES)
        self.iteration = 0
        self.written = -1  # iteration of the newest checkpoint on disk
        self.run_dir: RunDir  # set by run()
        self.store: EpisodeStore
        self.bar: tqdm | None = None
        self._bar_steps = 0  # HF steps the bar has been told about
        self._last: dict[str, Any] = {}  # the last logged row (progress bar fields)
        try:
            if ckpt is None:
                if cfg.init.checkpoint is not None:
                    log.info(warm_start(self.algo, cfg.init, self.task))
            else:
                self._restore(*ckpt)
        except BaseException:
            self.algo.close()
            raise
        self.boundary = serialise(self._payload())

    def _restore(self, ckpt: dict[str, Any], path: Path) -> None:
        check_checkpoint_task(ckpt, path, self.task, "It does not belong to this run: move it "
                              "out of the run folder's checkpoints/ to resume from an earlier "
                              "one")
        try:
            self.algo.load_state_dict(ckpt["algo"])
            self.noise.bit_generator.state = ckpt["noise_rng"]
            torch.set_rng_state(ckpt["torch_rng"])
            self.collector.load_state_dict(ckpt["collector"])
            self.recent.extend(ckpt["recent_returns"])
        except (KeyError, TypeError) as err:
            raise CheckpointError(
                f"checkpoint {path} lacks the state to continue the run ({type(err).__name__}: "
                f"{err}); it was not written by this version's `mfpg-robot train`: start a new "
                f"run, warm-started from it with --set init.checkpoint={path}"
            ) from None
        self.iteration = self.written = int(ckpt["iteration"])

    def _prepare_episodes(self) -> None:
        """Resume: replay what the robot recorded after the checkpoint, or (simulated env)
        drop it to be simulated again bitwise."""
        key = (self.collector.episode, self.collector.part)
        if self.collector.snapshot_supported:  # regenerated bitwise from the checkpoint
            n = self.store.remove_from(key)
            if n:
                log.info("resume: %d HF episode file(s) after the checkpoint are simulated "
                         "again", n)
        else:
            segments = self.store.read_from(key)
            self.collector.queue_replay(segments)
            if segments:
                log.info("resume: %d HF episode file(s) (%d steps) recorded after the "
                         "checkpoint are replayed", len(segments), sum(map(len, segments)))

    def _payload(self) -> dict[str, Any]:
        """Everything to continue the run at this iteration boundary (tensors, plain data)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "task": {k: self.task[k] for k in ("env", "robot", "joints")},
            "iteration": self.iteration,
            "hf_steps": self.collector.total_steps,
            "algo": self.algo.state_dict(),
            "noise_rng": self.noise.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "collector": self.collector.state_dict(),
            "recent_returns": list(self.recent),
        }

    # -- the loop ---------------------------------------------------------------------------
    def run(self, run_dir: RunDir) -> TrainResult:
        """Train in `run_dir` to the end of the budget (module docstring)."""
        cfg = self.cfg
        self.run_dir = run_dir
        self.store = EpisodeStore(run_dir.episode_dir)
        try:
            self._prepare_episodes()
            self._write_boundary()
        except BaseException:
            self.algo.close()
            raise
        n_iter, per_iter = cfg.num_iterations, cfg.hf.steps_per_iter
        what = "robot" if self.realtime else "env"
        self._bar_steps = self.collector.total_steps
        self.bar = tqdm(total=n_iter * per_iter, initial=self._bar_steps,
                        unit="step", disable=not cfg.run.progress, dynamic_ncols=True,
                        desc=f"{cfg.algo.name} {cfg.hf.env} ({what})")
        self._postfix({})
        start = time.perf_counter()
        try:
            for iteration in range(self.iteration + 1, n_iter + 1):
                row = self._iterate(iteration, n_iter, per_iter, start)
                self.run_dir.log(row)
                self.iteration = iteration
                self.boundary = serialise(self._payload())
                every = cfg.run.checkpoint_every
                if (every and iteration % every == 0) or iteration == n_iter:
                    self._write_boundary()
                self._postfix(row)
                if cfg.run.progress and iteration % cfg.run.log_every == 0:
                    self.bar.write(_summary_line(row))
        except KeyboardInterrupt:
            self._write_boundary()
            if self.realtime:
                self._session_event("interrupt", "Ctrl+C or SIGTERM: collection stopped, "
                                    "torque off; everything up to now is saved", "torque_off")
            raise Interrupted(self.run_dir.path, self._resume_command()) from None
        except SessionAbort as err:
            self._write_boundary()
            raise SessionAborted(str(err), self.run_dir.path, self._resume_command()) from err
        except BaseException as err:
            self._write_boundary()
            log.error("the session stopped on %s; everything collected is saved in %s; after "
                      "fixing the cause, resume with: %s", type(err).__name__,
                      self.run_dir.path, self._resume_command())
            raise
        finally:
            self.bar.close()
            self.algo.close()
        self._write_boundary()
        ckpt = self.run_dir.save_checkpoint(self.boundary, "final")
        plot = self.run_dir.plot()
        export = self.realtime if cfg.run.export is None else cfg.run.export
        onnx = self._export() if export and self.task["robot"] is not None else None
        return TrainResult(
            self.algo.policy, self.algo.critic, self.algo, cfg, self.run_dir.history,
            self.run_dir.path, ckpt, plot, onnx, self.collector.total_steps,
            self.collector.robot_time_s, self.run_dir.safety_events,
        )

    def _export(self) -> Path | None:
        """<run>/policy.onnx from the final checkpoint; an export that fails is logged (the
        checkpoint is saved: `mfpg-robot export RUN_DIR` retries it)."""
        from mfpg_robot.export import ExportCheckError, ExportError, export_policy

        try:
            return export_policy(self.run_dir.path)
        except (ExportError, ExportCheckError) as err:
            log.error("exporting the policy failed: %s; the final checkpoint is saved, retry "
                      "with `mfpg-robot export %s`", err, self.run_dir.path)
            return None

    def _iterate(self, iteration: int, n_iter: int, per_iter: int, start: float
                 ) -> dict[str, Any]:
        t0 = time.perf_counter()
        replayed = self.collector.replaying
        buffer = self.collector.collect(per_iter)
        t_collect = time.perf_counter() - t0
        assert self.bar is not None
        self.bar.update(self.collector.total_steps - self._bar_steps)  # replayed steps
        self._bar_steps = self.collector.total_steps
        metrics = self.algo.update(buffer, progress=(iteration - 1) / n_iter)
        self.recent.extend(buffer.episode_returns)
        elapsed = time.perf_counter() - t0
        return {
            "iteration": iteration,
            "hf_steps": self.collector.total_steps,
            "episodes": len(buffer.episode_returns),
            "episodes_cut": int(buffer.episode_start.sum()) - len(buffer.episode_returns)
            if self.realtime else 0,
            "return_mean": _mean(buffer.episode_returns),
            "return_recent": _mean(self.recent),
            "ep_len_mean": _mean(buffer.episode_lengths),
            **metrics,
            "robot_time_s": self.collector.robot_time_s,
            "safety_events": self.run_dir.safety_events,
            "replayed": replayed,
            "time_collect_s": t_collect,
            "time_iter_s": elapsed,
            "sps": per_iter / elapsed,
            "time_s": time.perf_counter() - start,
        }

    def _write_boundary(self) -> None:
        """Write the newest boundary state as `iter_NNNNNN.pt` unless it is already on disk."""
        if self.written != self.iteration:
            self.run_dir.save_checkpoint(self.boundary, _iter_name(self.iteration))
            self.written = self.iteration

    def _resume_command(self) -> str:
        emulated = bool(self.hf.preflight and self.hf.preflight.get("emulated"))
        return resume_command(self.run_dir.path, emulated)

    # -- operator view ----------------------------------------------------------------------
    def _session_event(self, kind: str, detail: str, stop: str) -> None:
        """A session event in safety.jsonl (the format of the robot link's events) and the
        log."""
        log.warning("session %s: %s", kind, detail)
        self.run_dir.log_safety({"time_s": time.monotonic(), "wall_time": time.time(),
                                 "source": "session", "kind": kind, "detail": detail,
                                 "stop": stop})

    def _on_segment(self, seg: Segment) -> None:
        self.store.write(seg)
        self._bar_steps += len(seg)
        if self.bar is not None:
            self.bar.update(len(seg))
            self._postfix(None)

    def _postfix(self, row: dict[str, Any] | None) -> None:
        if row is not None:
            self._last = row
        row = self._last
        assert self.bar is not None
        fields = {
            "robot" if self.realtime else "env": f"{self.collector.robot_time_s:.0f}s",
            "ret": f"{_mean(self.recent):.1f}",
        }
        if "mf/rho" in row:
            fields["rho"] = f"{row['mf/rho']:.2f}"
            fields["c"] = f"{row['mf/c']:.2f}"
        if self.realtime:
            fields["safety"] = str(self.run_dir.safety_events)
        self.bar.set_postfix(fields, refresh=False)


def _iter_name(iteration: int) -> str:
    return f"iter_{iteration:06d}"


def _mean(xs: list[float] | deque[float]) -> float:
    return float(np.mean(xs)) if len(xs) else math.nan


def _summary_line(row: dict[str, Any]) -> str:
    kl = row.get("approx_kl", math.nan)
    line = (f"iter {row['iteration']:4d}  steps {row['hf_steps']:8d}  "
            f"return {row['return_recent']:9.2f}  kl {kl:.4f}  lr {row['lr']:.2e}  "
            f"{row['sps']:6.0f} steps/s")
    if "mf/rho" in row:
        line += f"  rho {row['mf/rho']:.2f}  c {row['mf/c']:.2f}"
    return line
