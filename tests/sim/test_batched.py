"""The batched LF collector reproduces the per-env Gymnasium loop, closed loop."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sim  # noqa: F401  (registers the envs)
from sim.batched import BatchedCollector
from sim.starts import sample_start_state
from sim.state import RobotState
from sim.tasks.furuta import FurutaSwingup

FURUTA, ARM2 = "mfpg/FurutaSwingup-v0", "mfpg/Arm2Reach-v0"


def closed_loop_policy(obs: np.ndarray, t: int) -> np.ndarray:
    """A deterministic, obs-dependent, time-varying controller (any act_dim), sometimes > 1."""
    o = obs.astype(np.float64)
    w = np.sin(np.arange(1, o.shape[1] + 1) * (0.7 + 0.01 * t))
    u = 1.6 * np.tanh((o * w).sum(axis=1) + 0.5 * np.cos(0.05 * t))  # row-wise: batch-invariant
    return np.stack([u, -0.8 * u + 0.3 * o[:, 0]], axis=1)[:, : _ACT_DIM[o.shape[1]]]


_ACT_DIM = {6: 1, 10: 2}  # furuta obs 6 -> 1 action, arm2 obs 10 -> 2 actions


def per_env_loop(env_id, fidelity, q0, v0, task_state, horizon, act_fn):
    """Reference: RobotSimEnv.reset_to + step, one env at a time."""
    env = gym.make(env_id, fidelity=fidelity).unwrapped
    results = []
    for i in range(len(q0)):
        task = {k: x[i] for k, x in task_state.items()}
        obs, _ = env.reset_to(RobotState.from_arrays(env.joint_names, q0[i], v0[i], task))
        observations, rewards, terms = [obs], [], []
        for t in range(horizon):
            obs, reward, terminated, _, _ = env.step(act_fn(obs[None], t)[0])
            observations.append(obs)
            rewards.append(reward)
            terms.append(terminated)
            if terminated:
                break
        results.append((np.array(observations), np.array(rewards), np.array(terms)))
    return results


def near_limit_starts(collector, n, seed):
    """Sampled starts; env 0 starts by the arm's upper hard limit moving outwards."""
    q0, v0, task_state = collector.sample_starts(n, np.random.default_rng(seed))
    if collector.task.name == "FurutaSwingup":
        q0[0, 0], v0[0, 0] = collector.task.arm_upper - 0.05, 2.0
    return q0, v0, task_state


@pytest.mark.parametrize(
    ("env_id", "fidelity", "horizon"),
    [(FURUTA, "reduced", 60), (FURUTA, "twin", 40), (ARM2, "reduced", 60), (ARM2, "twin", 30)],
)
@pytest.mark.parametrize("nthread", [1, 2])
def test_matches_per_env_gymnasium_loop(env_id, fidelity, horizon, nthread):
    with BatchedCollector(env_id, fidelity=fidelity, n_envs=8, nthread=nthread) as col:
        q0, v0, task_state = near_limit_starts(col, 5, seed=3)
        out = col.run(q0, v0, task_state, horizon, closed_loop_policy)
    # Bitwise equal, constraints included (the batch keeps each copy's solver warmstart):
    # both twins have joint friction, a constraint active at every step.
    if fidelity == "twin":
        assert col.model.dof_frictionloss.any()
    atol = 0.0
    reference = per_env_loop(env_id, fidelity, q0, v0, task_state, horizon, closed_loop_policy)
    for i, (obs, rewards, terms) in enumerate(reference):
        steps = len(rewards)
        assert out.lengths[i] == steps
        np.testing.assert_allclose(out.obs[i, : steps + 1], obs, rtol=0, atol=atol)
        np.testing.assert_allclose(out.rewards[i, :steps], rewards, rtol=0, atol=atol)
        np.testing.assert_array_equal(out.terminated[i, :steps], terms)
    if env_id == FURUTA:  # the near-limit start really terminated, the others ran on
        assert out.lengths[0] < horizon and out.terminated[0, out.lengths[0] - 1]
        assert (out.lengths[1:] == horizon).all()


def test_termination_masks_later_steps():
    with BatchedCollector(FURUTA, n_envs=4, nthread=1) as col:
        q0, v0, task_state = near_limit_starts(col, 3, seed=0)
        # push env 0 (sin(arm) > 0.5) outwards, leave the others unactuated
        out = col.run(q0, v0, task_state, 80, lambda obs, t: (obs[:, :1] > 0.5) * 1.0)
    end = out.lengths[0]
    assert 0 < end < 80
    assert out.alive[0, :end].all() and not out.alive[0, end:].any()
    assert out.terminated[0].sum() == 1 and out.terminated[0, end - 1]
    for field in (out.rewards[0, end:], out.actions[0, end:], out.obs[0, end + 1 :],
                  out.q[0, end + 1 :], out.v[0, end + 1 :]):
        assert not field.any()
    assert out.alive[1:].all() and not out.terminated[1:].any()
    assert out.obs.dtype == np.float32 and out.obs.shape == (3, 81, 6)
    assert out.q.shape == out.v.shape == (3, 81, 2) and out.rewards.shape == (3, 80)


def test_all_terminated_stops_early_with_full_shapes():
    calls = []

    def push_outwards(obs, t):
        calls.append(t)
        return np.sign(obs[:, :1])  # obs[:, 0] = sin(arm angle)

    with BatchedCollector(FURUTA, n_envs=2, nthread=1) as col:
        q0 = np.array([[2.25, 0.0], [-2.25, 0.0]])
        v0 = np.array([[3.0, 0.0], [-3.0, 0.0]])
        out = col.run(q0, v0, {}, 500, push_outwards)
    assert out.rewards.shape == (2, 500) and out.obs.shape == (2, 501, 6)
    assert (out.lengths < 20).all() and out.terminated.sum() == 2
    assert len(calls) == out.lengths.max()


def test_actions_are_recorded_before_clipping_and_clipped_for_physics():
    with BatchedCollector(FURUTA, n_envs=2, nthread=1) as col:
        q0, v0, ts = col.sample_starts(2, np.random.default_rng(1))
        big = col.run(q0, v0, ts, 20, lambda obs, t: np.full((len(obs), 1), 3.0))
        one = col.run(q0, v0, ts, 20, lambda obs, t: np.full((len(obs), 1), 1.0))
    assert (big.actions == 3.0).all()
    np.testing.assert_array_equal(big.obs, one.obs)
    np.testing.assert_array_equal(big.rewards, one.rewards)


def test_sample_starts_uses_the_env_start_distribution():
    with BatchedCollector(ARM2, n_envs=4, nthread=1) as col:
        q0, v0, ts = col.sample_starts(4, np.random.default_rng(11))
        rng = np.random.default_rng(11)
        for i in range(4):
            q, v, task = sample_start_state(col.robot, col.task, rng)
            np.testing.assert_array_equal(q0[i], q)
            np.testing.assert_array_equal(v0[i], v)
            np.testing.assert_array_equal(ts["target"][i], task["target"])
    env = gym.make(ARM2, fidelity="reduced").unwrapped
    _, info = env.reset(seed=11)
    assert info["state"] == RobotState.from_arrays(env.joint_names, q0[0], v0[0],
                                                   {"target": ts["target"][0]})


def test_batch_states_matches_joints_by_name():
    with BatchedCollector(FURUTA, n_envs=2, nthread=1) as col:
        states = [RobotState({"pendulum": 0.5, "arm": 0.1}, {"pendulum": -1.0, "arm": 2.0})]
        q0, v0, ts = col.batch_states(states)
    np.testing.assert_array_equal(q0, [[0.1, 0.5]])
    np.testing.assert_array_equal(v0, [[2.0, -1.0]])
    assert ts == {}


def test_accepts_a_task_robot_pair_and_smaller_batches():
    with BatchedCollector((FurutaSwingup(), None), n_envs=4, nthread=2) as col:
        for n in (1, 4):
            q0, v0, ts = col.sample_starts(n, np.random.default_rng(n))
            assert col.run(q0, v0, ts, 3, closed_loop_policy).obs.shape == (n, 4, 6)


@pytest.fixture(scope="module")
def arm2_collector():
    with BatchedCollector(ARM2, n_envs=3, nthread=1) as col:
        yield col


def _zero(obs, t):
    return np.zeros((len(obs), 2))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "q0": np.zeros((3, 3))}, r"q0 must have shape \(N, 2\)"),
        (lambda a: {**a, "q0": np.zeros(2)}, r"q0 must have shape \(N, 2\)"),
        (lambda a: {**a, "v0": np.zeros((2, 2))}, "v0 must have the shape of q0"),
        (lambda a: {**a, "q0": np.full((3, 2), np.nan)}, "must be finite"),
        (lambda a: {**a, "q0": np.zeros((4, 2)), "v0": np.zeros((4, 2))}, "n_envs=3"),
        (lambda a: {**a, "task_state": {}}, r"task_state must be a dict with keys \['target'\]"),
        (lambda a: {**a, "task_state": {"target": np.zeros((3, 3))}}, r"shape \(3, 2\)"),
        (lambda a: {**a, "horizon": 0}, "horizon must be a positive integer"),
        (lambda a: {**a, "act_fn": lambda obs, t: np.zeros((3, 1))}, r"expected \(N, act_dim\)"),
        (lambda a: {**a, "act_fn": lambda obs, t: np.full((3, 2), np.inf)}, "non-finite"),
        (lambda a: {**a, "act_fn": None}, "act_fn must be callable"),
    ],
)
def test_bad_inputs_give_clear_errors(arm2_collector, change, message):
    args = {"q0": np.zeros((3, 2)), "v0": np.zeros((3, 2)),
            "task_state": {"target": np.tile([0.1, 0.4], (3, 1))}, "horizon": 5, "act_fn": _zero}
    with pytest.raises((ValueError, TypeError), match=message):
        arm2_collector.run(**change(args))


def test_bad_construction_and_use_after_close():
    with pytest.raises(TypeError, match="registered env id or a"):
        BatchedCollector(42)
    with pytest.raises(ValueError, match="n_envs must be a positive integer"):
        BatchedCollector(FURUTA, n_envs=0)
    with pytest.raises(ValueError, match="nthread must be a positive integer"):
        BatchedCollector(FURUTA, nthread=0)
    col = BatchedCollector(FURUTA, n_envs=1, nthread=1)
    with pytest.raises(TypeError, match="numpy Generator"):
        col.sample_starts(1, 0)
    col.close()
    assert col.closed
    with pytest.raises(RuntimeError, match="collector is closed"):
        col.run(np.zeros((1, 2)), np.zeros((1, 2)), {}, 1, lambda obs, t: np.zeros((1, 1)))
