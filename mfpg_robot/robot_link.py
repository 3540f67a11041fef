"""Connecting to the robot, or to its emulator, safely: `connect_robot`.

    with connect_robot(robot, emulate=True, confirm=ask_operator, on_event=write) as link:
        obs, info = link.env.reset(seed=0)     # a RobotEnv on a SerialDriver
        ...

The port is `port`, else the robot config's `serial.port`. `emulate=True` starts the device
emulator for this robot config as a subprocess (`mfpg-robot emulator`, on a pseudo-terminal)
and talks to it through `SerialDriver`: the code path of a real robot. `port` and `emulate`
together are a `ConfigError`. The emulator never outlives its parent: it is stopped (SIGTERM,
then SIGKILL after `EMULATOR_STOP_TIMEOUT_S`) when the context exits, normally, on an error or
on Ctrl+C; if the parent is killed outright, Linux sends the emulator SIGTERM
(`prctl(PR_SET_PDEATHSIG)`, armed at its start, so it applies when the thread that called
`connect_robot` ends) and the emulator also stops by itself once its parent process is gone
(`--parent-pid`). It runs in its own session, so a Ctrl+C at the terminal reaches only the
parent, which turns torque off before it stops the emulator.

Pre-flight, before any torque (the `Preflight` record is kept for the run folder):

1. the port exists (else `PortNotFoundError`, listing the serial ports and pseudo-terminals
   there are); the handshake matches the config: protocol version, robot model id, joint and
   actuator count (`SerialDriver.connect`). A busy port, a silent device or another robot
   raise `RobotConnectionError` naming the fix;
2. the config's limits are sane (`check_limits`);
3. the first state reading is plausible: finite, speeds within the limits, temperatures below
   `safety.max_temperature_c`, joints inside their soft limits. Faults left latched from before
   (e.g. WATCHDOG after a host crash) are cleared once and must stay clear. A joint between
   its soft and hard limits is brought back by the reset's slow move home for effort-driven
   robots; a position-servo joint outside its soft limits, but at most
   `hardware.homing.HARD_STOP_SLACK` of its hard range beyond its hard limit (resting on its
   end stop with torque off), is moved back by a recovery move at `reset.homing_speed` after
   the confirmation (`hardware.homing.recover_end_stops`, which `RobotEnv.reset` uses too; a
   failed move is a `PreflightError`). Anything else raises `PreflightError`;
4. `confirm(summary)` (None: not asked, as for `--yes` and dry runs); False raises
   `OperatorAbort` with torque never switched on.

After a recovery move the servos hold their pose (`RobotEnv.hold`) until the first reset.

Events: the env's safety events (`SafetyLayer.listeners`, from any thread), re-sent requests
and reconnects on this port (warnings of loggers `hardware.transport` and
`hardware.robot_env`), faults cleared and recovery moves are passed to `on_event` as dicts
(`time_s` monotonic, `wall_time` Unix time, `source`, `kind`, `detail`, `stop`) and logged by
logger `mfpg_robot.robot`: WARNING for stops, retries and link problems, INFO otherwise.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hardware.driver import DeviceState, RobotConnectionError, RobotError
from hardware.homing import RecoveryError, end_stop_recovery, recover_end_stops
from hardware.robot_env import RobotEnv, make_robot_env
from hardware.safety import SafetyEvent
from hardware.serial_driver import SerialDriver, describe_device
from hardware.transport import available_ports
from sim.actuation import command_bounds
from sim.robot_config import ConfigError, RobotConfig

log = logging.getLogger("mfpg_robot.robot")

EMULATOR_START_TIMEOUT_S = 60.0  # imports (MuJoCo) take seconds on a loaded 2-core machine
EMULATOR_STOP_TIMEOUT_S = 5.0  # after SIGTERM, then SIGKILL
#: Hardware loggers whose records for this port become link events.
LINK_LOGGERS = ("hardware.transport", "hardware.robot_env")
_PR_SET_PDEATHSIG = 1
_EFFORT_UNIT = {"voltage": "V", "torque": "N m"}
_REPO_ROOT = Path(__file__).resolve().parents[1]


class PreflightError(RobotError):
    """The robot is not in a state (or the config not sane enough) to switch torque on."""


class OperatorAbort(RobotError):
    """The operator declined the pre-flight summary; torque was never switched on."""


class PortNotFoundError(RobotConnectionError):
    """The serial port does not exist."""


class EmulatorStartError(RobotError):
    """The device emulator subprocess did not start."""


# -- the emulator subprocess ------------------------------------------------------------------
class EmulatorProcess:
    """`mfpg-robot emulator` for one robot config, as a child process (module docstring)."""

    def __init__(self, robot: RobotConfig, options: tuple[str, ...] = ()) -> None:
        self.robot = robot
        self._tmp = Path(tempfile.mkdtemp(prefix=f"mfpg-emulator-{robot.name}-"))
        config = self._tmp / f"{robot.name}.yaml"
        config.write_text(yaml.safe_dump(robot.model_dump(mode="json"), sort_keys=False))
        cmd = [sys.executable, "-m", "mfpg_robot.cli", "emulator", "--robot", str(config),
               "--parent-pid", str(os.getpid()), *options]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p
        )
        try:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                text=True, env=env, start_new_session=True, preexec_fn=_die_with_parent(),
            )
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        try:
            self.port = self._read_port()
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def _read_port(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], EMULATOR_START_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if line.startswith("port: "):
            return line.removeprefix("port: ").strip()
        if ready:
            self.stop()
            line += self.proc.stdout.read()
        raise EmulatorStartError(
            f"the {self.robot.name} emulator did not report its port within "
            f"{EMULATOR_START_TIMEOUT_S:g} s (exit status {self.proc.poll()}); it printed: "
            f"{line.strip() or 'nothing'}. Run `mfpg-robot emulator --robot {self.robot.name}` "
            f"by hand to see why."
        )

    def stop(self, timeout_s: float = EMULATOR_STOP_TIMEOUT_S) -> int:
        """SIGTERM (clean: torque off, pty closed), SIGKILL after `timeout_s`; exit status."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("emulator pid %d ignored SIGTERM for %g s: killed",
                                self.proc.pid, timeout_s)
                    self.proc.kill()
            return self.proc.wait()
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            shutil.rmtree(self._tmp, ignore_errors=True)


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has Linux SIGTERM the child when its parent dies (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGKILL)

    return arm


# -- events -----------------------------------------------------------------------------------
class _Events:
    """Turns safety events and link log records into `on_event` dicts and log lines."""

    def __init__(self, on_event: Callable[[dict[str, Any]], None] | None, port: str) -> None:
        self.on_event = on_event
        self.port = port
        self._lock = threading.Lock()

    def emit(self, source: str, kind: str, detail: str, stop: str = "none",
             time_s: float | None = None, level: int | None = None) -> None:
        event = {
            "time_s": time.monotonic() if time_s is None else time_s,
            "wall_time": time.time(),
            "source": source,
            "kind": kind,
            "detail": detail,
            "stop": stop,
        }
        if level is None:
            level = logging.INFO if stop == "none" else logging.WARNING
        log.log(level, "%s %s: %s%s", source, kind, detail,
                "" if stop == "none" else f" (stop: {stop})")
        if self.on_event is None:
            return
        with self._lock:
            try:
                self.on_event(event)
            except Exception:
                log.exception("on_event failed for %s event %s", source, kind)

    def safety(self, event: SafetyEvent) -> None:
        d = event.to_dict()
        self.emit("safety", d["kind"], d["detail"], d["stop"], d["time_s"])

    def filter(self, record: logging.LogRecord) -> bool:
        """Logger filter: records about this port become link events (and are not re-logged)."""
        if getattr(record, "port", None) != self.port:
            return True
        kind = "retry" if record.name == "hardware.transport" else "reconnect"
        self.emit("link", kind, record.getMessage(), level=record.levelno)
        return False

    @contextmanager
    def watching_link(self) -> Iterator[None]:
        loggers = [logging.getLogger(name) for name in LINK_LOGGERS]
        for lg in loggers:
            lg.addFilter(self.filter)
        try:
            yield
        finally:
            for lg in loggers:
                lg.removeFilter(self.filter)


# -- pre-flight -------------------------------------------------------------------------------
@dataclass
class Preflight:
    """What the pre-flight checked and found (written to the run folder as JSON)."""

    port: str
    emulated: bool
    device: str = ""
    firmware: str = ""
    checks: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    faults_cleared: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    recovery: dict[str, list[float]] = field(default_factory=dict)  # joint -> [from, to]
    summary: str = ""
    confirmed: bool | None = None  # None: no confirmation asked

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_limits(robot: RobotConfig) -> list[str]:
    """Cross-field sanity of the config's limits; the checks passed, or `PreflightError`."""
    problems = []
    lo, hi = command_bounds(robot)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo < hi)):
        problems.append(f"command bounds {lo.tolist()}..{hi.tolist()} are not finite intervals")
    for joint in robot.joints:
        home = robot.reset.home.get(joint.name, 0.0)
        soft = joint.soft_limits
        if soft is not None and not soft.lower <= home <= soft.upper:
            problems.append(f"reset.home.{joint.name} = {home} is outside its soft limits "
                            f"[{soft.lower}, {soft.upper}]")
    period_ms = robot.control_dt * 1e3
    if robot.serial.watchdog_ms < 2 * period_ms:
        problems.append(f"serial.watchdog_ms = {robot.serial.watchdog_ms} is under two control "
                        f"periods ({2 * period_ms:g} ms): the device would cut torque between "
                        "commands")
    if robot.safety.stale_state_s < robot.control_dt:
        problems.append(f"safety.stale_state_s = {robot.safety.stale_state_s} is under one "
                        f"control period ({robot.control_dt:g} s): every state would be stale")
    if problems:
        raise PreflightError(
            f"robot config '{robot.name}' has limits that cannot be used: "
            + "; ".join(problems) + ". Fix them in the robot config."
        )
    return [
        "command bounds are finite intervals",
        "home pose inside the soft limits",
        "device watchdog at least two control periods",
        "stale-state limit at least one control period",
    ]


def _fmt(values: np.ndarray, names: tuple[str, ...], units: list[str]) -> str:
    return ", ".join(f"{n} {v:+.4f} {u}" for n, v, u in zip(names, values, units, strict=True))


def inspect_state(
    robot: RobotConfig, state: DeviceState
) -> tuple[dict[str, list[float]], list[str]]:
    """Plausibility of a first state with torque off: (recovery moves, notes) or an error.

    Recovery moves: position-servo joint -> [measured, target just inside its soft limits].
    """
    problems, notes = [], []
    q, v = state.positions, state.velocities
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(v))):
        raise PreflightError(
            f"robot '{robot.name}' reports non-finite positions {q.tolist()} or velocities "
            f"{v.tolist()}: an encoder or the firmware is faulty; check the wiring and the "
            "firmware, then probe again (`mfpg-robot probe`)"
        )
    servo = robot.actuation.type == "position"
    recovery = end_stop_recovery(robot, state)
    for i, joint in enumerate(robot.joints):
        name, unit = joint.name, joint.unit
        if abs(v[i]) > joint.velocity_limit:
            problems.append(f"joint '{name}' moves at {v[i]:+.3f} {unit}/s, above its velocity "
                            f"limit {joint.velocity_limit} with torque off")
        soft, hard = joint.soft_limits, joint.hard_limits
        if soft is None or hard is None or soft.lower <= q[i] <= soft.upper or name in recovery:
            continue
        beyond = max(hard.lower - q[i], q[i] - hard.upper, 0.0)
        if not servo and joint.actuated and beyond == 0.0:
            notes.append(f"joint '{name}' at {q[i]:+.4f} {unit} is between its soft and hard "
                         f"limits; the reset moves it home slowly")
        else:
            problems.append(f"joint '{name}' at {q[i]:+.4f} {unit} is outside its "
                            f"{'hard' if beyond else 'soft'} limits [{hard.lower}, "
                            f"{hard.upper}] (soft [{soft.lower}, {soft.upper}])")
    cfg = robot.safety
    if state.temperatures is not None and np.max(state.temperatures) > cfg.max_temperature_c:
        problems.append(f"motor temperature {np.max(state.temperatures):.1f} C is above "
                        f"safety.max_temperature_c {cfg.max_temperature_c} C (let it cool "
                        "down with torque off)")
    if problems:
        raise PreflightError(
            f"robot '{robot.name}' is not in a state to switch torque on: "
            + "; ".join(problems)
            + ". With torque off, move the joints back inside their limits by hand and bring "
            "the robot to rest, then start again; if the readings are wrong, check the "
            "encoders and the robot config (joint order, limits)."
        )
    return recovery, notes


def _clear_faults(driver: SerialDriver, state: DeviceState) -> tuple[DeviceState, list[str]]:
    """Clear faults latched before this session once; they must stay clear."""
    cleared = list(state.faults) + (["ESTOP"] if state.estopped else [])
    if not cleared:
        return state, []
    driver.clear_fault()
    time.sleep(3 * driver.robot.control_dt)  # a few device periods to re-latch a lasting fault
    state = driver.read_state()
    if state.faults or state.estopped:
        still = list(state.faults) + (["ESTOP"] if state.estopped else [])
        raise PreflightError(
            f"the device keeps reporting fault(s) {', '.join(still)} after they were cleared: "
            "a lasting problem (over-temperature: let the motors cool; LIMIT: a joint beyond "
            "its limits or moving too fast; SENSOR/SUPPLY/INTERNAL: check the encoders, the "
            "power supply and the firmware). Fix the cause, check with `mfpg-robot probe`, "
            "then start again."
        )
    return state, cleared


def run_preflight(
    driver: SerialDriver,
    *,
    emulated: bool,
    confirm: Callable[[str], bool] | None,
    events: _Events | None = None,
) -> Preflight:
    """Connect `driver` and run the pre-flight (module docstring); torque stays off."""
    robot = driver.robot
    pre = Preflight(port=driver.port, emulated=emulated)
    _require_port(driver.port, emulated)
    info = driver.connect()
    pre.device = describe_device(info)
    pre.firmware = info.firmware_version
    pre.checks.append(f"handshake: {pre.device} matches the config")
    pre.checks += check_limits(robot)
    state, pre.faults_cleared = _clear_faults(driver, driver.read_state())
    if pre.faults_cleared and events is not None:
        events.emit("preflight", "faults_cleared",
                    f"faults latched before this session cleared: {pre.faults_cleared}")
    pre.recovery, pre.notes = inspect_state(robot, state)
    pre.checks.append("first state plausible: finite, at rest, temperatures below the limit")
    pre.state = {
        "positions": dict(zip(robot.joint_names, state.positions.tolist(), strict=True)),
        "velocities": dict(zip(robot.joint_names, state.velocities.tolist(), strict=True)),
        "temperatures": None if state.temperatures is None else state.temperatures.tolist(),
        "enabled": state.enabled,
    }
    pre.summary = _summary(robot, pre, state)
    if confirm is not None:
        pre.confirmed = bool(confirm(pre.summary))
        if not pre.confirmed:
            raise OperatorAbort("aborted by the operator at the pre-flight: torque was never "
                                "switched on")
    return pre


def _summary(robot: RobotConfig, pre: Preflight, state: DeviceState) -> str:
    units = [j.unit for j in robot.joints]
    lo, hi = command_bounds(robot)
    kind = robot.actuation.type
    bounds = ", ".join(
        f"{n} {a:g}..{b:g} {robot.joint(n).unit if kind == 'position' else _EFFORT_UNIT[kind]}"
        for n, a, b in zip(robot.actuated_joints, lo, hi, strict=True)
    )
    speed_unit = robot.joint(robot.actuated_joints[0]).unit
    temps = ("" if state.temperatures is None
             else f"; temperatures {', '.join(f'{t:.1f}' for t in state.temperatures)} C")
    lines = [
        f"Robot: {pre.device}, firmware {pre.firmware}, on {pre.port}"
        f"{' (emulator)' if pre.emulated else ''}",
        f"State (torque off): {_fmt(state.positions, robot.joint_names, units)}{temps}",
        f"Faults: {'cleared ' + ', '.join(pre.faults_cleared) if pre.faults_cleared else 'none'}",
        "Checks passed: " + "; ".join(pre.checks),
        *pre.notes,
    ]
    for name, (start, target) in pre.recovery.items():
        unit = robot.joint(name).unit
        lines.append(f"Recovery: joint '{name}' at {start:+.4f} {unit} is outside its soft "
                     f"limits; torque goes on and it moves at {robot.reset.homing_speed:g} "
                     f"{unit}/s to {target:+.4f} {unit}")
    lines.append(
        f"Next: torque on; each reset moves the robot home at {robot.reset.homing_speed:g} "
        f"{speed_unit}/s; episodes run at {robot.control_rate_hz:g} Hz, {kind} commands "
        f"{bounds}. Keep the workspace clear and the e-stop at hand."
    )
    return "\n".join(lines)


def _require_port(port: str, emulated: bool) -> None:
    """`PortNotFoundError` for a device path that does not exist (URLs are left to pyserial)."""
    if emulated or "://" in port or os.path.exists(port):
        return
    ports = available_ports()
    ptys = sorted(p for p in glob.glob("/dev/pts/[0-9]*"))
    raise PortNotFoundError(
        f"serial port '{port}' does not exist. Serial ports on this machine: "
        f"{', '.join(ports) if ports else 'none'}; pseudo-terminals (an emulator's port is one "
        f"of these): {', '.join(ptys) if ptys else 'none'}. Plug in and power the robot and "
        "pass its port with --port (or set serial.port in the robot config), or use --emulate "
        "for a dry run against the device emulator."
    )


def terminal_confirm(summary: str) -> bool:
    """Print the pre-flight summary and ask on the terminal; only 'y'/'yes' confirms."""
    print(summary, flush=True)
    try:
        answer = input("Switch torque on and start? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


# -- connect_robot ------------------------------------------------------------------------------
def check_port_choice(port: str | None, emulate: bool) -> None:
    """`ConfigError` when both a port and the emulator are asked for."""
    if port is not None and emulate:
        raise ConfigError(
            f"both a port ('{port}') and the emulator were asked for: pass --port PATH to use "
            "a robot (or an emulator you started), or --emulate to start one, not both"
        )


@dataclass
class RobotLink:
    """An open link: the env, the port, the emulator (or None) and the pre-flight record."""

    env: RobotEnv
    port: str
    emulator: EmulatorProcess | None
    preflight: Preflight


@contextmanager
def connect_robot(
    robot: RobotConfig,
    *,
    port: str | None = None,
    emulate: bool = False,
    confirm: Callable[[str], bool] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> Iterator[RobotLink]:
    """Connect, pre-flight and yield a `RobotLink`; torque off and emulator stopped on exit."""
    check_port_choice(port, emulate)
    emulator = EmulatorProcess(robot) if emulate else None
    env: RobotEnv | None = None
    driver: SerialDriver | None = None
    try:
        port_name = emulator.port if emulator is not None else (port or robot.serial.port)
        events = _Events(on_event, port_name)
        with events.watching_link():
            driver = SerialDriver(robot, port=port_name)
            pre = run_preflight(driver, emulated=emulate, confirm=confirm, events=events)
            env = make_robot_env(robot, driver, **(env_kwargs or {}))
            env.safety.listeners.append(events.safety)
            if pre.recovery:
                events.emit("preflight", "recovery", "; ".join(
                    f"{n}: {a:+.4f} -> {b:+.4f}" for n, (a, b) in pre.recovery.items()))
                try:
                    env.hold(recover_end_stops(driver, pre.recovery))
                except RecoveryError as err:
                    raise PreflightError(str(err)) from None
            yield RobotLink(env=env, port=port_name, emulator=emulator, preflight=pre)
    finally:
        try:
            if env is not None:
                env.close()
            elif driver is not None:
                driver.close()
        finally:
            if emulator is not None:
                emulator.stop()
