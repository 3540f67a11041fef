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
5. the LF critic regressed on LF Monte-Carlo targets.
See `mfpg_robot.algos.mfbase` for the LF critic, normalisation and c choices.
"""

from __future__ import annotations

from torch import Tensor

from mfpg_robot.algos.mfbase import LFSide, MultiFidelity
from mfpg_robot.algos.mfppo import LFTensors, lf_advantages, surrogate_at_old
from mfpg_robot.algos.ppo import Batch, explained_variance, record_first_gradient_eval
from mfpg_robot.algos.reinforce import Reinforce, reinforce_diagnostics, reinforce_surrogate
from mfpg_robot.buffer import RolloutBuffer
from mfpg_robot.config import TrainConfig
from mfpg_robot.estimators import mf_objective


class MFReinforce(MultiFidelity, Reinforce):
    """REINFORCE whose gradient is corrected by paired LF samples."""

    def __init__(self, cfg: TrainConfig, obs_dim: int, act_dim: int) -> None:
        super().__init__(cfg, obs_dim, act_dim)
        self.lf = LFSide(cfg, self.policy, self.critic, self.reward_scaler, gae_lambda=1.0)

    def mf_batch_loss(
        self, batch: Batch, paired: LFTensors, ref: LFTensors, c: float, ref_per_paired: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """MF-REINFORCE loss on the whole batch and its diagnostics (detached)."""
        a = self.cfg.algo
        logp = self.policy.log_prob(batch.obs, batch.actions)
        f_h = reinforce_surrogate(logp, batch.advantages)
        f_p = reinforce_surrogate(self.policy.log_prob(paired.obs, paired.actions),
                                  paired.advantages)
        f_r = reinforce_surrogate(self.policy.log_prob(ref.obs, ref.actions), ref.advantages)
        pg_loss = -mf_objective(f_h, f_p, f_r, c, ref_per_paired)
        v_loss = 0.5 * ((self.critic(batch.obs) - batch.returns) ** 2).mean()
        entropy = self.policy.entropy()
        loss = pg_loss - a.ent_coef * entropy + a.vf_coef * v_loss
        return loss, reinforce_diagnostics(logp, batch.logprobs, pg_loss, v_loss, entropy)

    def _learn(self, buffer: RolloutBuffer) -> dict[str, float]:
        a = self.cfg.algo
        batch = self.prepare(buffer)
        lf = self.lf.collect(buffer)
        adv_p, adv_r = lf_advantages(lf, a.norm_adv)
        f_h = batch.advantages.double().numpy() * buffer.logprobs
        c, rho, c_batch = self.lf.coefficient(
            f_h, adv_p * lf.paired.logprobs, adv_r * lf.ref.logprobs, lf)
        grad = self.lf.gradient_stats(surrogate_at_old,
                                      (batch.obs, batch.actions, batch.advantages), lf,
                                      (adv_p, adv_r), c)
        paired, ref = LFTensors(lf.paired, adv_p), LFTensors(lf.ref, adv_r)
        if c != 0.0 and (len(lf.paired) == 0 or len(lf.ref) == 0):
            c = 0.0
        sums: dict[str, float] = {}
        for _ in range(a.update_epochs):
            last: dict[str, Tensor] = {}

            def loss_fn(last: dict[str, Tensor] = last) -> Tensor:
                loss, info = self.mf_batch_loss(batch, paired, ref, c, lf.ref_per_paired)
                record_first_gradient_eval(last, info)
                return loss

            self._optimizer_step(self._clipped_closure(loss_fn))
            for k, v in last.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        critic_loss = self.lf.fit_critic(lf, len(buffer), a.update_epochs,
                                         max(1, a.num_minibatches), self.generator)
        metrics = {k: v / a.update_epochs for k, v in sums.items()}
        metrics["grad_steps"] = float(a.update_epochs)
        metrics["explained_variance"] = explained_variance(batch.values.numpy(),
                                                           batch.returns.numpy())
        metrics.update(self.mf_metrics(buffer, c, rho, c_batch, grad, lf, critic_loss))
        return metrics


def build_algorithm(cfg: TrainConfig, obs_dim: int, act_dim: int) -> MFReinforce:
    """Entry point used by `mfpg_robot.algos.make_algorithm`."""
    return MFReinforce(cfg, obs_dim, act_dim)
