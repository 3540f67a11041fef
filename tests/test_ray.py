"""Scale-out on a real local Ray cluster (`ray.init(num_cpus=2)`, one for the module).

LF collection on Ray actors gives bitwise the samples of the local backend, with one actor
or two and for both pairings, and a training run with `lf.backend: ray` is bitwise the local
run. A sweep with `--ray` runs every run as a Ray task with the local runs' results, the
warm-started run receiving its LF pretraining; a run whose worker is killed is retried and
reported. Without Ray, asking for it exits 2 with the install line (Ray is made unimportable
for those tests: `sys.modules["ray"] = None`, the one stand-in here).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import ray
import torch

import sim  # noqa: F401  (registers the envs)
from mfpg_robot.buffer import HFCollector
from mfpg_robot.cli import main
from mfpg_robot.config import validate_train_config
from mfpg_robot.lf_ray import RayLF
from mfpg_robot.pairing import (
    CriticValues,
    EpisodePairing,
    LFSamples,
    LocalLF,
    SyncedPairing,
)
from mfpg_robot.policy import Critic, GaussianPolicy
from mfpg_robot.reward_norm import RewardScaler
from mfpg_robot.run_dir import load_checkpoint
from mfpg_robot.train import train
from sim.batched import BatchedCollector

ENV = "mfpg/FurutaSwingup-v0"
BATCH = 8  # LF rows per chunk: several chunks per collection, so the split matters
TASK = "furuta-twin-reduced"
TINY = ["--tasks", TASK, "--seeds", "0", "--budget", "512", "--eval-episodes", "1",
        "--eval-horizon", "50", "--set", "hf.steps_per_iter=256", "--set",
        "algo.num_minibatches=4", "--set", "algo.update_epochs=1"]
TIMES = ("wall_s", "train_wall_s", "eval_s", "pretrain_wall_s")


@pytest.fixture(scope="module")
def cluster():
    torch.set_num_threads(1)  # the learner's torch threads, which the LF actors copy
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def hf_buffer():
    """75 rows of 30-step twin episodes; the rollout opens mid-episode."""
    torch.manual_seed(0)
    policy = GaussianPolicy(6, 1)
    policy.obs_norm.update(np.random.default_rng(0).normal(0.0, 2.0, size=(500, 6)))
    env = gym.make(ENV, fidelity="twin", max_episode_steps=30)
    collector = HFCollector(env, policy, np.random.default_rng(1), seed=1)
    collector.collect(15)
    return policy, collector.collect(75)


def _assert_same(a: LFSamples, b: LFSamples) -> None:
    for f in dataclasses.fields(LFSamples):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x):
            for g in dataclasses.fields(x):
                np.testing.assert_array_equal(getattr(x, g.name), getattr(y, g.name))
        else:
            np.testing.assert_array_equal(x, y)


def test_lf_samples_on_ray_actors_equal_the_local_ones_bitwise(cluster, hf_buffer) -> None:
    policy, buf = hf_buffer
    critic = Critic(policy.obs_norm, 6)
    scaler = RewardScaler(0.99)
    scaler.update_scale(np.random.default_rng(2).normal(3.0, 1.0, 200), np.zeros(200, bool))
    pairings = {
        "synced": lambda col, runner: SyncedPairing(col, 4, 3, 0.99, 0.95, batch=BATCH,
                                                    runner=runner),
        "episode": lambda col, runner: EpisodePairing(col, 3, 30, 0.99, 0.95, batch=BATCH,
                                                      runner=runner),
    }
    key = (11, 3)
    with BatchedCollector(ENV, fidelity="reduced", n_envs=BATCH, nthread=1) as col:
        local = {name: make(col, LocalLF(col)).collect(buf, policy, CriticValues(critic),
                                                      scaler.scale, key)
                 for name, make in pairings.items()}
        again = pairings["episode"](col, None).collect(buf, policy, CriticValues(critic),
                                                       scaler.scale, key)
        _assert_same(local["episode"], again)  # keyed: the same key, the same samples
        other = pairings["episode"](col, None).collect(buf, policy, CriticValues(critic),
                                                       scaler.scale, (11, 4))
        assert not np.array_equal(other.ref.actions, again.ref.actions)
        assert len(pairings["synced"](col, None).job(buf, key).chunks(BATCH)) == 38
        for workers in (1, 2):
            runner = RayLF(ENV, "reduced", BATCH, 1, workers, 1)
            try:
                for name, make in pairings.items():
                    remote = make(col, runner).collect(buf, policy, CriticValues(critic),
                                                       scaler.scale, key)
                    _assert_same(local[name], remote)
            finally:
                runner.close()


def _train_cfg(run_dir: Path, backend: str) -> dict:
    return {
        "seed": 3,
        "algo": {"name": "mfppo", "num_minibatches": 4, "update_epochs": 2, "hidden": [16]},
        "hf": {"env": ENV, "steps_per_iter": 128, "total_steps": 256},
        "lf": {"pairing": "episode", "lf_pool_per_hf": 4, "nthread": 1, "batch": 2,
               "backend": backend, "workers": 2},
        "run": {"dir": str(run_dir), "progress": False, "checkpoint_every": 0},
    }


def test_training_with_lf_on_ray_is_bitwise_the_local_run(cluster, tmp_path) -> None:
    runs = {b: train(validate_train_config(_train_cfg(tmp_path / b, b), "t"))
            for b in ("local", "ray")}
    local, remote = runs["local"].algorithm, runs["ray"].algorithm
    for a, b in zip([*local.policy.state_dict().values(), *local.lf.critic.state_dict().values()],
                    [*remote.policy.state_dict().values(),
                     *remote.lf.critic.state_dict().values()], strict=True):
        assert torch.equal(a, b)
    keys = ("lf/steps", "mf/rho", "mf/c", "loss/policy", "lf/critic_loss")
    assert ([[r[k] for k in keys] for r in runs["ray"].history]
            == [[r[k] for k in keys] for r in runs["local"].history])
    assert runs["ray"].history[-1]["lf/steps"] > 0
    assert remote.lf.runner.actors == [], "train() must stop the LF actors"


def _bench(out: Path, *args: str) -> int:
    return main(["bench", "sample-efficiency", "--out", str(out), *TINY, *args])


def _result(out: Path, method: str) -> dict:
    base = out / ("pretrain" if method == "pretrain" else "runs") / TASK
    path = base / "s0.json" if method == "pretrain" else base / method / "s0.json"
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMES}


def test_sweep_on_ray_gives_the_local_results(cluster, tmp_path, capsys) -> None:
    """The Ray sweep is the CLI in a process of its own joining the cluster by its address
    (so the checkout travels as the job's working directory)."""
    assert _bench(tmp_path / "local", "--methods", "ppo_lf_only") == 0
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "-m", "mfpg_robot.cli", "bench", "sample-efficiency", "--out",
         str(tmp_path / "ray"), *TINY, "--methods", "ppo_lf_only", "--ray", address],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 runs: 0 already in" in proc.stdout and "to run on Ray" in proc.stdout
    for method in ("pretrain", "ppo_lf_only"):
        assert _result(tmp_path / "ray", method) == _result(tmp_path / "local", method)
    run = Path("pretrain") / TASK / "s0"  # ppo_lf_only evaluates it on its own node
    files = {d: sorted(str(p.relative_to(d / run)).partition(".tfevents")[0]
                       for p in (d / run).rglob("*"))  # event files: named by time and pid
             for d in (tmp_path / "local", tmp_path / "ray")}
    assert files[tmp_path / "ray"] == files[tmp_path / "local"]
    a, b = (load_checkpoint(d / run / "checkpoints" / "final.pt")["algo"]["policy"]
            for d in (tmp_path / "local", tmp_path / "ray"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "ray" / "logs" / TASK / "ppo_lf_only-s0.log").is_file()
    assert _result(tmp_path / "ray", "ppo_lf_only")["lf_samples"] > 0
    # a rerun finds both results and runs nothing
    assert _bench(tmp_path / "ray", "--methods", "ppo_lf_only", "--ray") == 0
    assert "2 runs: 2 already in" in capsys.readouterr().out


def _run_processes() -> list[tuple[int, int]]:
    """(pid, parent pid) of every process running a sweep's run in a worker's scratch."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if b"benchmarks.sample_efficiency" in cmd and any(b"mfpg-bench-" in c for c in cmd):
            found.append((int(entry.name), int(stat.rpartition(")")[2].split()[1])))
    return found


def test_a_killed_workers_run_is_retried_and_reported(cluster, tmp_path, capsys) -> None:
    killed: list[tuple[int, int]] = []

    def kill_the_first_worker() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for pid, worker in _run_processes():
                os.kill(worker, signal.SIGKILL)
                killed.append((pid, worker))
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_the_first_worker)
    killer.start()
    try:
        assert _bench(tmp_path / "out", "--methods", "ppo_hf", "--ray") == 0
    finally:
        killer.join()
    printed = capsys.readouterr().out
    assert killed, "no run process was found to kill"
    assert f"retrying {TASK} ppo_hf s0 (worker lost: " in printed
    assert f"done {TASK} ppo_hf s0" in printed
    assert _result(tmp_path / "out", "ppo_hf")["hf_samples"] == 512
    assert _gone(killed[0][0]), "the killed worker's run process must die with it"


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process `pid` exits (or is a zombie) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def test_without_ray_asking_for_it_exits_2_with_the_install_line(
        tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    assert _bench(tmp_path / "out", "--methods", "ppo_hf", "--ray", "auto") == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --ray needs Ray, which is not installed here: "
                   "pip install 'mfpg-robot[ray]'")
    assert not (tmp_path / "out").exists()
    config = tmp_path / "mf.yaml"
    config.write_text(json.dumps(_train_cfg(tmp_path / "run", "ray")))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert ("lf.backend: the ray backend needs Ray, which is not installed here: "
            "pip install 'mfpg-robot[ray]'") in err
    assert not (tmp_path / "run").exists()


def test_lf_scaling_benchmark_runs_and_writes_its_figures(cluster, tmp_path) -> None:
    """A tiny run of benchmarks/lf_scaling.py on the module's cluster (no figure judged)."""
    from benchmarks import lf_scaling

    out = tmp_path / "lf.json"
    result = lf_scaling.main(["--rows", "4", "--horizon", "5", "--repeats", "1", "--actors",
                              "1", "--break-even-rows", "2", "4", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [s.get("actors") for s in result["scaling"]] == [None, None, 1]
    assert all(s["steps_per_s"] > 0 for s in result["scaling"])
    assert result["overhead"]["model_bytes"] > 0 and result["overhead"]["sample_bytes"] > 0
    assert [s["rows"] for s in result["break_even"]["sizes"]] == [2, 4]
