"""The Furuta pendulum fidelities (sim/models/furuta_*.xml), its swing-up task and env."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim  # noqa: F401  (registers the envs)
from sim.envs.furuta import FurutaSwingupEnv
from sim.robot_config import load_robot_config
from sim.state import RobotState
from sim.tasks.furuta import VELOCITY_SCALE, FurutaSwingup

FIDELITIES = load_robot_config("furuta").model_names

# QUBE-Servo 2 published figures the models are built from (uniform rods).
ARM_MASS, ARM_LENGTH = 0.095, 0.085
PEND_MASS, PEND_LENGTH = 0.024, 0.129
G = 9.81
PEND_COM = PEND_LENGTH / 2
PEND_INERTIA_PIVOT = PEND_MASS * PEND_LENGTH**2 / 3  # about the hinge
ARM_INERTIA_AXIS = ARM_MASS * ARM_LENGTH**2 / 3  # about the motor axis


def _state(arm: float, pend: float, arm_v: float = 0.0, pend_v: float = 0.0) -> RobotState:
    return RobotState({"arm": arm, "pendulum": pend}, {"arm": arm_v, "pendulum": pend_v})


@pytest.fixture(scope="module")
def envs() -> dict[str, FurutaSwingupEnv]:
    return {f: FurutaSwingupEnv(f) for f in FIDELITIES}


def test_config_loads_and_models_match_it(envs: dict[str, FurutaSwingupEnv]) -> None:
    robot = load_robot_config("furuta")
    assert robot.joint_names == ("arm", "pendulum")
    assert robot.actuation.type == "voltage"
    limit = robot.actuation.command_limit
    for fidelity, env in envs.items():
        aid = env.act_ids[0]
        lo, hi = env.model.actuator_ctrlrange[aid]
        assert (lo, hi) == (-limit, limit), f"{fidelity}: ctrlrange must be +-command_limit"
        assert env.n_substeps * env.model.opt.timestep == pytest.approx(robot.control_dt)
    assert envs["twin"].n_substeps == 4 and envs["reduced"].n_substeps == 1


@pytest.mark.parametrize("fidelity", ["twin", "reduced"])
def test_hanging_pendulum_at_rest_stays_at_rest(
    envs: dict[str, FurutaSwingupEnv], fidelity: str
) -> None:
    env = envs[fidelity]
    env.reset_to(_state(0.0, 0.0))
    for _ in range(250):
        env.step(np.zeros(1))
    q, v = env.true_joint_state()
    assert np.abs(q).max() < 1e-9 and np.abs(v).max() < 1e-9


def _swing_period(model: mujoco.MjModel, amplitude: float = 0.1, periods: int = 6) -> float:
    """Mean period of the pendulum angle from its upward zero crossings, released at rest."""
    data = mujoco.MjData(model)
    adr = model.jnt_qposadr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "pendulum")]
    data.qpos[adr] = amplitude
    mujoco.mj_forward(model, data)
    crossings: list[float] = []
    prev = data.qpos[adr]
    while len(crossings) < periods + 1:
        mujoco.mj_step(model, data)
        cur = data.qpos[adr]
        if prev < 0.0 <= cur:
            crossings.append(data.time - model.opt.timestep * cur / (cur - prev))
        prev = cur
    return float(np.mean(np.diff(crossings)))


def test_twin_swing_period_with_arm_locked_matches_compound_pendulum() -> None:
    """Arm locked (joint removed by MjSpec): T = 2 pi sqrt(J_pivot / (m g l_c)) = 0.588 s."""
    spec = mujoco.MjSpec.from_file(str(load_robot_config("furuta").model_path("twin")))
    spec.delete(spec.actuator("arm"))
    spec.delete(spec.joint("arm"))
    analytic = 2 * np.pi * np.sqrt(PEND_INERTIA_PIVOT / (PEND_MASS * G * PEND_COM))
    measured = _swing_period(spec.compile())
    assert measured == pytest.approx(analytic, rel=0.05)


def test_reduced_swing_period_with_free_arm_matches_coupled_linear_model() -> None:
    """Arm free, no friction: linearised about hanging, the arm's reaction shortens the period.

    Mass matrix at alpha = 0 (arm theta, pendulum alpha):
    M = [[J_arm + m_p L_r^2, m_p L_r l_c], [m_p L_r l_c, J_pivot]], stiffness diag(0, m_p g l_c);
    the swinging mode has omega^2 = m_p g l_c / (J_pivot - M12^2 / M11), T = 0.484 s.
    """
    m11 = ARM_INERTIA_AXIS + PEND_MASS * ARM_LENGTH**2
    m12 = PEND_MASS * ARM_LENGTH * PEND_COM
    omega2 = PEND_MASS * G * PEND_COM / (PEND_INERTIA_PIVOT - m12**2 / m11)
    analytic = 2 * np.pi / np.sqrt(omega2)
    model = mujoco.MjModel.from_xml_path(str(load_robot_config("furuta").model_path("reduced")))
    assert _swing_period(model) == pytest.approx(analytic, rel=0.05)
    locked = 2 * np.pi * np.sqrt(PEND_INERTIA_PIVOT / (PEND_MASS * G * PEND_COM))
    assert analytic < 0.9 * locked  # the two checks are distinct


@pytest.mark.parametrize("fidelity", FIDELITIES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_voltage_sign_turns_arm_the_same_way(
    envs: dict[str, FurutaSwingupEnv], fidelity: str, sign: float
) -> None:
    env = envs[fidelity]
    env.reset_to(_state(0.0, 0.0))
    for _ in range(10):
        _, _, _, _, info = env.step(np.array([0.5 * sign]))
    assert info["command"][0] == pytest.approx(0.5 * sign * env.robot.actuation.command_limit)
    q, v = env.true_joint_state()
    assert np.sign(q[0]) == sign and np.sign(v[0]) == sign


def _one_step_predictions(
    envs: dict[str, FurutaSwingupEnv], n: int = 300
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    states = np.column_stack(
        [
            rng.uniform(-1.5, 1.5, n),
            rng.uniform(-np.pi, np.pi, n),
            rng.uniform(-5.0, 5.0, n),
            rng.uniform(-15.0, 15.0, n),
        ]
    )
    actions = rng.uniform(-1.0, 1.0, (n, 1))
    out = {}
    for fidelity, env in envs.items():
        qs, vs = [], []
        for s, a in zip(states, actions, strict=True):
            env.reset_to(_state(*s))
            env.step(a)
            q, v = env.true_joint_state()
            qs.append(q)
            vs.append(v)
        out[fidelity] = (np.array(qs), np.array(vs))
    return out


def test_model_gap_is_real_and_smaller_than_the_large_gap(
    envs: dict[str, FurutaSwingupEnv],
) -> None:
    """One control step from the same (state, action): RMS error of the next joint velocities.

    Velocities carry the one-step dynamics; next positions differ only at O(dt^2).
    """
    pred = _one_step_predictions(envs)
    q_twin, v_twin = pred["twin"]

    def rms_v(fidelity: str) -> float:
        return float(np.sqrt(np.mean(np.sum((pred[fidelity][1] - v_twin) ** 2, axis=1))))

    gap, large_gap = rms_v("reduced"), rms_v("reduced_gap")
    assert gap > 1e-3  # the reduced model really is different
    assert np.abs(pred["reduced"][0] - q_twin).max() > 0.0
    assert gap < 0.5 * large_gap


def test_twin_observations_are_quantised_and_one_step_late(
    envs: dict[str, FurutaSwingupEnv],
) -> None:
    resolution = 2 * np.pi / 2048
    start = _state(0.3001, 0.1234, 1.0, -2.0)
    for fidelity in ("twin", "reduced"):
        env = envs[fidelity]
        env.reset_to(start)
        q0, v0 = env.true_joint_state()
        obs1, *_ = env.step(np.array([0.4]))
        q1, v1 = env.true_joint_state()
        obs2, *_ = env.step(np.array([0.4]))
        angles = np.arctan2(obs2[[0, 2]], obs2[[1, 3]])
        if fidelity == "twin":
            # obs after step 1 shows the start state, after step 2 the state after step 1
            np.testing.assert_allclose(obs1[4:] * VELOCITY_SCALE, v0, rtol=1e-6)
            np.testing.assert_allclose(obs2[4:] * VELOCITY_SCALE, v1, rtol=1e-6)
            np.testing.assert_allclose(angles, np.round(q1 / resolution) * resolution, atol=1e-6)
            assert not np.allclose(angles, q1, atol=1e-6)
        else:
            # the reduced model measures the present state exactly
            np.testing.assert_allclose(obs1[4:] * VELOCITY_SCALE, v1, rtol=1e-6)
            q2, _ = env.true_joint_state()
            np.testing.assert_allclose(angles, q2, atol=1e-6)
            assert np.abs(q2 / resolution - np.round(q2 / resolution)).max() > 1e-3


def test_reward_bounds_maximum_and_termination() -> None:
    task = FurutaSwingup()
    rng = np.random.default_rng(1)
    n = 5000
    q = np.column_stack([rng.uniform(-4, 4, n), rng.uniform(-10, 10, n)])
    v = rng.uniform(-100, 100, (n, 2))
    a = rng.uniform(-1.5, 1.5, (n, 1))
    r = task.reward(q, v, a, {})
    assert r.shape == (n,) and r.min() >= 0.0 and r.max() <= 1.0
    best = task.reward(
        np.array([[0.0, np.pi], [0.0, -np.pi]]), np.zeros((2, 2)), np.zeros((2, 1)), {}
    )
    np.testing.assert_allclose(best, 1.0)
    hanging = task.reward(np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 1)), {})
    np.testing.assert_allclose(hanging, 0.2)
    arm = np.array([[-2.31, 0.0], [-2.29, 0.0], [2.29, 0.0], [2.31, 3.0]])
    np.testing.assert_array_equal(task.terminated(arm, np.zeros((4, 2)), {}), [1, 0, 0, 1])
    obs = task.observe(np.array([[0.5, np.pi]]), np.array([[10.0, -20.0]]), {})
    assert obs.dtype == np.float32 and obs.shape == (1, task.obs_dim)
    np.testing.assert_allclose(obs[0], [np.sin(0.5), np.cos(0.5), 0.0, -1.0, 1.0, -2.0], atol=1e-6)


def test_env_terminates_when_arm_leaves_hard_limits(envs: dict[str, FurutaSwingupEnv]) -> None:
    env = envs["reduced"]
    env.reset_to(_state(2.2, 0.0, 5.0))
    flags = [env.step(np.ones(1))[2:4] for _ in range(25)]
    ended = [i for i, (terminated, _) in enumerate(flags) if terminated]
    assert not any(truncated for _, truncated in flags)
    assert ended and 0 < ended[0] < 24  # once the arm crossed 2.3 rad (it started at 2.2)


def _energy_pumping_action(obs: np.ndarray, command_limit: float) -> np.ndarray:
    """Swing-up by energy pumping (Astrom-Furuta) with a PD term keeping the arm centred."""
    mass, com, inertia = PEND_MASS, PEND_COM, PEND_INERTIA_PIVOT
    theta, alpha = np.arctan2(obs[0], obs[1]), np.arctan2(obs[2], obs[3])
    theta_dot, alpha_dot = obs[4:] * VELOCITY_SCALE
    energy = 0.5 * inertia * alpha_dot**2 + mass * G * com * (1 - np.cos(alpha))
    target = 1.5 * 2 * mass * G * com  # aim above the upright energy: losses, arm coupling
    volts = -5.0 * (target - energy) / (2 * mass * G * com) * np.sign(alpha_dot * np.cos(alpha))
    volts -= 10.0 * theta + 0.1 * theta_dot
    return np.clip([volts / command_limit], -1.0, 1.0)


@pytest.mark.parametrize("fidelity", ["twin", "reduced"])
def test_swing_up_is_feasible_within_the_voltage_limit(
    envs: dict[str, FurutaSwingupEnv], fidelity: str
) -> None:
    """From the env's reset distribution, a simple controller on the measured observations
    brings the pendulum within ~18 degrees of upright in under 3 s without the arm leaving its
    soft limits."""
    env = envs[fidelity]
    limit = env.robot.actuation.command_limit
    soft = env.robot.joint("arm").soft_limits
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        for _ in range(750):
            obs, _, terminated, _, _ = env.step(_energy_pumping_action(obs, limit))
            q, _ = env.true_joint_state()
            assert not terminated and soft.lower < q[0] < soft.upper
            if np.cos(q[1]) < -0.95:
                break
        else:
            pytest.fail(f"{fidelity} seed {seed}: pendulum not upright within 3 s at {limit} V")


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_gymnasium_make_and_check_env(fidelity: str) -> None:
    env = gym.make("mfpg/FurutaSwingup-v0", fidelity=fidelity)
    assert env.spec is not None and env.spec.max_episode_steps == FurutaSwingup.max_episode_steps
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs) and isinstance(info["state"], RobotState)
    env.close()
