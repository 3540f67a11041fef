"""RobotEnv against the device emulator: SerialDriver over a pty, the dry-run code path.

The emulator runs the twin in real time in its own process (fixtures in conftest.py). The test
machine is shared and loaded: these tests use `relaxed_config` (conftest.py), which relaxes
deadlines, staleness, the link's retries and the device watchdog (timing is tested against the
mock in test_robot_env.py); benchmarks/control_loop.py measures the loop's timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from hardware.driver import DeviceState
from hardware.robot_env import RobotEnv, make_robot_env
from hardware.serial_driver import SerialDriver

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

@pytest.mark.parametrize("name", ["furuta", "arm2"])
def test_check_env_passes_against_the_emulator(
    name: str, emulator_factory, relaxed_config
) -> None:
    # A fresh device: arm2 left with torque off by another test falls onto its mechanical
    # stop at the hard limit, and a reset then (rightly) refuses to start.
    emulator = emulator_factory(name)
    robot = relaxed_config(name)
    with SerialDriver(robot, port=emulator.port) as drv:
        env = make_robot_env(robot, drv)
        check_env(env)
        obs, info = env.reset(seed=0)
        env.action_space.seed(0)  # the same random actions every run
        for _ in range(25):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert not terminated, info["safety"]
        assert drv.read_state().enabled
        env.close()
    assert not drv.connected


class RecordingSerialDriver(SerialDriver):
    """SerialDriver that keeps every state it reads (the keep-alive's included)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.states: list[DeviceState] = []

    def read_state(self) -> DeviceState:
        state = super().read_state()
        self.states.append(state)
        return state


def _episode_then_pause(env: RobotEnv, pause_s: float) -> np.ndarray:
    """Run an arm2 episode to its horizon, away from upright, then idle for `pause_s`.

    Returns the joint positions at the end of the episode."""
    env.reset(seed=0)
    for _ in range(env.max_episode_steps):
        *_, terminated, truncated, info = env.step(np.array([0.3, 0.3]))
        assert not terminated, info["safety"]
    assert truncated
    time.sleep(pause_s)
    return info["state"].arrays(env.joint_names)[0]


def test_arm2_keeps_holding_between_episodes(emulator_factory, relaxed_config) -> None:
    emulator = emulator_factory("arm2")
    robot = relaxed_config("arm2")
    pause_s = 4 * robot.serial.watchdog_ms / 1000  # well past the device watchdog
    with RecordingSerialDriver(robot, port=emulator.port) as drv:
        env = make_robot_env(robot, drv, max_episode_steps=30)
        q_end = _episode_then_pause(env, pause_s)
        idle = [s for s in drv.states if s.host_time_s > time.monotonic() - pause_s]
        assert len(idle) >= 4  # the keep-alive fed the device and watched it
        last = drv.states[-1]
        assert last.enabled and last.faults == (), "the watchdog cut torque while idle"
        np.testing.assert_allclose(last.positions, q_end, atol=0.05)  # still held up
        env.reset(seed=1)
        assert "faults_cleared" not in [e.kind for e in env.safety_events]
        env.close()
        assert not any(t.name == "arm2-hold-keepalive" for t in threading.enumerate())
        drv.connect()
        assert not drv.read_state().enabled  # close() turned torque off


def test_arm2_parks_limp_on_its_end_stop_and_the_next_reset_moves_it_out(
    emulator_factory, relaxed_config
) -> None:
    emulator = emulator_factory("arm2")
    base = relaxed_config("arm2")
    robot = base.model_copy(update={"reset": base.reset.model_copy(update={"homing_speed": 2.0})})
    shoulder = robot.joint("shoulder").hard_limits
    with RecordingSerialDriver(robot, port=emulator.port) as drv:
        env = make_robot_env(robot, drv, max_episode_steps=10)
        _episode_then_pause(env, 0.0)
        env.park()
        assert not any(t.name == "arm2-hold-keepalive" for t in threading.enumerate())
        time.sleep(2 * robot.serial.watchdog_ms / 1000)  # nothing feeds the device meanwhile
        state = drv.read_state()
        assert not state.enabled and state.faults == ()  # limp by choice, not by the watchdog
        assert state.positions[0] >= shoulder.upper - 1e-3  # on its end stop
        env.reset(seed=1)
        for _ in range(5):
            *_, terminated, _, info = env.step(np.array([0.0, 0.0]))
            assert not terminated, info["safety"]
        assert [e.kind for e in env.safety_events] == ["recovery"]
        env.close()


def test_without_keepalive_arm2_falls_after_the_watchdog(
    emulator_factory, relaxed_config
) -> None:
    emulator = emulator_factory("arm2")
    robot = relaxed_config("arm2")
    pause_s = 4 * robot.serial.watchdog_ms / 1000
    with SerialDriver(robot, port=emulator.port) as drv:
        # realtime=False: no deadlines and no keep-alive (meant for simulated clocks)
        env = make_robot_env(robot, drv, max_episode_steps=30, realtime=False)
        q_end = _episode_then_pause(env, pause_s)
        state = drv.read_state()
        assert "WATCHDOG" in state.faults and not state.enabled
        assert np.max(np.abs(state.positions - q_end)) > 0.1  # it fell


CHILD_SERIAL = textwrap.dedent(
    """
    import signal, sys
    import numpy as np
    from hardware.robot_env import RobotEnv, make_robot_env
    from hardware.serial_driver import SerialDriver
    from sim.robot_config import RobotConfig

    # Ctrl+C raises KeyboardInterrupt even where the test runner was started with SIGINT
    # ignored (a background job of a non-interactive shell), which children inherit.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    robot = RobotConfig.model_validate_json(sys.argv[2])
    drv = SerialDriver(robot, port=sys.argv[1])
    drv.connect()
    drv.set_watchdog(10_000)  # the device would not turn torque off by itself for 10 s
    env = make_robot_env(robot, drv)
    env.reset(seed=0)
    print("stepping", flush=True)
    k = 0
    while True:  # no try/finally, no context manager: only RobotEnv can turn torque off
        env.step(np.array([0.1 * np.sin(0.05 * k)]))
        k += 1
    """
)


def test_ctrl_c_mid_episode_on_the_emulator_leaves_torque_off(
    emulator_factory, relaxed_config
) -> None:
    emulator = emulator_factory("furuta")
    robot = relaxed_config("furuta")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_SERIAL, emulator.port, robot.model_dump_json()],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "stepping", proc.stderr.read()
        time.sleep(0.05)  # a dozen steps into the episode, torque on
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    drv = SerialDriver(robot, port=emulator.port)
    drv.connect()  # the handshake does not change torque
    state = drv.read_state()
    assert not state.enabled and "WATCHDOG" not in state.faults  # off by the env
    drv.close()
