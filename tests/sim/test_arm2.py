"""arm2: models of every fidelity, the reach task and the servo physics of the twin."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from sim.actuation import command_to_action
from sim.envs.arm2 import Arm2ReachEnv
from sim.robot_config import load_robot_config
from sim.state import RobotState
from sim.tasks.arm2 import (
    REACH,
    TARGET_MARGIN,
    Arm2Reach,
    forward_kinematics,
    inverse_kinematics,
)

FIDELITIES = load_robot_config("arm2").model_names
TWIN_SPEED_LIMIT = 6.0  # rad/s, documented in sim/models/arm2_twin.xml


@pytest.fixture(scope="module")
def robot():
    return load_robot_config("arm2")


@pytest.fixture(scope="module")
def task(robot):
    return Arm2Reach(robot)


def _soft_limits(robot) -> tuple[np.ndarray, np.ndarray]:
    lims = [robot.joint(n).soft_limits for n in robot.joint_names]
    return np.array([lim.lower for lim in lims]), np.array([lim.upper for lim in lims])


def _inside(q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.all((q >= lo) & (q <= hi), axis=1)


def _hold(env: Arm2ReachEnv, q: np.ndarray, target: np.ndarray | None = None) -> None:
    """Start `env` at rest at joint angles q (targets default to the tip at q)."""
    tip = forward_kinematics(q[None])[0] if target is None else target
    env.reset_to(RobotState.from_arrays(env.joint_names, q, np.zeros(2), {"target": tip}))


def test_config_loads_and_workspace_holds_every_soft_limited_pose(robot):
    assert robot.name == "arm2"
    assert robot.joint_names == ("shoulder", "elbow")
    assert robot.actuation.type == "position"
    assert all(robot.model_path(f).is_file() for f in FIDELITIES)
    lo, hi = _soft_limits(robot)
    grid = np.stack(np.meshgrid(*(np.linspace(a, b, 41) for a, b in zip(lo, hi, strict=True))), -1)
    tips = forward_kinematics(grid.reshape(-1, 2))
    ws = robot.workspace
    assert ws is not None and ws.site == "tip"
    assert np.all(tips >= [ws.lower[0], ws.lower[2]]) and np.all(tips <= [ws.upper[0], ws.upper[2]])


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_analytic_forward_kinematics_matches_tip_site(robot, fidelity):
    model = mujoco.MjModel.from_xml_path(str(robot.model_path(fidelity)))
    data = mujoco.MjData(model)
    site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "tip")
    rng = np.random.default_rng(0)
    q = rng.uniform(-2.6, 2.6, size=(50, 2))
    fk = forward_kinematics(q)
    for qi, expected in zip(q, fk, strict=True):
        data.qpos[:] = qi  # joint order in the XML is the config's: shoulder, elbow
        mujoco.mj_kinematics(model, data)
        np.testing.assert_allclose(data.site_xpos[site][[0, 2]], expected, atol=1e-9)
        assert abs(data.site_xpos[site][1]) < 1e-12


def test_inverse_kinematics_round_trips_and_rejects_unreachable(task):
    rng = np.random.default_rng(1)
    q = rng.uniform([-1.5, 0.2], [1.5, 2.4], size=(100, 2))
    xz = forward_kinematics(q)
    up, down = inverse_kinematics(xz)
    np.testing.assert_allclose(up, q, atol=1e-9)
    np.testing.assert_allclose(forward_kinematics(down), xz, atol=1e-9)
    far = np.array([[0.0, 0.30 + REACH + 0.01]])
    assert np.all(np.isnan(inverse_kinematics(far)[0]))
    assert not task.reachable(far)[0]


def test_targets_are_reachable_inside_the_workspace_and_spread(robot, task):
    rng = np.random.default_rng(2)
    targets = np.array([task.sample_task_state(rng)["target"] for _ in range(300)])
    ws = robot.workspace
    assert np.all(targets >= [ws.lower[0], ws.lower[2]])
    assert np.all(targets <= [ws.upper[0], ws.upper[2]])
    lo, hi = _soft_limits(robot)
    up, down = inverse_kinematics(targets)
    q = np.where(_inside(up, lo + TARGET_MARGIN, hi - TARGET_MARGIN)[:, None], up, down)
    assert np.all(_inside(q, lo + TARGET_MARGIN - 1e-9, hi - TARGET_MARGIN + 1e-9))
    np.testing.assert_allclose(forward_kinematics(q), targets, atol=1e-9)
    # uniform over the reachable region: both sides of the base, high and low targets
    assert (targets[:, 0] < -0.1).mean() > 0.2 and (targets[:, 0] > 0.1).mean() > 0.2
    assert np.ptp(targets[:, 1]) > 0.25


def test_task_rejects_a_robot_with_other_joints():
    with pytest.raises(ValueError, match="shoulder"):
        Arm2Reach(load_robot_config("furuta"))


def test_twin_reaches_a_far_pose_within_its_speed_limit(robot):
    env = Arm2ReachEnv("twin")
    start, goal = np.array([-1.5, -2.3]), np.array([1.5, 2.3])
    _hold(env, start)
    env.data.ctrl[env.act_ids] = goal
    dt = env.model.opt.timestep
    speeds, reached_at = [], None
    for k in range(int(2.0 / dt)):
        mujoco.mj_step(env.model, env.data)
        q, v = env.true_joint_state()
        speeds.append(np.abs(v))
        if reached_at is None and np.all(np.abs(q - goal) < 0.02):
            reached_at = (k + 1) * dt
    peak = np.max(speeds, axis=0)
    assert np.all(peak <= TWIN_SPEED_LIMIT), peak
    assert np.all(peak > 4.5), peak  # the move is speed-limited, not sluggish
    # 3 rad at <= 6 rad/s needs >= 0.5 s; a servo that arrives within 1.2 s is healthy
    assert reached_at is not None and 0.5 < reached_at < 1.2, reached_at
    np.testing.assert_allclose(env.true_joint_state()[1], 0.0, atol=0.05)


def test_twin_sags_under_gravity_while_reduced_tracks_exactly(robot):
    goal = np.array([1.5, 0.0])  # upper arm near horizontal: largest gravity load
    errors = {}
    for fidelity in ("twin", "reduced"):
        env = Arm2ReachEnv(fidelity)
        _hold(env, goal * 0.5)
        action = command_to_action(robot, goal)
        for _ in range(100):  # 2 s
            env.step(action)
        errors[fidelity] = env.true_joint_state()[0] - goal
        if fidelity == "reduced":
            np.testing.assert_array_equal(env.model.opt.gravity, 0.0)
    # gravity pulls the upper arm down (towards larger q1), by a fraction of a degree
    assert 0.003 < errors["twin"][0] < 0.03, errors
    assert np.max(np.abs(errors["reduced"])) < 1e-6, errors


def _one_step_errors(fidelity: str, states, actions, truth) -> float:
    env = Arm2ReachEnv(fidelity)
    preds = []
    for state, action in zip(states, actions, strict=True):
        env.reset_to(state)
        env.step(action)
        preds.append(np.concatenate(env.true_joint_state()))
    return float(np.mean(np.abs(np.array(preds) - truth)))


def test_one_step_model_gap_is_ordered(robot):
    """Same states and actions: the reduced model predicts the twin better than reduced_gap."""
    rng = np.random.default_rng(3)
    lo, hi = _soft_limits(robot)
    n = 150
    q = rng.uniform(lo, hi, size=(n, 2))
    v = rng.uniform(-2.0, 2.0, size=(n, 2))
    targets = forward_kinematics(rng.uniform(lo, hi, size=(n, 2)))
    states = [
        RobotState.from_arrays(robot.joint_names, q[i], v[i], {"target": targets[i]})
        for i in range(n)
    ]
    # half large random targets, half small moves around the current pose
    small = command_to_action(robot, np.clip(q + rng.uniform(-0.2, 0.2, size=(n, 2)), lo, hi))
    actions = np.where(np.arange(n)[:, None] % 2 == 0, rng.uniform(-1, 1, (n, 2)), small)
    twin = Arm2ReachEnv("twin")
    truth = []
    for state, action in zip(states, actions, strict=True):
        twin.reset_to(state)
        twin.step(action)
        truth.append(np.concatenate(twin.true_joint_state()))
    truth = np.array(truth)
    gap_reduced = _one_step_errors("reduced", states, actions, truth)
    gap_large = _one_step_errors("reduced_gap", states, actions, truth)
    assert 1e-3 < gap_reduced < 0.75 * gap_large, (gap_reduced, gap_large)


def test_reward_is_best_at_the_target(task):
    rng = np.random.default_rng(4)
    for _ in range(20):
        target = task.sample_task_state(rng)["target"]
        q_star = inverse_kinematics(target[None])[0]
        q_all = np.concatenate([q_star, q_star + rng.normal(0.0, 0.1, size=(64, 2))])
        n = len(q_all)
        batch = {"target": np.repeat(target[None], n, axis=0)}
        action = np.repeat(rng.uniform(-1, 1, (1, 2)), n, axis=0)
        rewards = task.reward(q_all, np.zeros((n, 2)), action, batch)
        assert np.all(rewards[0] >= rewards[1:])
        moving = task.reward(q_all[:1], np.full((1, 2), 3.0), action[:1], {"target": target[None]})
        assert moving[0] < rewards[0]
    at_rest = task.reward(q_star, np.zeros((1, 2)), np.zeros((1, 2)), {"target": target[None]})
    assert at_rest[0] == pytest.approx(0.0, abs=1e-12)


def test_observation_carries_target_and_tip_error(task):
    rng = np.random.default_rng(5)
    q = rng.uniform(-1.5, 1.5, size=(8, 2))
    v = rng.uniform(-5, 5, size=(8, 2))
    target = forward_kinematics(rng.uniform(-1.5, 1.5, size=(8, 2)))
    obs = task.observe(q, v, {"target": target})
    assert obs.shape == (8, task.obs_dim) and obs.dtype == np.float32
    np.testing.assert_allclose(obs[:, 0:2], np.sin(q), atol=1e-6)
    np.testing.assert_allclose(obs[:, 2:4], np.cos(q), atol=1e-6)
    np.testing.assert_allclose(obs[:, 8:10], (forward_kinematics(q) - target) / REACH, atol=1e-6)
    with pytest.raises(KeyError, match="target"):
        task.observe(q, v, {})
