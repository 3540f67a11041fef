"""Resume: a run stopped mid-iteration and resumed ends with the parameters of an
uninterrupted run (simulated HF env, bitwise); replay of recorded HF episodes when the env
cannot be snapshotted; config changes, bad resume targets and checkpoints refused clearly;
the accel rules' state round trip."""

from __future__ import annotations

import copy
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from mfpg_robot.accel import make_accelerator
from mfpg_robot.config import validate_train_config
from mfpg_robot.episodes import EpisodeStore, read_segment
from mfpg_robot.run_dir import CheckpointError, RunDirError, load_checkpoint
from mfpg_robot.train import Session, train
from sim.robot_config import ConfigError

ENV = "mfpg/FurutaSwingup-v0"
SHORT = "mfpg-test/FurutaResume-v0"  # 150-step episodes: episodes cross iteration boundaries
if SHORT not in gym.registry:
    gym.register(SHORT, entry_point="sim.envs.furuta:FurutaSwingupEnv", max_episode_steps=150)


class Crash(Exception):
    """Stands for a crash (the process dies) in the middle of an iteration."""


def _cfg(run_dir: Path, **changes) -> dict:
    cfg = {
        "seed": 5,
        "algo": {"name": "mfppo", "num_minibatches": 4, "update_epochs": 2,
                 "accel": "nesterov"},
        "hf": {"env": SHORT, "fidelity": "twin", "steps_per_iter": 128, "total_steps": 512},
        "lf": {"env": ENV, "fidelity": "reduced", "pairing": "episode", "lf_pool_per_hf": 3,
               "nthread": 1},
        "run": {"dir": str(run_dir), "progress": False, "checkpoint_every": 1},
    }
    for key, value in changes.items():
        section, name = key.split("__")
        cfg[section] = {**cfg.get(section, {}), name: value}
    return cfg


def _crash_in(iteration: int, monkeypatch) -> None:
    """Collect part of `iteration` (episode files written, env and noise advanced), then die."""
    original = Session._iterate

    def iterate(self, it, *args):
        if it == iteration:
            self.collector.collect(100)  # past an episode end (150 steps, 128 per iteration)
            raise Crash
        return original(self, it, *args)

    monkeypatch.setattr(Session, "_iterate", iterate)


def _params(result) -> list[torch.Tensor]:
    algo = result.algorithm
    return [*algo.policy.state_dict().values(), *algo.critic.state_dict().values(),
            *algo.lf.critic.state_dict().values()]


def test_killed_and_resumed_run_is_bitwise_the_uninterrupted_run(tmp_path, monkeypatch) -> None:
    full = train(validate_train_config(_cfg(tmp_path / "full"), "t"))

    with monkeypatch.context() as m:
        _crash_in(3, m)
        with pytest.raises(Crash):
            train(validate_train_config(_cfg(tmp_path / "crashed"), "t"))
    run = tmp_path / "crashed"
    assert (run / "checkpoints" / "iter_000002.pt").is_file()
    assert not (run / "checkpoints" / "iter_000003.pt").exists()
    written = sorted(p.name for p in (run / "hf_episodes").iterdir())
    resumed = train(resume=run)

    for a, b in zip(_params(full), _params(resumed), strict=True):
        assert torch.equal(a, b)
    assert resumed.algorithm.lf.coef.value == full.algorithm.lf.coef.value
    keys = ("hf_steps", "return_mean", "mf/rho", "mf/c", "loss/policy", "accel/restarts")
    assert ([[r[k] for k in keys] for r in resumed.history]
            == [[r[k] for k in keys] for r in full.history])
    # the episode files are those of the uninterrupted run, byte for byte
    names = sorted(p.name for p in (run / "hf_episodes").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "full" / "hf_episodes").iterdir())
    assert set(written) <= set(names)
    for name in names:
        a, b = (read_segment(d / "hf_episodes" / name) for d in (run, tmp_path / "full"))
        assert a.row0 == b.row0 and a.iteration == b.iteration
        for k in a.rows:
            np.testing.assert_array_equal(a.rows[k], b.rows[k])
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # rows after the checkpoint were dropped, then logged again


def test_replay_uses_every_recorded_step_when_the_env_cannot_be_snapshotted(
        tmp_path, monkeypatch) -> None:
    """Pendulum (no MuJoCo state): the steps recorded after the checkpoint are replayed."""
    cfg = {"seed": 1, "algo": {"name": "ppo", "num_minibatches": 4, "update_epochs": 1},
           "hf": {"env": "Pendulum-v1", "fidelity": None, "steps_per_iter": 256,
                  "total_steps": 768},
           "run": {"dir": str(tmp_path / "run"), "progress": False, "checkpoint_every": 1}}
    with monkeypatch.context() as m:
        _crash_in(2, m)  # Pendulum's 200-step episodes: episode 1 began at row 200 of iter 1
        with pytest.raises(Crash):
            train(validate_train_config(cfg, "t"))
    store = EpisodeStore(tmp_path / "run" / "hf_episodes")
    recorded = [read_segment(p) for p in store.paths_from((0, 0))]
    after = [s for s in recorded if s.iteration == 2]
    assert [(s.episode, s.part, len(s), s.ended) for s in after] == [(1, 1, 100, False)]
    replayed_eps = after[0].rows["eps"]

    resumed = train(resume=tmp_path / "run")
    assert resumed.hf_steps == 768
    rows = [r for r in resumed.history if r["iteration"] == 2]
    assert rows[0]["replayed"] is True
    segments = [read_segment(p) for p in store.paths_from((0, 0))]
    it2 = [s for s in segments if s.iteration == 2]
    assert sum(len(s) for s in it2) == 256  # replayed 100 + 156 new steps, no gap, no overlap
    np.testing.assert_array_equal(np.concatenate([s.rows["eps"] for s in it2])[:100],
                                  replayed_eps)
    assert [s.row0 for s in it2] == sorted(s.row0 for s in it2)
    # the lost rest of episode 1 is not invented: a new episode starts at row 100
    assert (it2[1].episode, it2[1].row0, bool(it2[1].rows["episode_start"][0])) == (2, 100, True)


def test_resume_refuses_config_changes_and_names_them(tmp_path) -> None:
    train(validate_train_config(_cfg(tmp_path / "run", hf__total_steps=128), "t"))
    with pytest.raises(ConfigError) as err:
        train(resume=tmp_path / "run", overrides=["algo.lr=1e-3", "lf.k=3"])
    msg = str(err.value)
    assert "algo.lr: 0.0003 -> 0.001" in msg and "lf.k: 10 -> 3" in msg
    assert "may change only hf.total_steps" in msg
    config = tmp_path / "changed.yaml"
    config.write_text(yaml.safe_dump(_cfg(tmp_path / "run", algo__gamma=0.95)))
    with pytest.raises(ConfigError, match="algo.gamma: 0.99 -> 0.95"):
        train(config, resume=tmp_path / "run")
    # allowed: a larger budget continues the finished run, and is recorded in config.yaml
    more = train(resume=tmp_path / "run", overrides=["hf.total_steps=256", "run.log_every=5"])
    assert more.hf_steps == 256 and [r["iteration"] for r in more.history] == [1, 2]
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "# resumed with hf.total_steps: 128 -> 256" in text
    assert yaml.safe_load(text)["hf"]["total_steps"] == 256


def test_bad_resume_targets_and_checkpoints_are_clear_errors(tmp_path) -> None:
    with pytest.raises(RunDirError, match="no such folder"):
        train(resume=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not a run folder"):
        train(resume=tmp_path / "empty")
    run = tmp_path / "run"
    train(validate_train_config(_cfg(run, hf__total_steps=256), "t"))
    newest = run / "checkpoints" / "iter_000002.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="iter_000002.pt is corrupt or truncated"):
        train(resume=run)
    newest.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(newest)
    torch.save({"format": 99}, newest)
    with pytest.raises(CheckpointError, match="not an mfpg-robot checkpoint"):
        load_checkpoint(newest)
    # a checkpoint of another robot / observation layout in the folder
    ckpt = torch.load(run / "checkpoints" / "iter_000001.pt", weights_only=True)
    ckpt["task"] = {"env": "mfpg/Arm2Reach-v0", "robot": "arm2",
                    "joints": ["shoulder", "elbow"]}
    ckpt["obs_dim"] = 10
    torch.save(ckpt, newest)
    with pytest.raises(CheckpointError, match="another robot or observation layout") as err:
        train(resume=run)
    assert "robot 'arm2' (this run: 'furuta')" in str(err.value)
    assert "observation size 10 (this run: 6)" in str(err.value)
    ckpt = torch.load(run / "checkpoints" / "iter_000001.pt", weights_only=True)
    del ckpt["collector"]  # e.g. a checkpoint of an older version
    torch.save(ckpt, newest)
    with pytest.raises(CheckpointError, match="lacks the state to continue the run"):
        train(resume=run)


@pytest.mark.parametrize("name", ["none", "optimistic", "extragradient", "nesterov", "meta"])
def test_accel_rule_state_round_trip_continues_identically(name: str) -> None:
    def build():
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(5))
        opt = torch.optim.Adam([p], lr=0.1)
        return p, opt, make_accelerator(name, [p], opt)

    def step(p, opt, acc, i):
        def closure():
            opt.zero_grad()
            loss = ((p - 0.1 * i) ** 2).sum() + (p**4).sum() * (1 + i % 3)
            loss.backward()
            return loss
        acc.step(closure)

    p, opt, acc = build()
    for i in range(6):
        step(p, opt, acc, i)
    saved = copy.deepcopy((acc.state_dict(), opt.state_dict(), p.detach().clone()))
    for i in range(6, 12):
        step(p, opt, acc, i)
    p2, opt2, acc2 = build()
    with torch.no_grad():
        p2.copy_(saved[2])
    opt2.load_state_dict(saved[1])
    acc2.load_state_dict(saved[0])
    for i in range(6, 12):
        step(p2, opt2, acc2, i)
    assert torch.equal(p, p2) and acc.stats() == acc2.stats()
    other = "meta" if name != "meta" else "none"
    p3, opt3, _ = build()
    with pytest.raises(ValueError, match=f"accelerator state is for rule '{name}'"):
        make_accelerator(other, [p3], opt3).load_state_dict(saved[0])
