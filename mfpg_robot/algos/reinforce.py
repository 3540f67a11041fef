"""REINFORCE with a learned baseline.

Per iteration, on one HF rollout:
1. rewards scaled if `algo.norm_reward` (off in the REINFORCE configs: raw returns);
2. discounted Monte-Carlo returns G_t (GAE with lambda = 1: bootstrapped from the critic only
   where the rollout cuts an episode, i.e. at time-limit truncation and at the rollout end);
3. advantages A_t = G_t - V(s_t) from the critic as baseline (normalised over the batch if
   `norm_adv`), fixed for the iteration;
4. `update_epochs` full-batch optimiser steps (default configs: 1; `target_kl` does not
   stop them) on -mean(f) + vf_coef * 0.5 mean((V - G)^2) - ent_coef * entropy, with the
   per-sample surrogate f = A * log pi(a|s) (the quantity MF-REINFORCE forms its control
   variate on).
The epoch loop, learning-rate annealing and observation normalisation are in
`Algorithm._learn` and `Algorithm.update`.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from mfpg_robot.algos.base import Algorithm, LossFn
from mfpg_robot.algos.ppo import Batch, explained_variance, make_batch, normalize_advantages
from mfpg_robot.buffer import RolloutBuffer
from mfpg_robot.gae import compute_gae


def reinforce_surrogate(logp: Tensor, advantages: Tensor) -> Tensor:
    """Per-sample REINFORCE objective f = A * log pi(a|s) (to be maximised)."""
    return advantages * logp


@torch.no_grad()
def reinforce_diagnostics(new_logp: Tensor, old_logp: Tensor, pg_loss: Tensor, v_loss: Tensor,
                          entropy: Tensor) -> dict[str, Tensor]:
    """Losses, entropy and the approximate KL (r - 1) - log r from the sampling policy."""
    logratio = new_logp - old_logp
    return {
        "loss/policy": pg_loss.detach(),
        "loss/value": v_loss.detach(),
        "entropy": entropy.detach(),
        "approx_kl": ((logratio.exp() - 1) - logratio).mean(),
    }


class Reinforce(Algorithm):
    """Monte-Carlo policy gradient with a critic baseline."""

    def prepare(self, buffer: RolloutBuffer) -> Batch:
        """Scaled rewards -> Monte-Carlo returns and baseline advantages -> tensors."""
        rewards = self.scaled_rewards(buffer)
        values, next_values = self.values(buffer)
        adv, ret = compute_gae(rewards, values, next_values, buffer.terminated, buffer.dones,
                               self.cfg.algo.gamma, 1.0)
        batch = make_batch(buffer, adv, ret, values)
        if self.cfg.algo.norm_adv and len(batch) > 1:
            batch.advantages = normalize_advantages(batch.advantages)
        return batch

    def minibatch_losses(self, batch: Batch) -> list[LossFn]:
        """One full-batch step per epoch."""
        return [partial(self.batch_loss, batch)]

    def batch_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """REINFORCE loss on the whole batch and its diagnostics (detached)."""
        a = self.cfg.algo
        logp = self.policy.log_prob(batch.obs, batch.actions)
        pg_loss = -reinforce_surrogate(logp, batch.advantages).mean()
        v_loss = 0.5 * ((self.critic(batch.obs) - batch.returns) ** 2).mean()
        entropy = self.policy.entropy()
        loss = pg_loss - a.ent_coef * entropy + a.vf_coef * v_loss
        return loss, reinforce_diagnostics(logp, batch.logprobs, pg_loss, v_loss, entropy)

    def finish(self, batch: Batch) -> dict[str, float]:
        """How much of the returns' variance the rollout's values explained."""
        return {"explained_variance": explained_variance(batch.values.numpy(),
                                                         batch.returns.numpy())}
