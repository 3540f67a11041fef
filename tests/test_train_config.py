"""Train config: strict schema, errors naming file and key path, `--set` overrides, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mfpg_robot.cli import main
from mfpg_robot.config import (
    TrainConfig,
    apply_overrides,
    is_train_mapping,
    load_train_config,
    validate_train_config,
)
from mfpg_robot.hf_env import make_env
from sim.robot_config import REPO_ROOT, ConfigError

TRAIN_DIR = REPO_ROOT / "configs" / "train"
SHIPPED = sorted(TRAIN_DIR.glob("*.yaml"))
MINIMAL = {"seed": 0, "algo": {"name": "ppo"}, "hf": {"env": "Pendulum-v1", "total_steps": 4096}}


def _write(tmp_path: Path, data: dict, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_train_config(path, overrides or [])
    return str(info.value)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_train_config(path)
    kind, robot = path.stem.split("_", 1)  # <algo|pretrain>_<robot>; session_<robot>: robot
    assert (kind == "session") == (cfg.hf.fidelity == "robot")
    assert kind in ("session", "pretrain", cfg.algo.name)
    assert cfg.hf.env == {"furuta": "mfpg/FurutaSwingup-v0", "arm2": "mfpg/Arm2Reach-v0"}[robot]


def test_shipped_configs_exist() -> None:
    assert {p.name for p in SHIPPED} >= {"ppo_furuta.yaml", "reinforce_furuta.yaml"}


def test_defaults_follow_cleanrl(tmp_path: Path) -> None:
    a = load_train_config(_write(tmp_path, MINIMAL)).algo
    assert (a.lr, a.gamma, a.gae_lambda, a.clip_coef, a.ent_coef, a.vf_coef) == (
        3e-4, 0.99, 0.95, 0.2, 0.0, 0.5)
    assert (a.max_grad_norm, a.update_epochs, a.num_minibatches) == (0.5, 10, 32)
    assert a.anneal_lr and a.norm_adv and a.clip_vloss and a.norm_reward
    assert a.hidden == [64, 64] and a.log_std_init == 0.0 and a.target_kl is None


def test_exponent_floats_without_dot_are_numbers(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("seed: 0\nalgo: {name: ppo, lr: 1e-4}\nhf: {env: Pendulum-v1, "
                    "total_steps: 4096}\n")
    assert load_train_config(path).algo.lr == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["algo"].update(lrr=1e-3), "algo.lrr: unknown key"),
        (lambda d: d.update(extra=1), "extra: unknown key"),
        (lambda d: d["algo"].update(lr="fast"), "algo.lr: Input should be a valid number"),
        (lambda d: d["hf"].update(total_steps=1.5), "hf.total_steps: Input should be a valid"),
        (lambda d: d["hf"].pop("env"), "hf.env: missing required key"),
        (lambda d: d.pop("seed"), "seed: missing required key"),
        (lambda d: d["algo"].update(gamma=1.5), "algo.gamma: Input should be less than"),
        (lambda d: d.update(lf={"k": 0}), "lf.k: Input should be greater than or equal to 1"),
        (lambda d: d.update(lf={"M": 1}), "lf.M: Input should be greater than or equal to 2"),
        (lambda d: d["algo"].update(name="sac"), "algo.name: Input should be 'ppo'"),
        (lambda d: d["algo"].update(accel="adam"), "algo.accel: Input should be 'none'"),
        (lambda d: d["hf"].update(fidelity="Real twin"), "hf.fidelity: String should match"),
        (lambda d: d["algo"].update(hidden=[64, 0]), "algo.hidden.1: Input should be greater"),
        (lambda d: d["hf"].update(total_steps=100), "hf.total_steps: must be >= hf.steps_per"),
        (lambda d: d["algo"].update(accel="optimistic", accel_options={"optimism": -1}),
         "algo.accel_options: accel config 'optimism' must be in"),
        (lambda d: d["algo"].update(accel_options={"meta_lr": 0.1}),
         "algo.accel_options: unknown config key(s) ['meta_lr'] for accelerator 'none'"),
        (lambda d: d["hf"].update(steps_per_iter=16),
         "hf.steps_per_iter (16) must be >= algo.num_minibatches (32)"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, mutate, expected: str) -> None:
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    mutate(data)
    path = _write(tmp_path, data)
    message = _error(path)
    assert str(path) in message
    assert expected in message


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    data = {"seed": -1, "algo": {"name": "ppo", "lr": 0}, "hf": {"env": "x", "total_steps": 10}}
    message = _error(_write(tmp_path, data))
    assert "3 problem(s)" in message
    for key in ("seed:", "algo.lr:", "hf.steps_per_iter"):
        assert key in message


def test_file_errors(tmp_path: Path) -> None:
    assert "file not found" in _error(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    assert "not valid YAML" in _error(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    assert "top level must be a mapping" in _error(listed)


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL)
    cfg = load_train_config(path, ["algo.lr=1e-4", "algo.target_kl=0.02", "hf.fidelity=null",
                                   "algo.hidden=[32, 16]", "lf.pairing=episode",
                                   "run.dir=/tmp/x", "algo.anneal_lr=false"])
    assert cfg.algo.lr == pytest.approx(1e-4) and cfg.algo.target_kl == pytest.approx(0.02)
    assert cfg.hf.fidelity is None and cfg.algo.hidden == [32, 16]
    assert cfg.lf.pairing == "episode" and cfg.run.dir == "/tmp/x" and not cfg.algo.anneal_lr


def test_apply_overrides_copies_and_creates_sections() -> None:
    data = {"algo": {"name": "ppo"}}
    out = apply_overrides(data, ["mf.c_ema=0.9", "algo.lr=0.1"])
    assert out == {"algo": {"name": "ppo", "lr": 0.1}, "mf": {"c_ema": 0.9}}
    assert data == {"algo": {"name": "ppo"}}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("algo.lr", "expected KEY.PATH=VALUE"),
        ("=3", "expected KEY.PATH=VALUE"),
        ("algo..lr=3", "expected KEY.PATH=VALUE"),
        ("seed.x=1", "seed is a value (0), not a section"),
        ("algo.lr=[1,", "not valid YAML"),
    ],
)
def test_bad_override_is_a_clear_error(tmp_path: Path, override: str, expected: str) -> None:
    path = _write(tmp_path, MINIMAL)
    message = _error(path, [override])
    assert str(path) in message and expected in message


def test_override_with_unknown_key_names_the_override(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, MINIMAL), ["algo.lrr=0.1"])
    assert "--set algo.lrr=0.1" in message and "algo.lrr: unknown key" in message


def test_env_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="hf.fidelity: env 'Pendulum-v1' takes no fidelity"):
        make_env("Pendulum-v1", "twin")
    with pytest.raises(ConfigError, match="lf.env: cannot make 'NoSuchEnv-v0'"):
        make_env("NoSuchEnv-v0", None, "lf")


def test_config_is_frozen_and_round_trips(tmp_path: Path) -> None:
    cfg = load_train_config(TRAIN_DIR / "ppo_furuta.yaml")
    again = validate_train_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict())), "dump")
    assert again == cfg
    with pytest.raises(ValueError):
        cfg.seed = 3  # type: ignore[misc]
    assert isinstance(cfg, TrainConfig) and cfg.num_iterations == 500_000 // 2048


def test_train_mapping_detection() -> None:
    assert is_train_mapping(MINIMAL)
    assert not is_train_mapping({"name": "furuta", "joints": []})
    assert not is_train_mapping([1, 2])


def test_check_config_cli_handles_train_and_robot_configs(tmp_path: Path, capsys) -> None:
    assert main(["check-config", str(TRAIN_DIR / "ppo_furuta.yaml")]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["algo"]["num_minibatches"] == 32 and out["lf"]["M"] == 16
    assert main(["check-config", "furuta"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["name"] == "furuta"
    bad = _write(tmp_path, {**MINIMAL, "algo": {"name": "ppo", "epochs": 3}})
    assert main(["check-config", str(bad)]) == 2
    assert "algo.epochs: unknown key" in capsys.readouterr().err


def test_train_cli_rejects_bad_config_with_exit_2(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path, MINIMAL)
    assert main(["train", str(path), "--set", "algo.lr=-1"]) == 2
    assert "algo.lr: Input should be greater than 0" in capsys.readouterr().err


@pytest.mark.parametrize("algo", ["mfppo", "mfreinforce"])
@pytest.mark.parametrize(("hf", "lf", "key"), [
    ({"env": "InvertedPendulum-v5", "fidelity": None}, {"env": "Pendulum-v1"},
     "lf.env: 'Pendulum-v1' is a PendulumEnv, not a Gymnasium MuJoCo env"),
    ({"env": "mfpg/FurutaSwingup-v0"}, {"env": "Pendulum-v1"}, "lf.env: 'Pendulum-v1'"),
])
def test_mf_on_a_plain_gymnasium_env_is_refused_at_load(tmp_path: Path, capsys, algo: str,
                                                        hf: dict, lf: dict, key: str) -> None:
    data = {"seed": 0, "algo": {"name": algo}, "hf": {**hf, "total_steps": 4096}, "lf": lf}
    path = _write(tmp_path, data)
    message = _error(path)
    assert str(path) in message and key in message
    assert "plain Gymnasium" in message and "algo.name: ppo or reinforce" in message
    assert main(["check-config", str(path)]) == 2
    assert key in capsys.readouterr().err


def test_plain_gymnasium_envs_load_with_ppo_and_reinforce(tmp_path: Path) -> None:
    for algo in ("ppo", "reinforce"):
        data = {"seed": 0, "algo": {"name": algo},
                "hf": {"env": "InvertedPendulum-v5", "fidelity": None, "total_steps": 4096}}
        assert load_train_config(_write(tmp_path, data)).hf.fidelity is None
    mf = {"seed": 0, "algo": {"name": "mfppo"}, "lf": {"env": "mfpg/FurutaSwingup-v0"},
          "hf": {"env": "mfpg-test/NotRegistered-v0", "total_steps": 4096}}
    assert load_train_config(_write(tmp_path, mf)).hf.env  # unknown ids: left to gym.make


def test_fidelity_on_a_plain_gymnasium_env_is_a_clear_error(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path, {**MINIMAL, "run": {"dir": str(tmp_path / "run")}})
    assert main(["train", str(path), "--set", "hf.env=InvertedPendulum-v5"]) == 2
    err = capsys.readouterr().err
    assert "hf.fidelity: env 'InvertedPendulum-v5' takes no fidelity argument" in err
    assert "set hf.fidelity: null" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
