"""Gaussian MLP actor, critic, and running observation normalisation saved with the policy.

The actor samples `a = mu(s) + sigma * eps` with `eps ~ N(0, I)` and a state-independent
log-std (CleanRL / SB3 style). The noise `eps` is explicit so that multi-fidelity pairing can
replay the exact noise of a high-fidelity step on its low-fidelity partner. Actions are not
squashed: the env clips to its action space, and the log-prob is that of the unclipped action.
Observation normalisation statistics are buffers of the module, so `state_dict()` (and
therefore checkpoints and export) always carries them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn


def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weight init with a constant bias (CleanRL's `layer_init`)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Tanh(nn.Module):
    """tanh, computed as 2 sigmoid(2x) - 1 (the same function; |error| < 3e-7 in float32).

    The CPU float32 kernel of `torch.tanh` measured about 3x slower than `torch.sigmoid` on
    this project's 2-core machine (0.12 vs 0.04 ms for 512x64 values), and the two hidden
    activations were the largest part of the policy's time per LF control step. Holds no
    parameters, so checkpoints are those of an `nn.Tanh` MLP.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x * 2.0) * 2.0 - 1.0


def mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...], out_std: float) -> nn.Sequential:
    """Tanh MLP with orthogonal init; the last layer uses `out_std`."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [layer_init(nn.Linear(d, h)), Tanh()]
        d = h
    layers.append(layer_init(nn.Linear(d, out_dim), std=out_std))
    return nn.Sequential(*layers)


class RunningObsNorm(nn.Module):
    """Running mean/variance of observations (parallel Welford), clipped normalisation.

    `update()` is called by the trainer on HF observations only; LF observations are normalised
    with the same statistics, so both fidelities see one input scaling.
    """

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.clip = clip
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(eps, dtype=torch.float64))

    @torch.no_grad()
    def update(self, obs: np.ndarray | torch.Tensor) -> None:
        x = torch.as_tensor(obs, dtype=torch.float64).reshape(-1, self.mean.shape[0])
        batch_mean, batch_var, n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        m2 = self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """clip((obs - mean) / sqrt(var + eps)) in float32 (statistics kept in float64)."""
        shift, scale = self._affine()
        z = obs.to(torch.float32) - shift  # a new tensor: the rest works in place on it
        return z.mul_(scale).clamp_(-self.clip, self.clip)

    def _affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1 / sqrt(var + eps)) in float32, recomputed only when the statistics change.

        The key holds the buffers' identities and in-place versions, so `update()`,
        `load_state_dict()` and `.to()` all invalidate it.
        """
        key = (id(self.mean), self.mean._version, id(self.var), self.var._version)
        if getattr(self, "_affine_key", None) != key:
            with torch.no_grad():
                scale = torch.rsqrt(self.var + self.eps).to(torch.float32)
                self._affine_cache = (self.mean.to(torch.float32), scale)
            self._affine_key = key
        return self._affine_cache


class GaussianPolicy(nn.Module):
    """Actor: normalised obs -> mean action; state-independent log-std."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: tuple[int, ...] = (64, 64),
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.obs_norm = RunningObsNorm(obs_dim)
        self.mu = mlp(obs_dim, act_dim, hidden, out_std=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action mu(s) for raw (unnormalised) observations."""
        return self.mu(self.obs_norm(obs))

    def std(self) -> torch.Tensor:
        return self.log_std.exp()

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Sum over action dims of log N(action; mu(obs), sigma^2)."""
        dist = torch.distributions.Normal(self.mean(obs), self.std())
        return dist.log_prob(action).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (0.5 + 0.5 * math.log(2 * math.pi) + self.log_std).sum()

    def rollout_policy(self) -> RolloutPolicy:
        """A frozen float32 copy of the current actor for rollouts (see `RolloutPolicy`).

        Take a new one after every update: the copy does not follow the parameters.
        """
        return RolloutPolicy.of(self)

    def act(self, obs: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """a = mu(obs) + sigma * eps for a batch of raw observations (numpy in, numpy out).

        For one-off calls: it copies the weights each time. A rollout loop takes
        `rollout_policy()` once and calls its `act`.
        """
        return self.rollout_policy().act(obs, eps)


class RolloutPolicy(NamedTuple):
    """A `GaussianPolicy`'s actor frozen for rollouts: mu(obs) in the fewest torch calls.

    The batched LF collector evaluates the policy once per control step for thousands of
    copies, where each torch call's fixed cost (~5-10 us here) counts as much as the
    arithmetic. This copy computes `GaussianPolicy.mean` (to float32 rounding; tested) with
    plain tensor calls, no module dispatch or autograd bookkeeping, and one `addmm` and one
    in-place `sigmoid_` per hidden layer: since tanh(z) = 2 sigmoid(2 z) - 1, a hidden
    `Linear` + `Tanh` becomes u = sigmoid(x W'^T + b') with W' = 2 W and b' = 2 b, and the
    layer after it reads 2 u - 1 through its weights, W'' = 2 W and b'' = b - W 1 (folded
    in float64, stored in float32).
    """

    shift: torch.Tensor  # observation mean
    scale: torch.Tensor  # 1 / sqrt(var + eps)
    clip: float  # normalised observations are clipped to [-clip, clip]
    layers: tuple[tuple[torch.Tensor, torch.Tensor, bool], ...]  # (bias, W^T, then sigmoid?)
    std: np.ndarray  # sigma, float32

    @staticmethod
    @torch.no_grad()
    def of(policy: GaussianPolicy) -> RolloutPolicy:
        """Freeze `policy`'s current normaliser, mean network and log-std."""
        modules = list(policy.mu)
        layers = []
        after_tanh = False  # this Linear's input is u, with the tanh output = 2 u - 1
        for i, module in enumerate(modules):
            if isinstance(module, Tanh):
                continue
            if not isinstance(module, nn.Linear):
                raise TypeError(f"RolloutPolicy supports Linear and policy.Tanh layers, got "
                                f"{module}")
            weight, bias = module.weight.double(), module.bias.double()
            if after_tanh:
                weight, bias = 2.0 * weight, bias - weight.sum(dim=1)
            after_tanh = i + 1 < len(modules) and isinstance(modules[i + 1], Tanh)
            if after_tanh:
                weight, bias = 2.0 * weight, 2.0 * bias
            layers.append((bias.float(), weight.t().float().contiguous(), after_tanh))
        norm = policy.obs_norm
        return RolloutPolicy(
            shift=norm.mean.float(),
            scale=torch.rsqrt(norm.var + norm.eps).float(),
            clip=float(norm.clip),
            layers=tuple(layers),
            std=policy.std().detach().numpy().astype(np.float32),
        )

    def mean(self, obs: np.ndarray) -> np.ndarray:
        """mu(obs) for a batch of raw observations, numpy in, float32 numpy out.

        Every tensor of the snapshot is a constant (no grad), so autograd records nothing and
        no grad-mode context (~15 us a call) is needed.
        """
        x = torch.as_tensor(obs, dtype=torch.float32) - self.shift
        x.mul_(self.scale).clamp_(-self.clip, self.clip)
        for bias, weight_t, sigmoid in self.layers:
            x = torch.addmm(bias, x, weight_t)
            if sigmoid:
                x.sigmoid_()
        return x.numpy()

    def act(self, obs: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """a = mu(obs) + sigma * eps, float32 (eps: standard normal noise, one row per obs)."""
        return self.mean(obs) + self.std * np.asarray(eps, dtype=np.float32)


class Critic(nn.Module):
    """State-value function on normalised observations (normaliser shared with the actor)."""

    def __init__(self, obs_norm: RunningObsNorm, obs_dim: int, hidden: tuple[int, ...] = (64, 64)):
        super().__init__()
        self.obs_norm = obs_norm
        self.v = mlp(obs_dim, 1, hidden, out_std=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.v(self.obs_norm(obs)).squeeze(-1)
