"""`mfpg-robot bench NAME [OPTIONS]`: run a benchmark of the source checkout's `benchmarks/`.

    mfpg-robot bench sample-efficiency --quick --out runs/bench-quick
    mfpg-robot bench sample-efficiency --out runs/bench --ray auto   # on a Ray cluster
    mfpg-robot bench sample-efficiency --help        # the benchmark's own options

The options go to the benchmark module's `main` unchanged; its exit status is the command's.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sim.robot_config import REPO_ROOT

#: Command name -> module under benchmarks/ (each has `main(argv) -> int`).
BENCHMARKS = {"sample-efficiency": "sample_efficiency"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark (sample-efficiency)",
                       description="Run a benchmark of benchmarks/; options after NAME are "
                                   "the benchmark's own (NAME --help lists them).")
    p.add_argument("name", choices=sorted(BENCHMARKS), metavar="NAME",
                   help=f"one of: {', '.join(sorted(BENCHMARKS))}")
    p.add_argument("args", nargs=argparse.REMAINDER, help="options of the benchmark")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module = BENCHMARKS[args.name]
    if not (REPO_ROOT / "benchmarks" / f"{module}.py").is_file():
        print(f"error: bench runs the benchmarks/ folder of a source checkout; "
              f"{REPO_ROOT / 'benchmarks'} has no {module}.py", file=sys.stderr)
        return 1
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return int(importlib.import_module(f"benchmarks.{module}").main(args.args))
