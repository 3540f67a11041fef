"""`make run`'s job, end to end on a tiny budget: a checkpoint, a plot and a summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_run_default_trains_and_summarises(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable, "-m", "mfpg_robot.cli", "run-default",
            "--set", "hf.total_steps=2048", "--set", "hf.steps_per_iter=1024",
            "--set", "algo.num_minibatches=8", "--set", "lf.M=4",
            "--set", f"run.dir={run_dir}",
        ],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for line in ("HF samples               2048", "LF samples", "mean correlation rho", "mean c"):
        assert line in out, out
    lf_samples = int(next(ln for ln in out.splitlines() if "LF samples" in ln).split()[-1])
    assert lf_samples > 2048, "the LF side must contribute more samples than the HF side"
    assert (run_dir / "checkpoints" / "final.pt").is_file()
    assert (run_dir / "learning_curve.png").is_file()


def test_run_default_rejects_a_bad_override(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mfpg_robot.cli", "run-default", "--set", "hf.total_stepz=1"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "hf.total_stepz" in proc.stderr
