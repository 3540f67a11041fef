"""A robot's models are named in its YAML: a user's extra model is a fidelity like the shipped ones.

The user's robot config is a copy of configs/robots/furuta.yaml in a temp folder with one more
model, `calibrated` (the reduced XML with gravity -9.0, at an absolute path). Tests that go
through an env id point `sim.robot_config.ROBOTS_DIR` at that folder (monkeypatch), which is
where `load_robot_config("furuta")` looks: the same lookup a user's edited config gets.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

import sim  # noqa: F401  (registers the envs)
import sim.robot_config as robot_config
from mfpg_robot.cli import main
from mfpg_robot.config import validate_train_config
from mfpg_robot.train import train
from sim.batched import BatchedCollector
from sim.envs.base import RobotSimEnv
from sim.robot_config import MODELS_DIR, ROBOTS_DIR, ConfigError, load_robot_config
from sim.tasks.furuta import FurutaSwingup

FURUTA = "mfpg/FurutaSwingup-v0"
SHIPPED = ("twin", "reduced", "reduced_gap")


def _furuta_with(tmp_path: Path, models: dict[str, str]) -> Path:
    data = yaml.safe_load((ROBOTS_DIR / "furuta.yaml").read_text())
    data["models"].update(models)
    robots = tmp_path / "robots"
    robots.mkdir(exist_ok=True)
    path = robots / "furuta.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def calibrated(tmp_path: Path) -> Path:
    """furuta.yaml with `calibrated: <tmp>/furuta_calibrated.xml` (gravity -9.0)."""
    xml = (MODELS_DIR / "furuta_reduced.xml").read_text()
    assert 'gravity="0 0 -9.81"' in xml
    model = tmp_path / "furuta_calibrated.xml"
    model.write_text(xml.replace('gravity="0 0 -9.81"', 'gravity="0 0 -9.0"'))
    return _furuta_with(tmp_path, {"calibrated": str(model)})


@pytest.fixture
def user_robots(calibrated: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(robot_config, "ROBOTS_DIR", calibrated.parent)
    return calibrated


def _train_cfg(run_dir: Path, algo: str, hf: str, lf: str) -> dict:
    return {
        "seed": 0,
        "algo": {"name": algo, "update_epochs": 1, "num_minibatches": 2},
        "hf": {"env": FURUTA, "fidelity": hf, "steps_per_iter": 64, "total_steps": 64},
        "lf": {"fidelity": lf, "pairing": "synced", "k": 4, "M": 2, "nthread": 1},
        "run": {"dir": str(run_dir), "progress": False, "checkpoint_every": 0},
    }


def test_extra_model_loads_in_config_order_and_runs(calibrated: Path) -> None:
    robot = load_robot_config(calibrated)
    assert robot.model_names == (*SHIPPED, "calibrated")
    env = RobotSimEnv(FurutaSwingup(robot), "calibrated", robot)
    assert env.model.opt.gravity[2] == pytest.approx(-9.0)
    reduced = RobotSimEnv(FurutaSwingup(robot), "reduced", robot)
    start = reduced.reset(seed=3)[1]["state"]
    (obs_c, _), (obs_r, _) = env.reset_to(start), reduced.reset_to(start)
    np.testing.assert_array_equal(obs_c, obs_r)
    for _ in range(20):
        obs_c = env.step(np.zeros(1))[0]
        obs_r = reduced.step(np.zeros(1))[0]
    assert not np.allclose(obs_c, obs_r), "the calibrated model's gravity must change the motion"


def test_env_id_uses_the_users_model(user_robots: Path) -> None:
    env = gym.make(FURUTA, fidelity="calibrated").unwrapped
    assert env.model.opt.gravity[2] == pytest.approx(-9.0)
    with BatchedCollector(FURUTA, fidelity="calibrated", n_envs=2, nthread=1) as col:
        assert col.model.opt.gravity[2] == pytest.approx(-9.0)


def test_users_model_as_lf_and_hf_fidelity_in_training(user_robots: Path, tmp_path: Path) -> None:
    mf = train(validate_train_config(_train_cfg(tmp_path / "mf", "mfppo", "twin", "calibrated"),
                                     "test"))
    assert mf.algorithm.lf.collector.model.opt.gravity[2] == pytest.approx(-9.0)
    assert mf.history[0]["lf/steps"] > 0
    hf = train(validate_train_config(_train_cfg(tmp_path / "hf", "ppo", "calibrated", "reduced"),
                                     "test"))
    assert hf.history[0]["hf_steps"] == 64


@pytest.mark.parametrize(("algo", "key", "hf", "lf"), [
    ("ppo", "hf", "calibrate", "reduced"),
    ("mfppo", "lf", "twin", "calibrate"),
    ("mfppo", "lf", "twin", "robot"),
])
def test_unknown_model_name_fails_at_load_listing_the_models(
    user_robots: Path, tmp_path: Path, algo: str, key: str, hf: str, lf: str
) -> None:
    with pytest.raises(ConfigError) as info:
        validate_train_config(_train_cfg(tmp_path, algo, hf, lf), "run.yaml")
    msg = str(info.value)
    assert f"{key}.fidelity: robot 'furuta' has no model" in msg
    assert "its models: twin, reduced, reduced_gap, calibrated" in msg


def test_robot_stays_a_valid_hf_fidelity(tmp_path: Path) -> None:
    cfg = validate_train_config(_train_cfg(tmp_path, "ppo", "robot", "reduced"), "run.yaml")
    assert cfg.hf.fidelity == "robot"


def test_unknown_model_cli_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_train_cfg(tmp_path / "run", "mfppo", "twin", "mine")))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "lf.fidelity: robot 'furuta' has no model 'mine'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists(), "nothing runs on a bad config"


def test_env_refuses_an_unknown_model_naming_the_models() -> None:
    with pytest.raises(ValueError, match="has no model 'nope'; its models: twin, reduced"):
        gym.make(FURUTA, fidelity="nope")


@pytest.mark.parametrize(("models", "expected"), [
    ({"robot": "furuta_reduced.xml"}, "models.robot: 'robot' is reserved"),
    ({"mine": "missing.xml"}, "models.mine: file 'missing.xml' not found"),
    ({"Mine": "furuta_reduced.xml"}, r"models.Mine.\[key\]: String should match pattern"),
])
def test_bad_models_fail_at_load(tmp_path: Path, models: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_robot_config(_furuta_with(tmp_path, models))


def test_twin_is_required(tmp_path: Path) -> None:
    path = _furuta_with(tmp_path, {})
    data = yaml.safe_load(path.read_text())
    del data["models"]["twin"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="models must name a 'twin' model"):
        load_robot_config(path)
