"""Sample-efficiency sweeps on a Ray cluster: `mfpg-robot bench sample-efficiency --ray`.

Every run (task, method, seed at the sweep's budget) is one Ray task with one CPU. Joining
the cluster, the sweep ships the source checkout as the job's working directory (Ray's
`working_dir`; each node needs the project's dependencies, e.g. `pip install
'mfpg-robot[ray]'`); in a process that joined a cluster already, the workers must find the
checkout themselves (a driver's working directory on its own node). A task runs exactly
what a local sweep runs, `python -m benchmarks.sample_efficiency run-one|pretrain`, in a
scratch folder on its node, and returns the run's files as an archive. The caller unpacks
them into its `--out` (result file last: present = done), so results are written as runs
complete and a rerun skips them. A warm-started run gets the LF-pretrained result and
checkpoint it needs.

A run that fails, or whose worker dies, is retried once and reported either way; a job that
depends on a failed LF pretraining is skipped. Ctrl+C or SIGTERM cancels the runs in flight.
"""

from __future__ import annotations

import ctypes
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.sample_efficiency import (
    REPO,
    BenchError,
    Job,
    Settings,
    pending_jobs,
    run_command,
    run_paths,
    summary,
)

#: Tries of one run (the first and one retry).
ATTEMPTS = 2
#: Not shipped to the workers with the source checkout.
EXCLUDES = [".git", ".venv", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache",
            ".ruff_cache", ".hypothesis"]


def _die_with_parent() -> None:
    """In the run's process: SIGKILL when its Ray worker dies (Linux; elsewhere a no-op)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_PRCTL = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None


def pack(root: Path, paths: list[Path]) -> bytes:
    """A gzipped tar of `paths` (those that exist), named relative to `root`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in paths:
            if path.exists():
                tar.add(path, arcname=str(path.relative_to(root)))
    return buf.getvalue()


def unpack(archive: bytes, out: Path, paths: list[Path]) -> None:
    """Move `paths` (under `out`, in this order) from the archive into `out`, replacing what
    is there; paths the archive lacks are left alone."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".incoming-", dir=out) as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # a Python without extraction filters; the archive is our own worker's
                tar.extractall(tmp)  # noqa: S202
        for dest in paths:
            src = Path(tmp) / dest.relative_to(out)
            if not src.exists():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(src, dest)


def run_on_worker(job_fields: dict[str, Any], settings_fields: dict[str, Any],
                  files: dict[str, bytes]) -> tuple[int, bytes]:
    """The Ray task: run the `Job` in a scratch folder holding `files` (relative path ->
    bytes); returns the run's exit status and its result, run folder and log as `pack` makes
    them. (Fields, not objects: the sweep may run as __main__, whose classes a worker lacks.)
    """
    job, settings = Job(**job_fields), Settings(**settings_fields)
    with tempfile.TemporaryDirectory(prefix="mfpg-bench-") as tmp:
        scratch = Path(tmp)
        for rel, data in files.items():
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            (scratch / rel).write_bytes(data)
        result, run_dir, log = run_paths(scratch, job.task, job.method, job.seed)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        with log.open("w") as f:
            rc = subprocess.run(run_command(job, scratch, settings), stdout=f,
                                stderr=subprocess.STDOUT, env=env, check=False,
                                preexec_fn=_die_with_parent).returncode
        return rc, pack(scratch, [result, run_dir, log])


def inputs(job: Job, out: Path) -> dict[str, bytes]:
    """The files a run needs from `out`: a warm-started run's LF-pretraining result and its
    final checkpoint."""
    if not job.needs:
        return {}
    result = run_paths(out, job.task, "pretrain", job.seed)[0]
    checkpoint = out / json.loads(result.read_text())["checkpoint"]
    return {str(p.relative_to(out)): p.read_bytes() for p in (result, checkpoint)}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _error_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def run_jobs_ray(jobs: list[Job], out: Path, settings: Settings, address: str | None
                 ) -> list[str]:
    """Run the jobs as Ray tasks on the cluster at `address` (None: the one `ray.init()`
    finds or starts); returns the keys that failed (module docstring)."""
    from mfpg_robot.lf_ray import RayNotInstalled, connect

    signal.signal(signal.SIGTERM, _interrupt)
    runtime_env = {"working_dir": str(REPO), "excludes": [*EXCLUDES, *_inside(out, REPO)]}
    try:
        ray = connect("--ray", address, runtime_env=runtime_env)
    except RayNotInstalled as err:
        raise BenchError(str(err)) from None
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise BenchError(f"--ray {address or ''}: cannot join the Ray cluster "
                         f"({_error_line(err)}); start one with `ray start --head` or give "
                         f"its address (auto, HOST:PORT, ray://HOST:10001)") from None
    task = ray.remote(num_cpus=1, max_retries=0)(run_on_worker)
    pending, done = pending_jobs(jobs, out, settings)
    cpus = ray.cluster_resources().get("CPU", 0.0)
    print(f"{len(jobs)} runs: {len(done)} already in {out}, {len(pending)} to run on Ray "
          f"({cpus:g} CPUs)", flush=True)
    failed: list[str] = []
    running: dict[Any, tuple[Job, int, float]] = {}
    total, finished = len(pending), 0

    def submit(job: Job, attempt: int) -> None:
        ref = task.remote(dataclasses.asdict(job), dataclasses.asdict(settings),
                          inputs(job, out))
        running[ref] = (job, attempt, time.perf_counter())

    try:
        while pending or running:
            for job in list(pending):
                if any(n in failed for n in job.needs):
                    pending.remove(job)
                    failed.append(job.key)
                    finished += 1
                    print(f"[{finished}/{total}] skipped {job.key}: its LF pretraining failed")
                elif all(n in done for n in job.needs):
                    pending.remove(job)
                    submit(job, 1)
            if not running:
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                job, attempt, t0 = running.pop(ref)
                result, run_dir, log = run_paths(out, job.task, job.method, job.seed)
                try:
                    rc, archive = ray.get(ref)
                except ray.exceptions.RayError as err:
                    reason = f"worker lost: {_error_line(err)}"
                else:
                    unpack(archive, out, [log, run_dir, result])
                    reason = None if rc == 0 else f"exit {rc}"
                if reason is None:
                    done.add(job.key)
                    finished += 1
                    print(f"[{finished}/{total}] done {job.key}: {summary(out, job)}",
                          flush=True)
                elif attempt < ATTEMPTS:
                    print(f"retrying {job.key} ({reason}, after {time.perf_counter() - t0:.0f}"
                          f" s)", flush=True)
                    submit(job, attempt + 1)
                else:
                    failed.append(job.key)
                    finished += 1
                    tail = log.read_text().strip().splitlines()[-5:] if log.is_file() else []
                    print(f"[{finished}/{total}] FAILED {job.key} twice ({reason}); log {log}:"
                          "\n    " + "\n    ".join(tail), flush=True)
    except KeyboardInterrupt:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    return failed


def _inside(path: Path, root: Path) -> list[str]:
    """`path` as an exclude pattern of `root`'s upload if it lies inside `root`."""
    try:
        return ["/" + str(path.resolve().relative_to(root.resolve()))]
    except ValueError:
        return []
