"""RobotEnv on MockDriver: Gymnasium contract, reset procedure, safety stops, Ctrl+C, timing.

Most tests run with `realtime=False` and the mock's simulated host clock (deterministic, no
sleeping); the deadline tests run in real time. Robots get a short `reset.settle_s` so that a
reset costs tens of control periods, not seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardware.driver import DeviceState, RobotConnectionError
from hardware.homing import ResetError
from hardware.mock_driver import MockDriver
from hardware.robot_env import RobotEnv, make_robot_env, task_for_robot
from hardware.safety import SafetyStopError
from hardware.scheduler import Scheduler
from sim.envs.arm2 import Arm2ReachEnv
from sim.envs.furuta import FurutaSwingupEnv
from sim.robot_config import RobotConfig, load_robot_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def quick(name: str, **safety: object) -> RobotConfig:
    """The robot config with a short settle time (and optional safety overrides)."""
    robot = load_robot_config(name)
    return robot.model_copy(
        update={
            "reset": robot.reset.model_copy(update={"settle_s": 0.04}),
            "safety": robot.safety.model_copy(update=safety),
        }
    )


def mock_env(name: str, **kwargs: object) -> tuple[RobotEnv, MockDriver]:
    robot = quick(name)
    drv = MockDriver(robot, host_clock="simulated")
    return make_robot_env(robot, drv, realtime=False, **kwargs), drv


class RecordingMock(MockDriver):
    """MockDriver that records the true joint state at every reading."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.trajectory: list[tuple[np.ndarray, np.ndarray]] = []

    def read_state(self) -> DeviceState:
        s = super().read_state()
        self.trajectory.append(self.true_joint_state())
        return s


# -- Gymnasium contract -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["furuta", "arm2"])
def test_check_env_passes(name: str) -> None:
    env, _ = mock_env(name)
    check_env(env)
    assert env.spec is not None and env.spec.nondeterministic


@pytest.mark.parametrize(
    ("name", "sim_cls"), [("furuta", FurutaSwingupEnv), ("arm2", Arm2ReachEnv)]
)
def test_spaces_match_the_simulated_env(name: str, sim_cls: type) -> None:
    env, _ = mock_env(name)
    sim = sim_cls(fidelity="reduced")
    assert env.action_space == sim.action_space
    assert env.observation_space == sim.observation_space
    assert env.metadata["render_fps"] == sim.metadata["render_fps"]


@pytest.mark.parametrize("name", ["furuta", "arm2"])
def test_step_reports_what_was_sent_and_rewards_the_measured_state(name: str) -> None:
    env, drv = mock_env(name)
    obs, info = env.reset(seed=1)
    assert obs.shape == env.observation_space.shape and obs.dtype == np.float32
    rng = np.random.default_rng(0)
    for _ in range(20):
        action = rng.uniform(-2, 2, env.action_space.shape)
        obs, reward, terminated, truncated, info = env.step(action)
        assert not terminated and not truncated
        np.testing.assert_array_equal(drv.command_log()[-1], info["command_sent"])
        assert np.all(np.abs(info["action_sent"]) <= 1.0)
        s = info["state"]
        q, v = s.arrays(env.joint_names)
        task = {k: np.asarray(val)[None] for k, val in s.task.items()}
        expected = env.task.reward(q[None], v[None], info["action_sent"][None], task)[0]
        assert reward == pytest.approx(expected)
        np.testing.assert_allclose(obs, env.task.observe(q[None], v[None], task)[0], atol=1e-6)
        assert set(info["safety"]["clipped"]) == {
            "action", "rate", "soft_limit", "velocity", "workspace"
        }
        assert info["timing"]["missed"] is False


def test_episode_truncates_at_the_task_horizon_and_idles_the_robot() -> None:
    env, drv = mock_env("furuta", max_episode_steps=30)
    env.reset(seed=0)
    for k in range(30):
        *_, terminated, truncated, _ = env.step(np.zeros(1))
        assert truncated == (k == 29) and not terminated
    assert not drv.torque_enabled  # effort robot idles with torque off
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1))


def test_step_before_reset_is_an_error() -> None:
    env, _ = mock_env("arm2")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))


def test_env_refuses_a_task_or_driver_for_another_robot() -> None:
    drv = MockDriver("furuta")
    with pytest.raises(ValueError, match="runs on 'arm2'"):
        RobotEnv(drv, task_for_robot(load_robot_config("arm2")))
    with pytest.raises(ValueError, match="driver is for robot 'furuta'"):
        RobotEnv(drv, task_for_robot(load_robot_config("arm2")), load_robot_config("arm2"))


# -- reset procedure --------------------------------------------------------------------------
def test_reset_homes_arm2_at_the_homing_speed_and_randomises_the_start() -> None:
    robot = quick("arm2")
    drv = RecordingMock(robot, host_clock="simulated")
    drv.connect()
    drv.set_joint_state(np.array([1.2, -1.5]))
    env = make_robot_env(robot, drv, realtime=False)
    obs, info = env.reset(seed=3)
    targets = drv.command_log()
    step = robot.reset.homing_speed * robot.control_dt
    assert np.max(np.abs(np.diff(targets, axis=0))) <= step + 1e-9
    speeds = np.array([np.abs(v) for _, v in drv.trajectory])
    assert speeds.max() <= 1.5 * robot.reset.homing_speed  # the servos follow the slow ramp
    assert len(targets) >= 1.5 / step  # it really travelled ~1.5 rad at that speed
    # the start: home + noise drawn as the simulated env draws it (same seed, same pose)
    sim = Arm2ReachEnv(fidelity="twin")
    sim.reset(seed=3)
    q_sim, _ = sim.get_state().arrays(env.joint_names)
    q, v = info["state"].arrays(env.joint_names)
    np.testing.assert_allclose(q, q_sim, atol=0.05)
    assert np.all(np.abs(v) <= 0.5)
    assert info["state"].task["target"] == pytest.approx(sim.get_state().task["target"])


def test_reset_homes_furuta_and_waits_for_the_pendulum_to_hang_still() -> None:
    robot = quick("furuta")
    drv = RecordingMock(robot, host_clock="simulated")
    drv.connect()
    drv.set_joint_state(np.array([1.5, 2.0]), np.array([0.0, 5.0]))  # pendulum swinging
    env = make_robot_env(robot, drv, realtime=False)
    obs, info = env.reset(seed=4)
    arm_speed = np.array([abs(v[0]) for _, v in drv.trajectory])
    # the speed governor holds the homing speed; the swinging pendulum kicks the arm briefly
    assert np.percentile(arm_speed, 99) <= 2.0 * robot.reset.homing_speed
    assert arm_speed.max() <= 3.0 * robot.reset.homing_speed
    q, v = info["state"].arrays(env.joint_names)
    sim = FurutaSwingupEnv(fidelity="twin")
    sim.reset(seed=4)
    assert q[0] == pytest.approx(sim.get_state().positions["arm"], abs=0.05)
    assert abs(q[1]) <= 0.05 and np.all(np.abs(v) <= 0.5)  # hanging at rest
    assert drv.time_s < 15.0  # the pendulum was damped actively, not left to friction


def test_get_state_pairs_with_the_simulated_env() -> None:
    env, _ = mock_env("arm2")
    env.reset(seed=5)
    for _ in range(10):
        env.step(np.array([0.3, -0.3]))
    state = env.get_state()
    sim = Arm2ReachEnv(fidelity="reduced")
    obs_sim, _ = sim.reset_to(state)
    obs, *_ = env.step(np.array([0.3, -0.3]))
    assert sim.get_state().task == state.task
    q, _ = state.arrays(env.joint_names)
    np.testing.assert_allclose(sim.get_state().arrays(env.joint_names)[0], q)


def test_reset_refuses_a_joint_outside_its_hard_limits() -> None:
    robot = quick("furuta")
    drv = MockDriver(robot, host_clock="simulated")
    drv.connect()
    drv.set_joint_state(np.array([4.0, 0.0]))  # further out than a coast recovery may move
    env = make_robot_env(robot, drv, realtime=False)
    with pytest.raises(ResetError, match="outside its hard limits"):
        env.reset(seed=0)
    assert not drv.torque_enabled


def test_reset_refuses_a_hot_motor() -> None:
    env, drv = mock_env("furuta")
    drv.connect()
    drv.set_temperature(75.0)
    with pytest.raises(ResetError, match="cool down"):
        env.reset(seed=0)


# -- safety stops through the env -------------------------------------------------------------
def test_hard_limit_violation_latches_torque_off_and_refuses_steps_until_reset() -> None:
    env, drv = mock_env("furuta")
    env.reset(seed=0)
    env.step(np.zeros(1))
    drv.set_joint_state(np.array([4.0, 0.0]))  # e.g. knocked far past the limit
    obs, reward, terminated, truncated, info = env.step(np.zeros(1))
    assert terminated and info["safety"]["stopped"]
    assert info["safety"]["event"]["kind"] == "hard_position_limit"
    assert info["safety"]["event"]["stop"] == "torque_off"
    assert not drv.torque_enabled
    n_commands = len(drv.commands)
    with pytest.raises(SafetyStopError, match="hard_position_limit"):
        env.step(np.zeros(1))
    assert len(drv.commands) == n_commands  # the refused step sent nothing
    with pytest.raises(ResetError):  # outside the hard limits: the operator must move it
        env.reset(seed=1)
    drv.set_joint_state(np.array([1.9, 0.0]))
    env.reset(seed=1)
    kinds = [e.kind for e in env.safety_events]
    assert kinds[0] == "hard_position_limit" and "acknowledged" in kinds
    assert "faults_cleared" in kinds  # the device had latched LIMIT too
    *_, terminated, _, _ = env.step(np.zeros(1))
    assert not terminated


def test_nan_action_on_a_servo_robot_holds_and_sends_nothing_of_it() -> None:
    env, drv = mock_env("arm2")
    env.reset(seed=0)
    env.step(np.array([0.2, 0.2]))
    before = len(drv.commands)
    obs, reward, terminated, truncated, info = env.step(np.array([np.nan, 0.0]))
    assert terminated and info["safety"]["rejected"] and info["command_sent"] is None
    assert info["safety"]["event"]["kind"] == "invalid_action"
    assert info["safety"]["event"]["stop"] == "hold"
    assert drv.torque_enabled  # holding
    new = drv.command_log()[before:]
    assert len(new) == 1 and np.all(np.isfinite(new))  # only the hold target went out
    assert np.all(np.abs(new[0] - drv.command_log()[before - 1]) <= 0.1 + 1e-12)


@pytest.mark.parametrize("name", ["furuta", "arm2"])
def test_stale_state_trips_with_torque_off(name: str) -> None:
    env, drv = mock_env(name)
    env.reset(seed=0)
    env.step(np.zeros(len(env.robot.actuated_joints)))
    drv.stale_replies(0.2)
    *_, terminated, _, info = env.step(np.zeros(len(env.robot.actuated_joints)))
    assert terminated and info["safety"]["event"]["kind"] == "stale_state"
    assert not drv.torque_enabled


@pytest.mark.parametrize("name", ["furuta", "arm2"])
def test_over_temperature_trips_with_torque_off(name: str) -> None:
    env, drv = mock_env(name)
    env.reset(seed=0)
    drv.set_temperature(env.robot.safety.max_temperature_c + 1.0)  # below the device limit
    *_, terminated, _, info = env.step(np.zeros(len(env.robot.actuated_joints)))
    assert terminated and info["safety"]["event"]["kind"] == "over_temperature"
    assert info["safety"]["event"]["stop"] == "torque_off"
    assert not drv.torque_enabled and drv.faults == ()


def test_device_fault_and_lost_link_end_the_episode() -> None:
    env, drv = mock_env("furuta")
    env.reset(seed=0)
    drv.inject_fault("OVER_CURRENT")
    *_, terminated, _, info = env.step(np.zeros(1))
    assert terminated and info["safety"]["event"]["kind"] == "device_fault"
    env.reset(seed=1)  # clears the device fault, recorded
    kinds = [e.kind for e in env.safety_events]
    assert kinds == ["device_fault", "acknowledged", "faults_cleared"]
    drv.fail_after_n_calls(1)
    *_, terminated, _, info = env.step(np.zeros(1))
    assert terminated and info["safety"]["event"]["kind"] == "driver_error"
    assert "RobotConnectionError" in info["safety"]["event"]["detail"]
    assert not drv.torque_enabled


def test_missed_deadlines_beyond_the_tolerance_trip_in_real_time() -> None:
    robot = quick("furuta")
    drv = MockDriver(robot)
    env = make_robot_env(robot, drv, realtime=True)
    env.reset(seed=0)
    drv.call_delay_s = 2 * robot.control_dt  # every command is sent after its deadline
    for k in range(robot.safety.deadline_tolerance + 1):
        *_, terminated, _, info = env.step(np.zeros(1))
        assert info["timing"]["missed"]
        assert terminated == (k == robot.safety.deadline_tolerance)
    assert info["safety"]["event"]["kind"] == "missed_deadlines"
    assert not drv.torque_enabled


# -- adversarial policies (property test through the whole env) ------------------------------
def _policy(kind: str, n: int, magnitude: float, half_period: int, nan_at: int) -> np.ndarray:
    k = np.arange(n)
    if kind == "bang_bang":
        a = np.where((k // half_period) % 2 == 0, magnitude, -magnitude)
    elif kind == "constant":
        a = np.full(n, magnitude)
    else:
        a = np.random.default_rng(half_period).uniform(-abs(magnitude), abs(magnitude), n)
    if 0 <= nan_at < n:
        a[nan_at] = np.nan
    return a


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    name=st.sampled_from(["furuta", "arm2"]),
    kind=st.sampled_from(["bang_bang", "constant", "random"]),
    magnitude=st.sampled_from([1.0, 3.0, 1e6, -1e300]),
    half_period=st.integers(1, 60),
    nan_at=st.integers(-1, 300),
    seed=st.integers(0, 1000),
)
def test_property_adversarial_policies_never_get_past_the_limits(
    name: str, kind: str, magnitude: float, half_period: int, nan_at: int, seed: int
) -> None:
    env, drv = mock_env(name)
    robot = env.robot
    n_act = len(robot.actuated_joints)
    env.reset(seed=seed)
    actions = _policy(kind, 250, magnitude, half_period, nan_at)
    for k in range(250):
        a = np.full(n_act, actions[k])
        a[-1] *= -1.0
        *_, terminated, truncated, info = env.step(a)
        q_true, _ = drv.true_joint_state()
        outside = any(
            j.hard_limits is not None
            and not j.hard_limits.lower <= q_true[i] <= j.hard_limits.upper
            for i, j in enumerate(robot.joints)
        )
        if terminated or truncated:
            break
        assert not outside, "a joint is past its hard limit but the episode goes on"
    if not np.all(np.isfinite(actions[: k + 1])):
        assert info["safety"]["event"]["kind"] == "invalid_action"
    records = [r for r in drv.commands if r.accepted]
    commands = np.array([r.command for r in records])
    lo, hi = env.safety.lower, env.safety.upper
    assert np.all(commands >= lo - 1e-12) and np.all(commands <= hi + 1e-12)
    dmax = robot.actuation.max_command_change
    enables = np.array([r.enable_count for r in records])
    for e in np.unique(enables):  # the rate limit holds from each torque-on onwards
        seg = commands[enables == e]
        assert np.all(np.abs(np.diff(seg, axis=0)) <= dmax + 1e-9)
        if robot.actuation.type != "position":
            assert np.all(np.abs(seg[0]) <= dmax + 1e-9)  # first command after 0 V


def test_square_waves_on_furuta_are_braked_before_the_hard_limits() -> None:
    env, drv = mock_env("furuta")
    worst = 0.0
    for half_period in (25, 50, 90):
        env.reset(seed=half_period)
        for k in range(600):
            a = 1.0 if (k // half_period) % 2 == 0 else -1.0
            *_, terminated, truncated, info = env.step(np.array([a]))
            worst = max(worst, abs(drv.true_joint_state()[0][0]))
            assert not terminated, info["safety"]
            if truncated:
                break
    assert 1.7 < worst < 2.3  # it used most of the range up to the soft limit, no further


# -- Ctrl+C ------------------------------------------------------------------------------------
def test_keyboard_interrupt_in_step_turns_torque_off_and_is_reraised() -> None:
    class InterruptingMock(MockDriver):
        reads_left = 10**9

        def read_state(self) -> DeviceState:
            self.reads_left -= 1
            if self.reads_left < 0:
                raise KeyboardInterrupt
            return super().read_state()

    robot = quick("furuta")
    drv = InterruptingMock(robot, host_clock="simulated")
    env = make_robot_env(robot, drv, realtime=False)
    env.reset(seed=0)
    env.step(np.array([0.5]))
    drv.reads_left = 0
    with pytest.raises(KeyboardInterrupt):
        env.step(np.array([0.5]))
    assert not drv.torque_enabled
    assert env.safety_events[-1].kind == "interrupt"


CHILD = textwrap.dedent(
    """
    import atexit, json, signal, sys
    import numpy as np
    # Ctrl+C raises KeyboardInterrupt even where the test runner was started with SIGINT
    # ignored (a background job of a non-interactive shell), which children inherit.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from hardware.mock_driver import MockDriver
    from hardware.robot_env import make_robot_env
    from sim.robot_config import load_robot_config

    robot = load_robot_config("furuta")
    drv = MockDriver(robot)
    # Registered before the env: runs after the env's own exit hook (LIFO).
    atexit.register(lambda: print(json.dumps({
        "torque": drv.torque_enabled,
        "events": [e.kind for e in env.safety.events],
    }), flush=True))
    env = make_robot_env(robot, drv, realtime=True)
    env.reset(seed=0)
    print("stepping", flush=True)
    k = 0
    while True:  # no try/finally, no context manager: only RobotEnv can turn torque off
        env.step(np.array([0.3 * np.sin(0.05 * k)]))
        k += 1
    """
)


def test_ctrl_c_in_a_subprocess_mid_episode_leaves_torque_off() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "stepping"
        time.sleep(0.05)  # a dozen steps into the episode, torque on
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err  # re-raised, not swallowed
    report = json.loads(out.strip().splitlines()[-1])
    assert report["torque"] is False
    assert "interrupt" in report["events"]


# -- scheduler ---------------------------------------------------------------------------------
class FakeClock:
    """A clock that advances only when the scheduler sleeps or work is simulated."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        self.t += 1e-6  # every reading costs a microsecond (ends the spin loop)
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s + 50e-6  # OS sleeps overshoot


def test_scheduler_keeps_absolute_deadlines() -> None:
    clock = FakeClock()
    sched = Scheduler(0.004, clock=clock, sleep=clock.sleep, spin_s=0.0005)
    t0 = sched.start()
    for k in range(1, 101):
        clock.t += 0.001  # 1 ms of work per period
        tick = sched.wait()
        assert not tick.missed
        assert 0.0 <= tick.wake_s - (t0 + 0.004 * k) < 1e-5  # no accumulated drift
    stats = sched.stats()
    assert stats.steps == 100 and stats.missed == 0
    assert stats.jitter_p99_s < 1e-5
    assert stats.busy_p50_s == pytest.approx(0.001, abs=1e-5)


def test_scheduler_counts_missed_deadlines_and_rebases() -> None:
    clock = FakeClock()
    sched = Scheduler(0.004, clock=clock, sleep=clock.sleep)
    sched.start()
    clock.t += 0.001
    assert not sched.wait().missed
    clock.t += 0.010  # overrun by 6 ms
    late = sched.wait()
    assert late.missed and late.consecutive_missed == 1
    clock.t += 0.011
    assert sched.wait().consecutive_missed == 2
    clock.t += 0.001
    tick = sched.wait()
    assert not tick.missed and tick.consecutive_missed == 0
    assert tick.period_s == pytest.approx(0.004, abs=1e-4)  # a full period after the rebase
    assert sched.stats().missed == 2 and sched.stats().max_consecutive_missed == 2


def test_scheduler_not_realtime_never_sleeps() -> None:
    slept: list[float] = []
    sched = Scheduler(0.004, realtime=False, sleep=slept.append)
    sched.start()
    t = time.monotonic()
    for _ in range(1000):
        assert not sched.wait().missed
    assert slept == [] and time.monotonic() - t < 1.0


def test_driver_errors_are_not_swallowed_outside_an_episode() -> None:
    env, drv = mock_env("furuta")
    drv.connect()
    drv.fail_after_n_calls(0)
    with pytest.raises(RobotConnectionError):
        env.reset(seed=0)
