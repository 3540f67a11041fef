"""The measurement scripts still run end to end (tiny budgets; their numbers are not judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def test_lf_throughput_reports_all_three_rates(tmp_path: Path) -> None:
    out = tmp_path / "lf.json"
    proc = _run("lf_throughput.py", "--batch", "8", "--horizon", "5", "--repeats", "2",
                "--per-env-steps", "5", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    rates = result["control_steps_per_s"]
    assert set(rates) == {"batched", "per_env", "raw"}
    assert all(len(v) == 2 and min(v) > 0 for v in rates.values())
    assert result["paired_batched_over_raw"] > 0
    assert "median of paired runs" in proc.stdout


def test_machine_stalls_counts_periods_and_misses(tmp_path: Path) -> None:
    out = tmp_path / "stalls.json"
    proc = _run("machine_stalls.py", "--seconds", "0.4", "--busy-ms", "0.5", "--procs", "2",
                "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert len(result["loops"]) == 2
    for loop in result["loops"]:
        assert 90 <= loop["periods"] <= 110  # 0.4 s at 250 Hz
        assert 0 <= loop["missed_deadlines"] <= loop["periods"]
        counts = list(loop["stalls_over_ms"].values())
        assert counts == sorted(counts, reverse=True)  # longer thresholds count fewer


def test_machine_stalls_rejects_work_longer_than_the_period() -> None:
    proc = _run("machine_stalls.py", "--seconds", "0.1", "--busy-ms", "5")
    assert proc.returncode == 2
    assert "--busy-ms must be in [0, period)" in proc.stderr


def test_inference_latency_times_both_backends(tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    proc = _run("inference_latency.py", "--calls", "200", "--blocks", "2", "--warmup", "10",
                "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    for name in ("onnxruntime", "torch"):
        p = result["latency_us"][name]
        assert p["n"] == 200 and 0 < p["p50"] <= p["p99"] <= p["max"]
    assert isinstance(result["target_met"], bool) and "onnxruntime" in proc.stdout
