"""Faults through the whole stack: RobotEnv + SafetyLayer + SerialDriver + emulator on a pty.

Each test starts its own emulator (`emulator_factory`) with the fault it injects. The driver-level
versions of these faults are in test_emulator.py and test_serial_driver.py; here they must end
the episode safely through `RobotEnv`.

These tests are about faults, not timing: the machine running them has 2 shared cores, and a
250 Hz loop competing with the emulator misses deadlines and sees late replies.
`relaxed_config("furuta")` (conftest.py) therefore tolerates missed deadlines and stale states
up to 1 s, and gives every request 7 attempts of the robot's 20 ms and the device watchdog
500 ms, so that only the injected fault ends an episode. (A longer reply timeout is no cure:
while the host waits for the reply to a COMMAND the device lost, the previous command keeps
acting; at 50-100 ms, 5% corrupted requests drove furuta's reset into its hard limit.)
The loop's timing is measured by benchmarks/control_loop.py and tested against the mock in
test_robot_env.py.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hardware.driver import RobotFaultError
from hardware.emulator import FaultInjection
from hardware.homing import ResetError
from hardware.robot_env import RobotEnv, make_robot_env
from hardware.safety import SafetyStopError
from hardware.serial_driver import SerialDriver
from mfpg_robot.cli import main

SLACK_S = 0.5  # scheduling slack on a loaded 2-core machine, on top of the link's own bound
ZERO = np.zeros(1)  # 0 V on furuta's arm


def run_episode(env: RobotEnv, seed: int, steps: int | None = None) -> None:
    """Reset and run `steps` steps (default: to the horizon) of a slow sine; fail if anything
    ends the episode early."""
    env.reset(seed=seed)
    steps = env.max_episode_steps if steps is None else steps
    for k in range(steps):
        *_, terminated, truncated, info = env.step(np.array([0.2 * np.sin(0.05 * k)]))
        assert not terminated, info["safety"]["event"]
    assert truncated == (steps == env.max_episode_steps)


def test_emulator_killed_mid_episode_stops_within_the_link_timeout(
    emulator_factory, relaxed_config
) -> None:
    """SIGKILL of the device mid-episode: driver_error stop, driver closed, steps refused;
    after the device is back (on a new port), reset() reconnects and episodes run again."""
    cfg = relaxed_config("furuta")
    emulator = emulator_factory("furuta")
    drv = SerialDriver(cfg, port=emulator.port)
    drv.connect()
    env = make_robot_env(cfg, drv, max_episode_steps=5000)
    env.reset(seed=0)
    killer = threading.Timer(0.3, emulator.proc.kill)
    killer.start()
    try:
        for _ in range(env.max_episode_steps):
            t = time.monotonic()
            *_, terminated, _, info = env.step(ZERO)
            step_s = time.monotonic() - t
            if terminated:
                break
    finally:
        killer.join()
    assert terminated, "the env kept stepping after the device was killed"
    assert emulator.wait() == -signal.SIGKILL
    event = info["safety"]["event"]
    assert event["kind"] == "driver_error" and event["stop"] == "torque_off"
    assert "RobotConnectionError" in event["detail"]
    bound_s = cfg.serial.timeout_s * (cfg.serial.retries + 1) + SLACK_S
    assert step_s < bound_s, f"the failing step took {step_s:.3f} s (bound {bound_s:.3f} s)"
    assert not drv.connected  # the env released the dead link
    t = time.monotonic()
    with pytest.raises(SafetyStopError, match="driver_error"):
        env.step(ZERO)
    assert time.monotonic() - t < 0.1  # refused at once: nothing is sent
    replugged = emulator_factory("furuta")
    drv.port = replugged.port  # the device is back (a USB adapter may come back elsewhere)
    run_episode(env, seed=1, steps=20)
    assert [e.kind for e in env.safety_events][:2] == ["driver_error", "acknowledged"]
    env.close()
    assert not drv.connected


def test_host_stall_trips_the_device_watchdog_and_reset_clears_it(
    emulator_factory, relaxed_config
) -> None:
    """The host sleeps past the device watchdog mid-episode: the device cuts torque and latches
    WATCHDOG; the next step ends the episode (device_fault naming WATCHDOG); reset() clears
    the fault explicitly (a `faults_cleared` event) and the next episode runs."""
    cfg = relaxed_config("furuta")
    emulator = emulator_factory("furuta")
    with SerialDriver(cfg, port=emulator.port) as drv:
        env = make_robot_env(cfg, drv, max_episode_steps=20)
        env.reset(seed=0)
        for _ in range(10):
            *_, terminated, _, info = env.step(ZERO)
            assert not terminated, info["safety"]["event"]
        time.sleep(2 * cfg.serial.watchdog_ms / 1000)  # e.g. a long policy update mid-episode
        *_, terminated, truncated, info = env.step(ZERO)
        assert terminated and not truncated
        event = info["safety"]["event"]
        assert event["kind"] == "device_fault" and event["stop"] == "torque_off"
        assert "WATCHDOG" in event["detail"]
        state = drv.read_state()
        assert "WATCHDOG" in state.faults and not state.enabled  # torque off on the device
        with pytest.raises(SafetyStopError, match="WATCHDOG"):
            env.step(ZERO)
        run_episode(env, seed=1)
        kinds = [e.kind for e in env.safety_events]
        assert kinds == ["device_fault", "acknowledged", "faults_cleared"]
        assert "WATCHDOG" in env.safety_events[-1].detail
        assert drv.read_state().faults == ()  # the new episode did not trip it again
        env.close()


class RecordingSerialDriver(SerialDriver):
    """SerialDriver that remembers every command it was asked to send, as float32 (the wire)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.sent: set[tuple[float, ...]] = set()

    def send_command(self, command: np.ndarray) -> None:
        self.sent.add(_wire(command))
        super().send_command(command)

    def submit_command(self, command: np.ndarray) -> None:
        self.sent.add(_wire(command))
        super().submit_command(command)


def _wire(values: object) -> tuple[float, ...]:
    return tuple(float(x) for x in np.asarray(values, dtype=np.float32).ravel())


@pytest.mark.parametrize("option", ["--corrupt-rate", "--corrupt-rx-rate"])
def test_corrupted_bytes_are_retried_and_never_executed(
    emulator_factory, relaxed_config, tmp_path: Path, option: str
) -> None:
    """5% of the replies (device -> host) or of the received chunks (host -> device) get a
    corrupted byte: episodes still complete through the transport's retries, and every
    command the device executed is one the host sent (a corrupted one never runs)."""
    cfg = relaxed_config("furuta")
    stats_file = tmp_path / "emulator_stats.json"
    emulator = emulator_factory(
        "furuta", option, "0.05", "--seed", "3", "--stats-file", str(stats_file)
    )
    drv = RecordingSerialDriver(cfg, port=emulator.port)
    drv.connect()
    env = make_robot_env(cfg, drv, max_episode_steps=60)
    for seed in range(2):
        run_episode(env, seed=seed)
    link = drv.stats
    env.close()
    assert emulator.stop() == 0
    stats = json.loads(stats_file.read_text())
    assert stats["reason"] == "stopped"
    executed = [_wire(t) for t in stats["executed_commands"]]
    assert len(executed) == stats["commands_executed"] > 100
    assert stats["commands_executed"] == stats["commands_received"]  # none refused
    unsent = set(executed) - drv.sent
    assert not unsent, f"the device executed commands the host never sent: {sorted(unsent)[:5]}"
    if option == "--corrupt-rate":
        assert stats["replies_corrupted"] > 0 and link.corrupted > 0
        assert stats["bad_crc"] + stats["bad_header"] == 0
    else:
        assert stats["rx_chunks_corrupted"] > 0 and link.timeouts > 0  # no reply -> retried
        assert stats["bad_crc"] + stats["bad_header"] > 0  # the device dropped bad frames
        assert stats["replies_corrupted"] == 0


def test_over_temperature_stops_the_env_and_reset_refuses_while_hot(
    emulator_factory, relaxed_config
) -> None:
    """The motor overheats mid-episode: torque off, the episode ends naming the temperature,
    steps are refused, and reset() refuses (with the reason) while the motor is still hot."""
    cfg = relaxed_config("furuta")
    overtemp_after_s = 2.0  # after the reset (~0.2 s unloaded), during the episode
    emulator = emulator_factory("furuta", "--overtemp-after", str(overtemp_after_s))
    with SerialDriver(cfg, port=emulator.port) as drv:
        env = make_robot_env(cfg, drv, max_episode_steps=5000)
        env.reset(seed=0)
        deadline = time.monotonic() + overtemp_after_s + 10.0
        terminated = False
        while not terminated and time.monotonic() < deadline:
            *_, terminated, truncated, info = env.step(ZERO)
            assert not truncated
        assert terminated, "no stop within 10 s of the over-temperature"
        event = info["safety"]["event"]
        assert event["stop"] == "torque_off"
        # Seen in the STATE (host limit) or as the refusal of the next COMMAND (device fault).
        assert event["kind"] == "over_temperature" or (
            event["kind"] == "device_fault" and "OVER_TEMPERATURE" in event["detail"]
        ), event
        state = drv.read_state()
        assert not state.enabled and state.temperatures[0] > cfg.safety.max_temperature_c
        with pytest.raises(SafetyStopError):
            env.step(ZERO)
        with pytest.raises(ResetError, match="cool down"):
            env.reset(seed=1)
        with pytest.raises(RuntimeError, match="call reset"):
            env.step(ZERO)  # no episode started
        assert not drv.read_state().enabled
        time.sleep(2 * cfg.control_dt)  # reset() cleared the fault; the next tick latches it
        with pytest.raises(RobotFaultError, match="OVER_TEMPERATURE"):
            drv.enable()  # the device refuses torque too while the motor is hot
        env.close()


def test_new_emulator_options_are_checked_before_starting(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="corrupt_rx_rate"):
        FaultInjection(corrupt_rx_rate=1.5)
    assert "corrupt received 5.0%" in FaultInjection(corrupt_rx_rate=0.05).describe()
    missing = tmp_path / "no_such_folder" / "stats.json"
    assert main(["emulator", "--robot", "furuta", "--stats-file", str(missing)]) == 2
    assert "no_such_folder" in capsys.readouterr().err
