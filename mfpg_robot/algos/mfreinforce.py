"""MF-REINFORCE (arXiv 2503.05696): REINFORCE with the multi-fidelity control variate.

Per iteration, on one HF rollout:
1. HF advantages exactly as REINFORCE (Monte-Carlo returns minus the HF critic baseline,
   normalised over the batch if `norm_adv`);
2. LF samples paired with the rollout (`lf.pairing`), their advantages Monte-Carlo over each
   LF rollout (lambda = 1), bootstrapped by the LF critic where a segment or episode is cut,
   minus the LF critic baseline, normalised together (paired and reference by one transform);
3. `c` from the scalar surrogates f = A log pi of the epoch-0 pairs (the paper's choice)
   through the EMA tracker;
4. `update_epochs` full-batch optimiser steps on
   -[mean(f_H) - c (sum(f_P) - sum(f_R) / ref_per_paired) / n_HF] + vf_coef * HF value loss
   - ent_coef * entropy (the sum form of `mf_objective`);
5. the LF critic regressed on LF Monte-Carlo targets (`MultiFidelity.finish`).
Steps 2 and 3 are `MultiFidelity.pair_lf`; the epoch loop is `Algorithm._learn`.
See `mfpg_robot.algos.mfbase` for the LF critic, normalisation and c choices.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor

from mfpg_robot.algos.base import LossFn
from mfpg_robot.algos.mfbase import LFSide, MFBatch, MultiFidelity
from mfpg_robot.algos.reinforce import Reinforce, reinforce_diagnostics, reinforce_surrogate
from mfpg_robot.buffer import RolloutBuffer
from mfpg_robot.config import TrainConfig
from mfpg_robot.estimators import mf_objective


class MFReinforce(MultiFidelity, Reinforce):
    """REINFORCE whose gradient is corrected by paired LF samples."""

    def __init__(self, cfg: TrainConfig, obs_dim: int, act_dim: int) -> None:
        super().__init__(cfg, obs_dim, act_dim)
        self.lf = LFSide(cfg, self.policy, self.critic, self.reward_scaler, gae_lambda=1.0)

    def prepare(self, buffer: RolloutBuffer) -> MFBatch:
        """HF advantages as REINFORCE; the paired LF samples and c (0 without both paired and
        reference samples: the correction needs both)."""
        batch = super().prepare(buffer)
        s = self.pair_lf(buffer, batch, batch.advantages.double().numpy())
        if s.c != 0.0 and (len(s.lf.paired) == 0 or len(s.lf.ref) == 0):
            s.c = 0.0
        return s

    def minibatch_losses(self, s: MFBatch) -> list[LossFn]:
        """One full-batch step per epoch."""
        return [partial(self.mf_batch_loss, s)]

    def mf_batch_loss(self, s: MFBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """MF-REINFORCE loss on the whole batch and its diagnostics (detached)."""
        a = self.cfg.algo
        batch, paired, ref = s.hf, s.paired, s.ref
        logp = self.policy.log_prob(batch.obs, batch.actions)
        f_h = reinforce_surrogate(logp, batch.advantages)
        f_p = reinforce_surrogate(self.policy.log_prob(paired.obs, paired.actions),
                                  paired.advantages)
        f_r = reinforce_surrogate(self.policy.log_prob(ref.obs, ref.actions), ref.advantages)
        pg_loss = -mf_objective(f_h, f_p, f_r, s.c, s.lf.ref_per_paired)
        v_loss = 0.5 * ((self.critic(batch.obs) - batch.returns) ** 2).mean()
        entropy = self.policy.entropy()
        loss = pg_loss - a.ent_coef * entropy + a.vf_coef * v_loss
        return loss, reinforce_diagnostics(logp, batch.logprobs, pg_loss, v_loss, entropy)
