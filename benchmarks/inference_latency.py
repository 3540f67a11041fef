"""Policy inference latency at batch 1: the exported ONNX policy in onnxruntime vs torch.

The same policy, the same observations, the same run: onnxruntime (the session `deploy` uses:
CPU provider, one intra-op thread, sequential execution, no thread spinning, all graph
optimisations) and torch (one thread, inference mode), both from raw observation to the
clipped normalised action (ONNX: both outputs, action and command). Timed call by call with
`time.perf_counter_ns`, in alternating blocks so that both see the same machine state.

    python benchmarks/inference_latency.py --json out.json                 # a fresh policy
    python benchmarks/inference_latency.py --policy runs/my-run --json out.json

Without `--policy`, a freshly initialised furuta policy (64x64 tanh MLP, non-trivial
normalisation statistics) is written as a checkpoint and exported, so the script needs no run.
`--policy` takes a run folder or a checkpoint (the torch side needs it; it is exported here).
Reported (microseconds): p50, p99 and max per call. Target: onnxruntime p99 < 100 us.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from mfpg_robot.export import (  # noqa: E402
    INPUT_NAME,
    export_policy,
    make_session,
    resolve_checkpoint,
    verification_observations,
)
from mfpg_robot.policy import GaussianPolicy  # noqa: E402
from mfpg_robot.run_dir import CHECKPOINT_FORMAT, policy_from_checkpoint  # noqa: E402

TARGET_P99_US = 100.0


def fresh_checkpoint(folder: Path) -> Path:
    """A furuta checkpoint of a freshly initialised policy (trainer format)."""
    from mfpg_robot.config import load_train_config

    torch.manual_seed(0)
    policy = GaussianPolicy(6, 1, (64, 64))
    policy.obs_norm.update(np.random.default_rng(0).normal(0.0, 2.0, size=(1000, 6)))
    cfg = load_train_config(REPO / "configs" / "train" / "ppo_furuta.yaml").to_dict()
    path = folder / "fresh.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg, "obs_dim": 6, "act_dim": 1,
                "iteration": 0, "hf_steps": 0, "algo": {"policy": policy.state_dict()}}, path)
    return path


def percentiles_us(ns: list[int]) -> dict[str, float]:
    a = np.asarray(ns, dtype=np.float64) / 1e3
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max()), "n": int(a.size)}


def measure(checkpoint: Path, onnx_path: Path, calls: int, blocks: int,
            warmup: int) -> dict[str, list[int]]:
    """Per-call nanoseconds of each backend, `blocks` alternating blocks of calls/blocks."""
    torch.set_num_threads(1)
    policy = policy_from_checkpoint(checkpoint)
    session = make_session(onnx_path, threads=1)
    rows = verification_observations(policy, n=256)[:256]
    obs_np = [rows[i : i + 1].copy() for i in range(len(rows))]
    obs_t = [torch.from_numpy(o) for o in obs_np]
    run = session.run

    def ort_call(i: int) -> None:
        run(None, {INPUT_NAME: obs_np[i % len(obs_np)]})

    def torch_call(i: int) -> None:
        with torch.inference_mode():
            policy.mean(obs_t[i % len(obs_t)]).clamp(-1.0, 1.0)

    backends = {"onnxruntime": ort_call, "torch": torch_call}
    for call in backends.values():
        for i in range(warmup):
            call(i)
    times: dict[str, list[int]] = {name: [] for name in backends}
    per_block = max(1, calls // blocks)
    clock = time.perf_counter_ns
    for b in range(blocks):
        order = list(backends.items()) if b % 2 == 0 else list(backends.items())[::-1]
        for name, call in order:
            out = times[name]
            for i in range(per_block):
                t0 = clock()
                call(i)
                out.append(clock() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default=None,
                        help="run folder or checkpoint (default: a fresh furuta policy)")
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per backend")
    parser.add_argument("--blocks", type=int, default=10, help="alternating blocks")
    parser.add_argument("--warmup", type=int, default=1000, help="untimed calls first")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.blocks < 1 or args.warmup < 0:
        parser.error("--calls and --blocks must be >= 1, --warmup >= 0")
    with tempfile.TemporaryDirectory(prefix="mfpg-latency-") as tmp:
        checkpoint = (resolve_checkpoint(args.policy) if args.policy
                      else fresh_checkpoint(Path(tmp)))
        onnx_path = export_policy(checkpoint, Path(tmp) / "policy.onnx")
        times = measure(checkpoint, onnx_path, args.calls, args.blocks, args.warmup)
    result = {
        "policy": str(args.policy or "fresh furuta policy (64x64)"),
        "batch": 1,
        "latency_us": {name: percentiles_us(ns) for name, ns in times.items()},
        "target_p99_us": TARGET_P99_US,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
        },
    }
    ort_p99 = result["latency_us"]["onnxruntime"]["p99"]
    result["target_met"] = ort_p99 < TARGET_P99_US
    print(f"policy {result['policy']}, batch 1, {result['machine']['cpus']} CPUs, "
          f"load {result['machine']['load_avg_1m']:.2f}")
    for name, p in result["latency_us"].items():
        print(f"{name:<12} p50 {p['p50']:7.1f} us  p99 {p['p99']:7.1f} us  "
              f"max {p['max']:8.1f} us  ({p['n']} calls)")
    print(f"target onnxruntime p99 < {TARGET_P99_US:g} us: "
          f"{'met' if result['target_met'] else 'NOT met'}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
