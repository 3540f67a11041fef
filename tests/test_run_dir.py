"""The run folder of a simulated session: every file it promises, episodes on disk that are
the rollouts the learner used, warm start from another run, a robot that cannot be reset,
and the reset retries (on a stand-in env: the retry layer alone)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import mfpg_robot.hf_env as hf_env
from hardware.homing import ResetError
from mfpg_robot.buffer import HFCollector
from mfpg_robot.config import validate_train_config
from mfpg_robot.episodes import EpisodeStore, read_segment
from mfpg_robot.hf_env import SessionAbort, robot_reset
from mfpg_robot.run_dir import CheckpointError, load_checkpoint
from mfpg_robot.train import SessionAborted, train

ENV = "mfpg/FurutaSwingup-v0"
SHORT = "mfpg-test/FurutaRunDir-v0"  # 100-step episodes
if SHORT not in gym.registry:
    gym.register(SHORT, entry_point="sim.envs.furuta:FurutaSwingupEnv", max_episode_steps=100)


def _cfg(run_dir: Path, algo: str = "mfppo", **sections) -> dict:
    cfg = {
        "seed": 2,
        "algo": {"name": algo, "num_minibatches": 4, "update_epochs": 2},
        "hf": {"env": SHORT, "fidelity": "twin", "steps_per_iter": 150, "total_steps": 300},
        "lf": {"env": ENV, "pairing": "episode", "lf_pool_per_hf": 2, "nthread": 1},
        "run": {"dir": str(run_dir), "progress": False, "checkpoint_every": 1,
                "export": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def test_run_folder_holds_metrics_events_episodes_checkpoints_and_plot(tmp_path) -> None:
    seen = []  # the rollouts the learner got
    collect = HFCollector.collect

    def recording(self, n):
        buf = collect(self, n)
        seen.append(buf)
        return buf

    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(HFCollector, "collect", recording)
        result = train(validate_train_config(_cfg(run), "t"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["hf_steps"] for r in rows] == [150, 300]
    assert {"mf/rho", "mf/c", "robot_time_s", "return_mean"} <= set(rows[-1])
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "mf/rho" in header and "hf_steps" in header
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("mf/rho")] == [150, 300]
    assert (run / "learning_curve.png").stat().st_size > 10_000  # return and rho/c panels
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "final.pt", "iter_000000.pt", "iter_000001.pt", "iter_000002.pt"]
    assert not list(run.rglob("*.tmp"))
    # every HF step the learner used is on disk, in order, exactly once
    segments = [read_segment(p) for p in EpisodeStore(run / "hf_episodes").paths_from((0, 0))]
    for it, buf in enumerate(seen, start=1):
        mine = [s for s in segments if s.iteration == it]
        for key in ("obs", "eps", "actions", "rewards", "terminated", "truncated", "next_obs",
                    "episode_start"):
            np.testing.assert_array_equal(np.concatenate([s.rows[key] for s in mine]),
                                          getattr(buf, key))
        np.testing.assert_allclose(np.concatenate([s.rows["logprobs"] for s in mine]),
                                   buf.logprobs)
        states = [st for s in mine for st in s.states]
        assert states == buf.states
    whole = [s for s in segments if s.part == -1]
    assert whole and all(s.ended and not s.cut and len(s) == 100 for s in whole)
    assert [s.episode_return for s in segments if s.ended] == pytest.approx(
        [r for b in seen for r in b.episode_returns])
    assert result.safety_events == 0 and (run / "safety.jsonl").read_text() == ""


def test_a_finished_run_exports_its_policy(tmp_path) -> None:
    cfg = {"seed": 0, "algo": {"name": "ppo", "num_minibatches": 2, "update_epochs": 1},
           "hf": {"env": ENV, "fidelity": "reduced", "steps_per_iter": 64, "total_steps": 64},
           "run": {"dir": str(tmp_path / "run"), "progress": False, "export": True}}
    result = train(validate_train_config(cfg, "t"))
    assert result.onnx == tmp_path / "run" / "policy.onnx"
    from mfpg_robot.export import read_metadata

    meta = read_metadata(result.onnx)
    assert meta["robot"] == "furuta" and meta["hf_samples"] == 64
    cfg["run"] = {**cfg["run"], "dir": str(tmp_path / "default"), "export": None}
    assert train(validate_train_config(cfg, "t")).onnx is None  # simulated: not by default


def test_warm_start_loads_policy_normaliser_critic_and_scaler(tmp_path) -> None:
    source = train(validate_train_config(_cfg(tmp_path / "lf", algo="ppo",
                                              hf={"fidelity": "reduced"}), "t"))
    ckpt = load_checkpoint(source.checkpoint)
    # the session's first checkpoint (iteration 0, before any HF data) is the warm start
    session = tmp_path / "session"
    train(validate_train_config(_cfg(session, init={"checkpoint": str(tmp_path / "lf")}), "t"))
    start = load_checkpoint(session / "checkpoints" / "iter_000000.pt")["algo"]
    for key, value in ckpt["algo"]["policy"].items():  # weights, log-std, obs normaliser
        assert torch.equal(start["policy"][key], value), key
    for key, value in ckpt["algo"]["critic"].items():
        assert torch.equal(start["critic"][key], value), key
    for key, value in ckpt["algo"]["critic"].items():  # LF critic = the loaded critic
        if key.startswith("v."):
            assert torch.equal(start["lf"]["critic_v"][key[2:]], value), key
    scaler = {**ckpt["algo"]["reward_scaler"], "discounted": 0.0}
    assert start["reward_scaler"] == scaler
    assert start["policy"]["obs_norm.count"] > 290  # the source's statistics, not fresh ones

    fresh = tmp_path / "fresh_critic"
    train(validate_train_config(_cfg(fresh, init={"checkpoint": str(source.checkpoint),
                                                  "critic": False}), "t"))
    start = load_checkpoint(fresh / "checkpoints" / "iter_000000.pt")["algo"]
    assert torch.equal(start["policy"]["log_std"], ckpt["algo"]["policy"]["log_std"])
    assert not torch.equal(start["critic"]["v.0.weight"], ckpt["algo"]["critic"]["v.0.weight"])

    quiet = tmp_path / "quiet"  # init.log_std: the session's exploration noise, weights kept
    train(validate_train_config(_cfg(quiet, init={"checkpoint": str(source.checkpoint),
                                                  "log_std": -1.5}), "t"))
    start = load_checkpoint(quiet / "checkpoints" / "iter_000000.pt")["algo"]
    assert torch.all(start["policy"]["log_std"] == -1.5)
    assert torch.equal(start["policy"]["mu.0.weight"], ckpt["algo"]["policy"]["mu.0.weight"])


@pytest.mark.parametrize(("change", "message"), [
    ({"algo": {"hidden": [32, 32]}}, "has hidden layers [64, 64], this run [32, 32]"),
    ({"hf": {"env": "mfpg/Arm2Reach-v0"}, "lf": {"env": None}},
     "robot 'furuta' (this run: 'arm2'); joints ['arm', 'pendulum'] (this run: ['shoulder', "
     "'elbow']); observation size 6 (this run: 10)"),
    ({"algo": {"norm_reward": False}}, "trained with algo.norm_reward: True"),
])
def test_warm_start_mismatch_is_a_clear_error_before_any_file(tmp_path, change,
                                                              message) -> None:
    source = train(validate_train_config(_cfg(tmp_path / "src", algo="ppo"), "t"))
    cfg = _cfg(tmp_path / "run", init={"checkpoint": str(source.checkpoint)})
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value}
    with pytest.raises(CheckpointError, match="init.checkpoint|another robot") as err:
        train(validate_train_config(cfg, "t"))
    assert message in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_robot_that_cannot_be_reset_stops_the_session_with_everything_saved(
        tmp_path, monkeypatch) -> None:
    resets = {"n": 0}

    def reset(env, seed):
        resets["n"] += 1
        if resets["n"] == 3:  # the third episode: as robot_reset fails after its retries
            raise SessionAbort("the robot could not be reset (3 attempts; last: ...)")
        return env.reset(seed=seed)

    monkeypatch.setattr(hf_env, "plain_reset", reset)
    run = tmp_path / "run"
    with pytest.raises(SessionAborted) as err:
        train(validate_train_config(_cfg(run, algo="ppo"), "t"))
    assert f"resume with: mfpg-robot train --resume {run}" in str(err.value)
    assert load_checkpoint(run / "checkpoints" / "iter_000001.pt")["hf_steps"] == 150
    segments = [read_segment(p) for p in EpisodeStore(run / "hf_episodes").paths_from((0, 0))]
    assert sum(len(s) for s in segments) == 200  # both episodes, none lost


class _StandIn:
    """A stand-in for RobotEnv.reset (isolates the retry layer): fails `fail` times."""

    def __init__(self, fail: int) -> None:
        self.fail, self.seeds = fail, []

    def reset(self, *, seed=None):
        self.seeds.append(seed)
        if len(self.seeds) <= self.fail:
            raise ResetError("did not settle within 30 s")
        return np.zeros(2), {}


def test_robot_reset_retries_with_warnings_then_aborts(caplog) -> None:
    env = _StandIn(fail=2)
    obs, _ = robot_reset(attempts=3, pause_s=0.0)(env, 7)
    assert obs.shape == (2,) and env.seeds == [7, None, None]
    assert caplog.text.count("robot reset failed (attempt") == 2
    with pytest.raises(SessionAbort, match=r"could not be reset \(3 attempts; last: ResetError"):
        robot_reset(attempts=3, pause_s=0.0)(_StandIn(fail=3), None)


def test_nan_metrics_are_null_in_jsonl_and_nan_again_on_resume(tmp_path) -> None:
    run = tmp_path / "run"
    train(validate_train_config(_cfg(run, algo="ppo", hf={"env": ENV, "total_steps": 150}),
                                "t"))
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["return_mean"] is None  # no 1000-step episode ended in 150 steps
    more = train(resume=run, overrides=["hf.total_steps=300"])
    assert math.isnan(more.history[0]["return_mean"]) and len(more.history) == 2
