"""ONNX export: the graph against the torch policy in onnxruntime, metadata, bad checkpoints.

Checkpoints are written in the trainer's format (`CHECKPOINT_FORMAT`, a real train config)
around a policy with non-trivial normalisation statistics and a large output layer, so that
the observation clip and the action clip are both exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mfpg_robot.cli import main
from mfpg_robot.config import load_train_config
from mfpg_robot.export import (
    ExportError,
    PolicyMismatchError,
    check_policy_matches,
    checkpoint_robot,
    export_policy,
    read_metadata,
)
from mfpg_robot.policy import GaussianPolicy
from mfpg_robot.run_dir import CHECKPOINT_FORMAT, policy_from_checkpoint
from sim.actuation import action_to_command, command_bounds
from sim.robot_config import load_robot_config

TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "ppo_furuta.yaml"


def write_checkpoint(path: Path, env: str = "mfpg/FurutaSwingup-v0", obs_dim: int = 6,
                     act_dim: int = 1, seed: int = 0) -> Path:
    """A trainer-format checkpoint of a policy whose actions saturate for part of the inputs."""
    torch.manual_seed(seed)
    policy = GaussianPolicy(obs_dim, act_dim, (64, 64))
    rng = np.random.default_rng(seed)
    policy.obs_norm.update(rng.normal(0.3, 2.0, size=(500, obs_dim)))
    with torch.no_grad():
        policy.mu[-1].weight.mul_(150.0)
    cfg = load_train_config(TRAIN_CONFIG).to_dict()
    cfg["hf"]["env"] = env
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg, "obs_dim": obs_dim,
                "act_dim": act_dim, "iteration": 3, "hf_steps": 6144,
                "algo": {"policy": policy.state_dict()}}, path)
    return path


@pytest.fixture(scope="module")
def furuta_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    (run / "config.yaml").write_text("seed: 0\n")
    write_checkpoint(run / "checkpoints" / "final.pt")
    return run


@pytest.fixture(scope="module")
def furuta_onnx(furuta_run: Path) -> Path:
    return export_policy(furuta_run)


def test_a_run_folder_exports_to_policy_onnx_that_passes_the_checker(
    furuta_run: Path, furuta_onnx: Path
) -> None:
    assert furuta_onnx == furuta_run / "policy.onnx"
    model = onnx.load(str(furuta_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["observation"]
    assert [o.name for o in model.graph.output] == ["action", "command"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 6  # dynamic batch, 6 observations
    assert not list(furuta_run.glob(".policy.onnx.*"))  # no temp file left


def test_metadata_describes_robot_layout_and_training(furuta_onnx: Path) -> None:
    meta = read_metadata(furuta_onnx)
    furuta = load_robot_config("furuta")
    assert meta["robot"] == "furuta" and meta["robot_model_id"] == 1
    assert [j["name"] for j in meta["joints"]] == ["arm", "pendulum"]
    assert meta["joints"][0]["unit"] == "rad" and meta["joints"][0]["hard_limits"] == [-2.3, 2.3]
    assert meta["actuation"]["command_units"] == ["V"]
    assert meta["actuation"]["command_upper"] == [furuta.actuation.command_limit]
    assert meta["control_rate_hz"] == 250.0
    assert meta["observation"]["task"] == "FurutaSwingup"
    assert meta["observation"]["shape"] == ["batch", 6]
    assert meta["action"]["joints"] == ["arm"] and meta["action"]["shape"] == ["batch", 1]
    assert meta["hf_samples"] == 6144 and meta["algo"] == "ppo"
    assert len(meta["config_hash"]) == 64 and meta["package_version"]


def test_onnxruntime_agrees_with_torch_on_1000_observations(
    furuta_run: Path, furuta_onnx: Path
) -> None:
    policy = policy_from_checkpoint(furuta_run / "checkpoints" / "final.pt")
    rng = np.random.default_rng(123)
    obs = rng.normal(0.0, 4.0, size=(1000, 6)).astype(np.float32)
    session = ort.InferenceSession(str(furuta_onnx), providers=["CPUExecutionProvider"])
    action, command = session.run(None, {"observation": obs})
    with torch.no_grad():
        want = policy.mean(torch.from_numpy(obs)).clamp(-1, 1).numpy()
    assert np.max(np.abs(action - want)) <= 1e-5
    assert np.any(np.abs(want) == 1.0) and np.any(np.abs(want) < 0.9)  # clip on and off
    furuta = load_robot_config("furuta")
    half = furuta.actuation.command_limit
    assert np.max(np.abs(command - action_to_command(furuta, want))) <= 1e-5 * half
    one, _ = session.run(None, {"observation": obs[:1]})  # batch 1
    assert np.array_equal(one, action[:1])


def test_extreme_observations_give_bounded_outputs_and_nan_propagates(
    furuta_onnx: Path,
) -> None:
    session = ort.InferenceSession(str(furuta_onnx), providers=["CPUExecutionProvider"])
    rows = [np.full(6, v) for v in (1e6, -1e6, np.inf, -np.inf, 0.0)]
    rows += [np.array([1e6, -1e6, 0.0, 3.0, -np.inf, 1e-30])]
    nan_row = np.array([0.0, 1.0, np.nan, 0.0, 0.0, 0.0])
    obs = np.array(rows + [nan_row], dtype=np.float32)
    action, command = session.run(None, {"observation": obs})
    ok, bad = slice(0, len(rows)), len(rows)
    assert np.all(np.isfinite(action[ok])) and np.all(np.abs(action[ok]) <= 1.0)
    assert np.all(np.abs(command[ok]) <= 6.0)
    # Documented choice: a NaN observation (a sensor fault) is not hidden by a made-up action.
    assert np.isnan(action[bad]).all() and np.isnan(command[bad]).all()


def test_arm2_commands_are_servo_targets_within_the_soft_limits(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "arm2.pt", "mfpg/Arm2Reach-v0", obs_dim=10, act_dim=2)
    out = export_policy(ckpt, tmp_path / "arm2.onnx")
    arm2 = load_robot_config("arm2")
    obs = np.random.default_rng(0).normal(0.0, 5.0, size=(200, 10)).astype(np.float32)
    action, command = ort.InferenceSession(str(out)).run(None, {"observation": obs})
    lo, hi = command_bounds(arm2)
    assert np.all(command >= lo - 1e-6) and np.all(command <= hi + 1e-6)
    assert np.max(np.abs(command - action_to_command(arm2, action))) <= 1e-5 * np.max(hi - lo)
    assert read_metadata(out)["actuation"]["command_units"] == ["rad", "rad"]
    with pytest.raises(PolicyMismatchError, match="robot 'arm2' .*robot config: 'furuta'"):
        check_policy_matches(read_metadata(out), load_robot_config("furuta"), str(out))


def test_cli_exports_a_checkpoint_to_out(furuta_run: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "p.onnx"
    assert main(["export", str(furuta_run / "checkpoints" / "final.pt"), "--out", str(out)]) == 0
    assert out.is_file() and "6144 HF samples" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing", "not_a_robot_task",
                                    "other_layout", "empty_run"])
def test_bad_checkpoints_exit_2_with_the_problem_named(
    damage: str, furuta_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    good = (furuta_run / "checkpoints" / "final.pt").read_bytes()
    path = tmp_path / "ckpt.pt"
    expect = {
        "truncated": "truncated",
        "garbage": "truncated",
        "missing": "does not exist",
        "not_a_robot_task": "not on a robot task",
        "other_layout": "another observation layout",
        "empty_run": "holds no checkpoint",
    }[damage]
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    elif damage == "not_a_robot_task":
        write_checkpoint(path, "Hopper-v5", obs_dim=11, act_dim=3)
    elif damage == "other_layout":
        write_checkpoint(path, obs_dim=7)
    elif damage == "empty_run":
        path = tmp_path / "run"
        (path / "checkpoints").mkdir(parents=True)
    assert main(["export", str(path), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert expect in err and str(path) in err
    assert not (tmp_path / "x.onnx").exists()


def test_an_onnx_file_without_our_metadata_is_refused(tmp_path: Path) -> None:
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    vi = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in "xy"]
    graph = onnx.helper.make_graph([node], "g", [vi[0]], [vi[1]])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "plain.onnx"))
    with pytest.raises(ExportError, match="no mfpg-robot metadata"):
        read_metadata(tmp_path / "plain.onnx")
    (tmp_path / "bad.onnx").write_text(json.dumps({"not": "onnx"}))
    with pytest.raises(ExportError, match="not a readable ONNX file"):
        read_metadata(tmp_path / "bad.onnx")


def test_a_run_with_its_own_robot_config_is_exported_with_that_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    custom = load_robot_config("furuta").model_dump(mode="json")
    custom["actuation"]["command_limit"] = 3.0  # stock: 6 V
    robot_yaml = tmp_path / "my_furuta.yaml"
    robot_yaml.write_text(json.dumps(custom))  # JSON is YAML
    ckpt_path = write_checkpoint(tmp_path / "ckpt.pt")
    ckpt = torch.load(ckpt_path, weights_only=False)
    ckpt["config"]["hf"]["robot"] = str(robot_yaml)
    ckpt["task"] = {"env": "mfpg/FurutaSwingup-v0", "robot": "furuta",
                    "joints": ["arm", "pendulum"]}
    torch.save(ckpt, ckpt_path)
    obs = np.random.default_rng(0).normal(0.0, 4.0, size=(200, 6)).astype(np.float32)

    out = export_policy(ckpt_path, tmp_path / "custom.onnx")
    assert read_metadata(out)["actuation"]["command_upper"] == [3.0]
    _, command = ort.InferenceSession(str(out)).run(None, {"observation": obs})
    assert np.max(np.abs(command)) == pytest.approx(3.0)  # the policy saturates
    assert not [r for r in caplog.records if r.name == "mfpg_robot.export"]

    robot_yaml.unlink()  # moved away since: the stock config, with a warning saying so
    robot, _, _ = checkpoint_robot(ckpt, ckpt_path)
    assert robot == load_robot_config("furuta")
    assert f"hf.robot '{robot_yaml}' cannot be loaded" in caplog.text
    assert "stock config of robot 'furuta'" in caplog.text
