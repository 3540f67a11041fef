"""Control-loop timing of `RobotEnv` over a serial link: host time per step, period jitter.

Starts the device emulator (`mfpg-robot emulator --robot NAME`, a pty running the twin in
real time), connects `SerialDriver` to the port it prints, and runs `RobotEnv` at the robot's
control rate (furuta: 250 Hz) for `--seconds` of stepping (resets not counted) with a gentle
sinusoidal policy. `--port PATH` uses an already running emulator or a real robot instead.

    python benchmarks/control_loop.py --robot furuta --seconds 30 --json out.json

Reported (milliseconds): host time per step (time inside `step()` minus the deadline wait:
filter, send, read, checks, reward), period jitter |period - 1/rate| and wake-up lateness,
p50/p99/max; missed deadlines and the longest run of them; safety events; transport counters.
Target at 250 Hz: p99 jitter < 1 ms and no missed deadlines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hardware.robot_env import make_robot_env  # noqa: E402
from hardware.safety import SafetyStopError  # noqa: E402
from hardware.serial_driver import SerialDriver  # noqa: E402
from sim.robot_config import load_robot_config  # noqa: E402

START_TIMEOUT_S = 60.0
MAX_FAILED_RESETS = 3  # in a row: give up and report


def start_emulator(robot: str) -> tuple[subprocess.Popen, str]:
    """Run `mfpg-robot emulator` and return the process and the port it printed first."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfpg_robot.cli", "emulator", "--robot", robot],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("port: "):
        proc.kill()
        raise RuntimeError(f"emulator did not print 'port: PATH' first (got {line!r})")
    return proc, line.removeprefix("port: ").strip()


def stop_emulator(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def percentiles_ms(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64) * 1e3
    if a.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def run(robot_name: str, port: str, seconds: float, spin_ms: float, seed: int) -> dict:
    """Step RobotEnv for `seconds` of control periods; return the measurements."""
    robot = load_robot_config(robot_name)
    n_steps = int(round(seconds * robot.control_rate_hz))
    host, jitter, lateness = [], [], []
    missed, max_run, resets, failed_resets, reset_s = 0, 0, 0, 0, []
    stops: list[dict] = []
    with SerialDriver(robot, port=port) as driver:
        env = make_robot_env(robot, driver, spin_s=spin_ms / 1000.0, max_episode_steps=n_steps)
        n_act = len(robot.actuated_joints)
        k = 0
        need_reset = True
        while k < n_steps:
            if need_reset:
                t = time.monotonic()
                resets += 1
                try:
                    env.reset(seed=seed + resets)
                except SafetyStopError as err:
                    stops.append({"during": "reset", **err.event.to_dict()})
                    failed_resets += 1
                    if failed_resets >= MAX_FAILED_RESETS:
                        break
                    continue
                failed_resets = 0
                reset_s.append(time.monotonic() - t)
                need_reset = False
            action = np.full(n_act, 0.15 * np.sin(2 * np.pi * 0.5 * k * robot.control_dt))
            t0 = time.perf_counter()
            _, _, terminated, truncated, info = env.step(action)
            elapsed = time.perf_counter() - t0
            k += 1
            tick = info["timing"]
            if tick is not None:
                host.append(elapsed - tick["waited_s"])
                lateness.append(tick["lateness_s"])
                if np.isfinite(tick["period_s"]):
                    jitter.append(abs(tick["period_s"] - robot.control_dt))
                missed += tick["missed"]
                max_run = max(max_run, tick["consecutive_missed"])
            if info["safety"]["stopped"]:
                stops.append({"during": "step", **info["safety"]["event"]})
            if terminated or truncated:
                need_reset = True
        transport = driver.stats
        env.close()
    return {
        "robot": robot_name,
        "rate_hz": robot.control_rate_hz,
        "steps": k,
        "seconds_of_steps": k * robot.control_dt,
        "spin_ms": spin_ms,
        "host_time_per_step_ms": percentiles_ms(host),
        "period_jitter_ms": percentiles_ms(jitter),
        "wake_lateness_ms": percentiles_ms(lateness),
        "missed_deadlines": missed,
        "max_consecutive_missed": max_run,
        "resets": resets,
        "reset_duration_ms": percentiles_ms(reset_s),
        "safety_stops": stops,
        "transport": asdict(transport),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--robot", default="furuta", help="robot name or config path")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of stepping")
    parser.add_argument("--port", default=None, help="use this port instead of an emulator")
    parser.add_argument("--spin-ms", type=float, default=0.5,
                        help="busy-wait this long before each deadline (after sleeping)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    proc = None
    port = args.port
    if port is None:
        proc, port = start_emulator(args.robot)
    try:
        result = run(args.robot, port, args.seconds, args.spin_ms, args.seed)
    finally:
        if proc is not None:
            stop_emulator(proc)
    result["port"] = "emulator pty" if proc is not None else port
    print(f"robot {result['robot']} at {result['rate_hz']:g} Hz, {result['steps']} steps "
          f"({result['seconds_of_steps']:.1f} s), {result['resets']} resets, "
          f"{result['machine']['cpus']} CPUs, load {result['machine']['load_avg_1m']:.2f}")
    for label, key in (("host time per step", "host_time_per_step_ms"),
                       ("period jitter", "period_jitter_ms"),
                       ("wake lateness", "wake_lateness_ms")):
        p = result[key]
        print(f"{label:<20}p50 {p['p50']:.3f} ms  p99 {p['p99']:.3f} ms  max {p['max']:.3f} ms")
    print(f"missed deadlines    {result['missed_deadlines']} "
          f"(longest run {result['max_consecutive_missed']}); "
          f"safety stops {len(result['safety_stops'])}")
    for stop in result["safety_stops"][:10]:
        print(f"  stop during {stop['during']}: {stop['kind']}: {stop['detail']}")
    print(f"transport           {result['transport']}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
