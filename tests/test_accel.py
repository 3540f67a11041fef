"""Accelerated update rules: exact recurrences, convergence on exact-gradient MDPs, config."""

import math

import pytest
import torch

from mfpg_robot.accel import ACCELERATORS, make_accelerator
from mfpg_robot.tabular_mdp import exact_gradient_closure, iterations_to_gap, random_mdp

SUITE = [random_mdp(n_states=5, n_actions=3, gamma=0.8, seed=s) for s in range(3)]
LR, TOL, CAP = 3.0, 1e-2, 1000


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny float64 ops: torch's thread pool only adds contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _iterations(name: str, mdp, **cfg) -> int | None:
    theta = torch.zeros(mdp.n_states, mdp.n_actions, dtype=torch.float64, requires_grad=True)
    acc = make_accelerator(name, [theta], torch.optim.SGD([theta], lr=LR), **cfg)
    return iterations_to_gap(mdp, theta, acc.step, [TOL], CAP)[TOL]


def _quadratic(a: float, x0: float, name: str, lr: float, **cfg):
    """Rule `name` with SGD on f(x) = a x^2 / 2; returns (x, accelerator, call counter)."""
    x = torch.tensor([x0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=lr)
    acc = make_accelerator(name, [x], opt, **cfg)
    calls = [0]

    def closure():
        calls[0] += 1
        opt.zero_grad()
        loss = 0.5 * a * (x**2).sum()
        loss.backward()
        return loss

    return x, acc, closure, calls


@pytest.fixture(scope="module")
def plain_iterations() -> list[int | None]:
    return [_iterations("none", mdp) for mdp in SUITE]


@pytest.mark.parametrize("name", ACCELERATORS)
def test_each_rule_converges_on_the_suite(name, plain_iterations):
    its = plain_iterations if name == "none" else [_iterations(name, mdp) for mdp in SUITE]
    assert all(it is not None for it in its), f"{name} hit the cap {CAP}: {its}"


def test_meta_is_never_slower_than_plain_pg(plain_iterations):
    meta = [_iterations("meta", mdp) for mdp in SUITE]
    assert all(m <= p for m, p in zip(meta, plain_iterations, strict=True)), (
        meta,
        plain_iterations,
    )


def test_optimistic_with_zero_optimism_equals_plain_sgd():
    mdp = SUITE[0]
    thetas = []
    for name, cfg in [("none", {}), ("optimistic", {"optimism": 0.0})]:
        theta = torch.zeros(5, 3, dtype=torch.float64, requires_grad=True)
        acc = make_accelerator(name, [theta], torch.optim.SGD([theta], lr=LR), **cfg)
        iterations_to_gap(mdp, theta, acc.step, [1e-12], 50)
        thetas.append(theta.detach())
    assert torch.equal(thetas[0], thetas[1])


def test_optimistic_follows_its_recurrence():
    a, lr, lam = 2.0, 0.1, 0.5
    x, acc, closure, _ = _quadratic(a, 1.0, "optimistic", lr, optimism=lam)
    xs = [1.0]
    for _ in range(5):
        acc.step(closure)
        g, g_prev = a * xs[-1], a * xs[max(len(xs) - 2, 0)]
        xs.append(xs[-1] - lr * (g + lam * (g - g_prev)))
        assert x.item() == pytest.approx(xs[-1], rel=1e-12)


def test_extragradient_calls_closure_twice_and_steps_from_the_start():
    a, lr = 2.0, 0.1
    x, acc, closure, calls = _quadratic(a, 1.0, "extragradient", lr)
    loss = acc.step(closure)
    assert calls[0] == 2
    assert loss.item() == pytest.approx(0.5 * a)  # the loss at the starting point
    look = 1.0 - lr * a
    assert x.item() == pytest.approx(1.0 - lr * a * look, rel=1e-12)
    acc.step(closure)
    assert calls[0] == 4


def test_extragradient_restores_adam_state_after_the_look_ahead():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.1)
    acc = make_accelerator("extragradient", [x], opt)

    def closure():
        opt.zero_grad()
        loss = (x**2).sum()
        loss.backward()
        return loss

    acc.step(closure)
    assert int(opt.state[x]["step"]) == 1  # one real step counted, not the look-ahead too


def test_nesterov_follows_its_recurrence_without_restart():
    a, lr = 1.0, 0.1
    x, acc, closure, _ = _quadratic(a, 1.0, "nesterov", lr, restart=False)
    y, x_prev = 1.0, None
    for k in range(6):
        acc.step(closure)
        x_new = y - lr * a * y
        beta = k / (k + 3)
        y = x_new if x_prev is None else x_new + beta * (x_new - x_prev)
        x_prev = x_new
        assert x.item() == pytest.approx(y, rel=1e-12)
    assert acc.stats()["restarts"] == 0


def test_nesterov_restarts_exactly_when_the_objective_drops():
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    acc = make_accelerator("nesterov", [p], opt)
    losses = [5.0, 4.0, 3.0, 3.5, 2.0, 1.0, 1.2, 1.1]  # loss up = objective down
    expected_restarts = [0, 0, 0, 1, 1, 1, 2, 2]
    expected_momentum = [0.0, 1 / 4, 2 / 5, 0.0, 1 / 4, 2 / 5, 0.0, 1 / 4]
    for loss, restarts, momentum in zip(losses, expected_restarts, expected_momentum, strict=True):

        def closure(loss=loss):
            p.grad = torch.ones(1)
            return torch.tensor(loss)

        acc.step(closure)
        assert acc.stats()["restarts"] == restarts
        assert acc.stats()["momentum"] == pytest.approx(momentum)


def test_nesterov_without_restart_never_restarts():
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    acc = make_accelerator("nesterov", [p], opt, restart=False)
    for loss in [1.0, 2.0, 3.0]:
        acc.step(lambda loss=loss: (setattr(p, "grad", torch.ones(1)), torch.tensor(loss))[1])
    assert acc.stats()["restarts"] == 0


def test_meta_respects_eta_bounds_and_keeps_the_optimizer_lr():
    mdp = SUITE[0]
    theta = torch.zeros(5, 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=1.0)
    acc = make_accelerator("meta", [theta], opt, eta_min=0.5, eta_max=4.0)
    closure, etas = exact_gradient_closure(mdp, theta), []
    for _ in range(100):
        acc.step(closure)
        etas.append(acc.stats()["eta"])
        assert opt.param_groups[0]["lr"] == 1.0
    assert all(0.5 <= eta <= 4.0 for eta in etas)
    assert max(etas) == pytest.approx(4.0)  # aligned exact gradients grow eta to the cap

    # f = x^2 / 2 from lr 3 (oscillating): eta falls until steps stop overshooting (eta ~ 1)
    x, acc, closure, _ = _quadratic(1.0, 1.0, "meta", 3.0, eta_min=0.3, eta_max=30.0)
    for _ in range(60):
        acc.step(closure)
        assert 0.3 <= acc.stats()["eta"] <= 30.0
    assert 0.8 < acc.stats()["eta"] < 1.25
    # ... unless eta_min forbids it: eta pinned at eta_min
    x, acc, closure, _ = _quadratic(1.0, 1.0, "meta", 3.0, eta_min=1.5, eta_max=30.0)
    for _ in range(60):
        acc.step(closure)
    assert acc.stats()["eta"] == pytest.approx(1.5)
    assert abs(x.item()) < 1e-6


def test_meta_scales_a_trainer_lr_schedule():
    x, acc, closure, _ = _quadratic(1.0, 1.0, "meta", 0.1, eta_min=0.1, eta_max=0.1)
    acc.optimizer.param_groups[0]["lr"] = 0.05  # the trainer anneals the lr
    acc.step(closure)
    assert x.item() == pytest.approx(1.0 - 0.05)
    assert acc.stats()["eta"] == pytest.approx(0.05)


@pytest.mark.parametrize("name", ACCELERATORS)
def test_adam_with_each_rule_decreases_a_regression_loss(name):
    torch.manual_seed(0)
    inputs = torch.randn(64, 4)
    targets = inputs @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(64)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    acc = make_accelerator(name, model.parameters(), opt)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs).squeeze(-1), targets)
        loss.backward()
        return loss

    first = closure().item()
    for _ in range(150):
        acc.step(closure)
    last = closure().item()
    assert math.isfinite(last) and last < 0.5 * first
    assert set(acc.stats()) == {"eta", "optimism", "momentum", "restarts"}


@pytest.mark.parametrize(
    "name, cfg, match",
    [
        ("adam", {}, "unknown accelerator 'adam'; valid: none, optimistic, extragradient"),
        ("optimistic", {"lam": 1.0}, r"unknown config key\(s\) \['lam'\].*valid: optimism"),
        ("none", {"optimism": 1.0}, "valid: none"),
        ("optimistic", {"optimism": -1.0}, "'optimism' must be in"),
        ("optimistic", {"optimism": float("nan")}, "'optimism' must be in"),
        ("optimistic", {"optimism": "high"}, "'optimism' must be a number"),
        ("nesterov", {"max_momentum": 0.0}, "'max_momentum' must be in"),
        ("nesterov", {"restart": 1}, "'restart' must be true or false"),
        ("meta", {"eta_min": 2.0, "eta_max": 1.0}, "'eta_max' must be in"),
        ("meta", {"eta_min": 0.0}, "'eta_min' must be in"),
        ("meta", {"meta_lr": 0.0}, "'meta_lr' must be in"),
        ("meta", {"optimism": 2.0}, "'optimism' must be in"),
    ],
)
def test_bad_config_raises_a_clear_error(name, cfg, match):
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=match):
        make_accelerator(name, [p], torch.optim.SGD([p], lr=0.1), **cfg)


def test_parameters_must_belong_to_the_optimizer():
    p, q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="not in the optimizer's param_groups"):
        make_accelerator("none", [q], torch.optim.SGD([p], lr=0.1))
    with pytest.raises(ValueError, match="no parameters"):
        make_accelerator("none", [], torch.optim.SGD([p], lr=0.1))
    with pytest.raises(ValueError, match="holds parameters not passed to the accelerator"):
        make_accelerator("extragradient", [p], torch.optim.SGD([p, q], lr=0.1))


def test_closure_must_return_the_loss():
    p = torch.nn.Parameter(torch.zeros(2))
    acc = make_accelerator("optimistic", [p], torch.optim.SGD([p], lr=0.1))
    with pytest.raises(TypeError, match="closure must return the loss"):
        acc.step(lambda: None)
