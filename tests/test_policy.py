"""GaussianPolicy: the rollout snapshot computes the autograd mean; normalisation is saved."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfpg_robot.policy import GaussianPolicy, RunningObsNorm, Tanh


def _policy(seed: int = 0, obs_dim: int = 6, act_dim: int = 2) -> GaussianPolicy:
    torch.manual_seed(seed)
    policy = GaussianPolicy(obs_dim, act_dim, hidden=(32, 16), log_std_init=-0.5)
    # non-trivial normalisation statistics and output layer, so every op matters
    rng = np.random.default_rng(seed)
    policy.obs_norm.update(rng.normal(2.0, 3.0, size=(500, obs_dim)))
    with torch.no_grad():
        policy.mu[-1].weight.normal_(0.0, 1.0)
    return policy


def _autograd_mean(policy: GaussianPolicy, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return policy.mean(torch.as_tensor(obs, dtype=torch.float32)).numpy()


def _assert_float32_close(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float32 rounding: 1e-6 of the output scale (about 8 ulp)."""
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * scale)


def test_rollout_policy_computes_the_autograd_mean() -> None:
    policy = _policy()
    obs = np.random.default_rng(1).normal(2.0, 40.0, size=(257, 6)).astype(np.float32)
    expected = _autograd_mean(policy, obs)
    got = policy.rollout_policy().mean(obs)
    assert got.dtype == np.float32 and got.shape == (257, 2)
    _assert_float32_close(got, expected)  # the folded tanh rounds differently
    assert np.abs(expected).max() > 0.5
    # some inputs were clamped by the normaliser: the clip path is covered too
    z = (obs - policy.obs_norm.mean.numpy()) / np.sqrt(policy.obs_norm.var.numpy() + 1e-8)
    assert (np.abs(z) > policy.obs_norm.clip).any()


def test_rollout_policy_folds_every_hidden_layer() -> None:
    """Three hidden layers: the tanh folding chains through consecutive hidden layers."""
    torch.manual_seed(11)
    policy = GaussianPolicy(4, 3, hidden=(16, 8, 8))
    with torch.no_grad():
        for p in policy.mu.parameters():
            p.normal_(0.0, 0.7)
    obs = np.random.default_rng(12).normal(size=(33, 4)).astype(np.float32)
    frozen = policy.rollout_policy()
    assert [sigmoid for _, _, sigmoid in frozen.layers] == [True, True, True, False]
    _assert_float32_close(frozen.mean(obs), _autograd_mean(policy, obs))


def test_rollout_policy_accepts_float64_and_leaves_the_policy_trainable() -> None:
    policy = _policy(seed=3)
    obs = np.random.default_rng(2).normal(size=(16, 6))
    frozen = policy.rollout_policy()
    got = frozen.mean(obs)
    np.testing.assert_array_equal(got, frozen.mean(obs.astype(np.float32)))
    assert not any(t.requires_grad for layer in frozen.layers for t in layer[:2])
    loss = policy.log_prob(torch.as_tensor(obs, dtype=torch.float32),
                           torch.as_tensor(got)).sum()
    loss.backward()  # the policy's parameters still train
    assert policy.mu[0].weight.grad is not None


def test_rollout_policy_is_a_snapshot_of_the_weights() -> None:
    """It does not follow later updates; a new snapshot does."""
    policy = _policy(seed=9)
    obs = np.random.default_rng(10).normal(size=(32, 6)).astype(np.float32)
    before = policy.rollout_policy()
    first = before.mean(obs)
    optimiser = torch.optim.SGD(policy.parameters(), lr=0.1)
    policy.log_prob(torch.as_tensor(obs), torch.zeros(32, 2)).sum().backward()
    optimiser.step()
    policy.obs_norm.update(np.random.default_rng(13).normal(5.0, 2.0, size=(100, 6)))
    np.testing.assert_array_equal(before.mean(obs), first)
    after = policy.rollout_policy()
    assert not np.allclose(after.mean(obs), first, atol=1e-3)
    _assert_float32_close(after.mean(obs), _autograd_mean(policy, obs))
    np.testing.assert_array_equal(after.std, policy.std().detach().numpy())


def test_rollout_policy_rejects_layers_it_cannot_fold() -> None:
    policy = _policy()
    policy.mu[1] = torch.nn.ReLU()
    with pytest.raises(TypeError, match="supports Linear and policy.Tanh"):
        policy.rollout_policy()


def test_act_is_mean_plus_sigma_times_noise() -> None:
    policy = _policy(seed=4)
    rng = np.random.default_rng(5)
    obs = rng.normal(size=(64, 6)).astype(np.float32)
    eps = rng.standard_normal((64, 2)).astype(np.float32)
    with torch.no_grad():
        expected = (policy.mean(torch.as_tensor(obs)) + policy.std() * torch.as_tensor(eps))
    _assert_float32_close(policy.act(obs, eps), expected.numpy())
    frozen = policy.rollout_policy()
    np.testing.assert_array_equal(policy.act(obs, eps), frozen.act(obs, eps))
    # zero noise gives the mean exactly
    np.testing.assert_array_equal(frozen.act(obs, np.zeros_like(eps)), frozen.mean(obs))


def test_state_dict_round_trip_carries_the_normaliser() -> None:
    policy = _policy(seed=6)
    clone = GaussianPolicy(6, 2, hidden=(32, 16))
    clone.load_state_dict(policy.state_dict())
    obs = np.random.default_rng(7).normal(size=(8, 6)).astype(np.float32)
    np.testing.assert_array_equal(clone.rollout_policy().mean(obs),
                                  policy.rollout_policy().mean(obs))


def test_running_norm_matches_the_batch_moments() -> None:
    norm = RunningObsNorm(3)
    data = np.random.default_rng(8).normal([1.0, -2.0, 5.0], [0.5, 2.0, 3.0], size=(3000, 3))
    for chunk in np.array_split(data, 7):
        norm.update(chunk)
    np.testing.assert_allclose(norm.mean.numpy(), data.mean(0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(norm.var.numpy(), data.var(0), rtol=1e-7)


def test_normaliser_follows_every_change_of_its_statistics() -> None:
    """The float32 affine form is cached; update, load_state_dict and a copy must refresh it."""
    import copy

    norm = RunningObsNorm(2)
    x = torch.tensor([[3.0, -1.0]])
    np.testing.assert_allclose(norm(x).numpy(), [[3.0, -1.0]], atol=1e-6)
    norm.update(np.array([[1.0, 0.0], [3.0, 2.0]]))  # mean (2, 1), var (1, 1)
    np.testing.assert_allclose(norm(x).numpy(), [[1.0, -2.0]], atol=1e-4)
    other = RunningObsNorm(2)
    other.update(np.array([[0.0, 0.0], [0.0, 4.0]]))  # mean (0, 2), var (0, 4)
    norm.load_state_dict(other.state_dict())
    np.testing.assert_allclose(norm(x).numpy(), [[10.0, -1.5]], atol=1e-4)  # clipped at 10
    twin = copy.deepcopy(norm)
    twin.update(np.array([[100.0, 100.0]] * 1000))
    assert not torch.equal(twin(x), norm(x))
    np.testing.assert_allclose(norm(x).numpy(), [[10.0, -1.5]], atol=1e-4)


def test_tanh_module_is_tanh_in_value_and_gradient() -> None:
    x = torch.cat([torch.linspace(-20.0, 20.0, 40001), torch.tensor([0.0, 1e-30, -1e-8])])
    x.requires_grad_(True)
    y = Tanh()(x)
    np.testing.assert_allclose(y.detach().numpy(), torch.tanh(x).detach().numpy(), rtol=0,
                               atol=3e-7)
    assert y.abs().max() <= 1.0
    (grad,) = torch.autograd.grad(y.sum(), x)
    expected = 1.0 - torch.tanh(x.detach()) ** 2
    np.testing.assert_allclose(grad.numpy(), expected.numpy(), rtol=0, atol=1e-6)
