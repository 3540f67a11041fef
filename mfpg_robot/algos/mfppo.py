"""MF-PPO: PPO whose surrogate carries the multi-fidelity control variate.

Per iteration, on one HF rollout:
1. HF advantages exactly as PPO (scaled rewards, GAE with the HF critic);
2. LF samples paired with the rollout (`lf.pairing`: episode or synced, `mfpg_robot.pairing`),
   their advantages from GAE with the LF critic;
3. advantages normalised over the iteration (HF by HF statistics; LF paired and reference
   together by one LF mean/std) if `norm_adv`;
4. `c` from the epoch-0 pairs through the EMA tracker, on the values A log pi at the sampling
   policy: their gradient is the clipped surrogate's gradient at ratio 1, A grad log pi. (The
   clipped term's own value there, A, drops the score factor that paired samples share, and
   its pair moments understate how the gradients correlate.);
5. `update_epochs` passes, each over `num_minibatches` minibatches, each one optimiser step on
   -[mean_mb(f_H) - c (sum_mb(f_P) - sum_mb(f_R) / ref_per_paired) / n_mb]
   + vf_coef * HF value loss - ent_coef * entropy, with f the per-sample clipped surrogate of
   each sample's own ratio, advantage and old log-prob, n_mb the minibatch's HF rows (the sum
   form of `mf_objective`: exactly zero-mean correction with a random number of LF samples);
6. the LF critic regressed on LF value targets (`MultiFidelity.finish`).
Steps 2 and 4 are `MultiFidelity.pair_lf`; the epoch loop is `Algorithm._learn`, and the
early stop on `target_kl` is PPO's.

Why not the naive extension (separate shuffles of HF and LF data, separate normalisations,
per-minibatch advantage normalisation): the control variate works through the covariance of
each HF sample with its own LF partner. Here a minibatch is a random set of HF rows together
with the LF samples anchored to those rows (their partners and, for synced pairing, the
reference draws from the same states); the episode pool, independent of the rows, is split
at random. Every minibatch is then an unbiased, correlated MF estimate, through all epochs.
See `mfpg_robot.algos.mfbase` for the LF critic, normalisation and c choices.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import Tensor

from mfpg_robot.algos.base import LossFn
from mfpg_robot.algos.mfbase import LFSide, MFBatch, MultiFidelity, normalise
from mfpg_robot.algos.ppo import PPO, clipped_surrogate, ppo_diagnostics, value_loss
from mfpg_robot.buffer import RolloutBuffer
from mfpg_robot.config import TrainConfig
from mfpg_robot.estimators import mf_objective
from mfpg_robot.pairing import LFSamples


def group_minibatches(
    n_hf: int, lf: LFSamples, n_mb: int, generator: torch.Generator
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(HF rows, paired LF samples, reference LF samples) of each minibatch.

    HF rows are shuffled and split; an LF sample follows its anchor row; pooled reference
    samples (anchor -1) are shuffled and split evenly.
    """
    perm = torch.randperm(n_hf, generator=generator)
    hf_chunks = perm.tensor_split(n_mb)
    mb_of_row = np.empty(n_hf, dtype=np.int64)
    for j, chunk in enumerate(hf_chunks):
        mb_of_row[chunk.numpy()] = j
    p_mb = mb_of_row[lf.paired.anchor]
    anchor = lf.ref.anchor
    r_mb = np.where(anchor >= 0, mb_of_row[np.maximum(anchor, 0)], 0)
    pooled = np.flatnonzero(anchor < 0)
    if pooled.size:
        order = torch.randperm(pooled.size, generator=generator).numpy()
        r_mb[pooled[order]] = np.arange(pooled.size) % n_mb

    def split(mb: np.ndarray) -> list[Tensor]:
        order = np.argsort(mb, kind="stable")
        bounds = np.searchsorted(mb[order], np.arange(1, n_mb))
        return [torch.as_tensor(x) for x in np.split(order, bounds)]

    return list(zip(hf_chunks, split(p_mb), split(r_mb), strict=True))


class MFPPO(MultiFidelity, PPO):
    """PPO with HF/LF pairs kept together in every minibatch and a control-variate surrogate."""

    def __init__(self, cfg: TrainConfig, obs_dim: int, act_dim: int) -> None:
        super().__init__(cfg, obs_dim, act_dim)
        self.lf = LFSide(cfg, self.policy, self.critic, self.reward_scaler, cfg.algo.gae_lambda)

    def prepare(self, buffer: RolloutBuffer) -> MFBatch:
        """HF advantages as PPO, normalised over the iteration; the paired LF samples and c."""
        batch = super().prepare(buffer)
        adv = batch.advantages.double().numpy()
        adv = normalise(adv, adv) if self.cfg.algo.norm_adv else adv
        batch.advantages = torch.as_tensor(adv, dtype=torch.float32)
        return self.pair_lf(buffer, batch, adv)

    def minibatch_losses(self, s: MFBatch) -> list[LossFn]:
        """A fresh shuffle of the HF rows in `num_minibatches` minibatches, each with the LF
        samples anchored to its rows and its share of the reference pool."""
        groups = group_minibatches(len(s.hf), s.lf, self.cfg.algo.num_minibatches,
                                   self.generator)
        return [partial(self.mf_minibatch_loss, s, idx) for idx in groups]

    def mf_minibatch_loss(
        self, s: MFBatch, idx: tuple[Tensor, Tensor, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """MF-PPO loss on one minibatch (HF rows, their LF partners and references)."""
        a = self.cfg.algo
        batch, paired, ref = s.hf, s.paired, s.ref
        ih, ip, ir = idx
        obs = batch.obs[ih]
        new_logp = self.policy.log_prob(obs, batch.actions[ih])
        f_h = clipped_surrogate(new_logp, batch.logprobs[ih], batch.advantages[ih], a.clip_coef)
        f_p = clipped_surrogate(self.policy.log_prob(paired.obs[ip], paired.actions[ip]),
                                paired.logprobs[ip], paired.advantages[ip], a.clip_coef)
        f_r = clipped_surrogate(self.policy.log_prob(ref.obs[ir], ref.actions[ir]),
                                ref.logprobs[ir], ref.advantages[ir], a.clip_coef)
        c_mb = s.c if (ip.numel() and ir.numel()) else 0.0
        pg_loss = -mf_objective(f_h, f_p, f_r, c_mb, s.lf.ref_per_paired)
        v_loss = value_loss(self.critic(obs), batch.values[ih], batch.returns[ih],
                            a.clip_coef, a.clip_vloss).mean()
        entropy = self.policy.entropy()
        loss = pg_loss - a.ent_coef * entropy + a.vf_coef * v_loss
        info = ppo_diagnostics(new_logp, batch.logprobs[ih], a.clip_coef, pg_loss, v_loss,
                               entropy)
        return loss, info
