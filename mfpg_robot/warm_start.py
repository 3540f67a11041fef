"""Warm start (`init.checkpoint`): begin a run from networks trained elsewhere.

The usual case: a policy trained on the LF model only (`hf.fidelity: reduced`), then a
session on the robot that starts from it. Loaded:
- the policy: weights, log-std and its observation normalisation (mean, variance, count);
- with `init.critic: true` (the default), also the critic and the reward scaler it was
  trained with (its values are in the scaler's units): a fresh critic's advantages are noise
  for the first iterations, and PPO would move a good policy on that noise. A multi-fidelity
  run's LF critic starts from the checkpoint's LF critic if it has one, else from the loaded
  critic. The scaler's running discounted return starts at 0 (a new episode).
`init.log_std` (if set) replaces the loaded log-std: the session's exploration noise.
Not loaded: optimiser state, the accel rule, random generators (the new run's own seed).

The checkpoint must be of the same robot (joints), observation and action size and hidden
layer sizes, else `CheckpointError` says which differs (its task may differ: e.g. a Gymnasium
id registered with another time limit). `init.checkpoint` may name a
.pt file or a run folder (its final checkpoint, else its newest `iter_*.pt`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from mfpg_robot.algos import Algorithm
from mfpg_robot.config import InitConfig
from mfpg_robot.run_dir import (
    CheckpointError,
    RunDir,
    check_checkpoint_task,
    load_checkpoint,
)

log = logging.getLogger("mfpg_robot.session")


def init_checkpoint_path(spec: str | Path) -> Path:
    """The .pt file `init.checkpoint` names (a file, or a run folder's newest checkpoint)."""
    path = Path(spec)
    if not path.is_dir():
        return path
    if (path / "checkpoints" / "final.pt").is_file():
        return path / "checkpoints" / "final.pt"
    found = RunDir(path).iteration_checkpoints()
    if not found:
        raise CheckpointError(
            f"init.checkpoint: {path} is a folder with no checkpoints/final.pt or "
            f"checkpoints/iter_*.pt; name a checkpoint file or a run folder"
        )
    return found[-1][1]


def warm_start(algo: Algorithm, init: InitConfig, task: dict[str, Any]) -> str:
    """Load `init.checkpoint` into `algo` (module docstring); returns a one-line summary.

    `task`: this run's task, robot, joints and dimensions (`run_dir.checkpoint_task` keys).
    """
    assert init.checkpoint is not None
    path = init_checkpoint_path(init.checkpoint)
    ckpt = load_checkpoint(path)
    same_robot = {**task, "env": None}  # another task of the same robot and layout may do
    check_checkpoint_task(ckpt, path, same_robot, "init.checkpoint must be a policy of this "
                          "robot and observation layout (e.g. trained on its LF model, "
                          "hf.fidelity: reduced)")
    hidden = list(ckpt["config"]["algo"]["hidden"])
    if hidden != list(algo.cfg.algo.hidden):
        raise CheckpointError(
            f"init.checkpoint {path} has hidden layers {hidden}, this run "
            f"{list(algo.cfg.algo.hidden)}; set algo.hidden: {hidden} to start from it"
        )
    state = ckpt["algo"]
    algo.policy.load_state_dict(state["policy"])
    loaded = ["policy", "observation normalisation"]
    if init.critic:
        scaler = state.get("reward_scaler")
        if (scaler is None) != (algo.reward_scaler is None):
            raise CheckpointError(
                f"init.checkpoint {path} was trained with algo.norm_reward: "
                f"{scaler is not None}, this run with {algo.reward_scaler is not None}: its "
                f"critic's values are in other units. Set algo.norm_reward: "
                f"{str(scaler is not None).lower()}, or init.critic: false (fresh critic)"
            )
        algo.critic.load_state_dict(state["critic"])
        loaded.append("critic")
        if algo.reward_scaler is not None:
            algo.reward_scaler.load_state_dict(scaler)
            algo.reward_scaler.discounted = 0.0
            loaded.append("reward scaler")
        lf = getattr(algo, "lf", None)
        if lf is not None:
            lf_state = state.get("lf")
            source = lf_state["critic_v"] if lf_state else algo.critic.v.state_dict()
            lf.critic.v.load_state_dict(source)
            loaded.append("LF critic" + ("" if lf_state else " (= critic)"))
        gamma = ckpt["config"]["algo"]["gamma"]
        if gamma != algo.cfg.algo.gamma:
            log.warning("init.checkpoint %s was trained with gamma %s, this run uses %s: its "
                        "critic's values are for the other discount", path, gamma,
                        algo.cfg.algo.gamma)
    if init.log_std is not None:
        with torch.no_grad():
            algo.policy.log_std.fill_(init.log_std)
        loaded.append(f"log-std set to {init.log_std}")
    count = int(algo.policy.obs_norm.count.item())
    return f"warm start from {path}: {', '.join(loaded)} (normaliser count {count})"
