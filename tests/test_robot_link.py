"""`connect_robot` against the real device emulator over a pty (SerialDriver, pyserial).

Emulator starts cost seconds on the shared 2-core machine, so one arm2 emulator (with 5% of
its replies dropped, so that the link has to re-send) serves the tests of bad input and of
link events; the real-time loops use a relaxed config (short settle, tolerant deadlines and
staleness, patient link), as tests/hardware/conftest.py explains.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import serial

from hardware.device_model import DeviceModel
from hardware.driver import RobotConnectionError
from hardware.protocol import Command, Enable, FaultFlag, Frame
from hardware.serial_driver import SerialDriver
from mfpg_robot.robot_link import (
    EmulatorProcess,
    OperatorAbort,
    PortNotFoundError,
    connect_robot,
)
from sim.robot_config import ConfigError, RobotConfig, load_robot_config

REPO = Path(__file__).resolve().parents[1]


def relaxed(name: str) -> RobotConfig:
    """Robot `name` with a short settle, tolerant timing checks and a patient link."""
    base = load_robot_config(name)
    return base.model_copy(update={
        "reset": base.reset.model_copy(update={"settle_s": 0.04}),
        "safety": base.safety.model_copy(
            update={"deadline_tolerance": 100_000, "stale_state_s": 1.0}),
        "serial": base.serial.model_copy(update={"retries": 6, "watchdog_ms": 500}),
    })


def gone(pid: int) -> bool:
    """No such process, or only its zombie (exited, not reaped by its new parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_gone(pid: int, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def lossy_arm2() -> Iterator[EmulatorProcess]:
    emu = EmulatorProcess(load_robot_config("arm2"), ("--drop-rate", "0.05", "--seed", "3"))
    yield emu
    emu.stop()


def test_port_and_emulate_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="--port PATH .* or --emulate"):
        with connect_robot(load_robot_config("furuta"), port="/dev/ttyUSB7", emulate=True):
            pass


def test_a_missing_port_lists_the_ports_there_are() -> None:
    master, slave = os.openpty()  # at least one pseudo-terminal to list
    try:
        with pytest.raises(PortNotFoundError) as err:
            with connect_robot(load_robot_config("furuta"), port="/dev/ttyNOPE9"):
                pass
    finally:
        os.close(master)
        os.close(slave)
    msg = str(err.value)
    assert "'/dev/ttyNOPE9' does not exist" in msg
    assert "/dev/pts/" in msg and "--emulate" in msg


def test_a_silent_device_is_reported_with_the_fix() -> None:
    master, slave = os.openpty()  # a pty nobody answers on
    try:
        t0 = time.monotonic()
        with pytest.raises(RobotConnectionError, match="no valid reply to HELLO") as err:
            with connect_robot(load_robot_config("furuta"), port=os.ttyname(slave)):
                pass
        assert time.monotonic() - t0 < 5.0
    finally:
        os.close(master)
        os.close(slave)
    assert "emulator is running" in str(err.value)


def test_another_robot_on_the_port_is_refused(lossy_arm2: EmulatorProcess) -> None:
    with pytest.raises(RobotConnectionError) as err:
        with connect_robot(relaxed("furuta"), port=lossy_arm2.port):
            pass
    msg = str(err.value)
    assert "is arm2 (model id 2" in msg and "describes furuta (model id 1" in msg
    assert "--robot" in msg


def test_a_busy_port_is_refused(lossy_arm2: EmulatorProcess) -> None:
    holder = serial.Serial(lossy_arm2.port, exclusive=True)  # another program holds it
    try:
        with pytest.raises(RobotConnectionError, match="lock") as err:
            with connect_robot(relaxed("arm2"), port=lossy_arm2.port):
                pass
    finally:
        holder.close()
    assert "another program holds the port" in str(err.value)


def test_an_operator_no_aborts_with_torque_never_on(lossy_arm2: EmulatorProcess) -> None:
    robot = relaxed("arm2")
    asked: list[str] = []

    def decline(summary: str) -> bool:
        asked.append(summary)
        return False

    with pytest.raises(OperatorAbort, match="torque was never switched on"):
        with connect_robot(robot, port=lossy_arm2.port, confirm=decline):
            pass
    assert len(asked) == 1 and "arm2 (model id 2" in asked[0] and "Next: torque on" in asked[0]
    with SerialDriver(robot, port=lossy_arm2.port) as drv:
        assert not drv.read_state().enabled


def test_retries_on_a_lossy_link_become_events(
    lossy_arm2: EmulatorProcess, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[dict] = []
    caplog.set_level(logging.INFO, logger="mfpg_robot.robot")
    with connect_robot(relaxed("arm2"), port=lossy_arm2.port, on_event=events.append) as link:
        assert link.preflight.confirmed is None and link.emulator is None
        drv = link.env.driver
        for _ in range(100):
            drv.read_state()
    retries = [e for e in events if e["source"] == "link" and e["kind"] == "retry"]
    assert retries, "5% of 100+ replies dropped, yet no retry event"
    assert "re-sending" in retries[0]["detail"] and retries[0]["stop"] == "none"
    logged = [r for r in caplog.records if r.name == "mfpg_robot.robot" and "retry" in r.message]
    assert logged and all(r.levelno == logging.WARNING for r in logged)


def test_dry_run_link_events_and_clean_stop(caplog: pytest.LogCaptureFixture) -> None:
    """--emulate: the emulator starts, the env runs, a safety stop becomes an event, and the
    emulator is gone once the context exits."""
    events: list[dict] = []
    asked: list[str] = []
    robot = relaxed("furuta")
    with connect_robot(robot, emulate=True, on_event=events.append,
                       confirm=lambda s: asked.append(s) or True,
                       env_kwargs={"max_episode_steps": 20}) as link:
        emulator = link.emulator
        assert emulator is not None and emulator.running and link.port == emulator.port
        assert link.preflight.confirmed is True and "(emulator)" in asked[0]
        assert link.preflight.to_dict()["device"].startswith("furuta (model id 1")
        link.env.reset(seed=0)
        for _ in range(5):
            link.env.step(np.zeros(1, dtype=np.float32))
        *_, terminated, _, info = link.env.step(np.array([np.nan], dtype=np.float32))
        assert terminated and info["safety"]["stopped"]
    assert not emulator.running and emulator.proc.returncode == 0
    stops = [e for e in events if e["source"] == "safety" and e["stop"] != "none"]
    assert stops and stops[0]["kind"] == "invalid_action" and stops[0]["stop"] == "torque_off"
    assert any(r.levelno == logging.WARNING and "invalid_action" in r.message
               for r in caplog.records if r.name == "mfpg_robot.robot")


def test_arm2_resting_on_its_end_stop_is_recovered_by_a_slow_move() -> None:
    robot = relaxed("arm2")
    events: list[dict] = []
    with connect_robot(robot, emulate=True) as first:
        drv = first.env.driver
        drv.enable()  # swing the shoulder over, then let it fall onto its end stop
        for _ in range(50):
            drv.send_command(np.array([1.57, 0.0]))
            time.sleep(robot.control_dt)
        drv.disable()
        time.sleep(1.5)
        resting = drv.read_state()
        assert resting.positions[0] > robot.joint("shoulder").hard_limits.upper
        assert not resting.faults and not resting.enabled
        drv.close()
        with connect_robot(robot, port=first.port, on_event=events.append) as link:
            start, target = link.preflight.recovery["shoulder"]
            assert start == pytest.approx(resting.positions[0], abs=1e-3)
            assert target < robot.joint("shoulder").soft_limits.upper
            time.sleep(0.5)  # the servos hold (keep-alive) until the first reset
            state = link.env.driver.read_state()
            assert state.enabled and not state.faults
            assert state.positions[0] < robot.joint("shoulder").soft_limits.upper
            link.env.reset(seed=0)
    assert [e["kind"] for e in events if e["source"] == "preflight"] == ["recovery"]


def test_the_device_lets_a_servo_on_its_end_stop_move_back_but_not_further_out() -> None:
    """The firmware rules the recovery move relies on (DeviceModel in-process, no pty)."""
    arm2 = load_robot_config("arm2")
    dev = DeviceModel(arm2)
    now = 0

    def run(periods: int) -> None:
        nonlocal now
        for _ in range(periods):
            now += dev.period_us
            dev.tick(now)

    dev.twin.set_state(np.array([1.5, 0.0]))
    run(100)  # torque off: the shoulder falls onto its end stop, just past the hard limit
    resting, elbow = dev.twin.q_meas
    assert resting > arm2.joint("shoulder").hard_limits.upper
    assert not dev.faults  # a limp joint resting on its end stop is no fault
    dev.handle(Frame(1, Enable()), now)
    dev.handle(Frame(2, Command((1.9, elbow))), now)  # beyond: held where it is, not pushed out
    assert dev.targets[0] == pytest.approx(resting) and dev.clamped
    run(4)
    assert not dev.faults and dev.enabled
    assert dev.twin.q_meas[0] == pytest.approx(resting, abs=0.005)  # held on the stop
    dev.handle(Frame(3, Command((resting - 0.02, elbow))), now)  # a small step back: accepted
    assert dev.targets[0] == pytest.approx(resting - 0.02)
    run(8)  # within the device watchdog (200 ms)
    assert not dev.faults and dev.twin.q_meas[0] < 1.75
    dev.twin.set_state(np.array([1.77, 0.0]))  # pushed out again after it was inside
    run(2)
    assert FaultFlag.LIMIT in dev.faults and not dev.enabled


def test_the_emulator_dies_with_a_killed_parent(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys, time
        from mfpg_robot.robot_link import connect_robot
        from sim.robot_config import load_robot_config
        with connect_robot(load_robot_config("furuta"), emulate=True) as link:
            print(link.emulator.pid, flush=True)
            time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), line
        pid = int(line)
        assert not gone(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_gone(pid), f"emulator {pid} outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()


def test_the_emulator_stops_by_itself_when_its_parent_is_not_the_one_named() -> None:
    """The fallback behind PR_SET_PDEATHSIG: `--parent-pid` polled by the emulator."""
    cmd = [sys.executable, "-m", "mfpg_robot.cli", "emulator", "--robot", "furuta",
           "--parent-pid", "1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.startswith("port: ") and "parent process 1 is gone" in proc.stdout
