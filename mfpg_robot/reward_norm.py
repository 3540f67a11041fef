"""Reward scaling by the running std of the discounted return (CleanRL's NormalizeReward).

Gymnasium's `NormalizeReward` wrapper, made explicit so that the trainer owns its state
(saved in checkpoints) and the multi-fidelity side can scale LF rewards by the same factor
without updating it. Per step: R <- gamma R + r (R reset to 0 after an episode ends,
terminated or truncated), the running variance of R is updated, and the reward is divided
by sqrt(var + eps) and clipped to +-clip. Rewards are scaled, not centred.

One deliberate difference: Gymnasium computes R <- gamma (1 - terminated) R + r, so a terminal
reward starts the next return and a truncation does not restart it; here every step's reward
joins its own episode's return, and the return restarts after any episode end. Without
episode ends the two are identical (tested).
"""

from __future__ import annotations

import numpy as np


class RewardScaler:
    """Running discounted-return variance; `update_scale` for HF rewards, `scale` for others."""

    def __init__(self, gamma: float, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.gamma, self.clip, self.eps = gamma, clip, eps
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4
        self.discounted = 0.0

    def _update(self, x: float) -> None:
        delta = x - self.mean
        total = self.count + 1.0
        self.mean += delta / total
        self.var = (self.var * self.count + delta * delta * self.count / total) / total
        self.count = total

    def update_scale(self, rewards: np.ndarray, episode_end: np.ndarray) -> np.ndarray:
        """Scale a time-ordered reward sequence, updating the statistics step by step."""
        out = np.empty(len(rewards), dtype=np.float64)
        for t, (r, end) in enumerate(zip(rewards, episode_end, strict=True)):
            self.discounted = self.gamma * self.discounted + float(r)
            self._update(self.discounted)
            out[t] = self._scaled(float(r))
            if end:
                self.discounted = 0.0
        return out

    def _scaled(self, r: float | np.ndarray) -> float | np.ndarray:
        return np.clip(r / np.sqrt(self.var + self.eps), -self.clip, self.clip)

    def scale(self, rewards: np.ndarray) -> np.ndarray:
        """Scale rewards with the current statistics, without updating them (LF rewards)."""
        return self._scaled(np.asarray(rewards, dtype=np.float64))

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count,
                "discounted": self.discounted}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var = float(state["mean"]), float(state["var"])
        self.count, self.discounted = float(state["count"]), float(state["discounted"])
