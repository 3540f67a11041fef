"""`mfpg-robot bench sample-efficiency` end to end on a tiny budget: every run a real training
subprocess, results.json per its schema, reruns skip finished runs, bad names exit 2; the
off-dynamics HF variants of stock Gymnasium envs.

The returns of these runs are not judged (B = 512 HF steps, 50-step evaluations); the
harness is: budgets, sample counts, the shared LF pretraining, evaluation of the final policy.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from benchmarks import offdynamics
from benchmarks.sample_efficiency import LF_PRETRAIN, TASKS, evaluate
from mfpg_robot.cli import main
from mfpg_robot.run_dir import policy_from_checkpoint

TASK = "furuta-twin-reduced"
METHODS = ["ppo_hf", "mfppo", "ppo_lf_only", "ppo_lf_finetune"]
LF_STEPS = LF_PRETRAIN.budget_factor * 512  # the LF pretraining's budget at B = 512
TINY = ["--tasks", TASK, "--seeds", "0", "--budget", "512", "--eval-episodes", "1",
        "--eval-horizon", "50", "--set", "hf.steps_per_iter=256", "--set",
        "algo.num_minibatches=4", "--set", "algo.update_epochs=1", "--set",
        "lf.lf_pool_per_hf=4"]


def bench(out: Path, *args: str) -> int:
    return main(["bench", "sample-efficiency", "--out", str(out), *args])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench")
    assert bench(out, *TINY, "--methods", *METHODS, "--jobs", "2") == 0
    return out, (out / "results.json").read_text()


def _result(out: Path, method: str) -> dict:
    return json.loads((out / "runs" / TASK / method / "s0.json").read_text())


def test_results_json_schema_and_sample_counts(sweep: tuple[Path, str]) -> None:
    out, text = sweep
    tasks = json.loads(text)["tasks"]
    assert list(tasks) == [TASK] and set(tasks[TASK]) == set(METHODS)
    for method, entry in tasks[TASK].items():
        assert set(entry) >= {"hf_samples", "lf_samples", "wall_s", "final_return", "seeds"}
        assert isinstance(entry["hf_samples"], int) and isinstance(entry["lf_samples"], int)
        assert isinstance(entry["wall_s"], float) and entry["wall_s"] > 0
        ret = entry["final_return"]
        assert len(entry["seeds"]) == 1 and all(isinstance(x, float) for x in entry["seeds"])
        assert ret["iqr"][0] <= ret["median"] <= ret["iqr"][1]
        assert ret["median"] == entry["seeds"][0] == _result(out, method)["final_return"]
    e = tasks[TASK]
    pretrain = json.loads((out / "pretrain" / TASK / "s0.json").read_text())
    assert pretrain["lf_samples"] == LF_STEPS
    assert (e["ppo_hf"]["hf_samples"], e["ppo_hf"]["lf_samples"]) == (512, 0)
    assert e["mfppo"]["hf_samples"] == 512 and e["mfppo"]["lf_samples"] > 0
    assert (e["ppo_lf_only"]["hf_samples"], e["ppo_lf_only"]["lf_samples"]) == (0, LF_STEPS)
    assert e["ppo_lf_only"]["seeds"] == [pretrain["hf_return"]]
    assert (e["ppo_lf_finetune"]["hf_samples"], e["ppo_lf_finetune"]["lf_samples"]) == (
        512, LF_STEPS)
    assert e["ppo_lf_finetune"]["wall_s"] > pretrain["wall_s"]  # its pretraining counts
    assert (out / f"{TASK}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_against_hf_samples_and_the_shared_pretraining(sweep: tuple[Path, str]) -> None:
    out, text = sweep
    curves = json.loads(text)["curves"][TASK]
    pretrain = json.loads((out / "pretrain" / TASK / "s0.json").read_text())
    assert curves["ppo_lf_only"]["hf_samples"] == [0]
    fine = curves["ppo_lf_finetune"]
    assert fine["hf_samples"][0] == 0 and fine["hf_samples"][-1] == 512
    # the finetune run started from the pretrained policy: same return at 0 HF samples
    assert fine["median"][0] == pytest.approx(pretrain["hf_return"])
    assert curves["ppo_hf"]["hf_samples"][-1] == 512
    assert list((out / "pretrain" / TASK).glob("s*/")) == [out / "pretrain" / TASK / "s0"]
    config = (out / "runs" / TASK / "ppo_lf_finetune" / "s0" / "config.yaml").read_text()
    assert str(out / pretrain["checkpoint"]) in config  # init.checkpoint


def test_final_return_is_the_final_policy_on_hf(sweep: tuple[Path, str]) -> None:
    out, _ = sweep
    ckpts = list((out / "runs" / TASK / "mfppo" / "s0" / "checkpoints").glob("*.pt"))
    assert [p.name for p in ckpts] == ["final.pt"], "evaluated checkpoints are deleted"
    returns = evaluate(policy_from_checkpoint(ckpts[0]), TASKS[TASK], 1, 50)
    assert returns == _result(out, "mfppo")["final_returns"]


def test_rerun_skips_finished_runs_and_redoes_an_unfinished_one(
    sweep: tuple[Path, str], capsys: pytest.CaptureFixture
) -> None:
    out, text = sweep
    before = {m: _result(out, m) for m in METHODS}
    (out / "runs" / TASK / "ppo_hf" / "s0.json").unlink()  # as if interrupted mid-run
    assert bench(out, *TINY, "--methods", *METHODS) == 0
    printed = capsys.readouterr().out
    assert f"5 runs: 4 already in {out}, 1 to run" in printed
    assert f"done {TASK} ppo_hf s0" in printed
    for m in ("mfppo", "ppo_lf_only", "ppo_lf_finetune"):
        assert _result(out, m) == before[m]
    redone = _result(out, "ppo_hf")
    assert redone["final_returns"] == before["ppo_hf"]["final_returns"]  # seeded: same run


def test_other_settings_in_the_same_folder_are_refused(
    sweep: tuple[Path, str], capsys: pytest.CaptureFixture
) -> None:
    out, _ = sweep
    args = [a if a != "512" else "1024" for a in TINY]
    assert bench(out, *args, "--methods", "ppo_hf") == 2
    err = capsys.readouterr().err
    assert "was made with other settings (budget differ)" in err and "another --out" in err


@pytest.mark.parametrize(("args", "expected"), [
    (["--tasks", "furuta-twin"], "unknown task 'furuta-twin'; tasks: furuta-twin-reduced, "),
    (["--tasks", "furuta-twin-nope"], "robot 'furuta' has no model 'nope'; its models: twin"),
    (["--methods", "ppo_hf", "sac"], "unknown method(s) sac; methods: ppo_hf, ppo_hf_10x, "),
    (["--set", "algo.lrr=1"], "algo.lrr: unknown key"),
])
def test_bad_input_exits_2_listing_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], expected: str
) -> None:
    assert bench(tmp_path / "out", "--quick", *args) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "nothing runs on bad input"


@pytest.mark.parametrize("base", offdynamics.BASES)
def test_off_dynamics_variants_change_one_thing_of_the_stock_model(base: str) -> None:
    stock = gym.make(base)
    m0 = stock.unwrapped.model
    for variant in offdynamics.VARIANTS:
        env = gym.make(offdynamics.env_id(base, variant))
        m = env.unwrapped.model
        assert env.observation_space == stock.observation_space
        assert env.action_space == stock.action_space
        assert env.spec.max_episode_steps == stock.spec.max_episode_steps
        k = {"x0.5": 0.5, "x2": 2.0}.get(variant.rpartition("_")[2], 1.0)
        gravity = k if variant.startswith("gravity") else 1.0
        friction = k if variant.startswith("friction") else 1.0
        narrow = 0.5 if variant == "joints_narrow" else 1.0
        np.testing.assert_allclose(m.opt.gravity, m0.opt.gravity * gravity)
        np.testing.assert_allclose(m.geom_friction, m0.geom_friction * friction)
        np.testing.assert_allclose(m.dof_damping, m0.dof_damping * friction)
        np.testing.assert_allclose(m.jnt_range, m0.jnt_range * narrow)
        np.testing.assert_array_equal(m.body_mass, m0.body_mass)


def test_methods_a_task_cannot_run_are_left_out(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    task = "pendulum-gravity_x2"
    monkeypatch.setitem(TASKS, task, dataclasses.replace(TASKS[task], methods=("ppo_hf",)))
    assert bench(tmp_path / "out", "--tasks", task, "--methods", "mfppo", "mfreinforce") == 2
    captured = capsys.readouterr()
    assert "not run on pendulum-gravity_x2 (it runs ppo_hf): mfppo, mfreinforce" in captured.out
    assert "none of the methods can run on the tasks given" in captured.err
