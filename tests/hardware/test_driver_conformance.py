"""Every `RobotDriver` behaves the same: MockDriver (in-process) and SerialDriver + emulator.

Each test gets a connected driver with faults cleared and torque off. Time passes for a
device by `tick()`: a real sleep of one control period (the emulator runs on the wall clock)
plus a state read (the mock's clock advances one period per reading).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from hardware.driver import RobotDriver, RobotFaultError
from hardware.mock_driver import MockDriver
from hardware.serial_driver import SerialDriver

CASES = [
    ("mock", "furuta"),
    ("mock", "arm2"),
    ("serial", "furuta"),
    ("serial", "arm2"),
]


@pytest.fixture(params=CASES, ids=[f"{kind}-{robot}" for kind, robot in CASES])
def driver(request: pytest.FixtureRequest, relaxed_config) -> Iterator[RobotDriver]:
    kind, name = request.param
    robot = relaxed_config(name)  # a loaded host: no spurious timeouts or watchdog trips
    if kind == "mock":
        drv: RobotDriver = MockDriver(robot)
    else:
        emulator = request.getfixturevalue(f"{name}_emulator")
        drv = SerialDriver(robot, port=emulator.port)
    drv.connect()
    drv.clear_fault()
    drv.disable()
    yield drv
    drv.close()


def tick(drv: RobotDriver):
    """Let one control period pass and return the state read after it."""
    time.sleep(drv.robot.control_dt)
    return drv.read_state()


def zero_command(drv: RobotDriver) -> np.ndarray:
    """A command that keeps the robot where it is: 0 V, or the present position."""
    if drv.robot.actuation.type == "position":
        state = drv.read_state()
        idx = [drv.robot.joint_names.index(n) for n in drv.robot.actuated_joints]
        return state.positions[idx].copy()
    return np.zeros(len(drv.robot.actuated_joints))


def test_connect_reports_the_configured_device(driver: RobotDriver) -> None:
    info = driver.connect()  # a second connect re-handshakes
    robot = driver.robot
    assert driver.connected
    assert info.model_id == robot.device.model_id
    assert info.model_name == robot.name
    assert info.protocol_version == robot.device.protocol_version
    assert info.joint_count == len(robot.joints)
    assert info.actuator_count == len(robot.actuated_joints)


def test_read_state_is_fresh_with_monotonic_device_time(driver: RobotDriver) -> None:
    robot = driver.robot
    states = [driver.read_state()]
    for _ in range(5):
        tick(driver)
        states.append(tick(driver))
    for prev, cur in zip(states[:-1], states[1:], strict=True):
        # a device late by a period (a loaded host) may repeat a sample, never go back
        assert cur.device_time_s >= prev.device_time_s
        assert cur.host_time_s > prev.host_time_s
    assert states[-1].device_time_s - states[0].device_time_s >= 5 * robot.control_dt
    last = states[-1]
    assert last.positions.shape == last.velocities.shape == (len(robot.joints),)
    assert np.all(np.isfinite(last.positions)) and np.all(np.isfinite(last.velocities))
    n_act = len(robot.actuated_joints)
    assert (last.temperatures is not None) == robot.device.has_temperature
    assert (last.currents is not None) == robot.device.has_current
    if last.temperatures is not None:
        assert last.temperatures.shape == (n_act,)
    assert time.monotonic() - last.host_time_s < 1.0
    assert not last.enabled and not last.estopped and last.faults == ()


def test_enable_and_command_moves_the_joint_in_the_right_direction(
    driver: RobotDriver,
) -> None:
    robot = driver.robot
    driver.enable()
    assert driver.read_state().enabled
    first = robot.joint_names.index(robot.actuated_joints[0])
    start = driver.read_state().positions[first]
    sign = -1.0 if start > 0 else 1.0  # towards the centre: never near a limit
    command = zero_command(driver)
    if robot.actuation.type == "position":
        command[0] += sign * 0.3
    else:
        command[0] = sign * 0.4 * robot.actuation.command_limit
    for _ in range(15):
        driver.send_command(command)
        state = tick(driver)
    moved = state.positions[first] - start
    assert sign * moved > 0.02, f"joint moved {moved:+.4f} rad for a {sign:+.0f} command"
    assert state.enabled and state.faults == ()
    if robot.actuation.type != "position":
        for _ in range(15):  # brake to rest: a motor without torque would coast on
            driver.send_command(-command)
            tick(driver)


def test_disable_switches_torque_off_and_refuses_commands(driver: RobotDriver) -> None:
    driver.enable()
    driver.send_command(zero_command(driver))
    driver.disable()
    assert not tick(driver).enabled
    with pytest.raises(RobotFaultError):
        driver.send_command(zero_command(driver))
    driver.disable()  # idempotent


def test_estop_latches_until_clear_fault(driver: RobotDriver) -> None:
    driver.enable()
    driver.estop()
    state = tick(driver)
    assert state.estopped and not state.enabled
    with pytest.raises(RobotFaultError):
        driver.enable()
    with pytest.raises(RobotFaultError):
        driver.send_command(zero_command(driver))
    assert tick(driver).estopped  # still latched
    driver.clear_fault()
    state = tick(driver)
    assert not state.estopped and not state.enabled  # torque stays off after clearing
    driver.enable()
    assert tick(driver).enabled


def test_watchdog_trips_and_latches_until_clear_fault(driver: RobotDriver) -> None:
    driver.set_watchdog(40)
    driver.enable()
    driver.send_command(zero_command(driver))
    deadline = time.monotonic() + 3.0
    state = tick(driver)
    while "WATCHDOG" not in state.faults and time.monotonic() < deadline:
        state = tick(driver)  # reading never feeds the watchdog
    assert "WATCHDOG" in state.faults and not state.enabled
    for _ in range(3):
        assert "WATCHDOG" in tick(driver).faults  # latched
    with pytest.raises(RobotFaultError) as err:
        driver.send_command(zero_command(driver))
    assert "WATCHDOG" in err.value.faults
    with pytest.raises(RobotFaultError):
        driver.enable()
    driver.clear_fault()
    assert tick(driver).faults == ()
    driver.set_watchdog(driver.robot.serial.watchdog_ms)
    driver.enable()
    driver.send_command(zero_command(driver))
    assert tick(driver).enabled


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_context_manager_disables_torque_on_exception(
    driver: RobotDriver, error: type[BaseException]
) -> None:
    driver.close()
    with pytest.raises(error):
        with driver:
            driver.enable()
            driver.send_command(zero_command(driver))
            assert driver.read_state().enabled
            raise error("boom")
    assert not driver.connected
    driver.connect()
    assert not driver.read_state().enabled
