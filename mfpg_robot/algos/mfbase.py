"""The low-fidelity half of MF-PPO and MF-REINFORCE, and their shared bookkeeping.

Per iteration, `MultiFidelity.pair_lf` turns the HF batch into an `MFBatch` (the LF samples
paired with the rollout, their advantages, `c` and the gradient diagnostics) before the first
step, and `MultiFidelity.finish` fits the LF critic after the last one.

`LFSide` owns everything LF: the batched collector on the LF model (`lf.env`, `lf.fidelity`;
`sim.gym_collector.GymCollector` when `lf.env` is a plain Gymnasium MuJoCo env),
the pairing (`lf.pairing`) and where its chunks run (`lf.backend`: in this process, or on
`lf.workers` Ray actors, `mfpg_robot.lf_ray`), an LF critic with its own optimiser, the
control-variate coefficient tracker (`mf.c_ema`, `mf.min_pairs`) and the LF draws' key. LF
noise and starts come from generators keyed by (seed, collection), the collection counting
the iterations (`mfpg_robot.pairing`): resuming restores the count, and the samples do not
depend on the backend. A seeded generator (checkpointed) subsamples LF samples for the
critic's fit and the gradient diagnostics. Design choices (each keeps the HF/LF correlation
or the estimate unbiased):

- One observation normalisation for both fidelities: the LF critic and the policy share the
  policy's `RunningObsNorm`, updated on HF observations only (`Algorithm.update`), so a
  paired HF and LF state are scaled identically and the same eps gives the same action.
- LF rewards are scaled by the HF reward scaler without updating it.
- The LF critic is its own network trained on LF targets (bootstrapping LF segments and
  episodes needs LF values; HF values of LF states would be biased by the model gap). It
  starts as a copy of the HF critic, so that the value terms of HF and LF advantages agree
  at first instead of adding independent noise. Its separate Adam is not accelerated: only
  the policy and HF critic follow `algo.accel`.
- Advantages are normalised over the whole iteration, not per minibatch: HF with HF
  statistics, LF with one mean/std over paired and reference samples together (paired and
  reference must be transformed identically for the correction to stay zero-mean).
- `c` is estimated once per iteration from on-policy (epoch-0) pair moments, where they
  describe the samples, and applied from the EMA of earlier iterations (the current batch
  never sets its own c; see `mfpg_robot.estimators`). `mf.c_from` picks the moments: of the
  surrogates `A log pi` (default), or of the per-sample gradients projected on random
  directions with the reference pool's variance included (`estimators.projected_moments`).
- Diagnostics `mf/var_ratio_grad` and `mf/c_grad` come from those gradient projections and,
  like `1 - rho^2`, treat samples as independent: on long episodes they over-predict what the
  batch gradient gains (docs/mfpg.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mfpg_robot.algos.ppo import Batch
from mfpg_robot.buffer import RolloutBuffer
from mfpg_robot.config import TrainConfig, env_takes_fidelity
from mfpg_robot.estimators import (
    CoefEMA,
    MFStats,
    PairMoments,
    align_pairs,
    pair_moments,
    projected_moments,
    projected_sample_grads,
    projected_variance_ratio,
    random_directions,
)
from mfpg_robot.pairing import (
    CriticValues,
    EpisodePairing,
    LFCollector,
    LFPart,
    LFRunner,
    LFSamples,
    LocalLF,
    Pairing,
    SyncedPairing,
    identity_rewards,
)
from mfpg_robot.policy import Critic, GaussianPolicy
from mfpg_robot.reward_norm import RewardScaler
from sim.batched import BatchedCollector
from sim.gym_collector import GymCollector, env_spec

#: LF critic training samples per HF sample (random subset of the LF samples).
LF_CRITIC_SAMPLES_PER_HF = 8
#: Random directions for the measured gradient-variance ratio, and samples per side it uses.
STAT_DIRECTIONS = 2
STAT_MAX_SAMPLES = 4096
#: Seed offset of the LF draws and generator (keeps them independent of the HF noise stream).
LF_SEED_OFFSET = 7919


def hf_time_limit(env_id: str) -> int:
    """The HF env's episode step limit (episode pairing's LF horizon cap)."""
    spec = env_spec(env_id)
    if spec.max_episode_steps is None:
        raise ValueError(f"hf.env '{env_id}' has no max_episode_steps; episode pairing needs one")
    return int(spec.max_episode_steps)


def normalise(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(x - mean(ref)) / (std(ref) + 1e-8)."""
    if ref.size < 2:
        return x - (ref.mean() if ref.size else 0.0)
    return (x - ref.mean()) / (ref.std(ddof=1) + 1e-8)


def make_collector(env_id: str, fidelity: str, n_envs: int, nthread: int) -> LFCollector:
    """The LF collector of `env_id`: a `GymCollector` for a plain Gymnasium env (no fidelity
    argument; `fidelity` and `nthread` do not apply), else a `BatchedCollector`."""
    if env_takes_fidelity(env_id) is False:
        return GymCollector(env_id, n_envs=n_envs)
    return BatchedCollector(env_id, fidelity=fidelity, n_envs=n_envs, nthread=nthread)


class LFSide:
    """LF collection, LF critic and the coefficient c of one multi-fidelity algorithm."""

    def __init__(
        self, cfg: TrainConfig, policy: GaussianPolicy, hf_critic: Critic,
        reward_scaler: RewardScaler | None, gae_lambda: float,
    ) -> None:
        lf, a = cfg.lf, cfg.algo
        self.cfg, self.policy, self.reward_scaler = cfg, policy, reward_scaler
        env_id = lf.env or cfg.hf.env
        batch = lf.batch
        if lf.pairing == "synced":  # an HF row's M + 1 segments run in one batch
            batch = max(min(batch, cfg.hf.steps_per_iter * (lf.M + 1)), lf.M + 1)
        self.runner: LFRunner
        if lf.backend == "ray":  # here the collector only maps HF states to LF starts
            from mfpg_robot.lf_ray import RayLF

            self.collector = BatchedCollector(env_id, fidelity=lf.fidelity, n_envs=1, nthread=1)
            try:
                self.runner = RayLF(env_id, lf.fidelity, batch, lf.nthread, lf.workers,
                                    torch.get_num_threads())
            except BaseException:
                self.collector.close()
                raise
        else:
            self.collector = make_collector(env_id, lf.fidelity, batch, lf.nthread)
            self.runner = LocalLF(self.collector)
        if self.collector.obs_dim != policy.obs_dim or self.collector.act_dim != policy.act_dim:
            self.close()
            raise ValueError(
                f"lf.env '{env_id}' has obs/act dims ({self.collector.obs_dim}, "
                f"{self.collector.act_dim}) but hf.env has ({policy.obs_dim}, {policy.act_dim});"
                f" the LF env must be a model of the same task"
            )
        self.pairing: Pairing
        if lf.pairing == "synced":
            self.pairing = SyncedPairing(self.collector, lf.k, lf.M, a.gamma, gae_lambda,
                                         batch=batch, runner=self.runner)
        else:
            self.pairing = EpisodePairing(self.collector, lf.lf_pool_per_hf,
                                          hf_time_limit(cfg.hf.env), a.gamma, gae_lambda,
                                          same_starts=lf.same_starts, batch=batch,
                                          runner=self.runner)
        self.critic = copy.deepcopy(hf_critic)
        self.critic.obs_norm = policy.obs_norm  # shared, not a copy
        self.critic_opt = torch.optim.Adam(self.critic.v.parameters(), lr=a.lr, eps=1e-5)
        self.coef = CoefEMA(cfg.mf.c_ema, cfg.mf.min_pairs)
        self.seed = cfg.seed + LF_SEED_OFFSET
        self.collections = 0  # LF collections made: the draws' key is (seed, collections)
        self.rng = np.random.default_rng(self.seed)
        self.stat_gen = torch.Generator().manual_seed(self.seed)

    def close(self) -> None:
        """Release the collector's thread pool and the Ray actors, if any."""
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()
        self.collector.close()

    # -- collection -------------------------------------------------------------------------
    def collect(self, buffer: RolloutBuffer) -> LFSamples:
        """The LF samples paired with this HF rollout (advantages from the LF critic)."""
        self.collections += 1
        scale = identity_rewards if self.reward_scaler is None else self.reward_scaler.scale
        return self.pairing.collect(buffer, self.policy, CriticValues(self.critic), scale,
                                    (self.seed, self.collections))

    # -- control variate --------------------------------------------------------------------
    def surrogate_moments(
        self, f_h: np.ndarray, f_p: np.ndarray, f_r: np.ndarray, lf: LFSamples
    ) -> PairMoments:
        """Pair moments of the per-sample surrogates (on-policy, epoch-0 values)."""
        x_h, x_l = align_pairs(f_h, f_p, lf.partner, f_r, lf.ref.anchor)
        return pair_moments(x_h, x_l)

    def gradient_moments(
        self, per_sample_fn: Callable[..., torch.Tensor], hf: tuple[torch.Tensor, ...],
        lf: LFSamples, lf_adv: tuple[np.ndarray, np.ndarray],
    ) -> PairMoments:
        """Pair moments of the per-sample policy gradients, projected on random directions
        (up to STAT_MAX_SAMPLES pairs and their references; `estimators.projected_moments`)."""
        if lf.n_pairs < 2:
            return PairMoments(n=lf.n_pairs, cov=0.0, var_h=0.0, var_l=0.0)
        dirs = random_directions(self.policy, STAT_DIRECTIONS, self.stat_gen)
        pairs = np.flatnonzero(lf.partner >= 0)[:STAT_MAX_SAMPLES]
        rows = lf.partner[pairs]
        paired = lf.paired.take(pairs)
        if (lf.ref.anchor >= 0).any():
            ref_idx = np.flatnonzero(np.isin(lf.ref.anchor, rows))
        else:
            ref_idx = self.rng.permutation(len(lf.ref))[:STAT_MAX_SAMPLES]
        ref = lf.ref.take(ref_idx)
        # renumber HF rows to the subset
        remap = {int(r): i for i, r in enumerate(rows)}
        ref_anchor = np.array([remap.get(int(a), -1) for a in ref.anchor], dtype=np.int64)
        proj_h = projected_sample_grads(self.policy, per_sample_fn,
                                        tuple(x[rows] for x in hf), dirs)
        proj_p = projected_sample_grads(self.policy, per_sample_fn,
                                        _tensors(paired, lf_adv[0][pairs]), dirs)
        proj_r = projected_sample_grads(self.policy, per_sample_fn,
                                        _tensors(ref, lf_adv[1][ref_idx]), dirs)
        x_h, x_l = align_pairs(proj_h, proj_p, np.arange(rows.size), proj_r, ref_anchor)
        pool = proj_r if (ref_anchor < 0).all() else None
        return projected_moments(x_h, x_l, pool)

    def coefficient(self, m: PairMoments) -> tuple[float, float]:
        """(c to apply, this batch's own c estimate) for a batch whose moments (those
        `mf.c_from` names) are `m`; folds the batch into the tracker."""
        c_batch = self.coef.batch_coef(m)
        return self.coef.coef_for(m), (np.nan if c_batch is None else c_batch)

    def stats(
        self, c: float, rho: float, c_batch: float, grad: tuple[float, float], lf: LFSamples,
    ) -> dict[str, float]:
        mf = MFStats(rho=rho, c=c, c_batch=c_batch, var_reduction_pred=1.0 - rho**2,
                     var_ratio_grad=grad[0], c_grad=grad[1], n_pairs=lf.n_pairs)
        returns = lf.rollout_returns
        steps = lf.rollout_lengths.sum()
        return {
            **mf.as_dict(),
            "lf/return_mean": float(returns.mean()) if returns.size else float("nan"),
            "lf/reward_per_step": float(returns.sum() / steps) if steps else float("nan"),
            "lf/samples": float(len(lf.paired) + len(lf.ref)),
            "lf/steps": float(lf.lf_steps),
        }

    # -- LF critic --------------------------------------------------------------------------
    def fit_critic(self, lf: LFSamples, n_hf: int, epochs: int, minibatches: int,
                   generator: torch.Generator) -> float:
        """Regress the LF critic on LF value targets (a random subset); returns the last loss."""
        obs = np.concatenate([lf.paired.obs, lf.ref.obs])
        target = np.concatenate([lf.paired.returns, lf.ref.returns])
        if obs.shape[0] == 0:
            return float("nan")
        keep = self.rng.permutation(obs.shape[0])[: LF_CRITIC_SAMPLES_PER_HF * n_hf]
        x = torch.as_tensor(obs[keep])
        y = torch.as_tensor(target[keep], dtype=torch.float32)
        loss = torch.zeros(())
        for _ in range(epochs):
            for idx in torch.randperm(x.shape[0], generator=generator).tensor_split(minibatches):
                if idx.numel() == 0:
                    continue
                self.critic_opt.zero_grad()
                loss = 0.5 * ((self.critic(x[idx]) - y[idx]) ** 2).mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.critic.v.parameters(),
                                               self.cfg.algo.max_grad_norm)
                self.critic_opt.step()
        return float(loss.detach())

    # -- checkpoint -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "critic_v": self.critic.v.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "coef": self.coef.state_dict(),
            "collections": self.collections,
            "rng": self.rng.bit_generator.state,
            "stat_gen": self.stat_gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.v.load_state_dict(state["critic_v"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.coef.load_state_dict(state["coef"])
        self.collections = int(state["collections"])
        self.rng.bit_generator.state = state["rng"]
        self.stat_gen.set_state(state["stat_gen"])


def surrogate_at_old(policy: torch.nn.Module, obs: Tensor, act: Tensor, adv: Tensor) -> Tensor:
    """A * log pi(a|s): per-sample, its gradient at the sampling policy equals the gradient of
    both the clipped PPO surrogate (ratio 1) and the REINFORCE surrogate."""
    return adv * policy.log_prob(obs, act)


def lf_advantages(lf: LFSamples, norm: bool) -> tuple[np.ndarray, np.ndarray]:
    """Paired and reference LF advantages, normalised together (one transform for both)."""
    p, r = lf.paired.advantages, lf.ref.advantages
    if not norm:
        return p, r
    both = np.concatenate([p, r])
    return normalise(p, both), normalise(r, both)


class LFTensors:
    """An `LFPart` as float32 tensors with (normalised) advantages."""

    def __init__(self, part: LFPart, advantages: np.ndarray) -> None:
        self.obs = torch.as_tensor(part.obs)
        self.actions = torch.as_tensor(part.actions)
        self.logprobs = torch.as_tensor(part.logprobs, dtype=torch.float32)
        self.advantages = torch.as_tensor(advantages, dtype=torch.float32)


@dataclass
class MFBatch:
    """An MF iteration's data, fixed before its first step: the HF rollout and batch (with the
    advantages the steps use), the LF samples paired with it, and `c` with its diagnostics."""

    buffer: RolloutBuffer
    hf: Batch
    lf: LFSamples
    paired: LFTensors
    ref: LFTensors
    c: float  # the coefficient the steps apply
    rho: float  # this batch's HF/LF correlation
    c_batch: float  # this batch's own c estimate (not applied)
    grad: tuple[float, float]  # measured gradient-variance ratio and its best c


class MultiFidelity:
    """What MF-PPO and MF-REINFORCE add to their single-fidelity base class (mix in first):
    the LF samples of an iteration, the LF critic's fit and metrics after its steps, the LF
    side's checkpoint state and the release of its threads."""

    cfg: TrainConfig
    generator: torch.Generator
    lf: LFSide

    def pair_lf(self, buffer: RolloutBuffer, batch: Batch, adv_h: np.ndarray) -> MFBatch:
        """Collect the LF samples paired with `buffer`, their advantages (normalised together if
        `norm_adv`), c from the on-policy moments `mf.c_from` names, and the gradient
        diagnostics. `adv_h`: the HF advantages the steps use (`batch.advantages`), float64."""
        lf = self.lf.collect(buffer)
        adv_p, adv_r = lf_advantages(lf, self.cfg.algo.norm_adv)
        surrogate = self.lf.surrogate_moments(adv_h * buffer.logprobs,
                                              adv_p * lf.paired.logprobs,
                                              adv_r * lf.ref.logprobs, lf)
        gradient = self.lf.gradient_moments(surrogate_at_old,
                                            (batch.obs, batch.actions, batch.advantages), lf,
                                            (adv_p, adv_r))
        c, c_batch = self.lf.coefficient(gradient if self.cfg.mf.c_from == "gradient"
                                         else surrogate)
        grad = (projected_variance_ratio(gradient, c),
                gradient.c_opt if gradient.n >= 2 else float("nan"))
        return MFBatch(buffer, batch, lf, LFTensors(lf.paired, adv_p), LFTensors(lf.ref, adv_r),
                       c, surrogate.rho, c_batch, grad)

    def finish(self, state: MFBatch) -> dict[str, float]:
        """Regress the LF critic on LF value targets; then the HF metrics, rho, c, 1 - rho^2,
        the gradient variance ratio, LF/HF returns and sample counts."""
        a = self.cfg.algo
        critic_loss = self.lf.fit_critic(state.lf, len(state.buffer), a.update_epochs,
                                         a.num_minibatches, self.generator)
        return {
            **super().finish(state.hf),  # type: ignore[misc]
            **self.lf.stats(state.c, state.rho, state.c_batch, state.grad, state.lf),
            "lf/critic_loss": critic_loss,
            "hf/samples": float(len(state.buffer)),
            "hf/reward_per_step": float(state.buffer.rewards.mean()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "lf": self.lf.state_dict()}  # type: ignore[misc]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)  # type: ignore[misc]
        self.lf.load_state_dict(state["lf"])

    def close(self) -> None:
        """Release the batched LF collector's thread pool."""
        self.lf.close()
        super().close()  # type: ignore[misc]


def _tensors(part: LFPart, adv: np.ndarray) -> tuple[torch.Tensor, ...]:
    return (torch.as_tensor(part.obs), torch.as_tensor(part.actions),
            torch.as_tensor(adv, dtype=torch.float32))
