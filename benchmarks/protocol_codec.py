"""Host-side cost of the serial protocol codec, per message, in microseconds (no I/O).

Cases (furuta: 2 joints, 1 actuator, STATE with current and temperature; arm2: 2 joints,
2 actuators, STATE with temperature only):

- build: a message built from user values (fully validated constructor);
- encode: `encode(msg, seq)`, one complete frame;
- decode: `decode_frame(frame)`; feed: `FrameDecoder.feed(frame)` (what the transport uses);
- host step: one 250 Hz control step of `SerialDriver` (`send_command` + `read_state`, i.e.
  COMMAND+ACK and READ_STATE+STATE) against an in-memory port that answers from replies
  encoded in advance, so the number is the host's Python path alone (codec, transport,
  driver), without the pty.

Each case runs `--repeats` times `--number` calls, timed two ways: CPU time of this process
(`time.process_time`: what the code costs, even while other processes share the cores) and
wall time (`time.perf_counter`: also counts time spent descheduled). The median and the best
(least disturbed) per-call time of the repeats are reported. On a shared machine wall times
are noisy; compare CPU times.

    python benchmarks/protocol_codec.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from hardware import protocol, serial_driver
from hardware.protocol import (
    Ack,
    Command,
    FrameDecoder,
    HelloReply,
    MsgType,
    ReadState,
    StateReply,
    StatusFlag,
    decode_frame,
    encode,
)
from hardware.serial_driver import SerialDriver
from sim.robot_config import load_robot_config

FURUTA_STATE = StateReply(
    123_456_789, StatusFlag.ENABLED, 0, (0.5, 3.0), (-1.25, 0.0), (0.25,), (31.5,)
)
ARM2_STATE = StateReply(
    123_456_789, StatusFlag.ENABLED, 0, (0.5, -0.25), (0.0, 0.1), None, (40.0, 38.5)
)


class MemoryPort:
    """Stands in for a pyserial port: each request frame written is answered at once with a
    reply frame encoded in advance (keyed by request type byte and seq)."""

    def __init__(self, replies: dict[tuple[int, int], bytes]) -> None:
        self.port = "memory://"
        self.baudrate = 1_000_000
        self._replies = replies
        self._rx = bytearray()

    @property
    def in_waiting(self) -> int:
        return len(self._rx)

    def write(self, frame: bytes) -> int:
        self._rx += self._replies[frame[6], frame[4] | frame[5] << 8]
        return len(frame)

    def read(self, n: int) -> bytes:
        data = bytes(self._rx[:n])
        del self._rx[:n]
        return data

    def reset_input_buffer(self) -> None:
        self._rx.clear()

    def close(self) -> None:
        self._rx.clear()


def furuta_replies(n_seqs: int) -> dict[tuple[int, int], bytes]:
    """Replies of a furuta device to the first `n_seqs` sequence numbers."""
    hello = HelloReply(1, 1, 2, 1, (1, 0, 0), "bench furuta")
    replies = {}
    for seq in range(n_seqs):
        replies[MsgType.HELLO, seq] = encode(hello, seq)
        replies[MsgType.READ_STATE, seq] = encode(FURUTA_STATE, seq)
        for kind in (MsgType.COMMAND, MsgType.SET_WATCHDOG, MsgType.ENABLE, MsgType.DISABLE):
            replies[kind, seq] = encode(Ack(kind), seq)
    return replies


def per_call_us(
    fn: Callable[[], object], number: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Per-call (CPU, wall) microseconds of `fn`, one value per repeat (after a warm-up)."""
    cpu, wall = [], []
    for r in range(repeats + 1):
        cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
        for _ in range(number):
            fn()
        if r:
            cpu.append((time.process_time_ns() - cpu0) / number / 1e3)
            wall.append((time.perf_counter_ns() - wall0) / number / 1e3)
    return cpu, wall


def codec_cases() -> dict[str, Callable[[], object]]:
    """name -> zero-argument call to time."""
    furuta_cmd, arm2_cmd = Command((1.5,)), Command((0.5, -0.25))
    ack = Ack(MsgType.COMMAND)
    frames = {
        "ack": encode(ack, 7),
        "state_furuta": encode(FURUTA_STATE, 7),
        "state_arm2": encode(ARM2_STATE, 7),
        "command_furuta": encode(furuta_cmd, 7),
    }
    decoder = FrameDecoder()
    s = FURUTA_STATE
    return {
        "build Command furuta": lambda: Command((1.5,)),
        "build Command arm2": lambda: Command((0.5, -0.25)),
        "build StateReply furuta": lambda: StateReply(
            s.timestamp_us, s.status, s.faults, s.position, s.velocity, s.current, s.temperature
        ),
        "encode Command furuta": lambda: encode(furuta_cmd, 7),
        "encode Command arm2": lambda: encode(arm2_cmd, 7),
        "encode ReadState": lambda: encode(ReadState(), 7),
        "encode Ack": lambda: encode(ack, 7),
        "encode StateReply furuta": lambda: encode(FURUTA_STATE, 7),
        "encode StateReply arm2": lambda: encode(ARM2_STATE, 7),
        "decode Ack": lambda: decode_frame(frames["ack"]),
        "decode StateReply furuta": lambda: decode_frame(frames["state_furuta"]),
        "decode StateReply arm2": lambda: decode_frame(frames["state_arm2"]),
        "decode Command furuta": lambda: decode_frame(frames["command_furuta"]),
        "feed Ack": lambda: decoder.feed(frames["ack"]),
        "feed StateReply furuta": lambda: decoder.feed(frames["state_furuta"]),
    }


def host_step_case(number: int, repeats: int) -> tuple[Callable[[], object], SerialDriver]:
    """One control step of a furuta `SerialDriver` over a `MemoryPort` (connected)."""
    replies = furuta_replies(2 * number * (repeats + 1) + 16)
    robot = load_robot_config("furuta")
    serial_driver.open_port = lambda url, baudrate, timeout_s: MemoryPort(replies)
    drv = SerialDriver(robot, port="memory://")
    drv.connect()
    drv.enable()
    command = np.array([1.5])

    def step() -> None:
        drv.send_command(command)
        drv.read_state()

    return step, drv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=5000, help="calls per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case")
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    args = parser.parse_args()
    if args.number < 1 or args.repeats < 1:
        parser.error("--number and --repeats must be >= 1")

    results = {}
    cases = codec_cases()
    step_number = min(args.number, 2000)  # a step is two requests; seqs stay below 65536
    step, drv = host_step_case(step_number, args.repeats)
    print(f"{'case (us per call)':<26}{'cpu median':>11}{'cpu best':>10}{'wall median':>13}")
    for name, fn in [*cases.items(), ("host step furuta", step)]:
        number = step_number if name.startswith("host step") else args.number
        cpu, wall = per_call_us(fn, number, args.repeats)
        results[name] = {
            "cpu_median_us": statistics.median(cpu),
            "cpu_best_us": min(cpu),
            "wall_median_us": statistics.median(wall),
            "wall_best_us": min(wall),
            "number": number,
        }
        row = (statistics.median(cpu), min(cpu), statistics.median(wall))
        print(f"{name:<26}{row[0]:>11.2f}{row[1]:>10.2f}{row[2]:>13.2f}")
    drv.close()
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "number": args.number,
        "repeats": args.repeats,
        "protocol_module": protocol.__file__,
    }
    print(f"python {meta['python']}, {meta['cpu_count']} cpus, load avg {meta['load_avg']}")
    print(f"codec: {meta['protocol_module']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
