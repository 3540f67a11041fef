"""MF-PPO / MF-REINFORCE on plain Gymnasium MuJoCo envs (the MFPG paper's off-dynamics
setting): HF = `InvertedPendulum-v5` with gravity x2 (`benchmarks.offdynamics`), LF = the stock
env, simulated by `sim.gym_collector.GymCollector`. Real MuJoCo and Gymnasium throughout."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from benchmarks import offdynamics
from mfpg_robot.buffer import HFCollector
from mfpg_robot.config import ConfigError, TrainConfig, validate_train_config
from mfpg_robot.pairing import EpisodePairing
from mfpg_robot.pg_variance import hf_advantages, mf_trial, zero_value
from mfpg_robot.policy import GaussianPolicy
from mfpg_robot.train import train
from sim.gym_collector import GymCollector

LF = "InvertedPendulum-v5"
HF = offdynamics.env_id(LF, "gravity_x2")
GAMMA = 0.99

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("env_id", [HF, offdynamics.env_id("Hopper-v5", "joints_narrow")])
def test_collector_reproduces_the_per_env_gymnasium_loop(env_id: str) -> None:
    """Closed loop from the states `env.reset(seed)` gives: obs, rewards, terminations and
    states bitwise those of the env's own step loop (Hopper: contacts and joint limits). Rows
    0-1 stay up for the whole horizon (pendulum: a balancing feedback; Hopper: no action),
    rows 2-3 fall (no feedback; noisy actions)."""
    n, horizon = 4, 120
    env = gym.make(env_id)
    act_dim = env.action_space.shape[0]
    noise = np.random.default_rng(0).standard_normal((n, horizon, act_dim))
    up = np.array([1.0, 1.0, 0.0, 0.0])[:, None]

    def act(obs: np.ndarray, t: int) -> np.ndarray:
        if act_dim == 1:  # (x, theta, xdot, thetadot) -> force
            gain = np.array([[1.0], [12.0], [1.0], [2.0]])
            return up * (obs.astype(np.float64) @ gain) + 0.3 * noise[:, t]
        return 0.3 * (1.0 - up) * noise[:, t]

    with GymCollector(env_id, n_envs=n) as collector:
        q0, v0, task = collector.sample_starts(n, np.random.default_rng(0))
        for i in range(n):  # the starts `env.reset(seed=i)` draws
            env.reset(seed=i)
            q0[i], v0[i] = env.unwrapped.data.qpos, env.unwrapped.data.qvel
        out = collector.run(q0, v0, task, horizon, act)
    assert task == {}
    for i in range(n):
        obs, _ = env.reset(seed=i)
        observed, rewards, terms, qs = [obs], [], [], [env.unwrapped.data.qpos.copy()]
        for t in range(horizon):
            a = act(np.repeat(np.float32(observed[-1])[None], n, axis=0), t)[i]
            obs, r, term, trunc, _ = env.step(a)
            observed.append(obs)
            rewards.append(r)
            terms.append(term)
            qs.append(env.unwrapped.data.qpos.copy())
            if term or trunc:
                break
        steps = len(rewards)
        assert out.lengths[i] == steps
        np.testing.assert_array_equal(out.obs[i, : steps + 1], np.float32(observed))
        np.testing.assert_array_equal(out.rewards[i, :steps], rewards)
        np.testing.assert_array_equal(out.terminated[i, :steps], terms)
        np.testing.assert_array_equal(out.q[i, : steps + 1], qs)
        assert not out.alive[i, steps:].any() and not out.rewards[i, steps:].any()
    np.testing.assert_array_equal(out.alive[:, -1], [True, True, False, False])


def test_starts_follow_the_env_reset_distribution() -> None:
    """`sample_starts` draws what `env.reset` draws from the same generator."""
    env = gym.make(LF)
    with GymCollector(LF, n_envs=1) as collector:
        for seed in range(3):
            q, v, _ = collector.sample_starts(1, np.random.default_rng(seed))
            env.reset(seed=seed)
            np.testing.assert_array_equal(q[0], env.unwrapped.data.qpos)
            np.testing.assert_array_equal(v[0], env.unwrapped.data.qvel)


def test_hf_rollouts_record_the_measured_mujoco_state() -> None:
    """The trainer's HF collector records qpos and qvel by joint name at every row (the
    pendulum's observation is that state), episode starts included."""
    torch.manual_seed(0)
    collector = HFCollector(gym.make(HF), GaussianPolicy(4, 1), np.random.default_rng(0), 0)
    buf = collector.collect(60)
    assert buf.states is not None and len(buf.states) == 60 and buf.episode_start.sum() >= 2
    assert set(buf.states[0].positions) == {"slider", "hinge"}
    for t in range(60):
        q, v = buf.states[t].arrays(("slider", "hinge"))
        np.testing.assert_array_equal(np.float32(np.concatenate([q, v])), buf.obs[t])


def test_episode_pairing_correction_is_unbiased() -> None:
    """The trainer's path (HF collector rollouts of 100 rows with fragments, the horizon rule,
    the pool from the LF env's reset distribution): the correction's mean over 40 batches is
    within a few standard errors of 0, in the LF advantages and in the gradient along random
    directions; a pool started tilted by 0.1 rad gives a correction far from 0."""
    torch.manual_seed(0)
    policy = GaussianPolicy(4, 1)
    with torch.no_grad():
        policy.log_std.fill_(-1.0)
    with GymCollector(LF, n_envs=4096) as lf:
        def tilted(n: int, rng: np.random.Generator):
            q, v, task = lf.sample_starts(n, rng)
            q[:, 1] += 0.1
            return q, v, task

        pairings = {"matched": EpisodePairing(lf, 8, 1000, GAMMA, 1.0),
                    "tilted": EpisodePairing(lf, 8, 1000, GAMMA, 1.0, pool_starts=tilted)}
        hf = HFCollector(gym.make(HF), policy, np.random.default_rng(1), seed=1)
        rng = np.random.default_rng(2)
        dirs = np.random.default_rng(3).standard_normal(
            (4, sum(p.numel() for p in policy.parameters())))
        adv_sums: dict[str, list[float]] = {k: [] for k in pairings}
        grads: dict[str, list[np.ndarray]] = {k: [] for k in pairings}
        rhos = []
        for _ in range(40):
            buf = hf.collect(100)
            adv = hf_advantages(buf, zero_value, GAMMA)
            for name, pairing in pairings.items():
                s = pairing.collect(buf, policy, zero_value, lambda r: r, rng)
                adv_sums[name].append(s.paired.advantages.sum()
                                      - s.ref.advantages.sum() / s.ref_per_paired)
                trial = mf_trial(policy, buf, s, adv)
                grads[name].append(dirs @ trial.delta)
                if name == "matched":
                    rhos.append(trial.moments.rho)

    def z(x: list) -> np.ndarray:
        x = np.asarray(x)
        return x.mean(axis=0) / (x.std(axis=0, ddof=1) / np.sqrt(len(x)))

    assert abs(z(adv_sums["matched"])) < 3.5
    assert np.all(np.abs(z(grads["matched"])) < 3.5)
    assert abs(z(adv_sums["tilted"])) > 5
    assert np.abs(z(grads["tilted"])).max() > 4
    assert np.mean(rhos) > 0.5  # the stock model is a useful control variate here


def tiny_config(algo: str, run_dir: Path, **lf) -> TrainConfig:
    return validate_train_config({
        "seed": 0,
        "algo": {"name": algo, "num_minibatches": 4, "update_epochs": 2},
        "hf": {"env": HF, "fidelity": None, "steps_per_iter": 256, "total_steps": 512},
        "lf": {"env": LF, "pairing": "episode", "lf_pool_per_hf": 4, **lf},
        "run": {"dir": str(run_dir), "progress": False, "checkpoint_every": 0},
    }, "test")


@pytest.mark.parametrize("algo", ["mfppo", "mfreinforce"])
def test_mf_trains_on_the_off_dynamics_pendulum(tmp_path: Path, algo: str) -> None:
    result = train(tiny_config(algo, tmp_path / "run"))
    assert isinstance(result.algorithm.lf.collector, GymCollector)
    assert result.algorithm.lf.collector.closed
    rows = result.history
    assert len(rows) == 2
    for row in rows:
        assert row["mf/rho"] > 0.2, row["mf/rho"]
        assert all(np.isfinite(row[k]) for k in ("loss/policy", "loss/value", "lf/critic_loss"))
        assert row["hf/samples"] == 256 and row["lf/samples"] > 256
    assert rows[1]["mf/c"] > 0


def test_synced_pairing_runs_on_a_gym_env(tmp_path: Path) -> None:
    rows = train(tiny_config("mfppo", tmp_path / "run", pairing="synced", k=4, M=2)).history
    assert rows[-1]["lf/samples"] == 256 * 3 and rows[-1]["mf/rho"] > 0


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_train_config(data, "cfg.yaml")
    return str(info.value)


@pytest.mark.parametrize(("lf", "says"), [
    ({"env": "Hopper-v5"}, "lf.env 'Hopper-v5' has joints ['rootx', 'rootz', 'rooty', "),
    ({"env": "Pendulum-v1"}, "lf.env: 'Pendulum-v1' is a PendulumEnv, not a Gymnasium MuJoCo"),
    ({"env": "Ant-v5"}, "lf.env: 'Ant-v5' has free or ball joints (root)"),
    ({"env": "mfpg/FurutaSwingup-v0"}, "hf.env: '" + HF + "' is a plain Gymnasium env (it "),
    ({"env": LF, "backend": "ray"}, "lf.backend: ray runs mfpg envs only"),
])
def test_mf_on_gym_envs_of_another_layout_is_refused(lf: dict, says: str) -> None:
    data = {"seed": 0, "algo": {"name": "mfppo"},
            "hf": {"env": HF, "fidelity": None, "total_steps": 4096}, "lf": lf}
    message = _error(data)
    assert says in message and "cfg.yaml" in message


def test_mf_on_gym_envs_of_one_layout_is_accepted() -> None:
    for lf in (LF, HF, offdynamics.env_id(LF, "joints_narrow")):
        cfg = validate_train_config({
            "seed": 0, "algo": {"name": "mfreinforce"},
            "hf": {"env": HF, "fidelity": None, "total_steps": 4096}, "lf": {"env": lf}}, "t")
        assert cfg.lf.env == lf


def test_collector_refuses_envs_it_cannot_pair() -> None:
    with pytest.raises(TypeError, match="not a Gymnasium MuJoCo env"):
        GymCollector("Pendulum-v1")
    with pytest.raises(ValueError, match="free or ball joints"):
        GymCollector("Ant-v5")
    with GymCollector(LF, n_envs=2) as collector:
        q, v, task = collector.sample_starts(3, np.random.default_rng(0))
        with pytest.raises(ValueError, match=r"batch size N=3 must be in \[1, n_envs=2\]"):
            collector.run(q, v, task, 5, lambda obs, t: np.zeros((3, 1)))
        with pytest.raises(ValueError, match="no task variables"):
            collector.run(q[:2], v[:2], {"goal": np.zeros((2, 2))}, 5,
                          lambda obs, t: np.zeros((2, 1)))
