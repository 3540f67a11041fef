"""Policy-gradient estimates at a fixed policy: HF-only and multi-fidelity, per batch.

Measures what the control variate buys (tests/test_mf_algos.py,
benchmarks/estimator_variance.py). HF episodes are simulated with the batched collector on
the HF model (it reproduces the Gymnasium env step for step) and packed into the same
`RolloutBuffer` the trainer's HF collector produces, so the pairings see exactly what they
see in training. For one batch:

    g_hf  = grad mean_H(A_H log pi)                                  (HF-only REINFORCE)
    delta = grad [sum_P(A_L log pi) - sum_R(A_L log pi) / ref_per_paired] / n_H   (LF correction)
    g_mf(c) = g_hf - c * delta

Advantages are discounted Monte-Carlo returns minus a baseline (`hf_value_fn`; zero for
none) on the HF side and the pairing's bootstrapped LF advantages on the LF side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mfpg_robot.buffer import RolloutBuffer, gaussian_logprob
from mfpg_robot.estimators import (
    PairMoments,
    align_pairs,
    block_sums,
    pair_moments,
    projected_sample_grads,
    random_directions,
)
from mfpg_robot.gae import compute_gae
from mfpg_robot.pairing import LFSamples, StartSampler
from mfpg_robot.policy import GaussianPolicy
from sim.batched import BatchedCollector
from sim.state import RobotState

ValueFn = Callable[[np.ndarray], np.ndarray]


def zero_value(obs: np.ndarray) -> np.ndarray:
    """The no-baseline value function."""
    return np.zeros(obs.shape[0])


def simulate_hf_buffer(
    collector: BatchedCollector, policy: GaussianPolicy, n_episodes: int, horizon: int,
    rng: np.random.Generator, with_states: bool = True, start_sampler: StartSampler | None = None,
) -> RolloutBuffer:
    """`n_episodes` HF episodes of at most `horizon` steps, as consecutive buffer rows.

    Starts come from the env's start distribution, noise from `rng`; an episode cut by the
    horizon is marked truncated. `with_states=False` skips the per-row `RobotState`s (only
    pairing needs them); `start_sampler` replaces the env's start distribution.
    """
    q0, v0, task = (start_sampler or collector.sample_starts)(n_episodes, rng)
    eps = rng.standard_normal((n_episodes, horizon, policy.act_dim))
    frozen = policy.rollout_policy()
    std = frozen.std.astype(np.float64)

    def act(obs: np.ndarray, t: int) -> np.ndarray:
        return frozen.mean(obs).astype(np.float64) + std * eps[:, t]

    out = collector.run(q0, v0, task, horizon, act)
    rows, t = np.nonzero(out.alive)
    lengths = out.lengths
    last = t == lengths[rows] - 1
    terminated = out.terminated[rows, t]
    names = collector.joint_names
    states = [
        RobotState.from_arrays(names, out.q[i, s], out.v[i, s],
                               {k: val[i] for k, val in task.items()})
        for i, s in zip(rows, t, strict=True)
    ] if with_states else None
    rewards = out.rewards[rows, t]
    return RolloutBuffer(
        obs=out.obs[rows, t].astype(np.float32),
        eps=eps[rows, t],
        actions=out.actions[rows, t].astype(np.float32),
        logprobs=gaussian_logprob(eps[rows, t], policy.log_std.detach().numpy().astype(float)),
        rewards=rewards,
        terminated=terminated,
        truncated=last & ~terminated,
        next_obs=out.obs[rows, t + 1].astype(np.float32),
        episode_start=t == 0,
        states=states,
        episode_returns=out.rewards.sum(axis=1).tolist(),
        episode_lengths=lengths.tolist(),
    )


def hf_advantages(
    buffer: RolloutBuffer, value_fn: ValueFn, gamma: float, gae_lambda: float = 1.0
) -> np.ndarray:
    """GAE advantages with `value_fn` (lambda = 1: Monte-Carlo returns minus the baseline)."""
    values = value_fn(buffer.obs)
    next_values = value_fn(buffer.next_obs)
    adv, _ = compute_gae(buffer.rewards, values, next_values, buffer.terminated, buffer.dones,
                         gamma, gae_lambda)
    return adv


def _flat_grad(policy: GaussianPolicy, loss: torch.Tensor) -> np.ndarray:
    params = [p for p in policy.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([
        (g if g is not None else torch.zeros_like(p)).reshape(-1)
        for g, p in zip(grads, params, strict=True)
    ]).double().numpy()


def surrogate_terms(
    policy: GaussianPolicy, obs: np.ndarray, actions: np.ndarray, adv: np.ndarray
) -> torch.Tensor:
    """Per-sample f = A * log pi(a|s) as a differentiable tensor."""
    logp = policy.log_prob(torch.as_tensor(obs, dtype=torch.float32),
                           torch.as_tensor(actions, dtype=torch.float32))
    return torch.as_tensor(adv, dtype=torch.float32) * logp


def hf_gradient(policy: GaussianPolicy, buffer: RolloutBuffer, adv: np.ndarray) -> np.ndarray:
    """grad mean_H(A log pi) over the buffer's rows, flattened."""
    return _flat_grad(policy, surrogate_terms(policy, buffer.obs, buffer.actions, adv).mean())


@dataclass
class TrialEstimate:
    """One batch's HF-only gradient, LF correction, and pair moments of the scalar
    surrogates (`moments`) and of per-sample gradient projections (`grad_moments`)."""

    g_hf: np.ndarray
    delta: np.ndarray
    moments: PairMoments
    grad_moments: PairMoments | None
    block_moments: PairMoments | None = None

    def g_mf(self, c: float) -> np.ndarray:
        return self.g_hf - c * self.delta


def mf_trial(
    policy: GaussianPolicy, buffer: RolloutBuffer, lf: LFSamples, hf_adv: np.ndarray,
    n_dirs: int = 0, generator: torch.Generator | None = None, block: int = 0,
) -> TrialEstimate:
    """HF-only gradient, LF correction gradient and pair moments of one batch.

    With `n_dirs` > 0, also the moments of per-sample gradient projections on that many
    random directions (stacked), whose Cov/Var is the c minimising the gradient's variance.
    With `block` > 0, also the moments of the scalar surrogates summed over blocks of that
    many consecutive HF rows.
    """
    f_h = surrogate_terms(policy, buffer.obs, buffer.actions, hf_adv)
    f_p = surrogate_terms(policy, lf.paired.obs, lf.paired.actions, lf.paired.advantages)
    f_r = surrogate_terms(policy, lf.ref.obs, lf.ref.actions, lf.ref.advantages)
    g_hf = _flat_grad(policy, f_h.mean())
    delta = _flat_grad(policy, (f_p.sum() - f_r.sum() / lf.ref_per_paired) / f_h.numel())
    x_h, x_l = align_pairs(f_h.detach(), f_p.detach(), lf.partner, f_r.detach(), lf.ref.anchor)
    grad_moments = None
    if n_dirs > 0:
        dirs = random_directions(policy, n_dirs, generator or torch.Generator().manual_seed(0))
        proj = [
            projected_sample_grads(policy, _per_sample_surrogate, _tensors(obs, act, adv), dirs)
            for obs, act, adv in (
                (buffer.obs, buffer.actions, hf_adv),
                (lf.paired.obs, lf.paired.actions, lf.paired.advantages),
                (lf.ref.obs, lf.ref.actions, lf.ref.advantages),
            )
        ]
        g_h, g_l = align_pairs(proj[0], proj[1], lf.partner, proj[2], lf.ref.anchor)
        centred = [x - x.mean(axis=-1, keepdims=True) for x in (g_h, g_l)]
        grad_moments = pair_moments(centred[0].ravel(), centred[1].ravel())
    block_moments = None
    if block > 0:
        rows = lf.partner[lf.partner >= 0]
        block_moments = pair_moments(block_sums(x_h, rows, block), block_sums(x_l, rows, block))
    return TrialEstimate(g_hf, delta, pair_moments(x_h, x_l), grad_moments, block_moments)


def _tensors(obs: np.ndarray, act: np.ndarray, adv: np.ndarray) -> tuple[torch.Tensor, ...]:
    return (torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(act, dtype=torch.float32),
            torch.as_tensor(adv, dtype=torch.float32))


def _per_sample_surrogate(
    policy: GaussianPolicy, obs: torch.Tensor, act: torch.Tensor, adv: torch.Tensor
) -> torch.Tensor:
    return adv * policy.log_prob(obs, act)


def vector_moments(trial: TrialEstimate) -> PairMoments:
    """Moments of the whole batch gradients: Cov = <g_hf, delta>, Var = |delta|^2.

    Since E[delta] = 0, E<g_hf, delta> = tr Cov(g_hf, delta): smoothed over batches, their
    ratio estimates the c minimising E|g_mf - g|^2 without a reference gradient.
    """
    return PairMoments(n=2, cov=float(trial.g_hf @ trial.delta),
                       var_h=float(trial.g_hf @ trial.g_hf), var_l=float(trial.delta @ trial.delta))


def oracle_coef(trials: list[TrialEstimate], g_ref: np.ndarray) -> float:
    """The c minimising the summed squared error over `trials` (an in-hindsight bound)."""
    num = sum(float((t.g_hf - g_ref) @ t.delta) for t in trials)
    den = sum(float(t.delta @ t.delta) for t in trials)
    return num / den if den > 0 else 0.0


def fit_value_function(
    policy: GaussianPolicy, buffer: RolloutBuffer, gamma: float, gae_lambda: float = 1.0,
    rounds: int = 3, steps: int = 300, seed: int = 0,
) -> ValueFn:
    """A critic for a fixed policy, fitted to the rollouts in `buffer` (its own data).

    Each round recomputes lambda-returns with the current critic (bootstrapping truncated
    episodes) and regresses on them (full-batch Adam). The result is a fixed function: used
    as a baseline on other batches it keeps their gradient estimates unbiased.
    """
    from mfpg_robot.policy import Critic

    torch.manual_seed(seed)
    critic = Critic(policy.obs_norm, policy.obs_dim)
    opt = torch.optim.Adam(critic.v.parameters(), lr=3e-3)
    obs = torch.as_tensor(buffer.obs)
    for _ in range(rounds):
        with torch.no_grad():
            v = critic(obs).double().numpy()
            v_next = critic(torch.as_tensor(buffer.next_obs)).double().numpy()
        _, ret = compute_gae(buffer.rewards, v, v_next, buffer.terminated, buffer.dones,
                             gamma, gae_lambda)
        target = torch.as_tensor(ret, dtype=torch.float32)
        for _ in range(steps):
            opt.zero_grad()
            loss = ((critic(obs) - target) ** 2).mean()
            loss.backward()
            opt.step()

    def value_fn(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return critic(torch.as_tensor(x, dtype=torch.float32)).double().numpy()

    return value_fn
