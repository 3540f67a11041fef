"""Device emulator: firmware rules (DeviceModel, deterministic clock), the emulator process
(port line, signals, fault injection) and `mfpg-robot probe` against it."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from hardware.device_model import DeviceModel
from hardware.driver import RobotConnectionError, RobotFaultError
from hardware.emulator import FaultInjection
from hardware.protocol import (
    Ack,
    ClearFault,
    Command,
    Disable,
    Enable,
    ErrorCode,
    ErrorReply,
    Estop,
    FaultFlag,
    Frame,
    FrameDecoder,
    Hello,
    HelloReply,
    Message,
    MsgType,
    ReadState,
    SetWatchdog,
    StateReply,
    StatusFlag,
    encode,
    encode_raw,
)
from hardware.serial_driver import SerialDriver
from hardware.transport import Transport, open_port
from mfpg_robot.cli import main
from sim.robot_config import RobotConfig

# ----------------------------------------------------------------- DeviceModel (no I/O)


class Device:
    """A DeviceModel with a test-driven clock: `send` answers at the current time, `run`
    lets control periods pass."""

    def __init__(self, robot: RobotConfig) -> None:
        self.model = DeviceModel(robot)
        self.now_us = 0
        self.seq = 0

    def send(self, msg: Message) -> Message:
        self.seq += 1
        return self.model.handle(Frame(self.seq, msg), self.now_us)

    def send_raw(self, type_id: int, payload: bytes) -> Message:
        self.seq += 1
        (frame,) = FrameDecoder().feed(encode_raw(type_id, payload, self.seq))
        return self.model.handle(frame, self.now_us)

    def run(self, periods: int) -> StateReply:
        for _ in range(periods):
            self.now_us += self.model.period_us
            self.model.tick(self.now_us)
        return self.model.state()


def error_code(reply: Message) -> ErrorCode:
    assert isinstance(reply, ErrorReply), reply
    return reply.code


def test_device_checks_type_then_length_then_values_then_state(furuta: RobotConfig) -> None:
    dev = Device(furuta)
    assert error_code(dev.send_raw(0x55, b"")) is ErrorCode.UNKNOWN_TYPE
    assert error_code(dev.send_raw(MsgType.ACK, bytes([MsgType.ENABLE]))) is ErrorCode.UNKNOWN_TYPE
    assert error_code(dev.send_raw(MsgType.STATE, b"")) is ErrorCode.UNKNOWN_TYPE
    reply = dev.send_raw(MsgType.COMMAND, b"\x02\x00")
    assert error_code(reply) is ErrorCode.BAD_LENGTH
    assert (reply.request_type, reply.request_seq) == (MsgType.COMMAND, dev.seq)
    assert error_code(dev.send(Command((1.0, 2.0)))) is ErrorCode.BAD_VALUE  # 1 actuator
    nan = encode_raw(MsgType.COMMAND, b"\x01" + np.float32(np.nan).tobytes(), 0)
    assert error_code(dev.send_raw(MsgType.COMMAND, nan[8:-2])) is ErrorCode.BAD_VALUE
    assert error_code(dev.send_raw(MsgType.HELLO, b"\x00")) is ErrorCode.BAD_VALUE
    assert error_code(dev.send_raw(MsgType.SET_WATCHDOG, b"\x05\x00")) is ErrorCode.BAD_VALUE
    # state rules: ESTOPPED before FAULTED before NOT_ENABLED
    assert error_code(dev.send(Command((1.0,)))) is ErrorCode.NOT_ENABLED
    assert dev.send(Enable()) == Ack(MsgType.ENABLE)
    dev.send_raw(MsgType.COMMAND, b"\x01\x00")  # malformed while torque on
    state = dev.run(1)
    assert state.faults == FaultFlag.BAD_COMMAND and not state.enabled
    assert error_code(dev.send(Command((1.0,)))) is ErrorCode.FAULTED
    assert dev.send(Estop()) == Ack(MsgType.ESTOP)
    assert error_code(dev.send(Command((1.0,)))) is ErrorCode.ESTOPPED
    assert error_code(dev.send(Enable())) is ErrorCode.ESTOPPED
    assert isinstance(dev.send(Hello(1)), HelloReply)  # answered in every state
    assert dev.send(ClearFault()) == Ack(MsgType.CLEAR_FAULT)
    state = dev.run(1)
    assert state.faults == FaultFlag(0) and not state.estopped and not state.enabled


def test_malformed_command_while_torque_off_latches_nothing(furuta: RobotConfig) -> None:
    dev = Device(furuta)
    assert error_code(dev.send(Command((1.0, 2.0)))) is ErrorCode.BAD_VALUE
    assert dev.run(1).faults == FaultFlag(0)


def test_watchdog_trips_within_one_period_and_reads_do_not_feed_it(
    furuta: RobotConfig,
) -> None:
    dev = Device(furuta)
    period = dev.model.period_us
    dev.send(SetWatchdog(50))
    dev.send(Enable())
    dev.run(5)
    dev.send(Command((0.0,)))
    fed_at = dev.now_us
    tripped_at = None
    for _ in range(40):
        dev.send(ReadState())
        dev.send(Hello(1))
        state = dev.run(1)
        if FaultFlag.WATCHDOG in state.faults:
            tripped_at = dev.now_us
            break
    assert tripped_at is not None
    assert 50_000 < tripped_at - fed_at <= 50_000 + period
    assert not state.enabled and StatusFlag.FAULTED in state.status
    assert FaultFlag.WATCHDOG in dev.run(100).faults  # latched
    assert error_code(dev.send(Enable())) is ErrorCode.FAULTED
    dev.send(ClearFault())
    assert dev.send(Enable()) == Ack(MsgType.ENABLE)
    assert dev.run(1).enabled


def test_watchdog_does_not_run_while_torque_is_off(arm2: RobotConfig) -> None:
    dev = Device(arm2)
    dev.send(SetWatchdog(10))
    assert dev.run(50).faults == FaultFlag(0)


def test_commands_are_clamped_and_applied_at_the_next_tick(furuta: RobotConfig) -> None:
    dev = Device(furuta)
    dev.send(Enable())
    dev.run(2)
    assert dev.send(Command((10.0,))) == Ack(MsgType.COMMAND)
    assert dev.model.targets[0] == furuta.actuation.command_limit
    assert StatusFlag.CLAMPED in dev.model.state().status
    assert dev.model.state().velocity == (0.0, 0.0)  # nothing happens between ticks
    state = dev.run(3)
    assert state.velocity[0] > 0.5 and state.current[0] > 0.1
    dev.send(Command((-1.0,)))
    assert StatusFlag.CLAMPED not in dev.run(1).status


def test_servo_holds_its_position_on_enable_and_clamps_to_soft_limits(
    arm2: RobotConfig,
) -> None:
    dev = Device(arm2)
    start = np.array(dev.run(1).position)
    dev.send(Enable())
    state = dev.run(5)
    assert np.allclose(state.position, start, atol=0.02)
    dev.send(Command((3.0, 0.0)))
    assert dev.model.targets[0] == arm2.joint("shoulder").soft_limits.upper
    assert dev.run(5).position[0] > start[0] + 0.1
    assert dev.model.state().current is None and len(dev.model.state().temperature) == 2


def test_limits_latch_and_torque_off_stops_the_motor(furuta: RobotConfig) -> None:
    dev = Device(furuta)
    dev.send(Enable())
    dev.model.twin.data.qpos[dev.model.twin.qadr[0]] = 2.5  # past the 2.3 rad hard limit
    state = dev.run(3)
    assert FaultFlag.LIMIT in state.faults and not state.enabled
    assert state.current == (0.0,)  # no current with torque off


def test_overtemperature_relatches_while_the_motor_is_hot(furuta: RobotConfig) -> None:
    dev = Device(furuta)
    dev.send(Enable())
    dev.run(5)
    dev.model.inject_overtemperature()
    state = dev.run(1)
    assert FaultFlag.OVER_TEMPERATURE in state.faults and not state.enabled
    assert state.temperature[0] > furuta.safety.max_temperature_c
    dev.send(ClearFault())
    assert FaultFlag.OVER_TEMPERATURE in dev.run(1).faults


def test_winding_heats_up_with_current(furuta: RobotConfig) -> None:
    dev = Device(furuta)
    dev.send(SetWatchdog(10_000))
    dev.send(Enable())
    start = dev.run(1).temperature[0]
    for _ in range(50):
        dev.send(Command((6.0 if dev.model.state().position[0] < 0.5 else -6.0,)))
        dev.run(1)
    assert dev.model.state().temperature[0] > start


@pytest.mark.parametrize(
    "kwargs",
    [{"drop_rate": 1.5}, {"corrupt_rate": -0.1}, {"delay_rate": 0.1}, {"disconnect_after_s": -1}],
)
def test_fault_injection_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FaultInjection(**kwargs)


# ------------------------------------------------------------------- emulator process


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_emulator_prints_port_first_and_exits_zero_with_torque_off(
    emulator_factory, relaxed_config, sig: int
) -> None:
    emu = emulator_factory("furuta")
    assert emu.first_line.startswith("port: /dev/") and os.path.exists(emu.port)
    drv = SerialDriver(relaxed_config("furuta"), port=emu.port)
    drv.connect()
    drv.enable()
    drv.send_command(np.array([0.0]))
    assert drv.read_state().enabled
    assert emu.stop(sig) == 0
    assert emu.output().strip().endswith("stopped: torque off, port closed")
    with pytest.raises(RobotConnectionError):
        drv.read_state()
    drv.close()


def test_emulator_watchdog_fault_is_latched_until_clear_fault(
    furuta: RobotConfig, furuta_emulator
) -> None:
    with SerialDriver(furuta, port=furuta_emulator.port) as drv:
        drv.clear_fault()
        drv.set_watchdog(30)
        drv.enable()
        drv.send_command(np.array([0.0]))
        time.sleep(0.1)
        assert "WATCHDOG" in drv.read_state().faults
        drv.connect()  # a new handshake does not clear it either
        time.sleep(0.2)
        state = drv.read_state()
        assert state.faults == ("WATCHDOG",) and not state.enabled
        with pytest.raises(RobotFaultError, match="WATCHDOG"):
            drv.enable()
        drv.clear_fault()
        assert drv.read_state().faults == ()


def test_corrupted_command_is_never_executed(furuta: RobotConfig, furuta_emulator) -> None:
    link = Transport(open_port(furuta_emulator.port, 1_000_000, 0.05), timeout_s=0.05, retries=0)
    try:
        for msg in (ClearFault(), SetWatchdog(60), Enable()):
            assert link.request(msg) == Ack(msg.TYPE)
        link.discard_input()
        for seq in range(100, 110):  # 12 V (would be clamped): bad CRC, so never accepted
            link.port.write(encode(Command((12.0,)), seq)[:-1] + b"\x00")
            time.sleep(0.02)
        assert link.port.read(64) == b""  # a frame with a bad CRC gets no reply
        state = link.request(ReadState())
        assert isinstance(state, StateReply)
        assert FaultFlag.WATCHDOG in state.faults  # the watchdog was never fed
        assert StatusFlag.CLAMPED not in state.status
    finally:
        link.request(ClearFault())
        link.request(Disable())
        link.close()


def test_disconnect_makes_the_host_raise_connection_error(
    furuta: RobotConfig, emulator_factory
) -> None:
    emu = emulator_factory("furuta", "--disconnect-after", "1.0")
    drv = SerialDriver(furuta, port=emu.port)
    drv.connect()
    deadline = time.monotonic() + 20.0
    with pytest.raises(RobotConnectionError, match="lost the connection|no valid reply"):
        while time.monotonic() < deadline:
            drv.read_state()
            time.sleep(0.01)
    drv.close()
    assert emu.wait() == 0
    assert "disconnected: torque off" in emu.output()


def test_overtemperature_injection_raises_fault_error(
    emulator_factory, relaxed_config
) -> None:
    furuta = relaxed_config("furuta")  # no watchdog trip before the over-temperature
    emu = emulator_factory("furuta", "--overtemp-after", "0.3")
    with SerialDriver(furuta, port=emu.port) as drv:
        drv.enable()
        deadline = time.monotonic() + 20.0
        with pytest.raises(RobotFaultError) as err:
            while time.monotonic() < deadline:
                drv.send_command(np.array([0.0]))
                time.sleep(furuta.control_dt)
        assert "OVER_TEMPERATURE" in err.value.faults
        state = drv.read_state()
        assert state.temperatures[0] > furuta.safety.max_temperature_c and not state.enabled
        drv.clear_fault()  # the motor is still hot: latched again at the next tick
        time.sleep(0.05)
        assert "OVER_TEMPERATURE" in drv.read_state().faults


# ------------------------------------------------------------------------------ probe


def test_probe_prints_device_info_and_a_state(furuta_emulator, capsys) -> None:
    assert main(["probe", "--robot", "furuta", "--port", furuta_emulator.port]) == 0
    out = capsys.readouterr().out
    assert "furuta (model id 1, 2 joints, 1 actuator, protocol 1)" in out
    assert "position:" in out and "temp:" in out and "torque off" in out


def test_probe_refuses_a_different_robot(arm2_emulator, capsys) -> None:
    assert main(["probe", "--robot", "furuta", "--port", arm2_emulator.port]) == 1
    err = capsys.readouterr().err.strip()
    assert "arm2 (model id 2" in err and "furuta (model id 1" in err and "--robot" in err
    assert "\n" not in err  # one paragraph


def test_probe_missing_port_and_silent_device_exit_1(capsys) -> None:
    assert main(["probe", "--robot", "furuta", "--port", "/dev/ttyUSB_not_there"]) == 1
    assert "Ports found on this machine" in capsys.readouterr().err
    master, slave = os.openpty()
    try:
        assert main(["probe", "--robot", "furuta", "--port", os.ttyname(slave)]) == 1
        assert "no valid reply to HELLO" in capsys.readouterr().err
    finally:
        os.close(master)
        os.close(slave)


def test_cli_rejects_bad_options_with_exit_2(capsys) -> None:
    assert main(["emulator", "--robot", "furuta", "--drop-rate", "2"]) == 2
    assert "drop_rate" in capsys.readouterr().err
    assert main(["probe", "--robot", "nosuchrobot", "--port", "loop://"]) == 2
