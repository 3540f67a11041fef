"""Exact-gradient tabular MDP: values, distributions, gradients and the optimum."""

import pytest
import torch

from mfpg_robot.tabular_mdp import (
    TabularMDP,
    advantages,
    discounted_state_distribution,
    exact_gradient_closure,
    iterations_to_gap,
    objective,
    optimal_value,
    policy_gradient,
    policy_value,
    q_values,
    random_mdp,
    softmax_policy,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny float64 ops: torch's thread pool only adds contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=[0, 1, 2])
def mdp(request) -> TabularMDP:
    return random_mdp(n_states=6, n_actions=3, gamma=0.9, seed=request.param)


def _random_theta(mdp: TabularMDP, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(mdp.n_states, mdp.n_actions, generator=g, dtype=torch.float64)


def test_random_mdp_is_seeded_and_valid():
    a, b, c = random_mdp(seed=3), random_mdp(seed=3), random_mdp(seed=4)
    assert torch.equal(a.transitions, b.transitions) and torch.equal(a.rewards, b.rewards)
    assert not torch.equal(a.transitions, c.transitions)
    assert a.transitions.shape == (10, 4, 10) and a.transitions.dtype == torch.float64
    assert torch.allclose(a.transitions.sum(-1), torch.ones(10, 4, dtype=torch.float64))
    assert ((a.rewards >= 0) & (a.rewards < 1)).all()
    assert torch.isclose(a.rho.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_value_satisfies_bellman_equation(mdp):
    pi = softmax_policy(_random_theta(mdp))
    v = policy_value(mdp, pi)
    assert torch.allclose(v, (pi * q_values(mdp, v)).sum(-1), atol=1e-12)
    assert torch.allclose((pi * advantages(mdp, pi)).sum(-1), torch.zeros_like(v), atol=1e-12)


def test_discounted_state_distribution_matches_rollout_sum(mdp):
    pi = softmax_policy(_random_theta(mdp))
    d = discounted_state_distribution(mdp, pi)
    p_pi = torch.einsum("sa,sat->st", pi, mdp.transitions)
    occupancy, state = torch.zeros_like(d), mdp.rho.clone()
    for t in range(400):
        occupancy += (1 - mdp.gamma) * mdp.gamma**t * state
        state = state @ p_pi
    assert torch.allclose(d, occupancy, atol=1e-12)
    assert torch.isclose(d.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_closed_form_gradient_matches_autograd(mdp):
    theta = _random_theta(mdp, seed=1).requires_grad_(True)
    (auto,) = torch.autograd.grad(objective(mdp, theta), theta)
    assert torch.allclose(policy_gradient(mdp, theta), auto, atol=1e-10, rtol=1e-8)


def test_closure_sets_minus_gradient_and_returns_minus_value(mdp):
    theta = _random_theta(mdp, seed=2).requires_grad_(True)
    loss = exact_gradient_closure(mdp, theta)()
    assert torch.allclose(theta.grad, -policy_gradient(mdp, theta), atol=1e-12)
    assert torch.isclose(loss, -objective(mdp, theta.detach()))


def test_optimal_value_dominates_and_is_attained(mdp):
    v_star = optimal_value(mdp)
    assert torch.allclose(v_star, q_values(mdp, v_star).max(-1).values, atol=1e-10)
    greedy = torch.nn.functional.one_hot(q_values(mdp, v_star).argmax(-1), mdp.n_actions)
    assert torch.allclose(policy_value(mdp, greedy.double()), v_star, atol=1e-9)
    for seed in range(5):
        v_pi = policy_value(mdp, softmax_policy(_random_theta(mdp, seed)))
        assert (v_pi <= v_star + 1e-12).all()


def test_iterations_to_gap_reports_cap_hits_as_none():
    mdp = random_mdp(5, 3, 0.8, seed=0)
    theta = torch.zeros(5, 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=3.0)

    def step(closure):
        loss = closure()
        opt.step()
        return loss

    hits = iterations_to_gap(mdp, theta, step, [1e-1, 1e-9], max_iters=200)
    assert hits[1e-9] is None
    assert 0 < hits[1e-1] <= 200


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gamma": 1.0}, "gamma"),
        ({"n_states": 0}, "n_states"),
        ({"dirichlet_alpha": 0.0}, "dirichlet_alpha"),
    ],
)
def test_bad_mdp_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_mdp(**kwargs)


def test_mdp_shape_mismatch_raises():
    good = random_mdp(4, 2, seed=0)
    with pytest.raises(ValueError, match="rewards must have shape"):
        TabularMDP(good.transitions, good.rewards[:, :1], good.rho, good.gamma)
    with pytest.raises(ValueError, match="sum to 1"):
        TabularMDP(2 * good.transitions, good.rewards, good.rho, good.gamma)
