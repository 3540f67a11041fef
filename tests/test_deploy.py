"""`deploy`: an exported policy in onnxruntime on the emulated robot (SerialDriver over a pty).

Episodes are kept short (`max_episode_steps`); the library test uses a relaxed robot config
(tests/hardware/conftest.py explains why real-time loops on the shared 2-core machine need
one), the CLI test the plain config, where an episode may end by a missed-deadline stop (it
is then reported, not an error).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mfpg_robot.cli import main
from mfpg_robot.config import load_train_config
from mfpg_robot.deploy import deploy
from mfpg_robot.export import export_policy
from mfpg_robot.policy import GaussianPolicy
from mfpg_robot.run_dir import CHECKPOINT_FORMAT
from sim.robot_config import load_robot_config

TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "ppo_furuta.yaml"


def write_checkpoint(path: Path, env: str, obs_dim: int, act_dim: int) -> Path:
    """A trainer-format checkpoint of a freshly initialised policy (small actions)."""
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim, act_dim, (64, 64))
    cfg = load_train_config(TRAIN_CONFIG).to_dict()
    cfg["hf"]["env"] = env
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg, "obs_dim": obs_dim,
                "act_dim": act_dim, "iteration": 1, "hf_steps": 2048,
                "algo": {"policy": policy.state_dict()}}, path)
    return path


def relaxed_furuta():
    base = load_robot_config("furuta")
    return base.model_copy(update={
        "reset": base.reset.model_copy(update={"settle_s": 0.04}),
        "safety": base.safety.model_copy(
            update={"deadline_tolerance": 100_000, "stale_state_s": 1.0}),
        "serial": base.serial.model_copy(update={"retries": 6, "watchdog_ms": 500}),
    })


@pytest.fixture(scope="module")
def furuta_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ck") / "furuta.pt",
                            "mfpg/FurutaSwingup-v0", 6, 1)


def test_deploy_runs_episodes_on_the_emulator(furuta_ckpt: Path) -> None:
    """A checkpoint is exported on the fly; every episode is reported with its timing."""
    events: list[dict] = []
    report = deploy(furuta_ckpt, relaxed_furuta(), episodes=2, emulate=True,
                    on_event=events.append, env_kwargs={"max_episode_steps": 25})
    assert report.emulated and report.port.startswith("/dev/pts/")
    assert report.metadata["robot"] == "furuta" and report.preflight["confirmed"] is None
    assert [ep.episode for ep in report.episodes] == [0, 1]
    for ep in report.episodes:
        assert ep.steps == 25 and ep.ended == "time_limit"
        assert np.isfinite(ep.episode_return) and ep.episode_return > 0  # rewards are >= 0
        assert 0 < ep.inference_p50_s <= ep.inference_p99_s < ep.step_p99_s
        assert ep.step_p50_s == pytest.approx(1 / 250, rel=0.5)  # paced by the control loop
        assert ep.missed_deadlines >= 0 and ep.reset_s > 0


def test_cli_deploy_on_the_emulator_writes_a_report(
    furuta_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    onnx_path = export_policy(furuta_ckpt, tmp_path / "policy.onnx")
    report = tmp_path / "report.json"
    rc = main(["deploy", str(onnx_path), "--robot", "furuta", "--emulate", "--episodes", "1",
               "--max-steps", "20", "--json", str(report)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "episode 0: return" in out and "(emulator)" in out
    data = json.loads(report.read_text())
    assert len(data["episodes"]) == 1 and 1 <= data["episodes"][0]["steps"] <= 20
    assert data["metadata"]["robot"] == "furuta"


def test_a_policy_for_another_robot_is_refused_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = write_checkpoint(tmp_path / "arm2.pt", "mfpg/Arm2Reach-v0", 10, 2)
    onnx_path = export_policy(ckpt, tmp_path / "arm2.onnx")
    rc = main(["deploy", str(onnx_path), "--robot", "furuta", "--port", "/dev/ttyNOPE3",
               "--episodes", "1", "--yes"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "another robot" in err and "robot 'arm2'" in err and "--robot arm2" in err
    assert "does not exist" not in err  # refused before the port was looked at


@pytest.mark.parametrize("policy, argv, expect", [
    ("ckpt", ["--emulate", "--port", "/dev/ttyUSB0"], "not both"),
    ("ckpt", ["--episodes", "0"], "--episodes must be at least 1"),
    ("missing.onnx", ["--emulate"], "not found"),
])
def test_bad_deploy_arguments_exit_2(
    policy: str, argv: list[str], expect: str, furuta_ckpt: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture
) -> None:
    path = furuta_ckpt if policy == "ckpt" else tmp_path / policy
    assert main(["deploy", str(path), "--robot", "furuta", "--episodes", "1", *argv]) == 2
    assert expect in capsys.readouterr().err
