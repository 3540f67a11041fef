"""`mfpg-robot probe --robot CONFIG --port PATH`: is the robot there, and is it this robot?

The first thing to run on a new robot: opens the port, handshakes, prints the device info and
one state reading, and exits 0. On a missing port, a silent device or a device that is not
the robot of the config, it prints one paragraph saying what is wrong and exits 1. Torque is
never switched on.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from hardware.driver import RobotError
from hardware.serial_driver import SerialDriver, describe_device
from sim.robot_config import ConfigError, load_robot_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="handshake with the robot on a port and print its info and one state reading",
    )
    p.add_argument("--robot", required=True, help="configs/robots/NAME.yaml, or a robot name")
    p.add_argument("--port", default=None,
                   help="device path, pty path or pyserial URL (default: serial.port of the "
                        "robot config)")
    p.set_defaults(func=run)


def _fmt(values: np.ndarray | None, unit: str) -> str:
    if values is None:
        return "not measured"
    return ", ".join(f"{v:+.4f}" for v in values) + f" {unit}"


def run(args: argparse.Namespace) -> int:
    try:
        robot = load_robot_config(args.robot)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    driver = SerialDriver(robot, port=args.port)
    try:
        with driver:
            info = driver.info
            assert info is not None
            state = driver.read_state()
            stats = driver.stats
    except RobotError as err:
        print(f"probe failed: {err}", file=sys.stderr)
        return 1
    print(f"port:      {driver.port}")
    print(f"device:    {describe_device(info)}, firmware {info.firmware_version}")
    print(f"time:      {state.device_time_s:.6f} s (device clock)")
    print(f"joints:    {', '.join(robot.joint_names)}")
    print(f"position:  {_fmt(state.positions, 'rad')}")
    print(f"velocity:  {_fmt(state.velocities, 'rad/s')}")
    print(f"current:   {_fmt(state.currents, 'A')}")
    print(f"temp:      {_fmt(state.temperatures, 'C')}")
    faults = ", ".join(state.faults) or "none"
    print(f"status:    torque {'on' if state.enabled else 'off'}, "
          f"e-stop {'latched' if state.estopped else 'clear'}, faults {faults}")
    print(f"link:      {stats.attempts} frames sent, {stats.timeouts} timeouts, "
          f"{stats.corrupted} corrupted, {stats.stale} stale replies")
    return 0
