"""MockDriver: simulated clock, device semantics (enable/estop/watchdog/limits), sensors, hooks."""

from __future__ import annotations

import numpy as np
import pytest

from hardware.driver import RobotConnectionError, RobotFaultError
from hardware.mock_driver import MockDriver
from sim.robot_config import load_robot_config


@pytest.fixture
def furuta() -> MockDriver:
    drv = MockDriver("furuta", host_clock="simulated")
    drv.connect()
    return drv


@pytest.fixture
def arm2() -> MockDriver:
    drv = MockDriver("arm2", host_clock="simulated")
    drv.connect()
    return drv


def test_every_call_needs_a_connection() -> None:
    drv = MockDriver("furuta")
    with pytest.raises(RobotConnectionError, match="connect"):
        drv.read_state()
    info = drv.connect()
    assert (info.model_name, info.joint_count, info.actuator_count) == ("furuta", 2, 1)


def test_clock_advances_one_control_period_per_reading(furuta: MockDriver) -> None:
    dt = furuta.robot.control_dt
    t0 = furuta.read_state().device_time_s
    furuta.enable()
    furuta.send_command(np.array([1.0]))
    furuta.send_command(np.array([1.0]))  # commands alone do not advance time
    assert furuta.time_s == pytest.approx(t0)
    s1 = furuta.read_state()
    s2 = furuta.read_state()
    assert s1.device_time_s == pytest.approx(t0 + dt)
    assert s2.device_time_s == pytest.approx(t0 + 2 * dt)
    assert s2.host_time_s == pytest.approx(s2.device_time_s)  # simulated host clock


def test_same_commands_give_the_same_trajectory() -> None:
    def run() -> np.ndarray:
        drv = MockDriver("furuta", host_clock="simulated")
        drv.connect()
        drv.enable()
        out = []
        for k in range(50):
            drv.send_command(np.array([3.0 * np.sin(0.2 * k)]))
            out.append(drv.read_state().positions)
        return np.array(out)

    a, b = run(), run()
    np.testing.assert_array_equal(a, b)
    assert np.ptp(a[:, 0]) > 0.05  # the arm really moved


def test_sensor_model_quantises_and_delays(furuta: MockDriver) -> None:
    furuta.enable()
    states, truth = [], []
    for _ in range(20):
        furuta.send_command(np.array([4.0]))
        states.append(furuta.read_state().positions[0])
        truth.append(furuta.true_joint_state()[0][0])
    res = 2 * np.pi / 2048
    counts = np.array(states) / res
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
    # one control period of latency: the reading lags the true position by one step
    np.testing.assert_allclose(states[1:], truth[:-1], atol=res)


def test_commands_refused_while_disabled_are_recorded(furuta: MockDriver) -> None:
    with pytest.raises(RobotFaultError, match="refused"):
        furuta.send_command(np.array([1.0]))
    furuta.enable()
    furuta.send_command(np.array([2.0]))
    with pytest.raises(ValueError, match="one per actuated joint"):
        furuta.send_command(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="finite"):
        furuta.send_command(np.array([np.nan]))
    assert [r.accepted for r in furuta.commands] == [False, True, False, False]
    assert [r.enable_count for r in furuta.commands] == [0, 1, 1, 1]
    np.testing.assert_array_equal(furuta.command_log(), [[2.0]])


def test_watchdog_runs_in_simulated_time(furuta: MockDriver) -> None:
    furuta.set_watchdog(40)  # 10 control periods at 250 Hz
    furuta.enable()
    furuta.send_command(np.zeros(1))
    furuta.advance(9)
    assert furuta.torque_enabled and furuta.faults == ()
    furuta.advance(2)
    state = furuta.read_state()
    assert state.faults == ("WATCHDOG",) and not state.enabled
    with pytest.raises(RobotFaultError) as err:
        furuta.enable()
    assert err.value.faults == ("WATCHDOG",)
    furuta.clear_fault()
    furuta.enable()
    assert furuta.read_state().enabled


def test_estop_latches_until_cleared(arm2: MockDriver) -> None:
    arm2.enable()
    arm2.estop()
    state = arm2.read_state()
    assert state.estopped and not state.enabled
    with pytest.raises(RobotFaultError):
        arm2.enable()
    arm2.clear_fault()
    state = arm2.read_state()
    assert not state.estopped and not state.enabled
    arm2.enable()
    assert arm2.torque_enabled


def test_device_latches_limit_outside_hard_limits(arm2: MockDriver) -> None:
    arm2.enable()
    arm2.set_joint_state(np.array([1.8, 0.0]))  # shoulder hard limit 1.75
    state = arm2.read_state()
    assert "LIMIT" in state.faults and not state.enabled


def test_torque_off_servo_falls_under_gravity(arm2: MockDriver) -> None:
    arm2.set_joint_state(np.array([0.5, 0.0]))
    arm2.enable()
    for _ in range(25):
        arm2.send_command(np.array([0.5, 0.0]))
        state = arm2.read_state()
    held = state.positions[0]
    assert held == pytest.approx(0.5, abs=0.05)
    arm2.disable()
    for _ in range(50):
        state = arm2.read_state()
    assert state.positions[0] > held + 0.2


def test_furuta_current_and_i2r_heating(furuta: MockDriver) -> None:
    furuta.enable()
    t0 = furuta.read_state().temperatures[0]
    currents = []
    for k in range(250):  # 1 s of a +-6 V square wave: the arm shakes about the centre
        furuta.send_command(np.array([6.0 if (k // 10) % 2 == 0 else -6.0]))
        state = furuta.read_state()
        currents.append(abs(state.currents[0]))
    # i = (V - km w) / R: at most 6 / 8.4 A near rest, less once back-EMF builds up
    assert 0.3 < np.mean(currents) and max(currents) < 6.0 / 8.4 * 1.5
    # ~4 W into 10 J/K: about +0.3 K in 1 s
    assert state.temperatures[0] > t0 + 0.15


def test_arm2_has_temperature_but_no_current(arm2: MockDriver) -> None:
    state = arm2.read_state()
    assert state.currents is None
    assert state.temperatures is not None and state.temperatures.shape == (2,)


def test_over_temperature_latches_at_the_device_limit(furuta: MockDriver) -> None:
    furuta.enable()
    furuta.set_temperature(furuta.device_max_temperature_c + 1.0)
    state = furuta.read_state()
    assert "OVER_TEMPERATURE" in state.faults and not state.enabled


def test_inject_fault_by_name(furuta: MockDriver) -> None:
    furuta.enable()
    furuta.inject_fault("over_current")
    assert furuta.read_state().faults == ("OVER_CURRENT",)
    assert not furuta.torque_enabled
    with pytest.raises(ValueError, match="unknown fault 'melted'"):
        furuta.inject_fault("melted")


def test_fail_after_n_calls(furuta: MockDriver) -> None:
    furuta.fail_after_n_calls(2)
    furuta.read_state()
    furuta.read_state()
    with pytest.raises(RobotConnectionError, match="injected"):
        furuta.read_state()
    furuta.disable()  # torque off still works (best effort on a dead link)


def test_stale_replies_carry_old_host_time(furuta: MockDriver) -> None:
    furuta.stale_replies(0.2)
    state = furuta.read_state()
    assert furuta.clock() - state.host_time_s == pytest.approx(0.2)


def test_close_disables_torque() -> None:
    drv = MockDriver(load_robot_config("furuta"))
    with drv:
        drv.enable()
        assert drv.torque_enabled
    assert not drv.torque_enabled and not drv.connected


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="host_clock"):
        MockDriver("furuta", host_clock="wall")  # type: ignore[arg-type]
    drv = MockDriver("furuta")
    with pytest.raises(ValueError, match="watchdog"):
        drv.set_watchdog(5)
    with pytest.raises(ValueError, match="n must be"):
        drv.fail_after_n_calls(-1)
