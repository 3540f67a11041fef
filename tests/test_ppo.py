"""PPO: GAE, truncation bootstrap, rollout records, surrogate, reproducibility, checkpoints,
and a learning signal on the Furuta swing-up (reduced model)."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from mfpg_robot.algos import make_algorithm
from mfpg_robot.algos.ppo import PPO, clipped_surrogate, value_loss
from mfpg_robot.buffer import HFCollector, RolloutBuffer
from mfpg_robot.cli import main
from mfpg_robot.config import validate_train_config
from mfpg_robot.gae import compute_gae
from mfpg_robot.reward_norm import RewardScaler
from mfpg_robot.run_dir import load_checkpoint, policy_from_checkpoint
from mfpg_robot.train import train
from sim.robot_config import REPO_ROOT
from sim.state import RobotState

FURUTA = "mfpg/FurutaSwingup-v0"


def _cfg(tmp_path: Path, seed: int = 0, algo: dict | None = None, hf: dict | None = None,
         run: dict | None = None):
    return validate_train_config({
        "seed": seed,
        "algo": {"name": "ppo", "update_epochs": 2, "num_minibatches": 4, **(algo or {})},
        "hf": {"env": FURUTA, "fidelity": "reduced", "steps_per_iter": 256,
               "total_steps": 512, **(hf or {})},
        "run": {"dir": str(tmp_path / f"run{seed}"), "progress": False, **(run or {})},
    }, "test")


# -- GAE ------------------------------------------------------------------------------------
def test_gae_matches_hand_computation() -> None:
    g, lam = 0.9, 0.5
    r = np.array([1.0, 2.0, 3.0])
    v = np.array([0.5, 1.0, 1.5])
    nv = np.array([1.0, 1.5, 2.0])  # continuing rollout: next_values[t] = values[t+1]
    no = np.zeros(3, dtype=bool)
    adv, ret = compute_gae(r, v, nv, no, no, g, lam)
    d = r + g * nv - v  # deltas 1.4, 2.35, 3.3
    a2 = d[2]
    a1 = d[1] + g * lam * a2
    a0 = d[0] + g * lam * a1
    np.testing.assert_allclose(adv, [a0, a1, a2])
    np.testing.assert_allclose(ret, adv + v)
    np.testing.assert_allclose(adv, [1.4 + 0.45 * (2.35 + 0.45 * 3.3), 2.35 + 0.45 * 3.3, 3.3])


def test_gae_termination_and_truncation() -> None:
    g, lam = 0.9, 0.8
    r = np.ones(4)
    v = np.full(4, 2.0)
    nv = np.array([2.0, 7.0, 2.0, 5.0])  # row 1 ends an episode with final-obs value 7
    end = np.array([False, True, False, False])
    # terminated at row 1: no bootstrap, recursion cut
    adv, _ = compute_gae(r, v, nv, end, end, g, lam)
    assert adv[1] == pytest.approx(1.0 - 2.0)
    assert adv[0] == pytest.approx((1 + g * 2 - 2) + g * lam * adv[1])
    # truncated at row 1: bootstrapped from the final observation's value, recursion cut
    adv_t, ret_t = compute_gae(r, v, nv, np.zeros(4, bool), end, g, lam)
    assert adv_t[1] == pytest.approx(1.0 + g * 7.0 - 2.0)
    assert ret_t[1] == pytest.approx(1.0 + g * 7.0)
    assert adv_t[0] == pytest.approx((1 + g * 2 - 2) + g * lam * adv_t[1])
    # the last row bootstraps from next_values[-1]; rows 2-3 don't see rows 0-1
    assert adv_t[3] == pytest.approx(1 + g * 5 - 2)
    assert adv_t[2] == pytest.approx((1 + g * 2 - 2) + g * lam * adv_t[3])


def test_gae_lambda_one_gives_monte_carlo_returns() -> None:
    r = np.array([1.0, 2.0, 3.0, 4.0])
    term = np.array([False, False, True, False])
    _, ret = compute_gae(r, np.zeros(4), np.array([0, 0, 0, 10.0]), term, term, 0.5, 1.0)
    np.testing.assert_allclose(ret, [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3, 4 + 0.5 * 10])


def test_gae_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="values must have shape"):
        compute_gae(np.ones(3), np.ones(2), np.ones(3), np.zeros(3), np.zeros(3), 0.9, 0.9)


# -- losses ---------------------------------------------------------------------------------
def test_clipped_surrogate_per_sample() -> None:
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.5]))
    adv = torch.tensor([1.0, 1.0, -2.0, -2.0])
    f = clipped_surrogate(new, old, adv, 0.2)
    # A>0: min(r, 1.2) A; A<0: max(r, 0.8) A
    torch.testing.assert_close(f, torch.tensor([1.2, 0.5, -2.2, -1.6]))


def test_value_loss_clipping() -> None:
    new, old, ret = torch.tensor([3.0]), torch.tensor([1.0]), torch.tensor([4.0])
    assert float(value_loss(new, old, ret, 0.2, clip=False)) == pytest.approx(0.5)
    # clipped prediction 1.2 is further from 4: max(1, 7.84) / 2
    assert float(value_loss(new, old, ret, 0.2, clip=True)) == pytest.approx(0.5 * 2.8**2)


def test_reward_scaler_matches_gymnasium_normalize_reward() -> None:
    rewards = np.random.default_rng(0).normal(1.0, 2.0, 300)
    ours = RewardScaler(0.99, clip=1e9).update_scale(rewards, np.zeros(300, dtype=bool))
    env = gym.wrappers.NormalizeReward(_RewardReplay(rewards), gamma=0.99)
    env.reset(seed=0)
    theirs = [env.step(np.zeros(1))[1] for _ in range(300)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)


def test_reward_scaler_restarts_the_return_after_an_episode_end() -> None:
    scaler = RewardScaler(0.5)
    scaler.update_scale(np.array([4.0, 4.0]), np.array([False, True]))
    assert scaler.discounted == 0.0
    scaler.update_scale(np.array([2.0]), np.array([False]))
    assert scaler.discounted == 2.0
    frozen = scaler.state_dict()
    np.testing.assert_allclose(scaler.scale(np.array([1.0, 100.0])),
                               [1 / np.sqrt(frozen["var"] + 1e-8), 10.0])
    assert scaler.state_dict() == frozen  # `scale` does not update


class _RewardReplay(gym.Env):
    """Emits a fixed reward sequence (for comparing reward normalisers)."""

    observation_space = gym.spaces.Box(-1, 1, (1,))
    action_space = gym.spaces.Box(-1, 1, (1,))

    def __init__(self, rewards: np.ndarray) -> None:
        self.rewards, self.t = rewards, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), float(self.rewards[self.t - 1]), False, False, {}


# -- rollouts -------------------------------------------------------------------------------
def test_collector_records_truncation_and_final_obs() -> None:
    env = gym.make("Pendulum-v1")  # 200-step time limit, never terminates
    cfg = validate_train_config({"seed": 0, "algo": {"name": "ppo"},
                                 "hf": {"env": "Pendulum-v1", "fidelity": None,
                                        "total_steps": 4096}}, "t")
    algo = make_algorithm(cfg, 3, 1)
    buf = HFCollector(env, algo.policy, np.random.default_rng(0), seed=0).collect(450)
    assert buf.states is None and buf.episode_start_states() == []
    assert np.flatnonzero(buf.truncated).tolist() == [199, 399]
    assert not buf.terminated.any()
    assert np.flatnonzero(buf.episode_start).tolist() == [0, 200, 400]
    # next_obs of a truncated row is the final observation, not the reset observation
    assert not np.allclose(buf.next_obs[199], buf.obs[200])
    np.testing.assert_array_equal(buf.next_obs[:199], buf.obs[1:200])
    assert buf.episode_lengths == [200, 200] and len(buf.episode_returns) == 2
    np.testing.assert_allclose(buf.episode_returns[0], buf.rewards[:200].sum())


def test_truncated_rows_are_bootstrapped_in_ppo_targets() -> None:
    cfg = validate_train_config({"seed": 0, "algo": {"name": "ppo", "norm_reward": False},
                                 "hf": {"env": "Pendulum-v1", "fidelity": None,
                                        "total_steps": 4096}}, "t")
    algo = PPO(cfg, 3, 1)
    env = gym.make("Pendulum-v1")
    buf = HFCollector(env, algo.policy, np.random.default_rng(0), seed=0).collect(256)
    with torch.no_grad():
        torch.nn.init.constant_(algo.critic.v[-1].bias, 5.0)  # make V clearly non-zero
    batch = algo.prepare(buf)
    with torch.no_grad():
        v_final = float(algo.critic(torch.as_tensor(buf.next_obs[199:200])))
        v_199 = float(algo.critic(torch.as_tensor(buf.obs[199:200])))
    expected = buf.rewards[199] + 0.99 * v_final - v_199
    assert float(batch.advantages[199]) == pytest.approx(expected, rel=1e-4)


def test_furuta_rollout_records_states_noise_and_logprobs() -> None:
    env = gym.make(FURUTA, fidelity="reduced")
    cfg = validate_train_config({"seed": 0, "algo": {"name": "ppo"},
                                 "hf": {"env": FURUTA, "fidelity": "reduced",
                                        "total_steps": 4096}}, "t")
    algo = PPO(cfg, 6, 1)
    buf = HFCollector(env, algo.policy, np.random.default_rng(3), seed=3).collect(300)
    assert isinstance(buf, RolloutBuffer) and len(buf) == 300
    assert len(buf.states) == 300 and isinstance(buf.states[0], RobotState)
    starts = buf.episode_start_states()
    assert starts[0][0] == 0 and all(buf.episode_start[t] for t, _ in starts)
    q, _ = starts[0][1].arrays(("arm", "pendulum"))
    assert abs(q[1]) < 0.5  # pendulum starts near hanging
    np.testing.assert_array_equal(buf.eps, np.random.default_rng(3).standard_normal((300, 1)))
    # recorded log-probs are the policy's log-probs of the recorded actions (PPO ratio = 1)
    with torch.no_grad():
        mu = algo.policy.mean(torch.as_tensor(buf.obs)).numpy()
        logp = algo.policy.log_prob(torch.as_tensor(buf.obs), torch.as_tensor(buf.actions))
    np.testing.assert_allclose(buf.actions, mu + algo.policy.std().detach().numpy() * buf.eps,
                               atol=1e-5)
    np.testing.assert_allclose(logp.numpy(), buf.logprobs, atol=1e-4)


# -- runs -----------------------------------------------------------------------------------
def _params(policy) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in policy.state_dict().values()])


def test_same_seed_same_parameters_and_different_seed_differs(tmp_path: Path) -> None:
    a = train(_cfg(tmp_path / "a", seed=7))
    b = train(_cfg(tmp_path / "b", seed=7))
    c = train(_cfg(tmp_path / "c", seed=8))
    assert torch.equal(_params(a.policy), _params(b.policy))
    assert torch.equal(_params(a.critic), _params(b.critic))
    assert not torch.equal(_params(a.policy), _params(c.policy))
    assert [r["return_recent"] for r in a.history] == [r["return_recent"] for r in b.history]


def test_run_folder_and_checkpoint_round_trip(tmp_path: Path) -> None:
    res = train(_cfg(tmp_path, hf={"total_steps": 768}, run={"checkpoint_every": 1}))
    run = res.run_dir
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["hf_steps"] for r in rows] == [256, 512, 768]
    for key in ("return_mean", "loss/policy", "loss/value", "approx_kl", "lr", "time_s"):
        assert key in rows[-1]
    assert rows[0]["lr"] > rows[-1]["lr"] > 0  # annealed
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["final.pt", "iter_000000.pt", "iter_000001.pt", "iter_000002.pt",
                     "iter_000003.pt"]
    assert not list(run.rglob("*.tmp"))

    ckpt = load_checkpoint(res.checkpoint)
    policy = policy_from_checkpoint(ckpt)
    assert policy.obs_norm.count > 700  # the statistics are in the checkpoint
    for name in ("mean", "var", "count"):
        assert torch.equal(getattr(policy.obs_norm, name), getattr(res.policy.obs_norm, name))
    obs = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    eps = np.random.default_rng(1).normal(size=(16, 1))
    np.testing.assert_array_equal(policy.act(obs, eps), res.policy.act(obs, eps))

    with pytest.raises(FileExistsError, match="already holds a run"):
        train(_cfg(tmp_path))  # same run.dir again


def test_accelerator_is_wired_and_logged(tmp_path: Path) -> None:
    res = train(_cfg(tmp_path, algo={"accel": "optimistic", "accel_options": {"optimism": 0.5}}))
    assert res.algorithm.accelerator.name == "optimistic"
    assert res.history[-1]["accel/optimism"] == pytest.approx(0.5)


def test_target_kl_stops_epochs_early(tmp_path: Path) -> None:
    res = train(_cfg(tmp_path, algo={"target_kl": 1e-9, "num_minibatches": 4}))
    assert all(r["grad_steps"] == 4 for r in res.history)  # one epoch, then stop


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppo_improves_furuta_reduced_return(tmp_path: Path, seed: int) -> None:
    """Six iterations of 2048 steps (~12 episodes): the arm stops hitting its limits.

    The first iteration's episodes are the initial policy's (its noise drives the arm into
    the hard limits: return ~60-110); by the last two iterations the return is ~165-195.
    """
    cfg = _cfg(tmp_path, seed=seed,
               algo={"lr": 1e-3, "update_epochs": 5, "num_minibatches": 4},
               hf={"steps_per_iter": 2048, "total_steps": 6 * 2048},
               run={"checkpoint_every": 0})
    hist = train(cfg).history
    initial = hist[0]["return_mean"]
    final = np.mean([r["return_mean"] for r in hist[-2:]])
    assert final > initial + 40, [round(r["return_mean"], 1) for r in hist]
    assert final > 140


def test_train_cli_runs_a_config_file_with_overrides(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "cli_run"
    code = main(["train", str(REPO_ROOT / "configs" / "train" / "ppo_furuta.yaml"),
                 "--set", "hf.fidelity=reduced", "--set", "hf.steps_per_iter=256",
                 "--set", "hf.total_steps=256", "--set", "algo.update_epochs=1",
                 "--set", "algo.num_minibatches=2", "--set", "run.progress=false",
                 "--set", f"run.dir={run_dir}"])
    assert code == 0
    assert f"run folder: {run_dir}" in capsys.readouterr().out
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["hf"]["total_steps"] == 256 and saved["algo"]["num_minibatches"] == 2
    assert (run_dir / "checkpoints" / "final.pt").is_file()


def test_interrupt_saves_a_checkpoint(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    original = HFCollector.collect

    def collect_then_interrupt(self, n_steps):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, n_steps)

    monkeypatch.setattr(HFCollector, "collect", collect_then_interrupt)
    cfg = _cfg(tmp_path, run={"checkpoint_every": 0})
    with pytest.raises(KeyboardInterrupt, match="resume with: mfpg-robot train --resume"):
        train(cfg)
    ckpt = load_checkpoint(Path(cfg.run.dir) / "checkpoints" / "iter_000001.pt")
    assert ckpt["iteration"] == 1 and ckpt["hf_steps"] == 256
