"""The sample-efficiency sweep's report: DIR/results.json, the printed table, one PNG per task.

`results.json`:

    {"tasks": {TASK: {METHOD: {"hf_samples": int, "lf_samples": int, "wall_s": float,
                               "final_return": {"median": float, "iqr": [q25, q75]},
                               "seeds": [final return of each seed], "seed_ids": [int]}}},
     "comparisons": {TASK: {"MF/HF": {"ratio": float | null, "difference": float}, ...,
                            "ppo_hf_to_match_mfppo": {"hf_samples": int | null, ...}}},
     "curves": {TASK: {METHOD: {"hf_samples": [...], "median": [...], "q25": [...],
                                "q75": [...]}}},
     "settings": {...}}

Samples and wall time are medians over seeds (a warm-started method's include its LF
pretraining); returns are of the deterministic policy on the HF env. A ratio of median
returns is given only where both are positive (else null; the difference is always given).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.sample_efficiency import (
    COMMON,
    LF_PRETRAIN,
    METHODS,
    TASK_METHOD,
    Settings,
    resolve_task,
    run_paths,
    run_spec,
    stored_result,
    write_json,
)

#: (multi-fidelity method, its HF-only counterpart at the same HF budget)
PAIRS = (
    ("mfppo", "ppo_hf"),
    ("mfppo_episode", "ppo_hf"),
    ("mfppo_synced", "ppo_hf"),
    ("mfreinforce", "reinforce_hf"),
    ("mfppo_lf_finetune", "ppo_lf_finetune"),
)


def spread(values: list[float]) -> dict[str, Any]:
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return {"median": float(q50), "iqr": [float(q25), float(q75)]}


def _curve(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Median and quartiles across seeds at the HF sample counts every seed has."""
    shared = set.intersection(*({int(x) for x, _ in r["curve"]} for r in runs))
    xs = sorted(shared)
    ys = np.array([[dict((int(x), y) for x, y in r["curve"])[x] for x in xs] for r in runs])
    q25, q50, q75 = (np.percentile(ys, q, axis=0) if xs else [] for q in (25, 50, 75))
    return {"hf_samples": xs, "median": list(map(float, q50)), "q25": list(map(float, q25)),
            "q75": list(map(float, q75))}


def collect(out: Path, tasks: list[str], methods: list[str], seeds: dict[str, list[int]],
            settings: Settings) -> dict[str, dict[str, list[tuple[int, dict[str, Any]]]]]:
    """(seed, result) of every finished run of the sweep, per task and method."""
    found: dict[str, dict[str, list[tuple[int, dict[str, Any]]]]] = {}
    for t in tasks:
        for m in methods:
            for s in seeds[t]:
                path = run_paths(out, t, m, s)[0]
                result = stored_result(path, run_spec(t, m, s, settings))
                if result is not None:
                    found.setdefault(t, {}).setdefault(m, []).append((s, result))
    return found


def samples_to_reach(curve: dict[str, list[float]], target: float) -> int | None:
    """The first HF sample count at which the median curve reaches `target`."""
    for x, y in zip(curve["hf_samples"], curve["median"], strict=True):
        if y >= target:
            return int(x)
    return None


def compare(entries: dict[str, Any], curves: dict[str, Any], budget: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mf, hf in PAIRS:
        if mf in entries and hf in entries:
            a, b = entries[mf]["final_return"]["median"], entries[hf]["final_return"]["median"]
            out[f"{mf}/{hf}"] = {"ratio": a / b if a > 0 and b > 0 else None,
                                 "difference": a - b}
    ref = next((m for m in ("ppo_hf_10x", "ppo_hf") if m in curves), None)
    if "mfppo" in entries and ref is not None:
        target = entries["mfppo"]["final_return"]["median"]
        steps = samples_to_reach(curves[ref], target)
        out["ppo_hf_to_match_mfppo"] = {
            "target": target, "curve": ref, "hf_samples": steps,
            "budgets": None if steps is None else steps / budget,
            "searched_up_to": max(curves[ref]["hf_samples"], default=0),
        }
    return out


def aggregate(found: dict[str, dict[str, list[tuple[int, dict[str, Any]]]]],
              settings: Settings) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    comparisons: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for t, by_method in found.items():
        entries, task_curves = {}, {}
        for m, runs in by_method.items():
            results = [r for _, r in runs]
            finals = [float(r["final_return"]) for r in results]
            entries[m] = {
                "hf_samples": int(np.median([r["hf_samples"] for r in results])),
                "lf_samples": int(round(float(np.median([r["lf_samples"] for r in results])))),
                "wall_s": float(np.median([r["wall_s"] for r in results])),
                "final_return": spread(finals),
                "seeds": finals,
                "seed_ids": [s for s, _ in runs],
            }
            task_curves[m] = _curve(results)
        tasks[t], curves[t] = entries, task_curves
        comparisons[t] = compare(entries, task_curves, settings.budget_of(resolve_task(t)))
    return {"tasks": tasks, "comparisons": comparisons, "curves": curves}


def _fmt(x: float) -> str:
    return f"{x:.1f}" if math.isfinite(x) else "nan"


def table(results: dict[str, Any], settings: Settings) -> str:
    lines = []
    for t, entries in results["tasks"].items():
        task = resolve_task(t)
        episodes, horizon = settings.eval_of(task)
        lines += [
            "",
            f"{t}: HF {task.hf_env} [{task.hf_fidelity}], LF {task.lf_env} [{task.lf_fidelity}], "
            f"B = {settings.budget_of(task):,} HF steps; deterministic policy on HF, "
            f"{episodes} episodes" + (f" of {horizon} steps" if horizon else ""),
            f"  {'method':<19}{'seeds':>5}{'HF samples':>12}{'LF samples':>13}{'wall s':>9}"
            f"  final return: median [IQR]",
        ]
        for m, e in entries.items():
            r = e["final_return"]
            lines.append(
                f"  {m:<19}{len(e['seeds']):>5}{e['hf_samples']:>12,}{e['lf_samples']:>13,}"
                f"{e['wall_s']:>9.0f}  {_fmt(r['median'])} [{_fmt(r['iqr'][0])}, "
                f"{_fmt(r['iqr'][1])}]")
        comp = results["comparisons"].get(t, {})
        pairs = {k: v for k, v in comp.items() if "/" in k}
        if pairs:
            lines.append("  MF / HF-only at equal HF budget (median returns):")
        for k, v in pairs.items():
            ratio = "n/a (a median <= 0)" if v["ratio"] is None else f"{v['ratio']:.2f}"
            lines.append(f"    {k}: ratio {ratio}, difference {v['difference']:+.1f}")
        match = comp.get("ppo_hf_to_match_mfppo")
        if match is not None:
            where = (f"not reached within {match['searched_up_to']:,} HF samples"
                     if match["hf_samples"] is None else
                     f"{match['hf_samples']:,} HF samples ({match['budgets']:.2f} B)")
            lines.append(f"  {match['curve']} reaches mfppo's median ({_fmt(match['target'])}) "
                         f"at: {where}")
    return "\n".join(lines)


def plot(out: Path, task: str, curves: dict[str, Any], budget: int) -> Path:
    """Median (line) and IQR (band) per method against HF samples; `ppo_lf_only` (0 HF
    samples) as a horizontal line. A right panel shows runs longer than B in full."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    longest = max((max(c["hf_samples"], default=0) for c in curves.values()), default=0)
    panels = 2 if longest > budget else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), dpi=100, squeeze=False)
    for ax, xmax in zip(axes[0], (budget, longest)[:panels], strict=True):
        for i, (m, c) in enumerate(curves.items()):
            color = f"C{i % 10}"
            xs, med = np.array(c["hf_samples"]), np.array(c["median"])
            lo, hi = np.array(c["q25"]), np.array(c["q75"])
            if len(xs) == 1 and xs[0] == 0:  # no HF samples: a level, not a curve
                ax.axhline(med[0], color=color, ls="--", lw=1.2, label=f"{m} (0 HF samples)")
                ax.axhspan(lo[0], hi[0], color=color, alpha=0.12)
                continue
            ax.plot(xs, med, marker=".", color=color, lw=1.2, label=m)
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
        ax.set_xlim(0, xmax * 1.02)
        ax.ticklabel_format(useOffset=False)
        ax.set_xlabel("HF samples (environment steps)")
        ax.set_ylabel("HF return, deterministic policy (median, IQR)")
        ax.grid(alpha=0.3)
    axes[0][0].set_title(f"{task}: up to B = {budget:,}")
    if panels == 2:
        axes[0][1].set_title(f"{task}: all runs")
    axes[0][0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = out / f"{task}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def report(out: Path, tasks: list[str], methods: list[str], seeds: dict[str, list[int]],
           settings: Settings, context: dict[str, Any]) -> dict[str, Any]:
    """Aggregate the finished runs into DIR/results.json, print the table, plot each task."""
    results = aggregate(collect(out, tasks, methods, seeds, settings), settings)
    results["settings"] = {
        **context,
        "tasks": {t: dataclasses.asdict(resolve_task(t)) for t in tasks},
        "budget": {t: settings.budget_of(resolve_task(t)) for t in tasks},
        "evaluation": {t: dict(zip(("episodes", "horizon"), settings.eval_of(resolve_task(t)),
                                   strict=True)) for t in tasks},
        "methods": {m: dataclasses.asdict(METHODS[m]) for m in methods},
        "lf_pretrain": dataclasses.asdict(LF_PRETRAIN),
        "common_overrides": COMMON,
        "task_method_overrides": {f"{t} {m}": v for (t, m), v in TASK_METHOD.items()},
        "set": list(settings.overrides),
        "seeds": seeds,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    print(table(results, settings))
    for t, task_curves in results["curves"].items():
        path = plot(out, t, task_curves, settings.budget_of(resolve_task(t)))
        print(f"plot: {path}")
    print(f"results: {out / 'results.json'}")
    return results
