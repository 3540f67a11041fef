"""Accelerated policy-update rules wrapped around a torch optimizer step.

After arXiv 2306.10587 (optimism + adaptivity via meta-gradients) and related work
(Nesterov accelerated policy gradient arXiv 2310.11897, optimistic Adam arXiv 1711.00141,
extragradient). Every rule works with any torch optimizer (plain SGD on exact-gradient
tabular MDPs, Adam in PPO): the rule edits the gradient the optimizer sees, or the
parameters around the optimizer's step, never the optimizer's own arithmetic.

Interface (all a trainer needs):

    acc = make_accelerator(name, params, optimizer, **cfg)   # name in ACCELERATORS

    def closure():                # recompute the loss at the *current* params
        optimizer.zero_grad()
        loss = compute_loss()     # a loss to minimise (e.g. minus the surrogate objective)
        loss.backward()
        return loss

    loss = acc.step(closure)      # in place of `optimizer.step()`; returns the loss
    acc.stats()                   # {"eta", "optimism", "momentum", "restarts"} for logging
    acc.state_dict()              # what the rule carries between steps (checkpoints);
    acc.load_state_dict(state)    # the optimizer's own state is saved with the optimizer

`step` may call the closure more than once (extragradient: twice) and may change the
parameters between calls, so the closure must compute the loss from the current
parameters and the same data. Gradient clipping belongs inside the closure (after
backward). `eta` is the effective learning rate of the first param group; the `meta`
rule multiplies every group's lr by its adapted factor for its own step only, so an
lr schedule set on the optimizer by the trainer composes with it.

Notation below: g_t the gradient of the loss at theta_t, Opt(g) the displacement the
wrapped optimizer makes from gradient g (-lr g for SGD, the Adam step for Adam).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

Closure = Callable[[], Tensor]

ACCELERATORS = ("none", "optimistic", "extragradient", "nesterov", "meta")


def _check_number(
    name: str, value: Any, low: float, high: float, *, open_low: bool = False
) -> float:
    """Return `value` as float; raise ValueError unless it is finite and in range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"accel config {name!r} must be a number, got {value!r}")
    value = float(value)
    too_low = value <= low if open_low else value < low
    if not math.isfinite(value) or too_low or value > high:
        bracket = "(" if open_low else "["
        raise ValueError(f"accel config {name!r} must be in {bracket}{low}, {high}], got {value}")
    return value


def _grads(params: list[Tensor]) -> list[Tensor]:
    """Copies of the current gradients (zeros where a parameter has none)."""
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]


def _set_grads(params: list[Tensor], grads: list[Tensor]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g


def _snapshot(params: list[Tensor]) -> list[Tensor]:
    return [p.detach().clone() for p in params]


def _dot(a: list[Tensor], b: list[Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b, strict=True)))


def _cosine(a: list[Tensor], b: list[Tensor]) -> float:
    """Cosine of the angle between two flattened tensor lists (0 if either is zero)."""
    norm = math.sqrt(_dot(a, a) * _dot(b, b))
    return _dot(a, b) / norm if norm > 0.0 else 0.0


def _copy_state(value: Any) -> Any:
    """A copy of a state value (tensors and lists of tensors cloned, the rest as is)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return [_copy_state(v) for v in value]
    return value


def _call(closure: Closure) -> Tensor:
    loss = closure()
    if loss is None:
        raise TypeError("the closure must return the loss (after calling loss.backward())")
    return loss


class Accelerator:
    """Rule `none`: theta_{t+1} = theta_t + Opt(g_t), i.e. exactly `optimizer.step()`."""

    name = "none"
    config_defaults: dict[str, Any] = {}
    #: Attributes that change from step to step (what `state_dict` saves).
    state_keys: tuple[str, ...] = ("restarts",)

    def __init__(self, params: Iterable[Tensor], optimizer: torch.optim.Optimizer, **cfg: Any):
        self.params = list(params)
        self.optimizer = optimizer
        if not self.params:
            raise ValueError("accelerator got no parameters; pass the policy's parameters")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for i, p in enumerate(self.params):
            if not p.requires_grad:
                raise ValueError(f"parameter {i} does not require grad; pass trainable ones")
            if id(p) not in held:
                raise ValueError(
                    f"parameter {i} is not in the optimizer's param_groups; pass the same "
                    "parameters the optimizer was built with"
                )
        if held - {id(p) for p in self.params}:
            raise ValueError(
                "the optimizer holds parameters not passed to the accelerator; pass all of "
                "the optimizer's parameters (the rules move and restore them together)"
            )
        unknown = sorted(set(cfg) - set(self.config_defaults))
        if unknown:
            valid = ", ".join(sorted(self.config_defaults)) or "none"
            raise ValueError(
                f"unknown config key(s) {unknown} for accelerator {self.name!r}; valid: {valid}"
            )
        self._configure({**self.config_defaults, **cfg})
        self.restarts = 0

    def _configure(self, cfg: dict[str, Any]) -> None:
        """Validate and store the rule's config (merged with defaults)."""

    def step(self, closure: Closure) -> Tensor:
        """One update; `closure` zeroes grads, computes the loss, backward, returns it."""
        loss = _call(closure)
        self.optimizer.step()
        return loss

    def _eta(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def stats(self) -> dict[str, float]:
        """Current effective step size, optimism coefficient, momentum and restart count."""
        return {"eta": self._eta(), "optimism": 0.0, "momentum": 0.0, "restarts": self.restarts}

    def state_dict(self) -> dict[str, Any]:
        """The rule's state between steps (tensors cloned): `name` and each of `state_keys`."""
        return {"name": self.name, **{k: _copy_state(getattr(self, k)) for k in self.state_keys}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` of the same rule; the next step continues where it left off."""
        if state.get("name") != self.name:
            raise ValueError(
                f"accelerator state is for rule {state.get('name')!r}, not {self.name!r}"
            )
        missing = [k for k in self.state_keys if k not in state]
        if missing:
            raise ValueError(f"accelerator state for {self.name!r} lacks {missing}")
        for k in self.state_keys:
            setattr(self, k, _copy_state(state[k]))


class OptimisticAccelerator(Accelerator):
    """Optimistic / predictive step: theta_{t+1} = theta_t + Opt(g_t + lambda (g_t - g_{t-1})).

    The predicted next gradient replaces g_t as the optimizer's input (g_{-1} := g_0).
    Config: `optimism` lambda >= 0 (default 1.0). With lambda = 0 this is plain `Opt(g_t)`.
    """

    name = "optimistic"
    config_defaults = {"optimism": 1.0}
    state_keys = ("restarts", "_prev")

    def _configure(self, cfg: dict[str, Any]) -> None:
        self.optimism = _check_number("optimism", cfg["optimism"], 0.0, 1e3)
        self._prev: list[Tensor] | None = None

    def step(self, closure: Closure) -> Tensor:
        loss = _call(closure)
        g = _grads(self.params)
        prev = g if self._prev is None else self._prev
        predicted = [gi + self.optimism * (gi - pi) for gi, pi in zip(g, prev, strict=True)]
        _set_grads(self.params, predicted)
        self.optimizer.step()
        self._prev = g
        return loss

    def stats(self) -> dict[str, float]:
        return {**super().stats(), "optimism": self.optimism}


class ExtragradientAccelerator(Accelerator):
    """Extragradient: look ahead, re-evaluate, step from the original point.

    theta' = theta_t + Opt(g(theta_t));  theta_{t+1} = theta_t + Opt(g(theta')).
    The closure is called twice per step; the optimizer state (e.g. Adam moments) is
    restored after the look-ahead, so only the real step updates it. Returns the loss
    at theta_t. No config.
    """

    name = "extragradient"

    def step(self, closure: Closure) -> Tensor:
        start = _snapshot(self.params)
        state = {
            p: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for p, s in self.optimizer.state.items()
        }
        loss = _call(closure)
        self.optimizer.step()  # look-ahead
        _call(closure)  # gradient at the look-ahead point
        with torch.no_grad():
            for p, p0 in zip(self.params, start, strict=True):
                p.copy_(p0)
        self.optimizer.state.clear()
        self.optimizer.state.update(state)
        self.optimizer.step()  # real step from theta_t with the look-ahead gradient
        return loss


class NesterovAccelerator(Accelerator):
    """Nesterov momentum with adaptive (function-value) restart.

    The parameters hold the extrapolated point y_t; with k steps since the last restart:
        x_{t+1} = y_t + Opt(g(y_t)),
        y_{t+1} = x_{t+1} + beta_k (x_{t+1} - x_t),   beta_k = min(k / (k + 3), max_momentum).
    Restart (k := 0, so y_{t+1} = x_{t+1}) when the loss at y_t exceeds the loss at y_{t-1},
    i.e. the objective got worse. Config: `restart` (bool, default True), `max_momentum`
    in (0, 1] (default 1.0).
    """

    name = "nesterov"
    config_defaults = {"restart": True, "max_momentum": 1.0}
    state_keys = ("restarts", "_k", "_beta", "_x_prev", "_prev_loss")

    def _configure(self, cfg: dict[str, Any]) -> None:
        if not isinstance(cfg["restart"], bool):
            raise ValueError(
                f"accel config 'restart' must be true or false, got {cfg['restart']!r}"
            )
        self.restart = cfg["restart"]
        self.max_momentum = _check_number(
            "max_momentum", cfg["max_momentum"], 0.0, 1.0, open_low=True
        )
        self._k = 0
        self._beta = 0.0
        self._x_prev: list[Tensor] | None = None
        self._prev_loss: float | None = None

    def restart_momentum(self) -> None:
        """Drop the momentum (k := 0): the next step does not extrapolate."""
        self.restarts += 1
        self._k = 0

    def step(self, closure: Closure) -> Tensor:
        loss = _call(closure)
        value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
        if self.restart and self._prev_loss is not None and value > self._prev_loss:
            self.restart_momentum()
        self._prev_loss = value
        self.optimizer.step()
        x_new = _snapshot(self.params)
        self._beta = min(self._k / (self._k + 3), self.max_momentum)
        if self._x_prev is not None and self._beta > 0.0:
            with torch.no_grad():
                for p, x1, x0 in zip(self.params, x_new, self._x_prev, strict=True):
                    p.add_(x1 - x0, alpha=self._beta)
        self._x_prev = x_new
        self._k += 1
        return loss

    def stats(self) -> dict[str, float]:
        return {**super().stats(), "momentum": self._beta}


class MetaAccelerator(Accelerator):
    """Optimistic step whose step size eta and optimism lambda adapt by hypergradients.

    Update: theta_{t+1} = theta_t + u_t,  u_t = Opt_eta(g_t + lambda (g_t - g_{t-1})),
    where Opt_eta runs the wrapped optimizer with every group's lr multiplied by a factor
    s (eta = s * lr of the first group). u_t is linear in eta (SGD and Adam), so the
    one-step hypergradients of the loss are
        dL(theta_{t+1}) / d log eta = g_{t+1} . u_t,
        dL(theta_{t+1}) / d lambda  = -eta g_{t+1} . (g_t - g_{t-1})   (exact for SGD).
    Each is normalised to a cosine (scale-free, in [-1, 1]) and followed by descent:
        log s -= meta_lr cos(g_{t+1}, u_t),   lambda += meta_lr cos(g_{t+1}, g_t - g_{t-1}),
    then lambda is clipped to [lambda_min, lambda_max] and s to [eta_min, eta_max] / lr0,
    lr0 the optimizer's lr at construction: without an lr schedule eta stays within
    [eta_min, eta_max]; a schedule the trainer sets on the optimizer scales the bounds too.
    Config: `meta_lr` (0.1), `optimism` initial lambda (0.0), `lambda_min` (0.0),
    `lambda_max` (1.0), `eta_min` / `eta_max` (defaults 0.1 lr0 / 10 lr0).
    """

    name = "meta"
    config_defaults = {
        "meta_lr": 0.1,
        "optimism": 0.0,
        "lambda_min": 0.0,
        "lambda_max": 1.0,
        "eta_min": None,
        "eta_max": None,
    }
    state_keys = ("restarts", "optimism", "_scale", "_prev_grad", "_prev_update", "_prev_diff")

    def _configure(self, cfg: dict[str, Any]) -> None:
        lr0 = float(self.optimizer.param_groups[0]["lr"])
        if not lr0 > 0.0:
            raise ValueError(f"meta accelerator needs an optimizer lr > 0, got {lr0}")
        self.meta_lr = _check_number("meta_lr", cfg["meta_lr"], 0.0, 10.0, open_low=True)
        eta_min = 0.1 * lr0 if cfg["eta_min"] is None else cfg["eta_min"]
        eta_max = 10.0 * lr0 if cfg["eta_max"] is None else cfg["eta_max"]
        self.eta_min = _check_number("eta_min", eta_min, 0.0, math.inf, open_low=True)
        self.eta_max = _check_number("eta_max", eta_max, self.eta_min, math.inf)
        self.lambda_min = _check_number("lambda_min", cfg["lambda_min"], 0.0, 1e3)
        self.lambda_max = _check_number("lambda_max", cfg["lambda_max"], self.lambda_min, 1e3)
        self.optimism = _check_number("optimism", cfg["optimism"], self.lambda_min, self.lambda_max)
        self._scale_bounds = (self.eta_min / lr0, self.eta_max / lr0)
        self._scale = min(max(1.0, self._scale_bounds[0]), self._scale_bounds[1])
        self._prev_grad: list[Tensor] | None = None
        self._prev_update: list[Tensor] | None = None
        self._prev_diff: list[Tensor] | None = None

    def step(self, closure: Closure) -> Tensor:
        loss = _call(closure)
        g = _grads(self.params)
        if self._prev_update is not None and self._prev_diff is not None:
            log_scale = math.log(self._scale) - self.meta_lr * _cosine(g, self._prev_update)
            self._scale = min(
                max(math.exp(log_scale), self._scale_bounds[0]), self._scale_bounds[1]
            )
            lam = self.optimism + self.meta_lr * _cosine(g, self._prev_diff)
            self.optimism = min(max(lam, self.lambda_min), self.lambda_max)
        prev = g if self._prev_grad is None else self._prev_grad
        diff = [gi - pi for gi, pi in zip(g, prev, strict=True)]
        _set_grads(self.params, [gi + self.optimism * di for gi, di in zip(g, diff, strict=True)])
        start = _snapshot(self.params)
        base = [group["lr"] for group in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, base, strict=True):
            group["lr"] = lr * self._scale
        try:
            self.optimizer.step()
        finally:
            for group, lr in zip(self.optimizer.param_groups, base, strict=True):
                group["lr"] = lr
        self._prev_update = [p.detach() - p0 for p, p0 in zip(self.params, start, strict=True)]
        self._prev_grad = g
        self._prev_diff = diff
        return loss

    def _eta(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) * self._scale

    def stats(self) -> dict[str, float]:
        return {**super().stats(), "optimism": self.optimism}


_RULES: dict[str, type[Accelerator]] = {
    cls.name: cls
    for cls in (
        Accelerator,
        OptimisticAccelerator,
        ExtragradientAccelerator,
        NesterovAccelerator,
        MetaAccelerator,
    )
}


def make_accelerator(
    name: str, params: Iterable[Tensor], optimizer: torch.optim.Optimizer, **cfg: Any
) -> Accelerator:
    """Build the update rule `name` (one of ACCELERATORS) around `optimizer`.

    `params` are the trainable parameters the optimizer holds; `cfg` are the rule's
    options (see each class). Raises ValueError for an unknown name, an unknown option
    or an out-of-range value.
    """
    if name not in _RULES:
        raise ValueError(f"unknown accelerator {name!r}; valid: {', '.join(ACCELERATORS)}")
    return _RULES[name](params, optimizer, **cfg)
