"""What every policy-gradient algorithm shares: networks, optimiser, update rule, state.

An algorithm owns a `GaussianPolicy` (actor with its observation normaliser), a `Critic`
sharing that normaliser, one Adam optimiser over both (CleanRL: eps 1e-5), and the update
rule from `mfpg_robot.accel`. Every optimisation step goes through `_optimizer_step`, so an
accelerated rule (optimistic, extragradient, Nesterov, meta) applies to every algorithm.

Per iteration the trainer calls `update(buffer, progress)`: the learning rate is annealed,
`_learn` takes the gradient steps on the HF rollout, then the observation normaliser absorbs
the rollout's observations. Updating it after the gradient steps keeps the normalisation the
rollout was collected with fixed while its log-probs are re-evaluated, so the first PPO ratio
is exactly 1.

`_learn` is the one update loop of every algorithm; a subclass supplies its pieces:

    state = prepare(buffer)                      # advantages, returns (MF: LF samples, c)
    for epoch in range(update_epochs):
        for loss_fn in minibatch_losses(state):  # drawn afresh each epoch
            one optimiser step on loss_fn        # `_optimizer_step`, through the accel rule
        if stop_epochs(last step's diagnostics): break         # PPO: `target_kl`
    metrics = diagnostics averaged over the steps, grad_steps, finish(state)

A step's diagnostics are those of its first evaluation with gradients (the point the step
starts from), whatever else the rule evaluates.

The update rule in the trainers (`algo.accel`, options `algo.accel_options`, see docs/accel.md):
- options default to `trainer_accel_options` (user options win): Adam's lr is already a step
  length, so `meta` may raise eta to at most 3 lr and Nesterov momentum is capped at 0.9;
- a step's closure is a `LossClosure`: its loss function is bound to one minibatch, so every
  evaluation a rule makes (extragradient: two) sees the same data;
- Nesterov's restart is tested once per epoch on paired minibatch losses: before each step,
  the loss of the step's minibatch at the current point minus its loss at the previous step's
  point (two forward passes, no backward) measures the previous step's effect on data that
  this epoch has not trained on yet. The differences are summed over `restart_window` steps
  (one epoch: PPO's `num_minibatches`, REINFORCE's 1 full-batch step) and momentum restarts
  when the sum is positive: the objective got worse over the epoch. The rule's own test
  compares the losses of consecutive closures, which come from different minibatches (PPO)
  or rollouts (REINFORCE), i.e. it restarts on sampling noise (docs/accel.md);
- per iteration `update` logs `accel/eta` (effective step size at the end), `accel/eta_mean`
  (mean over the iteration's steps), `accel/optimism`, `accel/momentum`, `accel/restarts`
  (cumulative) and `accel/grad_evals` (closure evaluations with backward this iteration).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from mfpg_robot.accel import Accelerator, NesterovAccelerator, make_accelerator
from mfpg_robot.buffer import RolloutBuffer
from mfpg_robot.config import TrainConfig
from mfpg_robot.policy import Critic, GaussianPolicy
from mfpg_robot.reward_norm import RewardScaler

#: Trainer defaults under `algo.accel_options`: meta's eta_max in units of `algo.lr`, and
#: Nesterov's cap on the momentum coefficient.
META_ETA_MAX_LR = 3.0
NESTEROV_MAX_MOMENTUM = 0.9


def trainer_accel_options(name: str, lr: float, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options a trainer builds rule `name` with: its defaults, then the user's `options`.

    `meta`: eta_max = 3 lr (the rule's own default, 10 lr, was set on the plain-SGD test bed;
    with Adam it lets PPO take 10x longer steps). `nesterov`: max_momentum 0.9 (k/(k+3) -> 1
    on top of Adam's own momentum makes steps ~100x longer after a few hundred minibatches
    without a restart).
    """
    defaults: dict[str, Any] = {}
    if name == "meta":
        eta_min = options.get("eta_min")
        eta_max = META_ETA_MAX_LR * lr
        defaults = {"eta_max": eta_max if eta_min is None else max(eta_max, eta_min)}
    elif name == "nesterov":
        defaults = {"max_momentum": NESTEROV_MAX_MOMENTUM}
    return {**defaults, **options}


#: The loss of one optimiser step, bound to its minibatch, with its detached diagnostics.
LossFn = Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class LossClosure:
    """The closure of one optimiser step: zero grads, loss, backward, clip the global norm.

    `loss_fn` computes the loss from the current parameters on data fixed when the closure is
    made (one minibatch), so a rule that evaluates it twice sees the same data; `value()` is
    the same loss without backward (for Nesterov's restart test).
    """

    def __init__(self, loss_fn: Callable[[], torch.Tensor], algo: Algorithm) -> None:
        self.loss_fn = loss_fn
        self.algo = algo

    def __call__(self) -> torch.Tensor:
        algo = self.algo
        algo.optimizer.zero_grad()
        loss = self.loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(algo.params, algo.cfg.algo.max_grad_norm)
        algo.grad_evals += 1
        return loss

    @torch.no_grad()
    def value(self) -> float:
        """The loss at the current parameters, without gradients."""
        return float(self.loss_fn())


def record_first_gradient_eval(last: dict[str, torch.Tensor],
                               info: dict[str, torch.Tensor]) -> None:
    """Keep in `last` the diagnostics of a step's first evaluation with gradients: the point the
    step starts from (extragradient's look-ahead and Nesterov's no-grad restart test re-evaluate
    the same closure elsewhere)."""
    if torch.is_grad_enabled() and not last:
        last.update(info)


def restart_momentum(accelerator: Accelerator) -> None:
    """Restart a Nesterov rule's momentum (k := 0: this step's extrapolation is dropped)."""
    if not isinstance(accelerator, NesterovAccelerator):
        raise TypeError(f"only the nesterov rule restarts, not {accelerator.name!r}")
    accelerator.restart_momentum()


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
        options = trainer_accel_options(a.accel, a.lr, a.accel_options)
        # Nesterov's restart is tested here, on one minibatch (see the module docstring)
        self.same_batch_restart = a.accel == "nesterov" and bool(options.pop("restart", True))
        if a.accel == "nesterov":
            options["restart"] = False
        self.accelerator = make_accelerator(a.accel, self.params, self.optimizer, **options)
        self._restart_point: list[torch.Tensor] | None = None  # Nesterov: the last step's point
        self._restart_sum, self._restart_n = 0.0, 0  # paired loss changes in the window
        self.grad_evals = 0  # closure evaluations with backward in this iteration
        self._etas: list[float] = []  # effective step size of each step in this iteration
        self.reward_scaler = RewardScaler(a.gamma, a.reward_clip) if a.norm_reward else None
        self.generator = torch.Generator().manual_seed(cfg.seed)  # minibatch shuffles

    # -- the pieces subclasses and MF variants reuse ----------------------------------------
    def _optimizer_step(self, closure: LossClosure) -> torch.Tensor:
        """The one place parameters change: the accelerator takes one step with `closure`
        (from `_clipped_closure`), which it may call more than once; returns the loss."""
        if not isinstance(closure, LossClosure):
            raise TypeError("_optimizer_step takes the closure made by _clipped_closure(loss_fn)")
        if self.same_batch_restart:
            self._restart_test(closure)
        self._etas.append(self.accelerator.stats()["eta"])
        return self.accelerator.step(closure)

    def _clipped_closure(self, loss_fn: Callable[[], torch.Tensor]) -> LossClosure:
        """Wrap a loss into the closure `_optimizer_step` expects (zero, backward, clip)."""
        return LossClosure(loss_fn, self)

    @property
    def restart_window(self) -> int:
        """Steps per Nesterov restart test: one epoch (full-batch algorithms: one step)."""
        return 1

    def _restart_test(self, closure: LossClosure) -> None:
        """Add this minibatch's loss change since the last step's point; at the end of a window,
        restart Nesterov momentum if the summed change is positive (the objective got worse).
        """
        point = [p.detach().clone() for p in self.params]
        if self._restart_point is not None:
            now = closure.value()
            with torch.no_grad():
                for p, old in zip(self.params, self._restart_point, strict=True):
                    p.copy_(old)
                before = closure.value()
                for p, cur in zip(self.params, point, strict=True):
                    p.copy_(cur)
            self._restart_sum += now - before
            self._restart_n += 1
            if self._restart_n >= self.restart_window:
                if self._restart_sum > 0.0:
                    restart_momentum(self.accelerator)
                self._restart_sum, self._restart_n = 0.0, 0
        self._restart_point = point

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
        self.grad_evals = 0
        self._etas = []
        metrics = self._learn(buffer)
        self.policy.obs_norm.update(buffer.obs)
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        metrics["std_mean"] = float(self.policy.std().detach().mean())
        metrics.update({f"accel/{k}": float(v) for k, v in self.accelerator.stats().items()})
        metrics["accel/eta_mean"] = float(np.mean(self._etas)) if self._etas else float("nan")
        metrics["accel/grad_evals"] = float(self.grad_evals)
        return metrics

    def _learn(self, buffer: RolloutBuffer) -> dict[str, float]:
        """The update loop (module docstring) on one HF rollout; returns scalar metrics."""
        state = self.prepare(buffer)
        sums: dict[str, float] = {}
        n_steps = 0
        last: dict[str, torch.Tensor] = {}
        for _epoch in range(self.cfg.algo.update_epochs):
            for minibatch_loss in self.minibatch_losses(state):
                last = {}

                def loss_fn(minibatch_loss: LossFn = minibatch_loss,
                            last: dict[str, torch.Tensor] = last) -> torch.Tensor:
                    loss, info = minibatch_loss()
                    record_first_gradient_eval(last, info)
                    return loss

                self._optimizer_step(self._clipped_closure(loss_fn))
                for k, v in last.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n_steps += 1
            if self.stop_epochs(last):
                break
        metrics = {k: v / n_steps for k, v in sums.items()}
        metrics["grad_steps"] = float(n_steps)
        metrics.update(self.finish(state))
        return metrics

    # -- what each algorithm supplies to the loop -------------------------------------------
    @abstractmethod
    def prepare(self, buffer: RolloutBuffer) -> Any:
        """The data the iteration's steps read, fixed before the first step (advantages, ...)."""

    @abstractmethod
    def minibatch_losses(self, state: Any) -> list[LossFn]:
        """One epoch: the loss of each optimiser step, bound to its minibatch (drawn here)."""

    def stop_epochs(self, last: dict[str, torch.Tensor]) -> bool:
        """Whether to skip the remaining epochs, from the diagnostics of an epoch's last step."""
        return False

    @abstractmethod
    def finish(self, state: Any) -> dict[str, float]:
        """Work after the last step (MF: the LF critic's fit) and the iteration's metrics."""

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
            "accelerator": self.accelerator.state_dict(),
            "restart_test": {
                "point": self._restart_point and [p.clone() for p in self._restart_point],
                "sum": self._restart_sum,
                "n": self._restart_n,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.reward_scaler is not None and state["reward_scaler"] is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        self.generator.set_state(state["generator"])
        self.accelerator.load_state_dict(state["accelerator"])
        restart = state["restart_test"]
        point = restart["point"]
        self._restart_point = None if point is None else [p.clone() for p in point]
        self._restart_sum, self._restart_n = float(restart["sum"]), int(restart["n"])
