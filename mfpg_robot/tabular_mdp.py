"""Finite MDPs with tabular softmax policies and exact policy gradients.

An exact-gradient test bed for policy-update rules (see `mfpg_robot.accel`): values come
from linear solves, so the objective, its gradient and the optimum are known to machine
precision. Everything is float64 torch, so autograd through `objective` works and agrees
with the closed form in `policy_gradient`.

Notation: P[s, a, s'] transition probabilities, R[s, a] rewards, rho the initial-state
distribution, pi[s, a] = softmax(theta[s, :])[a].

- V^pi = (I - gamma P_pi)^-1 r_pi,  Q = R + gamma P V,  A = Q - V
- d_rho = (1 - gamma) rho^T (I - gamma P_pi)^-1  (normalised: sums to 1)
- dV(rho)/dtheta[s, a] = d_rho(s) pi(a|s) A(s, a) / (1 - gamma)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

_DTYPE = torch.float64


@dataclass(frozen=True)
class TabularMDP:
    """A finite discounted MDP: `transitions` (S, A, S), `rewards` (S, A), `rho` (S,)."""

    transitions: Tensor
    rewards: Tensor
    rho: Tensor
    gamma: float

    def __post_init__(self) -> None:
        if self.transitions.dim() != 3 or self.transitions.shape[0] != self.transitions.shape[2]:
            raise ValueError(
                f"transitions must have shape (S, A, S), got {tuple(self.transitions.shape)}"
            )
        n_states, n_actions, _ = self.transitions.shape
        if tuple(self.rewards.shape) != (n_states, n_actions):
            raise ValueError(
                f"rewards must have shape ({n_states}, {n_actions}) to match transitions, "
                f"got {tuple(self.rewards.shape)}"
            )
        if tuple(self.rho.shape) != (n_states,):
            raise ValueError(f"rho must have shape ({n_states},), got {tuple(self.rho.shape)}")
        if not torch.allclose(self.transitions.sum(-1), torch.ones((), dtype=_DTYPE)):
            raise ValueError("transitions[s, a, :] must sum to 1 for every (s, a)")
        if not torch.isclose(self.rho.sum(), torch.ones((), dtype=_DTYPE)):
            raise ValueError("rho must sum to 1")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma}")

    @property
    def n_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def n_actions(self) -> int:
        return self.transitions.shape[1]


def random_mdp(
    n_states: int = 10,
    n_actions: int = 4,
    gamma: float = 0.9,
    seed: int = 0,
    dirichlet_alpha: float = 1.0,
) -> TabularMDP:
    """Random MDP: P(.|s,a) ~ Dirichlet(alpha), R ~ U[0, 1), rho ~ Dirichlet(1); seeded."""
    if n_states < 1 or n_actions < 1:
        raise ValueError(f"need n_states >= 1 and n_actions >= 1, got {n_states}, {n_actions}")
    if dirichlet_alpha <= 0:
        raise ValueError(f"dirichlet_alpha must be > 0, got {dirichlet_alpha}")
    rng = np.random.default_rng(seed)
    transitions = rng.dirichlet(np.full(n_states, dirichlet_alpha), size=(n_states, n_actions))
    rewards = rng.uniform(size=(n_states, n_actions))
    rho = rng.dirichlet(np.ones(n_states))
    return TabularMDP(
        transitions=torch.as_tensor(transitions, dtype=_DTYPE),
        rewards=torch.as_tensor(rewards, dtype=_DTYPE),
        rho=torch.as_tensor(rho, dtype=_DTYPE),
        gamma=gamma,
    )


def softmax_policy(theta: Tensor) -> Tensor:
    """pi[s, a] = softmax(theta[s, :])[a]."""
    return torch.softmax(theta, dim=-1)


def _transition_matrix(mdp: TabularMDP, pi: Tensor) -> Tensor:
    """I - gamma P_pi, with P_pi[s, s'] = sum_a pi[s, a] P[s, a, s']."""
    p_pi = torch.einsum("sa,sat->st", pi, mdp.transitions)
    return torch.eye(mdp.n_states, dtype=_DTYPE) - mdp.gamma * p_pi


def policy_value(mdp: TabularMDP, pi: Tensor) -> Tensor:
    """Exact V^pi (S,) by a linear solve."""
    r_pi = (pi * mdp.rewards).sum(-1)
    return torch.linalg.solve(_transition_matrix(mdp, pi), r_pi)


def q_values(mdp: TabularMDP, v: Tensor) -> Tensor:
    """Q[s, a] = R[s, a] + gamma sum_s' P[s, a, s'] V[s']."""
    return mdp.rewards + mdp.gamma * mdp.transitions @ v


def advantages(mdp: TabularMDP, pi: Tensor) -> Tensor:
    """A^pi[s, a] = Q^pi[s, a] - V^pi[s]."""
    v = policy_value(mdp, pi)
    return q_values(mdp, v) - v[:, None]


def discounted_state_distribution(mdp: TabularMDP, pi: Tensor) -> Tensor:
    """d_rho^pi(s) = (1 - gamma) sum_t gamma^t Pr(s_t = s | s_0 ~ rho, pi); sums to 1."""
    return (1.0 - mdp.gamma) * torch.linalg.solve(_transition_matrix(mdp, pi).T, mdp.rho)


def objective(mdp: TabularMDP, theta: Tensor) -> Tensor:
    """J(theta) = V^pi_theta(rho) (scalar, differentiable in theta)."""
    return mdp.rho @ policy_value(mdp, softmax_policy(theta))


def policy_gradient(mdp: TabularMDP, theta: Tensor) -> Tensor:
    """Closed-form dJ/dtheta[s, a] = d_rho(s) pi(a|s) A(s, a) / (1 - gamma)."""
    with torch.no_grad():
        pi = softmax_policy(theta)
        d = discounted_state_distribution(mdp, pi)
        return d[:, None] * pi * advantages(mdp, pi) / (1.0 - mdp.gamma)


def optimal_value(mdp: TabularMDP, tol: float = 1e-12, max_iters: int = 100_000) -> Tensor:
    """V* (S,) by value iteration, stopped when the sup-norm error bound is below `tol`."""
    v = torch.zeros(mdp.n_states, dtype=_DTYPE)
    for _ in range(max_iters):
        v_new = q_values(mdp, v).max(dim=-1).values
        delta = float((v_new - v).abs().max())
        v = v_new
        if delta * mdp.gamma / (1.0 - mdp.gamma) < tol:
            return v
    raise RuntimeError(f"value iteration did not reach tol={tol} in {max_iters} iterations")


def exact_gradient_closure(mdp: TabularMDP, theta: Tensor) -> Callable[[], Tensor]:
    """Closure for `Accelerator.step`: sets theta.grad = -dJ/dtheta, returns the loss -J.

    Uses the closed-form gradient (no autograd graph), so it is cheap to call.
    """

    def closure() -> Tensor:
        with torch.no_grad():
            pi = softmax_policy(theta)
            m = _transition_matrix(mdp, pi)
            v = torch.linalg.solve(m, (pi * mdp.rewards).sum(-1))
            d = (1.0 - mdp.gamma) * torch.linalg.solve(m.T, mdp.rho)
            adv = q_values(mdp, v) - v[:, None]
            theta.grad = -(d[:, None] * pi * adv / (1.0 - mdp.gamma))
            return -(mdp.rho @ v)

    return closure


def iterations_to_gap(
    mdp: TabularMDP,
    theta: Tensor,
    step: Callable[[Callable[[], Tensor]], Tensor],
    tols: Iterable[float],
    max_iters: int,
) -> dict[float, int | None]:
    """Steps taken until V*(rho) - V(rho) < tol, for each tol (None: not within `max_iters`).

    `step(closure)` (e.g. `Accelerator.step`) must evaluate the closure at the current
    `theta` first and return that loss, as the accelerators do: the gap after t steps is
    read from the loss returned by step t + 1.
    """
    pending = sorted(set(tols), reverse=True)
    if not pending or pending[-1] <= 0:
        raise ValueError(f"tols must be a non-empty set of positive numbers, got {pending}")
    if max_iters < 0:
        raise ValueError(f"max_iters must be >= 0, got {max_iters}")
    v_star = float(mdp.rho @ optimal_value(mdp))
    closure = exact_gradient_closure(mdp, theta)
    hits: dict[float, int | None] = dict.fromkeys(pending)
    for it in range(max_iters + 1):
        gap = v_star + float(step(closure))
        while pending and gap < pending[0]:
            hits[pending.pop(0)] = it
        if not pending:
            break
    return hits
