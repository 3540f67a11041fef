"""`algo.accel` in the trainers: every rule in PPO and REINFORCE (and MF-PPO), logged stats,
seeded determinism, extragradient on one minibatch, Nesterov's same-minibatch restart."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from mfpg_robot.accel import ACCELERATORS, make_accelerator
from mfpg_robot.algos import make_algorithm
from mfpg_robot.algos.base import LossClosure, trainer_accel_options
from mfpg_robot.algos.mfppo import MFPPO
from mfpg_robot.algos.ppo import PPO
from mfpg_robot.algos.reinforce import Reinforce
from mfpg_robot.config import TrainConfig, validate_train_config
from mfpg_robot.train import train

FURUTA = "mfpg/FurutaSwingup-v0"
SHORT = "mfpg-test/FurutaShortAccel-v0"  # 100-step episodes for the MF-PPO runs
STATS = ("accel/eta", "accel/eta_mean", "accel/optimism", "accel/momentum", "accel/restarts",
         "accel/grad_evals")
LR = 3e-4

if SHORT not in gym.registry:
    gym.register(SHORT, entry_point="sim.envs.furuta:FurutaSwingupEnv", max_episode_steps=100)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(run_dir: Path, algo: str, rule: str, **options) -> TrainConfig:
    mf = algo.startswith("mf")
    return validate_train_config({
        "seed": 5,
        "algo": {"name": algo, "accel": rule, "accel_options": options, "lr": LR,
                 "update_epochs": 2, "num_minibatches": 4, "anneal_lr": False},
        "hf": {"env": SHORT if mf else FURUTA, "fidelity": "twin" if mf else "reduced",
               "steps_per_iter": 200 if mf else 256, "total_steps": 400 if mf else 512},
        "lf": {"env": FURUTA, "fidelity": "reduced", "pairing": "synced", "k": 4, "M": 2,
               "nthread": 1},
        "run": {"dir": str(run_dir), "progress": False, "checkpoint_every": 0},
    }, "test")


def _jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same_params(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.params, b.params, strict=True))


@pytest.mark.parametrize("algo", ["ppo", "reinforce"])
@pytest.mark.parametrize("rule", ACCELERATORS)
def test_rule_runs_logs_and_is_deterministic(tmp_path: Path, algo: str, rule: str) -> None:
    runs = [train(_cfg(tmp_path / f"r{i}", algo, rule)) for i in range(2)]
    rows = _jsonl(tmp_path / "r0")
    assert len(rows) == 2
    for row in rows:
        assert all(isinstance(row[k], float) for k in STATS), {k: row.get(k) for k in STATS}
        steps, evals = row["grad_steps"], row["accel/grad_evals"]
        assert evals == (2 * steps if rule == "extragradient" else steps)
        if rule == "meta":
            assert 0.1 * LR - 1e-12 <= row["accel/eta"] <= 3 * LR + 1e-12  # trainer default
        else:
            assert row["accel/eta"] == pytest.approx(LR)
        optimism = {"optimistic": (1.0, 1.0), "meta": (0.0, 1.0)}.get(rule, (0.0, 0.0))
        assert optimism[0] <= row["accel/optimism"] <= optimism[1]
        assert 0.0 <= row["accel/momentum"] <= (0.9 if rule == "nesterov" else 0.0)
    assert _same_params(runs[0].algorithm, runs[1].algorithm)
    loss = [[r["loss/policy"] for r in run.history] for run in runs]
    assert loss[0] == loss[1]
    assert [r["accel/eta"] for r in runs[0].history] == [r["accel/eta"] for r in runs[1].history]
    untrained = make_algorithm(_cfg(tmp_path / "x", algo, rule), 6, 1)
    assert not _same_params(runs[0].algorithm, untrained)  # the rule did move the parameters


@pytest.mark.parametrize(("cls", "method", "algo"), [
    (PPO, "minibatch_loss", "ppo"),
    (Reinforce, "batch_loss", "reinforce"),
    (MFPPO, "mf_minibatch_loss", "mfppo"),
])
def test_extragradient_evaluates_each_minibatch_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls, method: str, algo: str
) -> None:
    calls: list[tuple[list[list[int]], torch.Tensor]] = []
    original = getattr(cls, method)

    def rows_of(args: tuple) -> list[list[int]]:
        """The minibatch's row indices (HF rows, LF paired, LF reference); [] for full batch."""
        for a in args:
            if isinstance(a, tuple):
                return [t.tolist() for t in a]
            if isinstance(a, torch.Tensor) and a.dtype == torch.int64:
                return [a.tolist()]
        return []

    def recording(self, batch, *args):
        calls.append((rows_of(args), self.params[0].detach().clone()))
        return original(self, batch, *args)

    monkeypatch.setattr(cls, method, recording)
    rows = train(_cfg(tmp_path / "r", algo, "extragradient")).history
    assert len(calls) == 2 * sum(r["grad_steps"] for r in rows)
    for (idx_a, p_a), (idx_b, p_b) in zip(calls[::2], calls[1::2], strict=True):
        assert idx_a == idx_b  # the look-ahead gradient is taken on the same minibatch
        assert not torch.equal(p_a, p_b)  # ... at the look-ahead point
    if method != "batch_loss":  # and consecutive steps do use different minibatches
        assert calls[0][0] != calls[2][0]


def test_mfppo_with_meta_logs_and_is_deterministic(tmp_path: Path) -> None:
    runs = [train(_cfg(tmp_path / f"r{i}", "mfppo", "meta")) for i in range(2)]
    rows = _jsonl(tmp_path / "r0")
    for row in rows:
        assert all(isinstance(row[k], float) for k in STATS)
        assert row["accel/grad_evals"] == row["grad_steps"]
        assert 0.1 * LR - 1e-12 <= row["accel/eta"] <= 3 * LR + 1e-12
        assert row["mf/n_pairs"] > 0 and row["lf/samples"] > row["hf/samples"]
    assert _same_params(runs[0].algorithm, runs[1].algorithm)
    assert [r["accel/eta"] for r in runs[0].history] == [r["accel/eta"] for r in runs[1].history]


# -- Nesterov's restart on the same minibatch ------------------------------------------------
def _quadratic_steps(algo, offsets: list[float]) -> None:
    """One step per offset on minibatch 'offset': loss = sum(p^2) + offset."""
    for offset in offsets:
        def loss_fn(offset: float = offset) -> torch.Tensor:
            return sum((p**2).sum() for p in algo.params) + offset
        algo._optimizer_step(algo._clipped_closure(loss_fn))


def test_nesterov_restart_ignores_minibatch_noise(tmp_path: Path) -> None:
    """Alternating minibatch offsets: the loss of consecutive closures jumps up every other step
    (the rule's own test restarts on each), but each minibatch's loss keeps falling."""
    algo = make_algorithm(_cfg(tmp_path, "ppo", "nesterov"), 6, 1)
    assert algo.same_batch_restart and not algo.accelerator.restart
    offsets = [100.0, 0.0] * 5
    _quadratic_steps(algo, offsets)
    assert algo.accelerator.restarts == 0
    assert algo.accelerator.stats()["momentum"] > 0.5

    own = make_algorithm(_cfg(tmp_path, "ppo", "none"), 6, 1)  # same net, rule's own test
    rule = make_accelerator("nesterov", own.params, own.optimizer, max_momentum=0.9)
    own.accelerator = rule
    _quadratic_steps(own, offsets)
    assert rule.restarts == 4  # every 0 -> 100 jump after the first


def test_nesterov_restarts_when_the_same_minibatch_gets_worse(tmp_path: Path) -> None:
    algo = make_algorithm(_cfg(tmp_path, "ppo", "nesterov"), 6, 1)
    for group in algo.optimizer.param_groups:
        group["lr"] = 0.5  # Adam steps of ~0.5 per parameter overshoot the quadratic's minimum
    _quadratic_steps(algo, [0.0] * 9)  # two restart windows of 4 steps
    assert algo.accelerator.restarts >= 1
    off = make_algorithm(_cfg(tmp_path, "ppo", "nesterov", restart=False), 6, 1)
    assert not off.same_batch_restart
    for group in off.optimizer.param_groups:
        group["lr"] = 0.5
    _quadratic_steps(off, [0.0] * 9)
    assert off.accelerator.restarts == 0


def test_optimizer_step_takes_only_loss_closures(tmp_path: Path) -> None:
    algo = make_algorithm(_cfg(tmp_path, "ppo", "none"), 6, 1)
    with pytest.raises(TypeError, match="_clipped_closure"):
        algo._optimizer_step(lambda: torch.zeros(()))
    assert isinstance(algo._clipped_closure(lambda: torch.zeros(())), LossClosure)


def test_trainer_defaults_and_user_options() -> None:
    assert trainer_accel_options("meta", 1e-3, {}) == {"eta_max": pytest.approx(3e-3)}
    assert trainer_accel_options("meta", 1e-3, {"eta_max": 5e-3}) == {"eta_max": 5e-3}
    assert trainer_accel_options("meta", 1e-3, {"eta_min": 4e-3})["eta_max"] == 4e-3
    assert trainer_accel_options("nesterov", 1e-3, {}) == {"max_momentum": 0.9}
    assert trainer_accel_options("optimistic", 1e-3, {"optimism": 0.5}) == {"optimism": 0.5}
    assert trainer_accel_options("none", 1e-3, {}) == {}
