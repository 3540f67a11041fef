"""LF collection on Ray actors: throughput per actor count, the overhead, the break-even batch.

The workload is one LF collection as the trainer makes it (`mfpg_robot.pairing.run_job`):
`--rows` LF rollouts of `--horizon` control steps on the reduced model of `--robot`, starts
drawn from the LF start distribution and noise from the keyed generators, the project's
64x64 policy, an LF critic for the advantages. Every figure is the median of `--repeats`
collections after a warm-up one.

- scaling: LF control steps/s of the local backend (`lf.backend: local`, one collector with
  `--nthread` threads, the whole collection in one batch) and of Ray with 1, 2, 4, 8 actors
  (those the machine's cores allow; one thread each), the collection cut into one chunk per
  actor (`lf.batch` = rows / actors);
- overhead: what a Ray collection costs beyond simulating: one actor's wall time minus the
  same single chunk simulated in this process with one thread; the bytes of the `LFModel`
  put in the object store per collection (policy, critic, reward scaling) and of the
  samples that come back; the round trip of a one-row, one-step chunk;
- break-even: the local backend against Ray on the most actors over a range of rows (same
  horizon): the smallest LF batch (rows, and steps) per collection from which Ray is faster
  at every larger size measured, and where the least-squares lines time = fixed + steps / rate
  of the two cross (single timings on a loaded machine scatter; the lines use all of them).

    python benchmarks/lf_scaling.py                      # a local Ray instance on all cores
    python benchmarks/lf_scaling.py --address auto --actors 1 2 4 8 16   # an existing cluster
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pickle
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import sim  # noqa: F401  (registers the envs)
from mfpg_robot.lf_ray import RayLF, connect
from mfpg_robot.pairing import (
    CriticValues,
    LFJob,
    LFModel,
    LFRunner,
    LocalLF,
    identity_rewards,
    run_job,
)
from mfpg_robot.policy import Critic, GaussianPolicy
from sim.batched import BatchedCollector

ENV_IDS = {"furuta": "mfpg/FurutaSwingup-v0", "arm2": "mfpg/Arm2Reach-v0"}
OUT = Path(__file__).resolve().parent / "results" / "lf_scaling.json"


def make_model(col: BatchedCollector, seed: int) -> LFModel:
    """The project's 64x64 policy and critic, normalised on LF starts."""
    torch.manual_seed(seed)
    policy = GaussianPolicy(col.obs_dim, col.act_dim)
    q, v, task = col.sample_starts(256, np.random.default_rng(seed))
    policy.obs_norm.update(col.task.observe(q, v, task))
    critic = Critic(policy.obs_norm, col.obs_dim)
    return LFModel(policy.rollout_policy(), policy.log_std.detach().numpy().astype(np.float64),
                   CriticValues(critic), identity_rewards)


def make_job(col: BatchedCollector, rows: int, horizon: int, iteration: int) -> LFJob:
    """`rows` LF rollouts of `horizon` steps from drawn starts (like an episode pool)."""
    q, v, task = col.sample_starts(rows, np.random.default_rng(0))  # shapes; redrawn keyed
    return LFJob(
        key=(0, iteration), item=np.arange(rows), q0=q, v0=v, task=task,
        draw_start=np.ones(rows, dtype=bool), horizon=np.full(rows, horizon),
        known_len=np.zeros(rows, dtype=np.int64), known=np.zeros((0, horizon, col.act_dim)),
        steps=horizon, first_only=False, gamma=0.99, gae_lambda=0.95,
    )


def timed(runner: LFRunner, col: BatchedCollector, model: LFModel, rows: int, horizon: int,
          batch: int, repeats: int) -> tuple[float, int, int]:
    """(median seconds per collection, LF steps per collection, bytes of its samples)."""
    times, steps, size = [], 0, 0
    for i in range(repeats + 1):  # the first: warm-up
        job = make_job(col, rows, horizon, i)
        t0 = time.perf_counter()
        out = run_job(runner, job, batch, model)
        if i:
            times.append(time.perf_counter() - t0)
        steps, size = int(out.lengths.sum()), len(pickle.dumps(out))
    return statistics.median(times), steps, size


def main(argv: list[str] | None = None) -> dict:
    """Measure, print, write the JSON; returns what it wrote."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--robot", choices=sorted(ENV_IDS), default="furuta")
    p.add_argument("--rows", type=int, default=512, help="LF rollouts per collection")
    p.add_argument("--horizon", type=int, default=200, help="control steps per rollout")
    p.add_argument("--nthread", type=int, default=os.cpu_count() or 1,
                   help="threads of the local backend's collector (lf.nthread)")
    p.add_argument("--actors", type=int, nargs="+",
                   help="actor counts (default: 1, 2, 4, 8 up to the CPU count; 1 is always "
                        "measured: the overhead figures come from it)")
    p.add_argument("--break-even-rows", type=int, nargs="+",
                   default=[2, 4, 8, 16, 32, 64, 128, 256, 512])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--address", help="Ray cluster (default: a new local instance)")
    p.add_argument("--json", type=Path, default=OUT)
    args = p.parse_args(argv)
    cpus = os.cpu_count() or 1
    load_before = list(os.getloadavg())
    actors = sorted({1, *(args.actors or [n for n in (1, 2, 4, 8) if n <= cpus])})
    torch.set_num_threads(1)
    env = ENV_IDS[args.robot]
    init = {} if args.address else {"num_cpus": cpus, "include_dashboard": False}
    ray = connect("lf_scaling", args.address, **init)
    ray_cpus = ray.cluster_resources().get("CPU", 0.0)
    rows, h = args.rows, args.horizon
    n_max = max(rows, *args.break_even_rows)
    col = BatchedCollector(env, fidelity="reduced", n_envs=n_max, nthread=args.nthread)
    col1 = BatchedCollector(env, fidelity="reduced", n_envs=n_max, nthread=1)
    model = make_model(col, 0)
    print(f"{args.robot} reduced, {rows} rollouts x {h} steps per collection; {cpus} CPUs "
          f"here, Ray cluster {ray_cpus:g} CPUs; median of {args.repeats}")

    local_s, steps, sample_bytes = timed(LocalLF(col), col, model, rows, h, rows, args.repeats)
    local1_s, _, _ = timed(LocalLF(col1), col1, model, rows, h, rows, args.repeats)
    scaling = [{"backend": "local", "threads": args.nthread, "seconds": local_s,
                "steps_per_s": steps / local_s},
               {"backend": "local", "threads": 1, "seconds": local1_s,
                "steps_per_s": steps / local1_s}]
    for s in scaling:
        print(f"  local, {s['threads']} thread(s): {s['steps_per_s']:,.0f} LF steps/s "
              f"({s['seconds']:.3f} s)")
    overhead: dict[str, float] = {}
    for n in actors:
        batch = math.ceil(rows / n)
        runner = RayLF(env, "reduced", batch, 1, n, 1)
        try:
            sec, _, _ = timed(runner, col, model, rows, h, batch, args.repeats)
            if n == 1:
                overhead["one_actor_minus_local_s"] = sec - local1_s
                tiny, _, _ = timed(runner, col, model, 1, 1, 1, args.repeats)
                overhead["round_trip_1_row_1_step_s"] = tiny
        finally:
            runner.close()
        scaling.append({"backend": "ray", "actors": n, "seconds": sec,
                        "steps_per_s": steps / sec, "speedup_vs_local": local_s / sec})
        print(f"  ray, {n} actor(s): {steps / sec:,.0f} LF steps/s ({sec:.3f} s; "
              f"{local_s / sec:.2f}x local)")
    overhead["model_bytes"] = float(len(pickle.dumps(model)))
    overhead["sample_bytes"] = float(sample_bytes)
    overhead["sample_bytes_per_step"] = sample_bytes / steps
    print(f"  overhead: one actor - local (1 thread) {overhead['one_actor_minus_local_s']:.3f} "
          f"s per collection; 1-row 1-step round trip "
          f"{overhead['round_trip_1_row_1_step_s'] * 1e3:.1f} ms; model "
          f"{overhead['model_bytes'] / 1e3:.0f} kB out, samples "
          f"{sample_bytes / 1e6:.1f} MB back ({overhead['sample_bytes_per_step']:.0f} B/step)")

    n = max(actors)
    runner = RayLF(env, "reduced", math.ceil(n_max / n), 1, n, 1)
    sweep = []
    try:
        for r in sorted(args.break_even_rows):
            loc, st, _ = timed(LocalLF(col), col, model, r, h, r, args.repeats)
            rem, _, _ = timed(runner, col, model, r, h, math.ceil(r / n), args.repeats)
            sweep.append({"rows": r, "steps": st, "local_s": loc, "ray_s": rem})
            print(f"  {r:5d} rows ({st:7,d} steps): local {loc:.4f} s, ray x{n} {rem:.4f} s")
    finally:
        runner.close()
    faster = [s for s in sweep if s["ray_s"] < s["local_s"]]
    x = np.array([s["steps"] for s in sweep], dtype=float)
    fits = {k: np.polyfit(x, [s[k] for s in sweep], 1) for k in ("local_s", "ray_s")}
    (slope_l, fixed_l), (slope_r, fixed_r) = fits["local_s"], fits["ray_s"]
    crossing = (fixed_r - fixed_l) / (slope_l - slope_r) if slope_l > slope_r else None
    print(f"  lines: local {fixed_l * 1e3:.1f} ms + steps / {1 / slope_l:,.0f} per s; ray x{n} "
          f"{fixed_r * 1e3:.1f} ms + steps / {1 / slope_r:,.0f} per s; "
          + (f"crossing at {crossing:,.0f} steps" if crossing is not None
             else "Ray's rate is not higher: no crossing"))
    first = next((s for s in sweep if all(t["ray_s"] < t["local_s"]
                                          for t in sweep if t["rows"] >= s["rows"])), None)
    print(f"  break-even with {n} actors: "
          + (f"Ray faster from {first['rows']} rows ({first['steps']:,} steps) per collection"
             if first else "Ray never faster in this range") + f" ({len(faster)} of "
          f"{len(sweep)} sizes faster)")
    col.close()
    col1.close()
    result = {
        "command": "python benchmarks/lf_scaling.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {cpus} CPUs, {platform.python_version()}, "
                   f"ray {ray.__version__}, torch {torch.__version__}",
        "robot": args.robot, "rows": rows, "horizon": h, "steps_per_collection": steps,
        "ray_cpus": ray_cpus, "scaling": scaling, "overhead": overhead,
        "break_even": {"actors": n, "sizes": sweep,
                       "rows": first and first["rows"], "steps": first and first["steps"],
                       "lines": {"local_fixed_s": fixed_l, "local_steps_per_s": 1 / slope_l,
                                 "ray_fixed_s": fixed_r, "ray_steps_per_s": 1 / slope_r,
                                 "crossing_steps": crossing}},
        "load_average": [load_before, list(os.getloadavg())],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"load average (1, 5, 15 min) before {load_before}, after {list(os.getloadavg())}; "
          f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
