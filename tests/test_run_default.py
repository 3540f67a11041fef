"""`make run`'s job end to end on tiny budgets: LF pretraining (then cached), the pretrained
policy on the emulated robot, a warm-started dry-run session against the emulator over a pty,
the session's ONNX policy on the emulated robot, and the summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from sim.robot_config import load_robot_config

TINY = [
    "--pretrain-set", "hf.total_steps=1024", "--pretrain-set", "hf.steps_per_iter=512",
    "--pretrain-set", "algo.num_minibatches=4",
    "--set", "hf.total_steps=1000", "--set", "hf.steps_per_iter=1000",  # one whole episode
    "--set", "algo.num_minibatches=4", "--set", "lf.lf_pool_per_hf=10",
    "--eval-episodes", "1", "--eval-max-steps", "100",
]


def _relaxed_furuta(folder: Path) -> Path:
    """The furuta config with a patient link and timing checks off, as a YAML file (this test
    is about the job's steps, not real-time behaviour on a shared 2-core machine; see
    tests/hardware/conftest.py)."""
    base = load_robot_config("furuta")
    relaxed = base.model_copy(update={
        "safety": base.safety.model_copy(update={"deadline_tolerance": 100_000,
                                                 "stale_state_s": 1.0}),
        "serial": base.serial.model_copy(update={"retries": 6, "watchdog_ms": 500}),
    })
    path = folder / "furuta_relaxed.yaml"
    path.write_text(yaml.safe_dump(relaxed.model_dump(mode="json"), sort_keys=False))
    return path


def _run_default(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mfpg_robot.cli", "run-default", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=400)


def _summary(out: str) -> dict[str, str]:
    lines = out.split("summary\n", 1)[1].splitlines()
    return {ln[:28].strip(): ln[28:].strip() for ln in lines if ln.startswith("  ")}


def test_run_default_pretrains_evaluates_trains_on_the_emulator_and_summarises(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "session"
    robot = _relaxed_furuta(tmp_path)
    proc = _run_default(tmp_path, *TINY, "--set", f"hf.robot={robot}", "--set",
                        f"run.dir={run_dir}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = _summary(proc.stdout)
    assert int(s["HF samples"]) == 1000
    assert int(s["LF samples"].split()[0]) > 1000, "the LF side contributes more samples"
    assert float(s["robot (emulator) time"].removesuffix(" s")) >= 4.0  # 1000 steps at 250 Hz
    for key in ("HF return before session", "HF return after session"):
        assert float(s[key].split()[0]) > 0.0, key  # 100 evaluated steps, rewards >= 0
    assert s["run folder"] == str(run_dir)
    assert Path(s["policy (ONNX)"]).is_file() and Path(s["learning curve"]).is_file()
    assert (run_dir / "checkpoints" / "final.pt").is_file()
    cached = list((tmp_path / "runs" / "cache").glob("pretrain-*/checkpoints/final.pt"))
    assert len(cached) == 1
    assert "warm start" in proc.stdout + proc.stderr

    again = _run_default(tmp_path, *TINY, "--set", f"hf.robot={robot}",
                         "--set", f"run.dir={tmp_path / 'second'}",
                         "--eval-episodes", "0")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"LF pretraining: cached, {cached[0].relative_to(tmp_path)}" in again.stdout


def test_run_default_rejects_a_bad_override(tmp_path: Path) -> None:
    proc = _run_default(tmp_path, "--set", "hf.total_stepz=1")
    assert proc.returncode == 2
    assert "hf.total_stepz" in proc.stderr
    proc = _run_default(tmp_path, "--set", "hf.fidelity=twin")
    assert proc.returncode == 2 and "hf.fidelity must be robot" in proc.stderr
