"""`--resume RUN_DIR`: which config and checkpoint a resumed session continues from.

The config is the run folder's `config.yaml`. A resume may change only what does not change
the training itself (`RESUMABLE_KEYS`: the HF budget, the port, how the run logs,
checkpoints and exports, where the LF side runs), given as `--set` overrides or by passing a
config file; any other difference is refused with the keys that differ. The checkpoint is
the newest `checkpoints/iter_*.pt` (a run stopped before its first checkpoint starts from
the beginning, in the same folder).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfpg_robot.config import (
    TrainConfig,
    apply_overrides,
    load_train_config,
    validate_train_config,
)
from mfpg_robot.run_dir import RunDir, RunDirError, load_checkpoint
from sim.robot_config import ConfigError

#: Config keys a resumed run may change.
RESUMABLE_KEYS = ("hf.total_steps", "hf.port", "run.progress", "run.log_every",
                  "run.checkpoint_every", "run.export", "lf.backend", "lf.workers")
#: Keys not compared: the run folder is the one being resumed.
IGNORED_KEYS = ("run.dir",)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(old: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old, new) for every value that differs."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in IGNORED_KEYS}


@dataclass
class Resume:
    """What a resumed session starts from."""

    run: RunDir
    config: TrainConfig
    checkpoint: dict[str, Any] | None  # None: no checkpoint yet (start from iteration 0)
    checkpoint_path: Path | None
    changed: dict[str, tuple[Any, Any]]  # the allowed changes made


def prepare_resume(
    run_dir: str | Path, config: str | Path | None, overrides: list[str] | tuple[str, ...],
    resolve: Callable[[TrainConfig], tuple[TrainConfig, list[str]]],
) -> Resume:
    """Open `run_dir`, settle the config (`resolve(cfg) -> (cfg, notes)` applies the session's
    own rules to a given config before it is compared) and load the newest checkpoint."""
    run = RunDir.open(run_dir)
    source = str(run.path / "config.yaml")
    try:
        stored = validate_train_config(run.stored_config(), source)
    except ConfigError as err:
        raise RunDirError(f"--resume {run.path}: its config.yaml is not valid ({err})") from None
    if config is not None:
        new, _ = resolve(load_train_config(config, overrides))
    elif overrides:
        data = apply_overrides(stored.to_dict(), overrides)
        new = validate_train_config(data, f"{source} (with --set {' '.join(overrides)})")
    else:
        new = stored
    diff = config_diff(stored, new)
    refused = {k: v for k, v in diff.items() if k not in RESUMABLE_KEYS}
    if refused:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise ConfigError(
            f"cannot resume {run.path} with a changed config: {listed}. A resumed run may "
            f"change only {', '.join(RESUMABLE_KEYS)}; for other changes start a new run "
            f"(e.g. warm-started from this one with --set init.checkpoint={run.path})"
        )
    new = new.model_copy(update={"run": new.run.model_copy(update={"dir": str(run.path)})})
    found = run.iteration_checkpoints()
    if not found:
        return Resume(run, new, None, None, diff)
    _, path = found[-1]
    return Resume(run, new, load_checkpoint(path), path, diff)
