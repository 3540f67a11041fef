"""The end of an episode on a voltage robot (brake to rest, then torque off) and the reset of an
arm that coasted past its hard limit with torque off (slow move back, a `recovery` event).

RobotEnv on MockDriver (the device firmware and the furuta twin in-process; simulated clock,
`realtime=False`), except the last test: the same on the device emulator over a pty.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from hardware.driver import DeviceState, RobotFaultError
from hardware.homing import COAST_SLACK, RecoveryError, ResetError, coast_recovery
from hardware.mock_driver import MockDriver
from hardware.robot_env import RobotEnv, make_robot_env
from hardware.safety import SafetyLayer
from hardware.serial_driver import SerialDriver
from sim.robot_config import RobotConfig, load_robot_config

HARD = 2.3  # furuta's arm: hard limits +-2.3 rad, soft +-2.0 rad


def quick(**reset: object) -> RobotConfig:
    robot = load_robot_config("furuta")
    update = {"settle_s": 0.04, **reset}
    return robot.model_copy(update={"reset": robot.reset.model_copy(update=update)})


class RecordingMock(MockDriver):
    """MockDriver that records the true joint state at every reading and at torque off."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.trajectory: list[tuple[np.ndarray, np.ndarray]] = []
        self.at_torque_off: list[tuple[np.ndarray, np.ndarray]] = []

    def read_state(self) -> DeviceState:
        state = super().read_state()
        self.trajectory.append(self.true_joint_state())
        return state

    def disable(self) -> None:
        self.at_torque_off.append(self.true_joint_state())
        super().disable()


def furuta_env(robot: RobotConfig | None = None, driver_cls: type[MockDriver] = RecordingMock,
               steps: int = 30) -> tuple[RobotEnv, MockDriver]:
    robot = robot or quick()
    drv = driver_cls(robot, host_clock="simulated")
    drv.connect()
    return make_robot_env(robot, drv, realtime=False, max_episode_steps=steps), drv


def spin_up(env: RobotEnv, steps: int) -> dict:
    """Reset, then full voltage: the arm is fast (about 8 rad/s) after 30 steps."""
    env.reset(seed=0)
    for _ in range(steps):
        *_, terminated, truncated, info = env.step(np.array([1.0]))
        assert not terminated, info["safety"]
    return info


def assert_commands_passed_the_safety_layer(env: RobotEnv, drv: MockDriver) -> None:
    records = [r for r in drv.commands if r.accepted]
    commands = np.array([r.command for r in records])
    enables = np.array([r.enable_count for r in records])
    assert np.all(np.abs(commands) <= env.robot.actuation.command_limit + 1e-12)
    for e in np.unique(enables):
        seg = commands[enables == e]
        assert np.all(np.abs(np.diff(seg, axis=0)) <= env.robot.actuation.max_command_change
                      + 1e-9)


# -- end of an episode ---------------------------------------------------------------------
def test_the_end_of_an_episode_brakes_the_arm_to_rest_before_torque_off() -> None:
    # Without the brake (torque off at the same moment) the arm coasts past its hard limit.
    env, drv = furuta_env(steps=40)
    info = spin_up(env, 30)
    assert info["state"].velocities["arm"] > 7.0
    drv.disable()
    drv.advance(250)
    assert drv.true_joint_state()[0][0] > HARD + 2.0

    env, drv = furuta_env(steps=30)
    spin_up(env, 29)
    reads = len(drv.trajectory)
    *_, truncated, info = env.step(np.array([1.0]))
    assert truncated and info["state"].velocities["arm"] > 7.0  # the last step, before braking
    brake = info["brake"]
    assert brake["at_rest"] and brake["periods"] == len(drv.trajectory) - reads - 1
    assert brake["duration_s"] == pytest.approx(brake["periods"] * env.robot.control_dt)
    assert 0.05 < brake["duration_s"] < 0.2  # about 8 rad/s to rest at up to 6 V
    q, v = drv.at_torque_off[-1]
    assert abs(v[0]) <= env.robot.reset.settle_velocity_tolerance
    assert abs(q[0]) < env.robot.joint("arm").soft_limits.upper
    assert not drv.torque_enabled and env.safety.latched is None
    assert_commands_passed_the_safety_layer(env, drv)
    env.end_episode()  # nothing runs: nothing to do
    assert len(drv.at_torque_off) == 1


def test_a_brake_that_does_not_reach_rest_ends_at_its_time_limit_with_a_warning(caplog) -> None:
    env, drv = furuta_env(steps=30)
    robot = env.robot
    spin_up(env, 29)
    env.reset_procedure.at_rest = lambda state: False  # a robot that never comes to rest
    with caplog.at_level(logging.WARNING, logger="hardware.robot_env"):
        *_, info = env.step(np.array([1.0]))
    brake = info["brake"]
    assert not brake["at_rest"]
    assert brake["periods"] == int(np.ceil(env.reset_procedure.brake_limit_s
                                           / robot.control_dt))
    assert "still moving" in caplog.text and "torque off" in caplog.text
    assert not drv.torque_enabled
    assert abs(drv.at_torque_off[-1][1][0]) < 0.5  # it did brake, all the same


class FaultAfter(RecordingMock):
    """The device latches a fault after `fault_after` accepted commands (None: never)."""

    fault_after: int | None = None

    def send_command(self, command: np.ndarray) -> None:
        super().send_command(command)
        if self.fault_after is not None and self.commands[-1].accepted:
            self.fault_after -= 1
            if self.fault_after == 0:
                self.inject_fault("OVER_CURRENT")


def test_a_stop_during_the_brake_is_carried_out_and_latched() -> None:
    env, drv = furuta_env(driver_cls=FaultAfter, steps=30)
    env.reset(seed=0)
    for _ in range(29):
        env.step(np.array([1.0]))
    drv.fault_after = 3  # the last step's command, then two of the brake's
    *_, terminated, truncated, info = env.step(np.array([1.0]))
    assert truncated and info["brake"] is None
    assert env.safety.latched is not None and env.safety.latched.kind == "device_fault"
    assert not drv.torque_enabled
    env.reset(seed=1)  # acknowledged, the fault cleared
    assert drv.torque_enabled and env.safety.latched is None


# -- a reset after a coast past the hard limit ---------------------------------------------
def test_a_coasted_arm_is_moved_back_slowly_and_recorded(caplog) -> None:
    env, drv = furuta_env(steps=20)
    drv.set_joint_state(np.array([2.8, 0.0]))  # at rest, torque off, 0.5 rad past
    with caplog.at_level(logging.WARNING, logger="hardware.robot_env"):
        env.reset(seed=0)
    events = [e for e in env.safety_events if e.kind == "recovery"]
    assert len(events) == 1 and events[0].stop == "none"
    assert "arm +2.80" in events[0].detail and "-> +1.9500 rad at 1 rad/s" in events[0].detail
    assert "arm beyond a hard limit with torque off; moving back slowly" in caplog.text
    q = np.array([s[0][0] for s in drv.trajectory])
    v = np.array([s[1][0] for s in drv.trajectory])
    inside = int(np.argmax(q <= HARD))
    assert np.all(np.diff(q[: inside + 1]) <= 1e-3)  # never further out on the way back
    assert np.max(np.abs(v[: inside + 1])) < 2.0  # slow (homing speed 1 rad/s)
    assert abs(q[-1]) < 0.2 and drv.faults == ()
    assert_commands_passed_the_safety_layer(env, drv)
    for _ in range(20):
        *_, terminated, _, info = env.step(np.array([0.1]))
        assert not terminated, info["safety"]


def test_a_still_coasting_arm_is_recovered_where_it_comes_to_rest() -> None:
    env, drv = furuta_env()
    drv.set_joint_state(np.array([2.35, 0.0]), np.array([1.0, 0.0]))
    env.reset(seed=0)
    (event,) = [e for e in env.safety_events if e.kind == "recovery"]
    start = float(event.detail.split("arm ")[1].split(" ")[0])
    assert start > 2.45  # measured after it coasted on, at rest (the twin: 2.53 rad)
    assert drv.faults == () and abs(drv.true_joint_state()[0][0]) < 0.2


def test_an_arm_further_out_than_the_slack_needs_the_operator() -> None:
    env, drv = furuta_env()
    limit = HARD + COAST_SLACK * 2 * HARD
    drv.set_joint_state(np.array([-(limit + 0.05), 0.0]))
    with pytest.raises(ResetError, match="too far for a recovery move: with torque off, move it"):
        env.reset(seed=0)
    assert not drv.commands and not drv.torque_enabled  # torque never went on
    drv.set_joint_state(np.array([-(limit - 0.05), 0.0]))
    env.reset(seed=0)  # within the slack
    assert drv.torque_enabled


class ReversedMotor(RecordingMock):
    """The motor's leads swapped: every voltage acts the other way."""

    def send_command(self, command: np.ndarray) -> None:  # submit_command sends through it
        super().send_command(-np.asarray(command))


def test_a_recovery_move_that_goes_further_out_stops_with_torque_off() -> None:
    env, drv = furuta_env(driver_cls=ReversedMotor)
    drv.set_joint_state(np.array([2.6, 0.0]))
    with pytest.raises(RecoveryError, match="recovery move of 'furuta' stopped, torque off"):
        env.reset(seed=0)
    assert not drv.torque_enabled
    assert drv.true_joint_state()[0][0] < 2.6 + 0.2  # caught within a few periods


def test_the_safety_layer_tolerates_only_a_shrinking_excursion() -> None:
    robot = quick()
    safety = SafetyLayer(robot)
    drv = MockDriver(robot, host_clock="simulated")
    drv.connect()

    def state(q: float) -> DeviceState:
        drv.set_joint_state(np.array([q, 0.0]))
        drv.enable()
        s = drv.read_state()
        drv.disable()
        return s

    allowed = safety.allow_excursion(state(2.8))
    assert allowed[0] == pytest.approx(0.5, abs=2e-3) and allowed[1] == 0.0
    assert safety.check_state(state(2.82), drv.clock()) is None  # within the slack (0.05)
    assert safety.check_state(state(2.6), drv.clock()) is None  # on the way back
    event = safety.check_state(state(2.7), drv.clock())  # further out than since then
    assert event is not None and event.kind == "hard_position_limit"
    assert "further out than the 0.29" in event.detail  # 2.6 - 2.3, encoder-quantised
    safety.reset_safety()
    safety.start(state(2.0))  # a new start ends the allowance
    assert safety.check_state(state(2.31), drv.clock()).kind == "hard_position_limit"


def test_coast_recovery_plans_effort_joints_within_the_slack_only() -> None:
    furuta, arm2 = load_robot_config("furuta"), load_robot_config("arm2")
    drv = MockDriver(furuta, host_clock="simulated")
    drv.connect()
    drv.set_joint_state(np.array([-2.9, 0.0]))
    plan = coast_recovery(furuta, drv.read_state())
    assert plan["arm"][1] == pytest.approx(-2.0 + furuta.reset.settle_position_tolerance)
    drv.set_joint_state(np.array([2.2, 0.0]))
    assert coast_recovery(furuta, drv.read_state()) == {}  # inside: the reset homes it
    adrv = MockDriver(arm2, host_clock="simulated")
    adrv.connect()
    adrv.set_joint_state(np.array([1.76, 0.0]))
    assert coast_recovery(arm2, adrv.read_state()) == {}  # servos: end_stop_recovery


# -- the same on the device emulator -------------------------------------------------------
def test_on_the_emulator_the_arm_is_braked_and_a_coast_past_the_limit_recovered(
    emulator_factory, relaxed_config
) -> None:
    emulator = emulator_factory("furuta")
    robot = relaxed_config("furuta")
    with SerialDriver(robot, port=emulator.port) as drv:
        env = make_robot_env(robot, drv, max_episode_steps=30)
        env.reset(seed=0)
        for _ in range(30):
            *_, terminated, truncated, info = env.step(np.array([1.0]))
            assert not terminated, info["safety"]
        assert truncated and info["state"].velocities["arm"] > 3.0
        assert info["brake"]["at_rest"], info["brake"]
        after = drv.read_state()
        assert not after.enabled and abs(after.velocities[0]) < 1.0

        # A stop at speed (the device's LIMIT as the arm crosses its hard limit) leaves the
        # arm coasting past it with torque off: drive it there around the safety layer.
        drv.enable()
        state = drv.read_state()
        q0, t0 = state.positions[0], time.monotonic()
        while state.enabled and time.monotonic() - t0 < 10.0:
            ref = min(q0 + (time.monotonic() - t0), HARD + 0.3)  # 1 rad/s
            try:
                drv.send_command(np.array([np.clip(12.0 * (ref - state.positions[0])
                                                   - 1.0 * state.velocities[0], -6.0, 6.0)]))
            except RobotFaultError as err:  # LIMIT latched since the last read: refused
                assert "LIMIT" in str(err)
                break
            time.sleep(robot.control_dt)
            state = drv.read_state()
        assert "LIMIT" in drv.read_state().faults
        env.reset(seed=1)
        (event,) = [e for e in env.safety_events if e.kind == "recovery"]
        assert float(event.detail.split("arm ")[1].split(" ")[0]) > HARD
        for _ in range(10):
            *_, terminated, _, info = env.step(np.array([0.0]))
            assert not terminated, info["safety"]
        assert drv.read_state().faults == ()
        env.close()
