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
6. the LF critic regressed on LF value targets.

Why not the naive extension (separate shuffles of HF and LF data, separate normalisations,
per-minibatch advantage normalisation): the control variate works through the covariance of
each HF sample with its own LF partner. Here a minibatch is a random set of HF rows together
with the LF samples anchored to those rows (their partners and, for synced pairing, the
reference draws from the same states); the episode pool, independent of the rows, is split
at random. Every minibatch is then an unbiased, correlated MF estimate, through all epochs.
See `mfpg_robot.algos.mfbase` for the LF critic, normalisation and c choices.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mfpg_robot.algos.mfbase import LFSide, MultiFidelity, normalise
from mfpg_robot.algos.ppo import (
    PPO,
    Batch,
    clipped_surrogate,
    explained_variance,
    ppo_diagnostics,
    record_first_gradient_eval,
    value_loss,
)
from mfpg_robot.buffer import RolloutBuffer
from mfpg_robot.config import TrainConfig
from mfpg_robot.estimators import mf_objective
from mfpg_robot.pairing import LFPart, LFSamples


def surrogate_at_old(policy: torch.nn.Module, obs: Tensor, act: Tensor, adv: Tensor) -> Tensor:
    """A * log pi(a|s): per-sample, its gradient at the sampling policy equals the gradient of
    both the clipped PPO surrogate (ratio 1) and the REINFORCE surrogate."""
    return adv * policy.log_prob(obs, act)


class LFTensors:
    """An `LFPart` as float32 tensors with (normalised) advantages."""

    def __init__(self, part: LFPart, advantages: np.ndarray) -> None:
        self.obs = torch.as_tensor(part.obs)
        self.actions = torch.as_tensor(part.actions)
        self.logprobs = torch.as_tensor(part.logprobs, dtype=torch.float32)
        self.advantages = torch.as_tensor(advantages, dtype=torch.float32)


def lf_advantages(lf: LFSamples, norm: bool) -> tuple[np.ndarray, np.ndarray]:
    """Paired and reference LF advantages, normalised together (one transform for both)."""
    p, r = lf.paired.advantages, lf.ref.advantages
    if not norm:
        return p, r
    both = np.concatenate([p, r])
    return normalise(p, both), normalise(r, both)


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

    def mf_minibatch_loss(
        self, batch: Batch, adv_h: Tensor, paired: LFTensors, ref: LFTensors,
        idx: tuple[Tensor, Tensor, Tensor], c: float, ref_per_paired: float,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """MF-PPO loss on one minibatch (HF rows, their LF partners and references)."""
        a = self.cfg.algo
        ih, ip, ir = idx
        obs = batch.obs[ih]
        new_logp = self.policy.log_prob(obs, batch.actions[ih])
        f_h = clipped_surrogate(new_logp, batch.logprobs[ih], adv_h[ih], a.clip_coef)
        f_p = clipped_surrogate(self.policy.log_prob(paired.obs[ip], paired.actions[ip]),
                                paired.logprobs[ip], paired.advantages[ip], a.clip_coef)
        f_r = clipped_surrogate(self.policy.log_prob(ref.obs[ir], ref.actions[ir]),
                                ref.logprobs[ir], ref.advantages[ir], a.clip_coef)
        c_mb = c if (ip.numel() and ir.numel()) else 0.0
        pg_loss = -mf_objective(f_h, f_p, f_r, c_mb, ref_per_paired)
        v_loss = value_loss(self.critic(obs), batch.values[ih], batch.returns[ih],
                            a.clip_coef, a.clip_vloss).mean()
        entropy = self.policy.entropy()
        loss = pg_loss - a.ent_coef * entropy + a.vf_coef * v_loss
        info = ppo_diagnostics(new_logp, batch.logprobs[ih], a.clip_coef, pg_loss, v_loss,
                               entropy)
        return loss, info

    def _learn(self, buffer: RolloutBuffer) -> dict[str, float]:
        a = self.cfg.algo
        batch = self.prepare(buffer)
        lf = self.lf.collect(buffer)
        adv_np = batch.advantages.double().numpy()
        adv_np = normalise(adv_np, adv_np) if a.norm_adv else adv_np
        adv_h = torch.as_tensor(adv_np, dtype=torch.float32)
        adv_p, adv_r = lf_advantages(lf, a.norm_adv)
        c, rho, c_batch = self.lf.coefficient(adv_np * buffer.logprobs,
                                              adv_p * lf.paired.logprobs,
                                              adv_r * lf.ref.logprobs, lf)
        grad = self.lf.gradient_stats(surrogate_at_old, (batch.obs, batch.actions, adv_h), lf,
                                      (adv_p, adv_r), c)
        paired, ref = LFTensors(lf.paired, adv_p), LFTensors(lf.ref, adv_r)

        sums: dict[str, float] = {}
        n_steps = 0
        for _epoch in range(a.update_epochs):
            for idx in group_minibatches(len(batch), lf, a.num_minibatches, self.generator):
                last: dict[str, Tensor] = {}

                def loss_fn(idx: tuple[Tensor, Tensor, Tensor] = idx,
                            last: dict[str, Tensor] = last) -> Tensor:
                    loss, info = self.mf_minibatch_loss(batch, adv_h, paired, ref, idx, c,
                                                        lf.ref_per_paired)
                    record_first_gradient_eval(last, info)
                    return loss

                self._optimizer_step(self._clipped_closure(loss_fn))
                for k, v in last.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n_steps += 1
            if a.target_kl is not None and float(last["approx_kl"]) > a.target_kl:
                break
        critic_loss = self.lf.fit_critic(lf, len(buffer), a.update_epochs, a.num_minibatches,
                                         self.generator)
        metrics = {k: v / n_steps for k, v in sums.items()}
        metrics["grad_steps"] = float(n_steps)
        metrics["explained_variance"] = explained_variance(batch.values.numpy(),
                                                           batch.returns.numpy())
        metrics.update(self.mf_metrics(buffer, c, rho, c_batch, grad, lf, critic_loss))
        return metrics


def build_algorithm(cfg: TrainConfig, obs_dim: int, act_dim: int) -> MFPPO:
    """Entry point used by `mfpg_robot.algos.make_algorithm`."""
    return MFPPO(cfg, obs_dim, act_dim)
