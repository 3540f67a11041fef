"""The robot state exchanged between fidelities: named joint positions and velocities.

`get_state()` on any env (sim of any fidelity, the emulator, the real robot) returns a
`RobotState`; `reset_to(state)` on any fidelity starts from it. Joints are matched by name,
so a state measured on the robot pairs with its low-fidelity twin. `task` carries the task's
own variables (e.g. the reach target), which are part of what makes two episodes a pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RobotState:
    """Joint positions and velocities by name, plus task variables."""

    positions: dict[str, float]
    velocities: dict[str, float]
    task: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.positions) != set(self.velocities):
            raise ValueError(
                f"positions and velocities must name the same joints, got "
                f"{sorted(self.positions)} and {sorted(self.velocities)}"
            )

    def arrays(self, joint_names: tuple[str, ...] | list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Positions and velocities as float64 arrays in `joint_names` order."""
        missing = [n for n in joint_names if n not in self.positions]
        if missing:
            raise KeyError(f"state lacks joints {missing}; it has {sorted(self.positions)}")
        q = np.array([self.positions[n] for n in joint_names], dtype=np.float64)
        v = np.array([self.velocities[n] for n in joint_names], dtype=np.float64)
        return q, v

    @classmethod
    def from_arrays(
        cls,
        joint_names: tuple[str, ...] | list[str],
        q: np.ndarray,
        v: np.ndarray,
        task: dict[str, Any] | None = None,
    ) -> RobotState:
        return cls(
            positions={n: float(x) for n, x in zip(joint_names, q, strict=True)},
            velocities={n: float(x) for n, x in zip(joint_names, v, strict=True)},
            task={
                k: tuple(float(x) for x in np.atleast_1d(val)) for k, val in (task or {}).items()
            },
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for persisting HF transitions)."""
        return {
            "positions": dict(self.positions),
            "velocities": dict(self.velocities),
            "task": {k: list(v) for k, v in self.task.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RobotState:
        return cls(
            positions={k: float(v) for k, v in d["positions"].items()},
            velocities={k: float(v) for k, v in d["velocities"].items()},
            task={k: tuple(float(x) for x in v) for k, v in d.get("task", {}).items()},
        )
