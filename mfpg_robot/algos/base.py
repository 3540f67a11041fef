"""What every policy-gradient algorithm shares: networks, optimiser, update rule, state.

An algorithm owns a `GaussianPolicy` (actor with its observation normaliser), a `Critic`
sharing that normaliser, one Adam optimiser over both (CleanRL: eps 1e-5), and the update
rule from `mfpg_robot.accel`. Every optimisation step goes through `_optimizer_step`, so an
accelerated rule (optimistic, extragradient, Nesterov, meta) applies to every algorithm.

Per iteration the trainer calls `update(buffer, progress)`: the learning rate is annealed,
the subclass's `_learn` takes its gradient steps on the HF rollout, then the observation
normaliser absorbs the rollout's observations. Updating it after the gradient steps keeps
the normalisation the rollout was collected with fixed while its log-probs are re-evaluated,
so the first PPO ratio is exactly 1.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mfpg_robot.accel import make_accelerator
from mfpg_robot.buffer import RolloutBuffer
from mfpg_robot.config import TrainConfig
from mfpg_robot.policy import Critic, GaussianPolicy
from mfpg_robot.reward_norm import RewardScaler


class Algorithm(ABC):
    """Base of ppo / reinforce (and their multi-fidelity variants)."""

    def __init__(self, cfg: TrainConfig, obs_dim: int, act_dim: int) -> None:
        self.cfg = cfg
        a = cfg.algo
        hidden = tuple(a.hidden)
        self.policy = GaussianPolicy(obs_dim, act_dim, hidden, a.log_std_init)
        self.critic = Critic(self.policy.obs_norm, obs_dim, hidden)
        self.params = [*self.policy.parameters(), *self.critic.parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=a.lr, eps=1e-5)
        self.accelerator = make_accelerator(a.accel, self.params, self.optimizer,
                                            **a.accel_options)
        self.reward_scaler = RewardScaler(a.gamma, a.reward_clip) if a.norm_reward else None
        self.generator = torch.Generator().manual_seed(cfg.seed)  # minibatch shuffles

    # -- the pieces subclasses and MF variants reuse ----------------------------------------
    def _optimizer_step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The one place parameters change: `closure` zeroes grads, computes the loss,
        backpropagates and clips the gradient; the accelerator may call it more than once."""
        return self.accelerator.step(closure)

    def _clipped_closure(self, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """Wrap a loss into the closure `_optimizer_step` expects (zero, backward, clip)."""

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad()
            loss = loss_fn()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.algo.max_grad_norm)
            return loss

        return closure

    def scaled_rewards(self, buffer: RolloutBuffer) -> np.ndarray:
        """HF rewards as the learner sees them (running-std scaled if `norm_reward`)."""
        if self.reward_scaler is None:
            return buffer.rewards
        return self.reward_scaler.update_scale(buffer.rewards, buffer.dones)

    @torch.no_grad()
    def values(self, buffer: RolloutBuffer) -> tuple[np.ndarray, np.ndarray]:
        """V(obs_t) and V(next_obs_t) for every row, with the current critic."""
        v = self.critic(torch.as_tensor(buffer.obs)).double().numpy()
        v_next = self.critic(torch.as_tensor(buffer.next_obs)).double().numpy()
        return v, v_next

    # -- the iteration --------------------------------------------------------------------
    def update(self, buffer: RolloutBuffer, progress: float) -> dict[str, float]:
        """One iteration's learning on `buffer`; `progress` in [0, 1) = share of budget spent."""
        if self.cfg.algo.anneal_lr:
            lr = (1.0 - progress) * self.cfg.algo.lr
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        metrics = self._learn(buffer)
        self.policy.obs_norm.update(buffer.obs)
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        metrics["std_mean"] = float(self.policy.std().detach().mean())
        if self.cfg.algo.accel != "none":
            metrics.update({f"accel/{k}": float(v) for k, v in self.accelerator.stats().items()})
        return metrics

    @abstractmethod
    def _learn(self, buffer: RolloutBuffer) -> dict[str, float]:
        """Gradient steps on one HF rollout; returns scalar metrics (losses, KL, ...)."""

    def close(self) -> None:  # noqa: B027 (a hook: the base holds nothing to release)
        """Release what the algorithm holds besides tensors (MF variants: LF thread pools)."""

    # -- checkpoint state -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "reward_scaler": self.reward_scaler and self.reward_scaler.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.reward_scaler is not None and state["reward_scaler"] is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        self.generator.set_state(state["generator"])
