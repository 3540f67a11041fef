"""SafetyLayer: every stage of the command filter, the state monitor, latching and stops.

The property tests drive the filter with adversarial inputs (hypothesis) and check the
invariants that make it a safety layer: a non-finite action is never turned into a command;
every command is inside the command bounds and within the rate limit of the previous one; the
soft-limit and velocity rules hold whenever the rate limit leaves room for them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.driver import DeviceState
from hardware.mock_driver import MockDriver
from hardware.safety import SafetyLayer, SafetyStopError
from sim.robot_config import RobotConfig, load_robot_config

FURUTA = load_robot_config("furuta")
ARM2 = load_robot_config("arm2")


def state(
    robot: RobotConfig,
    q: list[float] | None = None,
    v: list[float] | None = None,
    *,
    t: float = 1.0,
    host: float | None = None,
    temperature: float = 30.0,
    current: float = 0.0,
    enabled: bool = True,
    faults: tuple[str, ...] = (),
    estopped: bool = False,
) -> DeviceState:
    n = len(robot.joints)
    n_act = len(robot.actuated_joints)
    return DeviceState(
        device_time_s=t,
        host_time_s=t if host is None else host,
        positions=np.array(q if q is not None else [0.0] * n, dtype=np.float64),
        velocities=np.array(v if v is not None else [0.0] * n, dtype=np.float64),
        currents=np.full(n_act, current) if robot.device.has_current else None,
        temperatures=np.full(n_act, temperature) if robot.device.has_temperature else None,
        enabled=enabled,
        estopped=estopped,
        faults=faults,
    )


def layer(robot: RobotConfig, s: DeviceState | None = None, **safety_cfg: float) -> SafetyLayer:
    """A started layer for `robot`, with `safety` config values overridden by `safety_cfg`."""
    robot = robot.model_copy(update={"safety": robot.safety.model_copy(update=safety_cfg)})
    safety = SafetyLayer(robot, clock=lambda: 1.0)
    safety.start(s if s is not None else state(robot, t=0.0))
    return safety


# -- action stage ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [[np.nan], [np.inf], [-np.inf], [0.1, 0.2], "left", None])
def test_non_finite_or_malformed_action_is_rejected_and_latches(bad: object) -> None:
    safety = layer(FURUTA)
    result = safety.filter_action(bad, state(FURUTA))
    assert result.command is None and result.action is None
    assert result.event is not None and result.event.kind == "invalid_action"
    assert safety.latched is result.event
    with pytest.raises(SafetyStopError, match="invalid_action"):
        safety.filter_action([0.0], state(FURUTA))
    ack = safety.reset_safety()
    assert ack is not None and ack.kind == "acknowledged"
    assert safety.filter_action([0.0], state(FURUTA)).command is not None


def test_action_is_clipped_then_rate_limited() -> None:
    safety = layer(FURUTA)
    result = safety.filter_action([1e9], state(FURUTA))
    assert result.clipped["action"] and result.clipped["rate"]
    assert result.command == pytest.approx([2.0])  # max_command_change 2 V from 0 V
    assert result.action == pytest.approx([2.0 / 6.0])
    safety.commit(result.command)
    # ramps up by at most 2 V per step, never past the 6 V limit
    commands = []
    for _ in range(4):
        r = safety.filter_action([1.0], state(FURUTA))
        safety.commit(r.command)
        commands.append(r.command[0])
    assert commands == pytest.approx([4.0, 6.0, 6.0, 6.0])


def test_position_servo_targets_start_from_the_measured_pose() -> None:
    start = state(ARM2, [0.5, -0.2], t=0.0)
    safety = layer(ARM2, start)
    assert safety.previous_command == pytest.approx([0.5, -0.2])
    result = safety.filter_action([1.0, -1.0], state(ARM2, [0.5, -0.2]))
    assert result.command == pytest.approx([0.6, -0.3])  # 0.1 rad per step
    assert result.clipped["rate"] and not result.clipped["action"]


def test_filter_command_bounds_physical_commands() -> None:
    safety = layer(ARM2, state(ARM2, [1.5, 0.0], t=0.0))
    result = safety.filter_command([3.0, 0.0], state(ARM2, [1.5, 0.0]))
    assert result.command[0] == pytest.approx(1.57)  # soft limit (bounds), within the rate limit
    assert result.clipped["action"]


# -- soft limits: braking rule for effort robots ---------------------------------------------
def test_effort_towards_a_limit_inside_the_braking_distance_becomes_a_brake() -> None:
    safety = layer(FURUTA)
    safety.commit(np.array([6.0]))
    # 1.8 rad moving out at 5 rad/s: stop distance 5*0.032 + 25/50 = 0.66 rad > 0.2 rad left
    result = safety.filter_action([1.0], state(FURUTA, [1.8, 0.0], [5.0, 0.0]))
    assert result.clipped["soft_limit"]
    assert result.command == pytest.approx([4.0])  # -6 V wanted, rate limit allows 6 -> 4 V
    safety.commit(result.command)
    for expected in (2.0, 0.0, -2.0, -4.0, -6.0):
        result = safety.filter_action([1.0], state(FURUTA, [1.8, 0.0], [5.0, 0.0]))
        safety.commit(result.command)
        assert result.command == pytest.approx([expected])


def test_at_the_soft_limit_at_rest_only_effort_away_from_it_passes() -> None:
    safety = layer(FURUTA)
    at_limit = state(FURUTA, [2.05, 0.0], [0.0, 0.0])
    assert safety.filter_action([1.0], at_limit).command == pytest.approx([0.0])
    assert safety.filter_action([-1.0], at_limit).command == pytest.approx([-2.0])
    lower = state(FURUTA, [-2.05, 0.0], [0.0, 0.0])
    assert safety.filter_action([-1.0], lower).command == pytest.approx([0.0])


def test_far_from_the_limits_nothing_is_clipped() -> None:
    safety = layer(FURUTA)
    result = safety.filter_action([0.2], state(FURUTA, [0.3, 1.0], [2.0, 5.0]))
    assert not any(result.clipped.values())
    assert result.command == pytest.approx([1.2])


# -- velocity stage ---------------------------------------------------------------------------
def test_fast_joint_gets_no_effort_in_its_direction_of_motion() -> None:
    safety = layer(FURUTA, brake_decel=1e9)  # the soft-limit brake stays out of the way
    fast = state(FURUTA, [-1.0, 0.0], [37.0, 0.0])  # > 0.9 * 40 rad/s
    result = safety.filter_action([1.0], fast)
    assert result.clipped["velocity"] and result.command == pytest.approx([0.0])
    assert safety.filter_action([-1.0], fast).command == pytest.approx([-2.0])


def test_fast_servo_gets_no_target_beyond_its_position() -> None:
    safety = layer(ARM2, state(ARM2, [0.0, 0.0], t=0.0))
    fast = state(ARM2, [-0.05, 0.0], [7.5, 0.0])  # > 0.9 * 8 rad/s
    result = safety.filter_action([1.0, 0.0], fast)
    assert result.clipped["velocity"]
    assert result.command[0] == pytest.approx(-0.05)


# -- workspace --------------------------------------------------------------------------------
def test_workspace_pulls_servo_targets_back_inside() -> None:
    ws = ARM2.workspace.model_copy(update={"upper": (0.10, 0.05, 0.60)})  # x <= 0.10 m
    robot = ARM2.model_copy(update={"workspace": ws})
    safety = layer(robot, state(robot, [0.0, 0.0], t=0.0))
    for _ in range(30):  # push the shoulder to +1.5 rad: the tip would reach x = 0.24 m
        result = safety.filter_action([1.0, 0.0], state(robot))
        safety.commit(result.command)
        tip = safety.workspace.site_position(result.command)
        assert tip[0] <= 0.10 + 1e-6
    assert result.clipped["workspace"]
    assert tip[0] == pytest.approx(0.10, abs=1e-3)  # it got as close as the box allows


def test_workspace_guard_matches_the_arm2_geometry() -> None:
    safety = SafetyLayer(ARM2)
    q = np.array([0.4, -0.9])
    tip = safety.workspace.site_position(q)
    expected_x = 0.12 * math.sin(0.4) + 0.12 * math.sin(0.4 - 0.9)
    expected_z = 0.30 + 0.12 * math.cos(0.4) + 0.12 * math.cos(0.4 - 0.9)
    assert tip[[0, 2]] == pytest.approx([expected_x, expected_z], abs=1e-9)


# -- state monitor ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("robot", "kwargs", "kind", "stop"),
    [
        (FURUTA, {"q": [2.31, 0.0]}, "hard_position_limit", "torque_off"),
        (ARM2, {"q": [0.0, -2.61]}, "hard_position_limit", "hold"),
        (FURUTA, {"v": [0.0, 61.0]}, "velocity_limit", "torque_off"),
        (ARM2, {"v": [8.5, 0.0]}, "velocity_limit", "hold"),
        (FURUTA, {"temperature": 70.5}, "over_temperature", "torque_off"),
        (ARM2, {"temperature": 66.0}, "over_temperature", "torque_off"),
        (FURUTA, {"current": -1.2}, "over_current", "torque_off"),
        (FURUTA, {"host": 1.0 - 0.051}, "stale_state", "torque_off"),
        (ARM2, {"faults": ("WATCHDOG",), "enabled": False}, "device_fault", "torque_off"),
        (ARM2, {"estopped": True, "enabled": False}, "device_fault", "torque_off"),
        (FURUTA, {"enabled": False}, "device_fault", "torque_off"),
    ],
)
def test_state_violations_latch_the_right_stop(
    robot: RobotConfig, kwargs: dict, kind: str, stop: str
) -> None:
    safety = layer(robot)
    assert safety.check_state(state(robot, t=0.5), now=0.5) is None  # healthy
    event = safety.check_state(state(robot, **kwargs), now=1.0)
    assert event is not None and (event.kind, event.stop) == (kind, stop)
    assert safety.latched is event
    with pytest.raises(SafetyStopError):
        safety.filter_action(np.zeros(len(robot.actuated_joints)), state(robot))


def test_device_clock_running_backwards_is_stale() -> None:
    safety = layer(FURUTA)
    assert safety.check_state(state(FURUTA, t=0.5), now=0.5) is None
    event = safety.check_state(state(FURUTA, t=0.49, host=0.5), now=0.5)
    assert event is not None and event.kind == "stale_state" and "backwards" in event.detail


def test_a_repeated_sample_is_fine_but_a_frozen_device_clock_is_stale() -> None:
    safety = layer(FURUTA)  # stale_state_s 0.05
    assert safety.check_state(state(FURUTA, t=0.5, host=10.0), now=10.0) is None
    assert safety.check_state(state(FURUTA, t=0.5, host=10.004), now=10.004) is None
    event = safety.check_state(state(FURUTA, t=0.5, host=10.06), now=10.06)
    assert event is not None and event.kind == "stale_state" and "frozen" in event.detail


def test_several_problems_are_all_named_and_the_first_kind_wins() -> None:
    safety = layer(FURUTA)
    event = safety.check_state(state(FURUTA, [2.4, 0.0], [45.0, 0.0], temperature=90.0), now=1.0)
    assert event.kind == "hard_position_limit"
    assert "velocity" in event.detail and "temperature" in event.detail


def test_missed_deadlines_beyond_the_tolerance_latch() -> None:
    safety = layer(FURUTA)  # deadline_tolerance 5
    assert safety.missed_deadlines(5) is None
    event = safety.missed_deadlines(6)
    assert event is not None and event.kind == "missed_deadlines"


# -- carrying out stops -----------------------------------------------------------------------
def test_torque_off_stop_disables_the_driver() -> None:
    drv = MockDriver(FURUTA, host_clock="simulated")
    drv.connect()
    drv.enable()
    safety = SafetyLayer(FURUTA)
    s = drv.read_state()
    safety.start(s)
    safety.latch("stale_state", "test")
    assert safety.execute_stop(drv, s) == "torque_off"
    assert not drv.torque_enabled


def test_hold_stop_keeps_servo_torque_and_holds_within_the_limits() -> None:
    drv = MockDriver(ARM2, host_clock="simulated")
    drv.connect()
    drv.set_joint_state(np.array([0.3, 0.2]))
    drv.enable()
    s = drv.read_state()
    safety = SafetyLayer(ARM2)
    safety.start(s)
    safety.commit(np.array([0.35, 0.25]))
    safety.latch("missed_deadlines", "test")
    assert safety.execute_stop(drv, s) == "hold"
    assert drv.torque_enabled
    np.testing.assert_allclose(drv.command_log()[-1], s.positions, atol=1e-12)


def test_hold_falls_back_to_torque_off_when_the_device_refuses() -> None:
    drv = MockDriver(ARM2, host_clock="simulated")
    drv.connect()
    drv.enable()
    s = drv.read_state()
    safety = SafetyLayer(ARM2)
    safety.start(s)
    drv.inject_fault("LIMIT")
    safety.latch("hard_position_limit", "test")
    assert safety.execute_stop(drv, s) == "torque_off"


# -- property tests ---------------------------------------------------------------------------
actions = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=300, deadline=None)
@given(
    action=actions,
    prev=st.floats(-6.0, 6.0),
    q=st.floats(-2.29, 2.29),
    v=st.floats(-40.0, 40.0),
)
def test_property_effort_commands_respect_every_limit(
    action: float, prev: float, q: float, v: float
) -> None:
    safety = layer(FURUTA)
    safety.commit(np.array([prev]))
    s = state(FURUTA, [q, 0.3], [v, -2.0])
    result = safety.filter_action([action], s)
    if not math.isfinite(action):
        assert result.command is None and safety.latched is not None
        return
    c = float(result.command[0])
    dmax = FURUTA.actuation.max_command_change
    assert -6.0 <= c <= 6.0
    assert abs(c - prev) <= dmax + 1e-12
    assert -1.0 <= result.action[0] <= 1.0
    t_react = safety.reaction_periods * FURUTA.control_dt
    stop = q + math.copysign(abs(v) * t_react + v * v / (2 * safety.brake_decel), v)
    if stop >= 2.0:  # no outward effort; brake as hard as the rate limit allows
        wanted = -6.0 if v > 0 else 0.0
        assert c <= max(wanted, prev - dmax) + 1e-12
    if stop <= -2.0:
        wanted = 6.0 if v < 0 else 0.0
        assert c >= min(wanted, prev + dmax) - 1e-12
    if v > 0.9 * 40.0:
        assert c <= max(0.0, prev - dmax) + 1e-12


@settings(max_examples=300, deadline=None)
@given(
    a=st.lists(actions, min_size=2, max_size=2),
    prev=st.tuples(st.floats(-1.57, 1.57), st.floats(-2.4, 2.4)),
    q=st.tuples(st.floats(-1.7, 1.7), st.floats(-2.55, 2.55)),
    v=st.tuples(st.floats(-8.0, 8.0), st.floats(-8.0, 8.0)),
)
def test_property_servo_targets_respect_every_limit(
    a: list[float], prev: tuple[float, float], q: tuple[float, float], v: tuple[float, float]
) -> None:
    safety = layer(ARM2)
    safety.commit(np.array(prev))
    result = safety.filter_action(a, state(ARM2, list(q), list(v)))
    if not all(math.isfinite(x) for x in a):
        assert result.command is None and safety.latched is not None
        return
    c = result.command
    assert np.all(c >= [-1.57, -2.4]) and np.all(c <= [1.57, 2.4])
    assert np.all(np.abs(c - np.array(prev)) <= 0.1 + 1e-12)
    assert np.all(np.abs(result.action) <= 1.0)
    for j in range(2):
        if v[j] > 0.9 * 8.0:
            assert c[j] <= max(q[j], prev[j] - 0.1) + 1e-12
        if v[j] < -0.9 * 8.0:
            assert c[j] >= min(q[j], prev[j] + 0.1) - 1e-12


def test_brake_decel_and_velocity_margin_come_from_the_config() -> None:
    assert layer(FURUTA).brake_decel == FURUTA.safety.brake_decel
    cautious = layer(FURUTA, brake_decel=5.0)  # lower deceleration: brakes earlier
    moving = state(FURUTA, [1.2, 0.0], [4.0, 0.0])  # 0.8 rad from the soft limit at 4 rad/s
    assert layer(FURUTA).filter_action([1.0], moving).command == pytest.approx([2.0])
    assert cautious.filter_action([1.0], moving).command == pytest.approx([-2.0])
    fast = state(FURUTA, [0.0, 0.0], [30.0, 0.0])  # 0.75 x the 40 rad/s limit
    assert layer(FURUTA, brake_decel=1e9).filter_action([1.0], fast).command[0] > 0
    strict = layer(FURUTA, brake_decel=1e9, velocity_margin=0.5)
    assert strict.filter_action([1.0], fast).command == pytest.approx([0.0])
