"""HF/LF pairing on the Furuta pendulum: HF = twin, LF = reduced."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import sim  # noqa: F401  (registers the envs)
from mfpg_robot.buffer import HFCollector, RolloutBuffer
from mfpg_robot.gae import compute_gae
from mfpg_robot.pairing import EpisodePairing, SyncedPairing, rollout_gae
from mfpg_robot.pg_variance import simulate_hf_buffer, zero_value
from mfpg_robot.policy import GaussianPolicy
from sim.batched import BatchedCollector

ENV = "mfpg/FurutaSwingup-v0"
GAMMA = 0.99


def identity(r: np.ndarray) -> np.ndarray:
    return r


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def policy() -> GaussianPolicy:
    torch.manual_seed(0)
    return GaussianPolicy(6, 1)


@pytest.fixture(scope="module")
def lf_collector():
    with BatchedCollector(ENV, fidelity="reduced", n_envs=1024, nthread=1) as col:
        yield col


@pytest.fixture(scope="module")
def hf_buffer(policy: GaussianPolicy) -> RolloutBuffer:
    """75 rows of the trainer's HF collector on the twin, 30-step episodes: the rollout starts
    mid-way (rows 0-14 continue an earlier episode), then two episodes start."""
    env = gym.make(ENV, fidelity="twin", max_episode_steps=30)
    collector = HFCollector(env, policy, np.random.default_rng(1), seed=1)
    collector.collect(15)
    return collector.collect(75)


def test_rollout_gae_matches_flat_gae() -> None:
    rng = np.random.default_rng(0)
    n, h = 5, 7
    lengths = np.array([7, 3, 5, 1, 7])
    valid = np.arange(h)[None, :] < lengths[:, None]
    terminated = np.zeros((n, h), dtype=bool)
    terminated[1, 2] = terminated[4, 6] = True  # rows 1 and 4 terminate, the others are cut
    rewards, values = rng.standard_normal((n, h)), rng.standard_normal((n, h + 1))
    adv = rollout_gae(rewards, values, terminated, valid, GAMMA, 0.9)
    for i in range(n):
        m = lengths[i]
        end = np.zeros(m, dtype=bool)
        end[-1] = True
        ref, _ = compute_gae(rewards[i, :m], values[i, :m], values[i, 1 : m + 1],
                             terminated[i, :m], end, GAMMA, 0.9)
        np.testing.assert_allclose(adv[i, :m], ref, atol=1e-12)
        assert np.all(adv[i, m:] == 0)


def test_synced_pairs_replay_the_hf_step(policy, lf_collector, hf_buffer) -> None:
    k, m = 6, 3
    pairing = SyncedPairing(lf_collector, k, m, GAMMA, 0.95)
    lf = pairing.collect(hf_buffer, policy, zero_value, identity, np.random.default_rng(2))
    n = len(hf_buffer)
    assert np.array_equal(lf.partner, np.arange(n)) and lf.n_pairs == n
    assert np.array_equal(lf.ref.anchor, np.repeat(np.arange(n), m))
    # the LF segment starts from the measured HF state: same observation, same first action
    np.testing.assert_allclose(lf.paired.obs, hf_buffer.obs, atol=1e-6)
    np.testing.assert_allclose(lf.paired.actions, hf_buffer.actions, atol=1e-5)
    np.testing.assert_allclose(lf.paired.logprobs, hf_buffer.logprobs, atol=1e-9)
    # reference draws from the same state use fresh noise
    np.testing.assert_allclose(lf.ref.obs, np.repeat(hf_buffer.obs, m, axis=0), atol=1e-6)
    assert np.abs(lf.ref.actions - np.repeat(hf_buffer.actions, m, axis=0)).min() > 0
    assert lf.lf_steps == n * (m + 1) * k  # no LF termination in 6 steps from these states


def test_synced_noise_windows_stop_at_episode_ends(lf_collector, hf_buffer) -> None:
    k = 6
    win = SyncedPairing(lf_collector, k, 2, GAMMA, 0.95).hf_noise_windows(
        hf_buffer, np.random.default_rng(3))
    first_start = int(np.flatnonzero(hf_buffer.episode_start)[1])  # second episode in the buffer
    t = first_start - 2  # two steps before an episode boundary
    np.testing.assert_array_equal(win[t, :2], hf_buffer.eps[t : t + 2])
    assert not np.any(np.isclose(win[t, 2:], hf_buffer.eps[t + 2 : t + k]))
    np.testing.assert_array_equal(win[first_start], hf_buffer.eps[first_start : first_start + k])
    last = len(hf_buffer) - 1  # past the rollout's end: fresh noise
    np.testing.assert_array_equal(win[last, 0], hf_buffer.eps[last])


def _check_episode_pairs(buffer: RolloutBuffer, lf, policy: GaussianPolicy) -> None:
    """Every HF row has exactly one LF partner, which replays its noise, and the LF episode
    of every HF episode with rows here starts at the HF state of its first row here."""
    pair = lf.partner >= 0
    assert sorted(lf.partner[pair]) == list(range(len(buffer)))
    first = np.flatnonzero(buffer.episode_start | (np.arange(len(buffer)) == 0))
    for s in first:
        j = np.flatnonzero(lf.partner == s)[0]
        np.testing.assert_allclose(lf.paired.obs[j], buffer.obs[s], atol=1e-6)
    with torch.no_grad():
        mu = policy.mean(torch.as_tensor(lf.paired.obs[pair])).numpy()
    std = float(policy.std().detach())
    np.testing.assert_allclose((lf.paired.actions[pair] - mu) / std,
                               buffer.eps[lf.partner[pair]], atol=1e-5)


def test_episode_pairs_start_at_hf_starts_and_replay_noise(policy, lf_collector, hf_buffer):
    pairing = EpisodePairing(lf_collector, pool_per_hf=4, max_episode_steps=30, gamma=GAMMA,
                             gae_lambda=0.95)
    lf = pairing.collect(hf_buffer, policy, zero_value, identity, np.random.default_rng(4))
    assert np.flatnonzero(hf_buffer.episode_start).tolist() == [15, 45]
    # rows 0-14 continue an episode begun in an earlier rollout: a fragment paired from row 0
    _check_episode_pairs(hf_buffer, lf, policy)
    # three LF episodes of 30 steps (rows left, capped by the time limit): the fragment's
    # runs on past its HF partner's end with fresh noise; 4 references per paired episode
    assert lf.n_pairs == 75 and len(lf.paired) == 90
    assert np.all(lf.ref.anchor == -1) and len(lf.ref) == 4 * len(lf.paired)
    # the fragment's references start from row 0's state, the others from the pool
    at_row0 = np.all(np.abs(lf.ref.obs - hf_buffer.obs[0]) < 1e-6, axis=1)
    assert at_row0.sum() == 4 and np.all(at_row0[np.arange(4) * 30])


@pytest.mark.parametrize(("before", "rows", "n_starts", "n_ends"),
                         [(15, 10, 0, 0), (5, 40, 1, 1), (0, 20, 1, 0), (20, 40, 1, 2),
                          (10, 20, 0, 1)])
@pytest.mark.parametrize("same_starts", [False, True])
def test_episode_pairing_of_rollouts_shorter_than_episodes(
    policy, lf_collector, before: int, rows: int, n_starts: int, n_ends: int, same_starts: bool,
) -> None:
    """Rollouts with no episode start, no end, or an episode spanning them (30-step episodes):
    every row is paired, every LF episode gets its references with its horizon."""
    env = gym.make(ENV, fidelity="twin", max_episode_steps=30)
    collector = HFCollector(env, policy, np.random.default_rng(7), seed=7)
    if before:
        collector.collect(before)
    buf = collector.collect(rows)
    assert (buf.episode_start.sum(), buf.dones.sum()) == (n_starts, n_ends)
    pairing = EpisodePairing(lf_collector, 3, 30, GAMMA, 0.95, same_starts=same_starts)
    lf = pairing.collect(buf, policy, zero_value, identity, np.random.default_rng(8))
    _check_episode_pairs(buf, lf, policy)
    first = np.flatnonzero(buf.episode_start | (np.arange(rows) == 0))
    horizon = np.minimum(rows - first, 30)
    assert lf.rollout_lengths.tolist() == horizon.tolist()  # no LF termination in 30 steps
    assert len(lf.ref) == 3 * horizon.sum() and lf.lf_steps == 4 * horizon.sum()
    assert np.all(lf.ref.anchor >= 0) if same_starts else np.all(lf.ref.anchor == -1)
    # a fragment's references start from its first row's state in both modes
    fragment = not buf.episode_start[0]
    at_row0 = np.all(np.abs(lf.ref.obs - buf.obs[0]) < 1e-6, axis=1).sum()
    assert at_row0 == (3 if fragment or same_starts else 0)


def _pendulum_sideways(collector: BatchedCollector):
    def sample(n: int, rng: np.random.Generator):
        q0, v0, task = collector.sample_starts(n, rng)
        q0[:, 1] += np.pi / 2
        return q0, v0, task
    return sample


def test_episode_pool_must_start_like_the_hf_episodes(policy, lf_collector) -> None:
    """The correction mean(paired) - mean(pool) of LF advantages averages to zero when the
    pool's starts are drawn like the HF starts, and not when they are drawn differently."""
    matched = EpisodePairing(lf_collector, 8, 60, GAMMA, 1.0, whole_episodes=True)
    shifted = EpisodePairing(lf_collector, 8, 60, GAMMA, 1.0, whole_episodes=True,
                             pool_starts=_pendulum_sideways(lf_collector))
    rng = np.random.default_rng(5)
    corrections: dict[str, list[float]] = {"matched": [], "shifted": []}
    with BatchedCollector(ENV, fidelity="twin", n_envs=16, nthread=1) as hf:
        for _ in range(12):
            buf = simulate_hf_buffer(hf, policy, 6, 60, rng)
            for name, pairing in (("matched", matched), ("shifted", shifted)):
                lf = pairing.collect(buf, policy, zero_value, identity, rng)
                corrections[name].append(lf.paired.advantages.mean() - lf.ref.advantages.mean())
    z = {k: np.mean(v) / (np.std(v, ddof=1) / np.sqrt(len(v))) for k, v in corrections.items()}
    assert abs(z["matched"]) < 3
    assert abs(z["shifted"]) > 10


def test_same_start_references_need_no_matching_start_distribution(policy, lf_collector):
    """HF episodes from another start distribution than the LF env's: the default pool is
    biased, references from each paired episode's own start are not."""
    pool = EpisodePairing(lf_collector, 4, 60, GAMMA, 1.0, whole_episodes=True)
    own = EpisodePairing(lf_collector, 4, 60, GAMMA, 1.0, whole_episodes=True,
                         same_starts=True)
    rng = np.random.default_rng(6)
    corrections: dict[str, list[float]] = {"pool": [], "own": []}
    with BatchedCollector(ENV, fidelity="twin", n_envs=16, nthread=1) as hf:
        for _ in range(10):
            buf = simulate_hf_buffer(hf, policy, 6, 60, rng,
                                     start_sampler=_pendulum_sideways(hf))
            for name, pairing in (("pool", pool), ("own", own)):
                lf = pairing.collect(buf, policy, zero_value, identity, rng)
                corrections[name].append(
                    lf.paired.advantages.sum() - lf.ref.advantages.sum() / lf.ref_per_paired)
            assert np.all(lf.ref.anchor >= 0)  # grouped with the paired steps
            first = np.flatnonzero(buf.episode_start)
            np.testing.assert_allclose(lf.ref.obs[lf.ref.anchor == first[0]][:4],
                                       np.repeat(buf.obs[first[:1]], 4, axis=0), atol=1e-6)
    z = {k: np.mean(v) / (np.std(v, ddof=1) / np.sqrt(len(v))) for k, v in corrections.items()}
    assert abs(z["own"]) < 3
    assert abs(z["pool"]) > 10


def test_pairing_rejects_bad_settings(lf_collector) -> None:
    with pytest.raises(ValueError, match="k >= 1"):
        SyncedPairing(lf_collector, 0, 4, GAMMA, 0.95)
    with pytest.raises(ValueError, match="pool_per_hf"):
        EpisodePairing(lf_collector, 0, 100, GAMMA, 0.95)
    with pytest.raises(ValueError, match="not both"):
        EpisodePairing(lf_collector, 4, 100, GAMMA, 0.95, same_starts=True,
                       pool_starts=lf_collector.sample_starts)
