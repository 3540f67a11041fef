"""How often this machine takes the CPU away from a running thread: the floor under any loop.

A control loop at 250 Hz has a 4 ms period; a thread that loses its CPU for longer than the
period's slack misses a deadline however little work it does. This probe measures that
floor with no serial link, no emulator and no robot code:

- stalls: a thread busy-spins on `time.monotonic()` for `--busy-ms` of every period and
  records each gap between two consecutive readings longer than 0.5 ms (time the thread
  was not running), for `--seconds`;
- deadlines: the same thread runs `hardware.scheduler.Scheduler` (the RobotEnv loop's
  scheduler) at `--rate-hz`, doing `--busy-ms` of pure computation per period, and counts
  missed deadlines exactly as `benchmarks/control_loop.py` does;
- steal: the CPU time the hypervisor gave to other guests (`steal` in /proc/stat), if any.

`--procs 2` runs two such loops at once (as the emulator and the host do). The same
stall counts under SCHED_FIFO (`chrt -f 50 python ...`, as root) tell the guest scheduler
apart from the hypervisor: only the guest honours the priority.

    python benchmarks/machine_stalls.py --seconds 30 --busy-ms 1.2 --procs 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hardware.scheduler import Scheduler  # noqa: E402

GAP_S = 0.0005  # a gap between two clock readings longer than this is a stall
THRESHOLDS_MS = (0.5, 1.0, 2.0, 3.0, 4.0)


def probe(seconds: float, rate_hz: float, busy_ms: float, spin_ms: float) -> dict:
    """Run the loop for `seconds`; return its stalls and missed deadlines."""
    period = 1.0 / rate_hz
    busy = busy_ms / 1000.0
    scheduler = Scheduler(period, spin_s=spin_ms / 1000.0)
    gaps: list[float] = []
    clock = time.monotonic
    scheduler.start()
    end = clock() + seconds
    while True:
        start = last = clock()
        while last - start < busy:  # the period's work: spin, noting every stall
            now = clock()
            if now - last > GAP_S:
                gaps.append(now - last)
            last = now
        scheduler.wait()
        if last > end:
            break
    stats = scheduler.stats()
    g = np.asarray(gaps) * 1e3
    return {
        "periods": stats.steps,
        "missed_deadlines": stats.missed,
        "max_consecutive_missed": stats.max_consecutive_missed,
        "jitter_p99_ms": stats.jitter_p99_s * 1e3,
        "jitter_max_ms": stats.jitter_max_s * 1e3,
        "stalls_over_ms": {f"{t:g}": int((g > t).sum()) for t in THRESHOLDS_MS},
        "longest_stalls_ms": [round(float(x), 3) for x in np.sort(g)[-5:][::-1]],
    }


def _worker(args: tuple[float, float, float, float], out: mp.Queue) -> None:
    out.put(probe(*args))


def cpu_steal_ticks() -> int | None:
    """Total `steal` jiffies of all CPUs (/proc/stat), or None where there is no such field."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    return int(fields[8]) if len(fields) > 8 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate-hz", type=float, default=250.0)
    parser.add_argument("--busy-ms", type=float, default=1.2,
                        help="work per period (the RobotEnv host step is about 1.1-1.3 ms)")
    parser.add_argument("--spin-ms", type=float, default=0.5,
                        help="busy-wait this long before each deadline, after sleeping (as "
                             "control_loop.py; a whole period never sleeps)")
    parser.add_argument("--procs", type=int, default=1, help="loops run at once (processes)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rate_hz <= 0 or args.procs < 1 or args.spin_ms < 0:
        parser.error("--seconds, --rate-hz and --procs must be positive, --spin-ms >= 0")
    if not 0 <= args.busy_ms < 1000.0 / args.rate_hz:
        parser.error("--busy-ms must be in [0, period)")

    steal0, t0 = cpu_steal_ticks(), time.monotonic()
    queue: mp.Queue = mp.Queue()
    job = (args.seconds, args.rate_hz, args.busy_ms, args.spin_ms)
    procs = [mp.Process(target=_worker, args=(job, queue)) for _ in range(args.procs)]
    for p in procs:
        p.start()
    loops = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - t0
    steal1 = cpu_steal_ticks()
    tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    steal_s = None if steal0 is None or steal1 is None else (steal1 - steal0) * tick_s
    result = {
        "seconds": args.seconds, "rate_hz": args.rate_hz, "busy_ms": args.busy_ms,
        "spin_ms": args.spin_ms,
        "procs": args.procs, "loops": loops,
        "steal_s": steal_s, "steal_fraction": None if steal_s is None
        else steal_s / (elapsed * (os.cpu_count() or 1)),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0]},
        "sched_policy": os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None,
    }
    print(f"{args.procs} loop(s) at {args.rate_hz:g} Hz with {args.busy_ms:g} ms of work per "
          f"period, spin {args.spin_ms:g} ms, for {args.seconds:g} s; {os.cpu_count()} CPUs")
    for i, loop in enumerate(loops):
        stalls = ", ".join(f">{k} ms: {v}" for k, v in loop["stalls_over_ms"].items())
        print(f"  loop {i}: missed deadlines {loop['missed_deadlines']} of {loop['periods']} "
              f"(longest run {loop['max_consecutive_missed']}), jitter p99 "
              f"{loop['jitter_p99_ms']:.3f} ms; stalls {stalls}; longest "
              f"{loop['longest_stalls_ms']} ms")
    if steal_s is not None:
        print(f"  CPU steal (hypervisor): {steal_s:.2f} s of {elapsed * (os.cpu_count() or 1):.1f}"
              f" CPU-s ({result['steal_fraction']:.2%})")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
