"""Parking at the rest pose, the end-stop recovery of a reset, `end_episode`, and `reset.rest`
in the robot config; RobotEnv on MockDriver (simulated clock, `realtime=False`, no sleeping).
The same on the device emulator: test_robot_env_emulator.py."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from pydantic import ValidationError

from hardware.homing import RecoveryError, ResetError, end_stop_recovery
from hardware.mock_driver import MockDriver
from hardware.robot_env import RobotEnv, make_robot_env
from sim.robot_config import RobotConfig, load_robot_config

FALL_PERIODS = 100  # 2 s at 50 Hz: a limp arm2 has come to rest on its end stop


def quick(name: str) -> RobotConfig:
    robot = load_robot_config(name)
    return robot.model_copy(update={"reset": robot.reset.model_copy(update={"settle_s": 0.04})})


def arm2_env(driver_cls: type[MockDriver] = MockDriver) -> tuple[RobotEnv, MockDriver]:
    robot = quick("arm2")
    drv = driver_cls(robot, host_clock="simulated")
    drv.connect()
    return make_robot_env(robot, drv, realtime=False, max_episode_steps=20), drv


def run_episode(env: RobotEnv, seed: int | None = None) -> None:
    env.reset(seed=seed)
    for _ in range(env.max_episode_steps):
        *_, terminated, truncated, info = env.step(np.array([0.2, -0.2]))
        assert not terminated, info["safety"]
    assert truncated


def recoveries(env: RobotEnv) -> list[str]:
    return [e.detail for e in env.safety_events if e.kind == "recovery"]


def test_park_rests_limp_and_the_next_reset_moves_out_of_the_end_stop(caplog) -> None:
    env, drv = arm2_env()
    shoulder = env.robot.joint("shoulder")
    run_episode(env, seed=0)
    env.park()
    q, _ = drv.true_joint_state()
    np.testing.assert_allclose(q, [1.57, 1.4], atol=0.05)  # reset.rest of arm2.yaml
    assert not drv.torque_enabled
    drv.advance(FALL_PERIODS)  # limp: the shoulder settles on its end stop, the forearm hangs
    q, v = drv.true_joint_state()
    assert q[0] >= shoulder.hard_limits.upper - 1e-3 and np.all(np.abs(v) < 0.01)
    assert abs(q[0] + q[1] - np.pi) < 0.05 and not drv.faults
    with caplog.at_level(logging.WARNING, logger="hardware.robot_env"):
        run_episode(env)
    assert len(recoveries(env)) == 1 and "(parked at rest)" in recoveries(env)[0]
    assert "shoulder +1.75" in recoveries(env)[0] and "elbow" not in recoveries(env)[0]
    assert not caplog.records  # an expected recovery is an event, not a warning


def test_a_servo_that_fell_onto_its_end_stop_is_recovered_with_a_warning(caplog) -> None:
    env, drv = arm2_env()
    drv.set_joint_state(np.array([-1.6, -0.3]))
    drv.advance(FALL_PERIODS)  # torque off: falls onto the lower end stop
    assert drv.true_joint_state()[0][0] <= -1.75 + 1e-3
    with caplog.at_level(logging.WARNING, logger="hardware.robot_env"):
        run_episode(env, seed=0)
    assert "it fell with torque off" in recoveries(env)[0]
    assert "shoulder resting on an end stop" in caplog.text
    # Further out than an end stop allows (HARD_STOP_SLACK): still the operator's job.
    env.end_episode()
    drv.disable()
    drv.set_joint_state(np.array([-1.9, 0.0]))
    with pytest.raises(ResetError, match="outside its hard limits"):
        env.reset()
    assert not drv.torque_enabled
    env.close()


class FaultingMock(MockDriver):
    """The device latches LIMIT after the third command it receives (a failed recovery)."""

    sent = 0

    def send_command(self, command: np.ndarray) -> None:
        super().send_command(command)
        self.sent += 1
        if self.sent == 3:
            self.inject_fault("LIMIT")


def test_a_failed_recovery_move_turns_torque_off_and_says_why() -> None:
    env, drv = arm2_env(FaultingMock)
    drv.set_joint_state(np.array([1.6, 0.0]))
    drv.advance(FALL_PERIODS)
    with pytest.raises(RecoveryError, match="recovery move of 'arm2' stopped, torque off"):
        env.reset(seed=0)
    assert not drv.torque_enabled


def test_end_episode_is_public_and_a_robot_without_rest_pose_cannot_park() -> None:
    env, drv = arm2_env()
    env.reset(seed=0)
    env.step(np.array([0.1, 0.1]))
    env.end_episode()  # servos: hold the measured pose
    assert drv.torque_enabled
    with pytest.raises(RuntimeError, match="the episode has ended"):
        env.step(np.array([0.1, 0.1]))
    env.end_episode()  # no episode running: nothing to do
    furuta = quick("furuta")
    fdrv = MockDriver(furuta, host_clock="simulated")
    fdrv.connect()
    fenv = make_robot_env(furuta, fdrv, realtime=False)
    fenv.reset(seed=0)
    fenv.end_episode()  # effort robot: torque off
    assert not fdrv.torque_enabled
    with pytest.raises(ValueError, match="no reset.rest pose"):
        fenv.park()


def test_end_stop_recovery_plans_servos_only_within_the_slack() -> None:
    arm2 = load_robot_config("arm2")
    env, drv = arm2_env()
    drv.set_joint_state(np.array([1.76, -2.5]))
    state = drv.read_state()
    plan = end_stop_recovery(arm2, state)
    assert plan["shoulder"][1] == pytest.approx(1.57 - arm2.reset.settle_position_tolerance)
    assert plan["elbow"][1] == pytest.approx(-2.4 + arm2.reset.settle_position_tolerance)
    furuta = load_robot_config("furuta")
    fdrv = MockDriver(furuta, host_clock="simulated")
    fdrv.connect()
    fdrv.set_joint_state(np.array([2.0, 0.0]))
    assert end_stop_recovery(furuta, fdrv.read_state()) == {}  # effort robots home instead


@pytest.mark.parametrize(
    ("rest", "message"),
    [
        ({"wrist": 0.0}, "reset.rest.wrist: not an actuated joint"),
        ({"shoulder": 1.7}, "reset.rest.shoulder = 1.7 is outside its soft limits"),
        ({"shoulder": float("nan")}, "reset.rest.shoulder = nan is outside its soft limits"),
    ],
)
def test_a_bad_rest_pose_is_refused_naming_the_key(rest: dict, message: str) -> None:
    data = load_robot_config("arm2").model_dump(mode="python")
    data["reset"]["rest"] = rest
    with pytest.raises(ValidationError, match=message):
        RobotConfig.model_validate(data)
