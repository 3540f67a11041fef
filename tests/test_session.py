"""Robot sessions: the HF env from the config, the rules a robot session applies, the CLI's
bad input, and against the device emulator (real pty, real pyserial, subprocesses):
- a training process killed with SIGKILL mid-iteration, then resumed: the episodes it
  recorded in the interrupted iteration are used, none lost or counted twice;
- a dry run killed with SIGKILL leaves no emulator behind; resumed and stopped with SIGTERM,
  it turns torque off, keeps everything, exits 130 and prints how to resume.
Emulator tests use the relaxed robot config of tests/hardware/conftest.py (timing checks off
on the shared 2-core machine) and budgets of a few hundred steps."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from mfpg_robot.cli import main
from mfpg_robot.config import validate_train_config
from mfpg_robot.episodes import EpisodeStore, read_segment
from mfpg_robot.hf_env import open_hf_env, robot_config_for
from mfpg_robot.train import resolve_session, train
from sim.robot_config import REPO_ROOT, ConfigError, RobotConfig, load_robot_config

FURUTA = "mfpg/FurutaSwingup-v0"
PYTHON = sys.executable


def _relaxed_furuta() -> RobotConfig:
    """The relaxed config of tests/hardware/conftest.py: missed deadlines and late states
    tolerated, a patient link, a short settle."""
    base = load_robot_config("furuta")
    return base.model_copy(update={
        "reset": base.reset.model_copy(update={"settle_s": 0.04}),
        "safety": base.safety.model_copy(update={"deadline_tolerance": 100_000,
                                                 "stale_state_s": 1.0}),
        "serial": base.serial.model_copy(update={"retries": 6, "watchdog_ms": 500}),
    })


def _session(tmp_path: Path, **hf) -> dict:
    robot = tmp_path / "furuta_relaxed.yaml"
    robot.write_text(yaml.safe_dump(_relaxed_furuta().model_dump(mode="json")))
    return {
        "seed": 0,
        "algo": {"name": "mfppo", "num_minibatches": 4, "update_epochs": 2},
        "hf": {"env": FURUTA, "fidelity": "robot", "robot": str(robot), "steps_per_iter": 128,
               "total_steps": 256, **hf},
        "lf": {"pairing": "episode", "lf_pool_per_hf": 2, "nthread": 1},
        "run": {"dir": str(tmp_path / "run"), "progress": False, "checkpoint_every": 1,
                "export": False},
    }


def _emulators_of(pid: int) -> list[int]:
    """Pids of emulator processes started for parent `pid` (`--parent-pid PID`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"emulator" in cmd and b"--parent-pid" in cmd and \
                cmd[cmd.index(b"--parent-pid") + 1] == str(pid).encode():
            found.append(int(entry.name))
    return found


def _wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}: "
                                 f"{proc.stdout.read() if proc.stdout else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _gone(pids: list[int], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _segments(run: Path) -> list:
    return [read_segment(p) for p in EpisodeStore(run / "hf_episodes").paths_from((0, 0))]


# -- without a device -----------------------------------------------------------------------
def test_robot_comes_from_the_task_or_hf_robot_and_must_match(tmp_path) -> None:
    cfg = validate_train_config(_session(tmp_path), "t")
    assert robot_config_for(cfg).name == "furuta"
    wrong = validate_train_config(_session(tmp_path, robot="arm2"), "t")
    with pytest.raises(ConfigError, match="hf.robot 'arm2' is robot 'arm2', but hf.env"):
        robot_config_for(wrong)
    plain = validate_train_config({"seed": 0, "algo": {"name": "ppo"}, "hf": {
        "env": "Pendulum-v1", "fidelity": "robot", "total_steps": 4096}}, "t")
    with pytest.raises(ConfigError, match="hf.env 'Pendulum-v1' has no robot"):
        robot_config_for(plain)
    with pytest.raises(ConfigError, match="hf.port is set but hf.fidelity is 'twin'"):
        validate_train_config(_session(tmp_path, fidelity="twin", robot=None, port="/dev/x"),
                              "t")
    sim_cfg = validate_train_config(_session(tmp_path, fidelity="twin", robot=None), "t")
    with pytest.raises(ConfigError, match="--port/--emulate name a device"):
        with open_hf_env(sim_cfg, emulate=True):
            pass


def test_robot_episode_pairing_forces_same_starts_and_says_so(tmp_path, caplog) -> None:
    cfg = validate_train_config(_session(tmp_path), "t")
    assert cfg.lf.same_starts is False
    resolved, notes = resolve_session(cfg)
    assert resolved.lf.same_starts is True and "lf.same_starts: true (forced)" in notes[0]
    assert "lf.same_starts: true (forced)" in caplog.text
    synced = validate_train_config(_session(tmp_path) | {"lf": {"pairing": "synced"}}, "t")
    assert resolve_session(synced) == (synced, [])  # unbiased for any start distribution


def test_train_cli_bad_input(tmp_path, capsys) -> None:
    path = tmp_path / "session.yaml"
    path.write_text(yaml.safe_dump(_session(tmp_path)))
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(path), "--port", "/dev/ttyUSB9", "--emulate"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "train needs a CONFIG file, or --resume RUN_DIR" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["train", str(path), "--port", str(tmp_path / "ttyNONE"), "--yes"]) == 1
    err = capsys.readouterr().err
    assert "ttyNONE' does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # no run folder for a session that never started


# -- against the emulator -------------------------------------------------------------------
KILLED_TRAINER = textwrap.dedent("""
    import sys
    from mfpg_robot.config import validate_train_config
    from mfpg_robot.train import train
    import yaml
    cfg = validate_train_config(yaml.safe_load(open(sys.argv[1])), sys.argv[1])
    train(cfg, emulate=True, env_kwargs={"max_episode_steps": 50})
""")


def test_training_killed_mid_iteration_resumes_with_the_recorded_episodes(tmp_path) -> None:
    config = tmp_path / "session.yaml"
    config.write_text(yaml.safe_dump(_session(tmp_path)))
    run = tmp_path / "run"
    proc = subprocess.Popen([PYTHON, "-c", KILLED_TRAINER, str(config)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # 50-step episodes, 128 steps per iteration: kill once iteration 2 has an episode
        _wait_for(lambda: (run / "checkpoints" / "iter_000001.pt").exists()
                  and any(s.iteration == 2 for s in _segments(run)), 180,
                  "episode of iteration 2", proc)
        emulators = _emulators_of(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.stdout.close()
    assert emulators and _gone(emulators), "the emulator outlived the killed trainer"
    before = {p.name: p.read_bytes() for p in (run / "hf_episodes").iterdir()}
    recorded = [s for s in _segments(run) if s.iteration == 2]
    assert recorded and recorded[0].row0 == 0 and all(s.ended for s in recorded)

    result = train(resume=run, emulate=True, env_kwargs={"max_episode_steps": 50})
    assert result.hf_steps == 256
    row = result.history[-1]
    assert row["iteration"] == 2 and row["replayed"] is True
    for name, data in before.items():  # what was recorded is kept as it was
        assert (run / "hf_episodes" / name).read_bytes() == data
    it2 = [s for s in _segments(run) if s.iteration == 2]
    assert [s.row0 for s in it2] == [sum(len(x) for x in it2[:i]) for i in range(len(it2))]
    assert sum(len(s) for s in it2) == 128  # every row once: the recorded, then the new ones
    assert [(s.filename, s.row0) for s in it2[: len(recorded)]] == [
        (s.filename, s.row0) for s in recorded]
    assert row["episodes"] == sum(s.ended and not s.cut for s in it2)
    assert [s.episode for s in _segments(run)] == list(range(len(_segments(run))))
    assert result.robot_time_s > sum(s.robot_time_s for s in recorded) > 0


def test_dry_run_killed_leaves_no_emulator_and_sigterm_stops_cleanly(tmp_path) -> None:
    config = tmp_path / "session.yaml"
    # one iteration of 1000-step episodes: the session is always collecting
    config.write_text(yaml.safe_dump(_session(tmp_path, steps_per_iter=4096, total_steps=4096)))
    run = tmp_path / "run"
    cli = [PYTHON, "-m", "mfpg_robot.cli", "dry-run"]
    dry = subprocess.Popen([*cli, str(config)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: (run / "preflight.json").exists(), 120, "pre-flight", dry)
        emulators = _emulators_of(dry.pid)
        dry.send_signal(signal.SIGKILL)
        dry.wait(timeout=10)
    finally:
        dry.kill()
        dry.stdout.close()
    assert emulators and _gone(emulators), "the emulator outlived the killed dry run"
    assert json.loads((run / "preflight.json").read_text())["emulated"] is True

    resumed = subprocess.Popen([*cli, "--resume", str(run)], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: any(s.iteration == 1 for s in _segments(run)), 120,
                  "a recorded episode", resumed)
        time.sleep(1.0)  # into the next reset or episode
        resumed.send_signal(signal.SIGTERM)
        out, _ = resumed.communicate(timeout=60)
    finally:
        resumed.kill()
    assert resumed.returncode == 130, out
    lines = [line for line in out.splitlines() if "resume with:" in line]
    assert lines == [f"interrupted: the run folder {run} holds everything up to now; resume "
                     f"with: mfpg-robot train --resume {run} --emulate"]
    events = [json.loads(line) for line in (run / "safety.jsonl").read_text().splitlines()]
    stops = [e for e in events if e["source"] == "session" and e["kind"] == "interrupt"]
    assert len(stops) == 1 and stops[0]["stop"] == "torque_off", events
    assert (run / "checkpoints" / "iter_000000.pt").is_file()
    segments = _segments(run)
    assert [s.row0 for s in segments] == [sum(len(x) for x in segments[:i])
                                          for i in range(len(segments))]
    assert all(s.ended for s in segments)  # nothing left half-written: robot episodes end


def test_parking_leaves_arm2_limp_at_rest_and_runs_the_reset_for_furuta(caplog) -> None:
    """`park_robot` on RobotEnv over MockDriver (simulated device; the emulator version is in
    tests/hardware/test_robot_env_emulator.py)."""
    import numpy as np

    from hardware.mock_driver import MockDriver
    from hardware.robot_env import make_robot_env
    from mfpg_robot.hf_env import end_robot_episode, park_robot

    def open_env(name: str):
        robot = load_robot_config(name)
        robot = robot.model_copy(
            update={"reset": robot.reset.model_copy(update={"settle_s": 0.04})})
        drv = MockDriver(robot, host_clock="simulated")
        drv.connect()
        env = make_robot_env(robot, drv, realtime=False)
        env.reset(seed=0)
        env.step(np.zeros(env.action_space.shape))
        end_robot_episode(env)  # the rollout's cut
        return env, drv

    resets: list = []
    park = park_robot(lambda env, seed: resets.append(seed) or env.reset(seed=seed))
    arm2, drv = open_env("arm2")
    assert drv.torque_enabled  # end of episode: servos hold
    park(arm2)
    assert not drv.torque_enabled and resets == []
    assert abs(drv.true_joint_state()[0][0] - arm2.robot.reset.rest["shoulder"]) < 0.05
    drv.fail_after_n_calls(3)  # the link fails while parking: a warning, torque off attempted
    park(arm2)
    assert "parking the robot at its rest pose failed (RobotConnectionError" in caplog.text
    furuta, fdrv = open_env("furuta")
    park(furuta)
    assert resets == [None] and not fdrv.torque_enabled
