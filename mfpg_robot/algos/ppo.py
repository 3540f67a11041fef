"""PPO with a clipped surrogate, after CleanRL's `ppo_continuous_action.py`.

Per iteration, on one HF rollout of `hf.steps_per_iter` steps:
1. rewards scaled by the running std of the discounted return (`algo.norm_reward`);
2. GAE advantages and lambda-returns, bootstrapping time-limit truncations (`mfpg_robot.gae`);
3. `update_epochs` passes over the batch in `num_minibatches` shuffled minibatches, each one
   optimiser step on  -f + vf_coef * value_loss - ent_coef * entropy,  where f is the
   per-sample clipped surrogate (advantages normalised per minibatch if `norm_adv`), the
   value loss is clipped around the rollout's values (`clip_vloss`), and the gradient's
   global norm is clipped to `max_grad_norm`;
4. early stop of the epochs once the approximate KL of an epoch's last minibatch exceeds
   `target_kl` (if set).
The epoch loop, learning-rate annealing and observation normalisation are in
`Algorithm._learn` and `Algorithm.update`; `PPO` supplies the steps above as its pieces.

The per-sample functions (`clipped_surrogate`, `value_loss`, `normalize_advantages`) are the
pieces the multi-fidelity variant reuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor

from mfpg_robot.algos.base import Algorithm, LossFn
from mfpg_robot.buffer import RolloutBuffer
from mfpg_robot.gae import compute_gae


def clipped_surrogate(
    new_logp: Tensor, old_logp: Tensor, advantages: Tensor, clip_coef: float
) -> Tensor:
    """Per-sample PPO objective f = min(r A, clip(r, 1 - eps, 1 + eps) A), r = pi/pi_old.

    To be maximised; PPO's policy loss is -f.mean().
    """
    ratio = (new_logp - old_logp).exp()
    return torch.min(ratio * advantages, ratio.clamp(1 - clip_coef, 1 + clip_coef) * advantages)


def value_loss(
    new_values: Tensor, old_values: Tensor, returns: Tensor, clip_coef: float, clip: bool
) -> Tensor:
    """Per-sample 0.5 (V - R)^2, or its clipped version max(unclipped, clipped) (CleanRL)."""
    unclipped = (new_values - returns) ** 2
    if not clip:
        return 0.5 * unclipped
    v_clipped = old_values + (new_values - old_values).clamp(-clip_coef, clip_coef)
    return 0.5 * torch.max(unclipped, (v_clipped - returns) ** 2)


def normalize_advantages(advantages: Tensor) -> Tensor:
    """Zero mean, unit std (CleanRL: per minibatch, std + 1e-8)."""
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


@dataclass
class Batch:
    """One rollout as float32 tensors, ready for minibatching (row t = HF step t)."""

    obs: Tensor
    actions: Tensor
    logprobs: Tensor
    advantages: Tensor
    returns: Tensor
    values: Tensor

    def __len__(self) -> int:
        return self.obs.shape[0]


def make_batch(
    buffer: RolloutBuffer, advantages: np.ndarray, returns: np.ndarray, values: np.ndarray
) -> Batch:
    """Tensors of the buffer's rows with their advantages, returns and values."""
    f32 = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    return Batch(f32(buffer.obs), f32(buffer.actions), f32(buffer.logprobs), f32(advantages),
                 f32(returns), f32(values))


@torch.no_grad()
def ppo_diagnostics(new_logp: Tensor, old_logp: Tensor, clip_coef: float, pg_loss: Tensor,
                    v_loss: Tensor, entropy: Tensor) -> dict[str, Tensor]:
    """Losses, entropy, approximate KL (CleanRL's (r - 1) - log r) and the clipped fraction."""
    logratio = new_logp - old_logp
    ratio = logratio.exp()
    return {
        "loss/policy": pg_loss.detach(),
        "loss/value": v_loss.detach(),
        "entropy": entropy.detach(),
        "approx_kl": ((ratio - 1) - logratio).mean(),
        "clipfrac": ((ratio - 1).abs() > clip_coef).float().mean(),
    }


def explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    """1 - Var(R - V) / Var(R); NaN when the returns are constant."""
    var = np.var(returns)
    return float("nan") if var == 0 else float(1 - np.var(returns - values) / var)


class PPO(Algorithm):
    """Clipped-surrogate PPO on HF rollouts."""

    def prepare(self, buffer: RolloutBuffer) -> Batch:
        """Scaled rewards -> GAE (with truncation bootstrap) -> tensors."""
        a = self.cfg.algo
        rewards = self.scaled_rewards(buffer)
        values, next_values = self.values(buffer)
        adv, ret = compute_gae(rewards, values, next_values, buffer.terminated, buffer.dones,
                               a.gamma, a.gae_lambda)
        return make_batch(buffer, adv, ret, values)

    def minibatch_losses(self, batch: Batch) -> list[LossFn]:
        """A fresh shuffle of the rows split into `num_minibatches` minibatches."""
        perm = torch.randperm(len(batch), generator=self.generator)
        return [partial(self.minibatch_loss, batch, idx)
                for idx in perm.tensor_split(self.cfg.algo.num_minibatches)]

    def minibatch_loss(self, batch: Batch, idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """PPO loss on rows `idx` and its diagnostics (detached)."""
        a = self.cfg.algo
        obs = batch.obs[idx]
        new_logp = self.policy.log_prob(obs, batch.actions[idx])
        adv = batch.advantages[idx]
        if a.norm_adv and len(idx) > 1:
            adv = normalize_advantages(adv)
        f = clipped_surrogate(new_logp, batch.logprobs[idx], adv, a.clip_coef)
        v_loss = value_loss(self.critic(obs), batch.values[idx], batch.returns[idx],
                            a.clip_coef, a.clip_vloss).mean()
        pg_loss = -f.mean()
        entropy = self.policy.entropy()
        loss = pg_loss - a.ent_coef * entropy + a.vf_coef * v_loss
        info = ppo_diagnostics(new_logp, batch.logprobs[idx], a.clip_coef, pg_loss, v_loss,
                               entropy)
        return loss, info

    def stop_epochs(self, last: dict[str, Tensor]) -> bool:
        """CleanRL's early stop: the approximate KL of the epoch's last minibatch > target_kl."""
        target_kl = self.cfg.algo.target_kl
        return target_kl is not None and float(last["approx_kl"]) > target_kl

    def finish(self, batch: Batch) -> dict[str, float]:
        """How much of the returns' variance the rollout's values explained."""
        return {"explained_variance": explained_variance(batch.values.numpy(),
                                                         batch.returns.numpy())}

    @property
    def restart_window(self) -> int:
        """Nesterov's restart is tested once per epoch (see `Algorithm._restart_test`)."""
        return self.cfg.algo.num_minibatches
