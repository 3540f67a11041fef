"""`mfpg-robot calibrate`: fitting a model's physical parameters to recorded HF episodes.

Episodes are recorded on real MuJoCo envs (the twin, or an LF model itself) with a fixed
excitation policy and written with the session's own `EpisodeStore`; the fit replays them
through real MuJoCo. The end-to-end test adds the calibrated model to a copy of the robot
configs (the one stand-in: `sim.robot_config.ROBOTS_DIR` points at that copy, so the shipped
configs/robots/furuta.yaml is left alone) and trains on it as HF and as LF model.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import yaml

import sim  # noqa: F401  (registers the mfpg envs)
import sim.robot_config as robot_config
from mfpg_robot.calibrate import (
    available_params,
    calibrate,
    default_params,
    load_replay_data,
    safety_commands,
    write_model,
)
from mfpg_robot.cli import main
from mfpg_robot.episodes import ROW_FIELDS, EpisodeStore, Segment
from mfpg_robot.train import train
from sim.robot_config import RobotConfig, load_robot_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FURUTA = load_robot_config("furuta")
FIT = ["length.pendulum", "mass.arm", "mass.pendulum"]
TWIN = {"length.pendulum": 0.129, "mass.arm": 0.095, "mass.pendulum": 0.024}
SMALL = {"max_starts": 300, "max_evals": 120}


def record(folder: Path, env_id: str, fidelity: str, episodes: int = 3, steps: int = 400,
           seed: int = 0) -> RobotConfig:
    """Episodes of a fixed excitation (a sine of random frequency plus noise) into
    `folder/hf_episodes/`, as a session writes them."""
    env = gym.make(env_id, fidelity=fidelity, max_episode_steps=steps).unwrapped
    store = EpisodeStore(folder / "hf_episodes")
    rng = np.random.default_rng(seed)
    rate = env.robot.control_rate_hz
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        freq, phase = rng.uniform(0.8, 2.0), rng.uniform(0, 2 * math.pi)
        rows: dict[str, list] = {k: [] for k in ROW_FIELDS}
        states = []
        for t in range(steps):
            a = np.clip(0.5 * np.sin(2 * math.pi * freq * t / rate + phase + np.arange(
                env.action_space.shape[0])) + 0.3 * rng.standard_normal(env.action_space.shape),
                -1.0, 1.0)
            states.append(env.get_state())
            nxt, r, term, _, _ = env.step(a)
            for k, val in zip(ROW_FIELDS, (obs, a * 0, a, 0.0, r, term, t == steps - 1, nxt,
                                           t == 0), strict=True):
                rows[k].append(val)
            obs = nxt
            if term:
                break
        arrays = {k: np.array(v) for k, v in rows.items()}
        store.write(Segment(ep, -1, 1, 0, arrays, states, True, False,
                            float(arrays["rewards"].sum()), len(states), 0.0))
    return env.robot


@pytest.fixture(scope="module")
def twin_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("twin_run")
    record(folder, "mfpg/FurutaSwingup-v0", "twin")
    return folder


def test_fit_on_twin_data_moves_the_gap_model_to_the_twin(twin_run: Path) -> None:
    data = load_replay_data(twin_run, FURUTA)
    res = calibrate(data, FURUTA, "reduced_gap", FIT, **SMALL)
    for name in FIT:
        assert abs(res.after[name] - TWIN[name]) < 0.3 * abs(res.before[name] - TWIN[name]), name
    assert res.after["length.pendulum"] == pytest.approx(0.129, rel=0.05)
    assert res.error_after < res.error_before / 10
    assert res.latency == 1  # the twin reports its state one control step late
    assert res.latency_errors[1] < min(res.latency_errors[0], res.latency_errors[2])


def test_fit_on_the_models_own_data_recovers_its_parameters(tmp_path: Path) -> None:
    """Data from `reduced` (the gap model's figures before its errors), fit from reduced_gap."""
    record(tmp_path, "mfpg/FurutaSwingup-v0", "reduced")
    res = calibrate(load_replay_data(tmp_path, FURUTA), FURUTA, "reduced_gap", FIT, **SMALL)
    for name in FIT:
        assert res.after[name] == pytest.approx(TWIN[name], rel=0.01), name
    assert res.latency == 0
    assert res.error_after < 1e-6 * res.error_before


def test_written_model_has_the_fit_and_latency(twin_run: Path, tmp_path: Path) -> None:
    data = load_replay_data(twin_run, FURUTA)
    res = calibrate(data, FURUTA, "reduced_gap", ["length.pendulum", "mass.arm"],
                    max_starts=100, max_evals=30)
    path = write_model(res, tmp_path / "cal.xml")
    model = mujoco.MjModel.from_xml_path(str(path))
    arm = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "arm")
    pend = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "pendulum")
    assert model.body_mass[arm] == pytest.approx(res.after["mass.arm"], rel=1e-5)
    scale = res.after["length.pendulum"] / 0.0903
    assert model.body_ipos[pend][2] == pytest.approx(-0.04515 * scale, rel=1e-5)
    # a uniform rod: inertia x length^2 at the same mass
    assert model.body_inertia[pend][0] == pytest.approx(3.2616e-5 * scale**2, rel=1e-4)
    idx = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_NUMERIC, "mfpg_sensor_latency_steps")
    assert model.numeric_data[model.numeric_adr[idx]] == res.latency == 1
    # fitting the written model again starts where the first fit ended
    again = available_params(path, FURUTA)
    assert again["length.pendulum"].initial == pytest.approx(res.after["length.pendulum"])


def test_arm2_servo_defaults_and_fit(tmp_path: Path) -> None:
    """Position servos: kp and force range of the kinematic servo (its time constant, speed)."""
    arm2 = record(tmp_path, "mfpg/Arm2Reach-v0", "twin", episodes=2, steps=150)
    names = default_params(arm2, available_params(arm2.model_path("reduced_gap"), arm2))
    assert names == ["gain.shoulder", "force_limit.shoulder", "gain.elbow", "force_limit.elbow"]
    res = calibrate(load_replay_data(tmp_path, arm2), arm2, "reduced_gap", k=5,
                    max_starts=150, max_evals=60)
    assert res.error_after < res.error_before / 2


def test_device_commands_are_replayed_through_the_safety_layer() -> None:
    """A session on a device records the policy's actions; the robot got them rate-limited
    (furuta: 2 V per step from 0 V at the start) and cut by the braking rule near a limit."""
    n = 6
    q, v = np.zeros((n, 2)), np.zeros((n, 2))
    cmd = safety_commands(FURUTA, q, v, np.array([[0.0], [1.0], [1.0], [1.0], [-2.0], [1.0]]))
    assert cmd[:, 0].tolist() == [0.0, 2.0, 4.0, 6.0, 4.0, 6.0]
    q[:, 0], v[:, 0] = 1.9, 3.0  # near the soft limit (2.0), moving towards it: brake
    cmd = safety_commands(FURUTA, q, v, np.ones((n, 1)))
    assert np.all(cmd <= 0.0)


# ---- the command ----------------------------------------------------------------------------
def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    rc = main(["calibrate", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(("case", "message"), [
    ("missing", "not a folder"),
    ("no_episodes_dir", "no hf_episodes/ folder"),
    ("empty", "no HF episode files"),
    ("no_config", "no config.yaml"),
    ("model", "has no model 'nope'; its models: twin, reduced, reduced_gap"),
    ("param", "has no parameter 'mass.elbow'; it has: length.arm"),
    ("out", "ending in .xml"),
    ("overwrite", "is the robot's model 'reduced_gap'"),
])
def test_bad_input_exits_2_with_the_fix(case: str, message: str, tmp_path: Path,
                                        twin_run: Path, capsys: pytest.CaptureFixture) -> None:
    run, model, extra = twin_run, "reduced_gap", ["--robot", "furuta"]
    out = str(tmp_path / "cal.xml")
    if case == "missing":
        run = tmp_path / "nothing"
    elif case == "no_episodes_dir":
        run = tmp_path
    elif case == "empty":
        (tmp_path / "hf_episodes").mkdir()
        run = tmp_path
    elif case == "no_config":
        extra = []
    elif case == "model":
        model = "nope"
    elif case == "param":
        extra += ["--params", "length.pendulum", "mass.elbow"]
    elif case == "out":
        out = str(tmp_path / "cal.yaml")
    elif case == "overwrite":
        out = str(FURUTA.model_path("reduced_gap"))
    rc, _, err = cli(capsys, str(run), "--model", model, "--out", out, *extra)
    assert rc == 2
    assert message in err and err.startswith("error: ")
    assert not (tmp_path / "cal.xml").exists()


def test_calibrated_model_trains_as_hf_and_lf_model_by_its_yaml_line(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented path: a session's folder -> calibrate -> the printed line under models:
    -> `hf.fidelity` / `lf.fidelity` of a train config."""
    session = train("configs/train/ppo_furuta.yaml", [
        "hf.fidelity=twin", "hf.steps_per_iter=600", "hf.total_steps=1200",
        "algo.num_minibatches=4", "algo.update_epochs=1", f"run.dir={tmp_path / 'session'}",
        "run.progress=false", "run.checkpoint_every=0"])
    out = tmp_path / "models" / "furuta_cal.xml"
    rc, text, _ = cli(capsys, str(session.run_dir), "--model", "reduced_gap", "--out", str(out),
                      "--params", "length.pendulum", "mass.pendulum", "--max-starts", "200",
                      "--max-evals", "40", "--name", "cal")
    assert rc == 0 and out.is_file()
    line = re.search(r"^  (cal: .+)$", text, re.M).group(1)
    assert line == f"cal: {out}"
    assert "--set lf.fidelity=cal" in text and "--set hf.fidelity=cal" in text
    robots = tmp_path / "robots"
    shutil.copytree(robot_config.ROBOTS_DIR, robots)
    yaml_text = (robots / "furuta.yaml").read_text()
    (robots / "furuta.yaml").write_text(yaml_text.replace("models:\n", f"models:\n  {line}\n"))
    monkeypatch.setattr(robot_config, "ROBOTS_DIR", robots)

    env = gym.make("mfpg/FurutaSwingup-v0", fidelity="cal").unwrapped
    assert env.sensor.latency_steps == 1
    assert env.model.body_mass[2] != pytest.approx(0.048)  # fitted, not reduced_gap's
    common = ["algo.num_minibatches=4", "algo.update_epochs=1", "run.progress=false",
              "run.checkpoint_every=0", "hf.steps_per_iter=256", "hf.total_steps=256"]
    pre = train("configs/train/pretrain_furuta.yaml",
                [*common, "hf.fidelity=cal", f"run.dir={tmp_path / 'pre'}"])
    assert pre.hf_steps == 256
    mf = train("configs/train/mfppo_furuta.yaml",
               [*common, "hf.fidelity=twin", "lf.fidelity=cal", "lf.pairing=episode",
                "lf.lf_pool_per_hf=2", f"run.dir={tmp_path / 'mf'}"])
    assert sum(row.get("lf/steps") or 0 for row in mf.history) > 0


# ---- the benchmark method ---------------------------------------------------------------------
def test_bench_ppo_lf_calibrated_counts_b_hf_steps_and_leaves_the_configs_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LF-pretrained policy -> B HF steps -> calibration -> LF training -> evaluation, in
    process at B = 512 with a short fit (CALIBRATED's entry replaced for speed)."""
    from benchmarks import sample_efficiency as se

    monkeypatch.setitem(se.CALIBRATED, "ppo_lf_calibrated",
                        se.Calibrated(2, -1.5, ("length.pendulum", "mass.pendulum"), 25))
    settings = se.Settings(512, 1, 50, ("hf.steps_per_iter=256", "algo.num_minibatches=4",
                                        "algo.update_epochs=1"))
    task = "furuta-twin-reduced_gap"
    rec = se.run_one(tmp_path, task, "ppo_lf_calibrated", 0, settings)
    pre = json.loads((tmp_path / "pretrain" / task / "s0.json").read_text())
    assert rec["hf_samples"] == 512
    assert rec["lf_train_samples"] == 2 * 512
    assert rec["lf_samples"] == pre["lf_samples"] + 2 * 512
    assert [p[0] for p in rec["curve"]] == [0, 512]
    assert rec["curve"][0][1] == pre["hf_return"]
    assert rec["spec"]["calibration"]["lf_factor"] == 2
    fit = rec["calibration"]
    assert fit["error_after"] < fit["error_before"] and fit["latency"] == 1
    assert fit["after"]["length.pendulum"] > 0.0903  # towards the twin's 0.129
    run = tmp_path / "runs" / task / "ppo_lf_calibrated" / "s0"
    cfg = yaml.safe_load((run / "lf" / "config.yaml").read_text())
    assert cfg["hf"]["fidelity"] == "reduced_gap_calibrated"
    assert cfg["init"]["checkpoint"] == str(tmp_path / pre["checkpoint"])
    assert robot_config.ROBOTS_DIR == robot_config.REPO_ROOT / "configs" / "robots"
    assert "reduced_gap_calibrated" not in load_robot_config("furuta").models
    assert "ppo_lf_calibrated" not in se.runnable("pendulum-gravity_x2", ["ppo_lf_calibrated"])
