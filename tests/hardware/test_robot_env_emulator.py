"""RobotEnv against the device emulator: SerialDriver over a pty, the dry-run code path.

The emulator runs the twin in real time in its own process (fixtures in conftest.py). The test
machine is shared and loaded: deadlines and staleness are relaxed here (they are tested against
the mock in test_robot_env.py); benchmarks/control_loop.py measures the loop's timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from gymnasium.utils.env_checker import check_env

from hardware.robot_env import make_robot_env
from hardware.serial_driver import SerialDriver
from sim.robot_config import RobotConfig, load_robot_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RELAXED = {"deadline_tolerance": 10_000, "stale_state_s": 0.5}


def quick(name: str) -> RobotConfig:
    """The robot config with a short settle time and relaxed timing checks."""
    robot = load_robot_config(name)
    return robot.model_copy(
        update={
            "reset": robot.reset.model_copy(update={"settle_s": 0.04}),
            "safety": robot.safety.model_copy(update=RELAXED),
        }
    )


@pytest.mark.parametrize("name", ["furuta", "arm2"])
def test_check_env_passes_against_the_emulator(name: str, emulator_factory) -> None:
    # A fresh device: arm2 left with torque off by another test falls onto its mechanical
    # stop at the hard limit, and a reset then (rightly) refuses to start.
    emulator = emulator_factory(name)
    robot = quick(name)
    with SerialDriver(robot, port=emulator.port) as drv:
        env = make_robot_env(robot, drv)
        check_env(env)
        obs, info = env.reset(seed=0)
        for _ in range(25):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert not terminated, info["safety"]
        assert drv.read_state().enabled
        env.close()
    assert not drv.connected


CHILD_SERIAL = textwrap.dedent(
    """
    import sys
    import numpy as np
    from hardware.robot_env import make_robot_env
    from hardware.serial_driver import SerialDriver
    from sim.robot_config import load_robot_config

    robot = load_robot_config("furuta")
    robot = robot.model_copy(update={"safety": robot.safety.model_copy(
        update={"deadline_tolerance": 10_000, "stale_state_s": 0.5})})
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


def test_ctrl_c_mid_episode_on_the_emulator_leaves_torque_off(emulator_factory) -> None:
    emulator = emulator_factory("furuta")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_SERIAL, emulator.port],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "stepping", proc.stderr.read()
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    robot = load_robot_config("furuta")
    drv = SerialDriver(robot, port=emulator.port)
    drv.connect()  # the handshake does not change torque
    state = drv.read_state()
    assert not state.enabled and "WATCHDOG" not in state.faults  # off by the env
    drv.close()
