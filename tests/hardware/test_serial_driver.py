"""SerialDriver and transport: sequence numbers, retries, timeouts, handshake, port errors.

Most tests drive the driver against `FakeDevice`, a scripted device on a pty served by a
thread, so that stale, out-of-order, corrupted and missing replies happen exactly when the
test wants them. Fault-injection runs use the real emulator with `relaxed_config`
(conftest.py): they are about retries, not about the link's timing on a loaded machine.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from hardware import transport
from hardware.driver import RobotConnectionError, RobotFaultError
from hardware.protocol import (
    Ack,
    ErrorCode,
    ErrorReply,
    FaultFlag,
    Frame,
    FrameDecoder,
    HelloReply,
    Message,
    MsgType,
    StateReply,
    StatusFlag,
    encode,
)
from hardware.serial_driver import SerialDriver
from sim.robot_config import RobotConfig

FURUTA_HELLO = HelloReply(1, 1, 2, 1, (1, 0, 0), "fake furuta")

Script = Callable[[Frame], list[bytes]]


def state(position: float, stamp_us: int = 1000, faults: int = 0) -> StateReply:
    status = StatusFlag.FAULTED if faults else StatusFlag(0)
    return StateReply(stamp_us, status, FaultFlag(faults), (position, 0.0), (0.0, 0.0),
                      (0.0,), (25.0,))


def corrupt(frame: bytes) -> bytes:
    """The frame with its last CRC byte flipped."""
    return frame[:-1] + bytes([frame[-1] ^ 0xFF])


class FakeDevice:
    """A scripted device on a pty: HELLO and ACK-type requests answered like a furuta;
    `on_read_state(frame, n)` (n = how many READ_STATEs so far) returns the raw replies."""

    def __init__(self, hello: Message = FURUTA_HELLO) -> None:
        self.hello = hello
        self.on_read_state: Callable[[Frame, int], list[bytes]] = (
            lambda f, n: [encode(state(0.0), f.seq)]
        )
        self.on_request: dict[MsgType, Callable[[Frame], list[bytes]]] = {}
        self.requests: list[Frame] = []
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _reply(self, frame: Frame) -> list[bytes]:
        kind = frame.msg.TYPE
        self.requests.append(frame)
        if kind in self.on_request:
            return self.on_request[kind](frame)
        if kind is MsgType.HELLO:
            return [encode(self.hello, frame.seq)]
        if kind is MsgType.READ_STATE:
            n = sum(f.msg.TYPE is MsgType.READ_STATE for f in self.requests)
            return self.on_read_state(frame, n)
        return [encode(Ack(kind), frame.seq)]

    def _serve(self) -> None:
        decoder = FrameDecoder()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.01)
            if not ready:
                continue
            for frame in decoder.feed(os.read(self._master, 4096)):
                for chunk in self._reply(frame):
                    os.write(self._master, chunk)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        os.close(self._master)
        os.close(self._slave)


@pytest.fixture
def fake() -> Iterator[FakeDevice]:
    dev = FakeDevice()
    yield dev
    dev.close()


def connected(robot: RobotConfig, port: str, timeout_s: float = 0.5, **kwargs) -> SerialDriver:
    """A driver connected to `port`; the generous timeout keeps a loaded machine from
    turning a slow fake-device thread into a retry."""
    drv = SerialDriver(robot, port=port, timeout_s=timeout_s, **kwargs)
    drv.connect()
    return drv


def test_handshake_sets_the_configured_watchdog(furuta: RobotConfig, fake: FakeDevice) -> None:
    drv = connected(furuta, fake.port)
    info = drv.info
    assert info is not None and info.firmware_version == "1.0.0"
    kinds = [f.msg.TYPE for f in fake.requests]
    assert kinds[:2] == [MsgType.HELLO, MsgType.SET_WATCHDOG]
    assert fake.requests[1].msg.timeout_ms == furuta.serial.watchdog_ms
    drv.close()
    assert fake.requests[-1].msg.TYPE is MsgType.DISABLE  # close() disables torque
    assert [f.seq for f in fake.requests] == list(range(len(fake.requests)))


def test_stale_and_out_of_order_replies_are_discarded(
    furuta: RobotConfig, fake: FakeDevice
) -> None:
    def replies(f: Frame, n: int) -> list[bytes]:
        return [
            encode(state(9.0), (f.seq - 1) % 65536),  # a reply to an older request
            encode(state(8.0), (f.seq + 1) % 65536),  # out of order: not asked yet
            b"\x00\xaa\x13\x55",  # line noise before the real reply
            encode(Ack(MsgType.ENABLE), f.seq),  # right seq, wrong type
            encode(state(1.0), f.seq),
        ]

    fake.on_read_state = replies
    drv = connected(furuta, fake.port)
    for _ in range(3):
        assert drv.read_state().positions[0] == 1.0
    assert drv.stats.stale == 6 and drv.stats.unexpected == 3
    assert drv.stats.timeouts == 0 and drv.stats.attempts == drv.stats.requests
    drv.close()


def test_late_reply_to_an_abandoned_attempt_is_not_taken_for_the_retry(
    furuta: RobotConfig, fake: FakeDevice
) -> None:
    abandoned: list[int] = []

    def replies(f: Frame, n: int) -> list[bytes]:
        if n == 1:
            abandoned.append(f.seq)
            return []  # too slow: the host times out and retries with a new seq
        return [encode(state(9.0), abandoned[0]), encode(state(2.0), f.seq)]

    fake.on_read_state = replies
    drv = connected(furuta, fake.port, timeout_s=0.2)
    assert drv.read_state().positions[0] == 2.0
    assert (drv.stats.timeouts, drv.stats.stale) == (1, 1)
    reads = [f.seq for f in fake.requests if f.msg.TYPE is MsgType.READ_STATE]
    assert reads[1] == (reads[0] + 1) % 65536  # the retry is a new transmission
    drv.close()


def test_corrupted_reply_is_retried_at_once(furuta: RobotConfig, fake: FakeDevice) -> None:
    fake.on_read_state = lambda f, n: [
        corrupt(encode(state(9.0), f.seq)) if n == 1 else encode(state(3.0), f.seq)
    ]
    drv = connected(furuta, fake.port, timeout_s=1.0)
    t0 = time.monotonic()
    assert drv.read_state().positions[0] == 3.0
    assert time.monotonic() - t0 < 0.5  # no waiting for the timeout
    assert (drv.stats.corrupted, drv.stats.timeouts) == (1, 0)
    drv.close()


def test_a_reply_shorter_than_the_learned_size_costs_one_timeout_not_an_error(
    furuta: RobotConfig, fake: FakeDevice
) -> None:
    def replies(f: Frame, n: int) -> list[bytes]:
        if n <= 2:
            return [encode(state(1.0), f.seq)]
        # the same state without the current array: 4 bytes shorter than learned
        return [encode(StateReply(1000 + n, StatusFlag(0), FaultFlag(0), (2.0, 0.0),
                                  (0.0, 0.0), None, (25.0,)), f.seq)]

    fake.on_read_state = replies
    drv = connected(furuta, fake.port, timeout_s=0.3)
    durations = []
    for _ in range(5):
        t0 = time.monotonic()
        drv.read_state()
        durations.append(time.monotonic() - t0)
    assert durations[2] >= 0.25  # read the old size: waited for the timeout...
    assert max(durations[3:]) < 0.25  # ...then relearned the new one
    assert drv.stats.timeouts == 0 and drv.stats.attempts == drv.stats.requests
    drv.close()


def test_repeated_bad_crc_raises_connection_error(furuta: RobotConfig, fake: FakeDevice) -> None:
    fake.on_read_state = lambda f, n: [corrupt(encode(state(9.0), f.seq))]
    drv = connected(furuta, fake.port, retries=2)
    with pytest.raises(RobotConnectionError, match=r"READ_STATE.*3 attempt.*3 corrupted"):
        drv.read_state()
    drv.close()


def test_device_clock_going_backwards_is_an_error(furuta: RobotConfig, fake: FakeDevice) -> None:
    fake.on_read_state = lambda f, n: [encode(state(0.0, stamp_us=5000 - 1000 * n), f.seq)]
    drv = connected(furuta, fake.port)
    drv.read_state()
    with pytest.raises(RobotConnectionError, match="restarted"):
        drv.read_state()
    drv.close()


def test_refusals_map_to_fault_errors_with_decoded_names(
    furuta: RobotConfig, fake: FakeDevice
) -> None:
    bits = int(FaultFlag.WATCHDOG | FaultFlag.OVER_TEMPERATURE) | 1 << 9
    fake.on_read_state = lambda f, n: [encode(state(0.0, faults=bits), f.seq)]
    fake.on_request[MsgType.ENABLE] = lambda f: [
        encode(ErrorReply(ErrorCode.FAULTED, MsgType.ENABLE, f.seq), f.seq)
    ]
    fake.on_request[MsgType.COMMAND] = lambda f: [
        encode(ErrorReply(ErrorCode.ESTOPPED, MsgType.COMMAND, f.seq), f.seq)
    ]
    drv = connected(furuta, fake.port)
    assert drv.read_state().faults == ("WATCHDOG", "OVER_TEMPERATURE", "BIT9")
    with pytest.raises(RobotFaultError, match="clear_fault") as err:
        drv.enable()
    assert err.value.faults == ("WATCHDOG", "OVER_TEMPERATURE", "BIT9")
    with pytest.raises(RobotFaultError, match="e-stop") as err:
        drv.send_command(np.array([1.0]))
    assert err.value.faults == ("ESTOP",)
    drv.close()


@pytest.mark.parametrize(
    "hello, problem",
    [
        (HelloReply(1, 2, 2, 2, (1, 0, 0), "arm"), "arm2 (model id 2"),
        (HelloReply(1, 1, 2, 2, (1, 0, 0), "odd"), "2 actuators"),
        (HelloReply(1, 1, 3, 1, (1, 0, 0), "odd"), "3 joints"),
        (HelloReply(2, 1, 2, 1, (2, 0, 0), "new"), "protocol 2"),
    ],
)
def test_handshake_refuses_a_device_that_is_not_the_configured_robot(
    furuta: RobotConfig, hello: HelloReply, problem: str
) -> None:
    dev = FakeDevice(hello)
    try:
        drv = SerialDriver(furuta, port=dev.port)
        with pytest.raises(RobotConnectionError) as err:
            drv.connect()
        message = str(err.value)
        assert problem in message and "furuta (model id 1" in message and "--robot" in message
        assert not drv.connected
        assert [f.msg.TYPE for f in dev.requests] == [MsgType.HELLO]  # nothing else sent
    finally:
        dev.close()


def test_no_reply_raises_within_timeout_times_attempts(furuta: RobotConfig) -> None:
    master, slave = os.openpty()  # a port with nobody behind it
    try:
        drv = SerialDriver(furuta, port=os.ttyname(slave), timeout_s=0.05, retries=2)
        t0 = time.monotonic()
        with pytest.raises(RobotConnectionError, match=r"HELLO.*3 attempt.*3 timed out"):
            drv.connect()
        elapsed = time.monotonic() - t0
        assert 0.15 <= elapsed < 0.15 * 2 + 0.5
        assert not drv.connected
    finally:
        os.close(master)
        os.close(slave)


def test_loop_url_opens_and_an_echoed_request_is_not_a_reply(furuta: RobotConfig) -> None:
    drv = SerialDriver(furuta, port="loop://", timeout_s=0.02, retries=1)
    with pytest.raises(RobotConnectionError, match="no valid reply to HELLO"):
        drv.connect()


def test_missing_port_lists_the_ports_that_exist(
    furuta: RobotConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = [
        SimpleNamespace(device="/dev/ttyACM7", description="QUBE-Servo 2"),
        SimpleNamespace(device="/dev/ttyS0", description="n/a"),
    ]
    monkeypatch.setattr(transport.serial.tools.list_ports, "comports", lambda: ports)
    drv = SerialDriver(furuta, port="/dev/ttyUSB_not_there")
    with pytest.raises(RobotConnectionError) as err:
        drv.connect()
    message = str(err.value)
    for part in ("/dev/ttyUSB_not_there", "/dev/ttyACM7 (QUBE-Servo 2)", "/dev/ttyS0",
                 "--port", "dialout", "cable"):
        assert part in message


def test_a_port_in_use_by_another_driver_is_refused(furuta: RobotConfig, fake: FakeDevice) -> None:
    first = connected(furuta, fake.port)
    with pytest.raises(RobotConnectionError, match="lock"):
        SerialDriver(furuta, port=fake.port).connect()
    first.close()
    connected(furuta, fake.port).close()  # free again once closed


def test_bad_commands_are_refused_before_sending(furuta: RobotConfig, fake: FakeDevice) -> None:
    drv = connected(furuta, fake.port)
    sent = drv.stats.attempts
    for bad in (np.array([1.0, 2.0]), np.array([np.nan]), np.array([]), ["volts"]):
        with pytest.raises(ValueError, match="one per actuated joint"):
            drv.send_command(bad)
    with pytest.raises(ValueError, match="one per actuated joint.*float32 range"):
        drv.submit_command(np.array([1e300]))  # the codec's own check, reworded
    with pytest.raises(ValueError, match="10..10000"):
        drv.set_watchdog(5)
    assert drv.stats.attempts == sent
    drv.close()
    with pytest.raises(RobotConnectionError, match="not connected"):
        drv.read_state()


def test_submitted_command_and_read_state_are_pipelined(
    furuta: RobotConfig, fake: FakeDevice
) -> None:
    held: list[Frame] = []
    fake.on_request[MsgType.COMMAND] = lambda f: held.append(f) or []  # ACK held back...
    fake.on_read_state = lambda f, n: [  # ...until READ_STATE is on the wire
        *(encode(Ack(MsgType.COMMAND), c.seq) for c in held),
        encode(state(4.0), f.seq),
    ]
    drv = connected(furuta, fake.port, timeout_s=0.3)
    t0 = time.monotonic()
    for k in range(3):
        held.clear()
        drv.submit_command(np.array([0.5 * k]))
        assert drv.read_state().positions[0] == 4.0
    assert time.monotonic() - t0 < 0.3  # no timeout: the host did not wait for the ACK first
    kinds = [(f.msg.TYPE, f.seq) for f in fake.requests[2:]]
    assert [k for k, _ in kinds] == [MsgType.COMMAND, MsgType.READ_STATE] * 3
    assert [q for _, q in kinds] == list(range(2, 8))
    assert drv.stats.attempts == drv.stats.requests and drv.stats.stale == 0
    drv.close()


def test_refusal_of_a_submitted_command_is_raised_by_read_state(
    furuta: RobotConfig, fake: FakeDevice
) -> None:
    fake.on_request[MsgType.COMMAND] = lambda f: [
        encode(ErrorReply(ErrorCode.NOT_ENABLED, MsgType.COMMAND, f.seq), f.seq)
    ]
    drv = connected(furuta, fake.port)
    drv.submit_command(np.array([1.0]))
    with pytest.raises(RobotFaultError, match="refused COMMAND: torque is off"):
        drv.read_state()
    assert drv.read_state().positions[0] == 0.0  # the link is in step afterwards
    assert drv.stats.stale == 1  # the abandoned STATE of the failed read
    drv.close()


def test_lost_ack_of_a_submitted_command_is_retried_and_the_state_kept(
    furuta: RobotConfig, fake: FakeDevice
) -> None:
    commands: list[Frame] = []

    def on_command(f: Frame) -> list[bytes]:
        commands.append(f)
        return [] if len(commands) == 1 else [encode(Ack(MsgType.COMMAND), f.seq)]

    fake.on_request[MsgType.COMMAND] = on_command
    fake.on_read_state = lambda f, n: [encode(state(5.0), f.seq)]
    drv = connected(furuta, fake.port, timeout_s=0.2)
    drv.submit_command(np.array([1.0]))
    assert drv.read_state().positions[0] == 5.0  # kept while the COMMAND was re-sent
    assert [f.msg.targets for f in commands] == [(1.0,), (1.0,)]
    assert commands[1].seq == commands[0].seq + 2  # a new transmission after READ_STATE
    assert (drv.stats.timeouts, drv.stats.stale) == (1, 0)
    assert drv.stats.attempts == drv.stats.requests + 1 == 5  # HELLO, WATCHDOG, 2+1
    drv.close()


def test_a_state_kept_while_the_command_is_resent_is_stamped_when_it_arrived(
    furuta: RobotConfig, fake: FakeDevice
) -> None:
    """The COMMAND's ACK is lost, so the COMMAND is re-sent after the timeout; the STATE that
    arrived before that is returned with the step, stamped with its arrival (DeviceState)."""
    state_sent_at: list[float] = []
    retry_received_at: list[float] = []

    def on_command(f: Frame) -> list[bytes]:
        if not state_sent_at:
            return []  # the first ACK is lost
        retry_received_at.append(time.monotonic())
        return [encode(Ack(MsgType.COMMAND), f.seq)]

    def on_read_state(f: Frame, n: int) -> list[bytes]:
        state_sent_at.append(time.monotonic())  # written right after this returns
        return [encode(state(5.0), f.seq)]

    fake.on_request[MsgType.COMMAND] = on_command
    fake.on_read_state = on_read_state
    drv = connected(furuta, fake.port, timeout_s=0.3)
    drv.submit_command(np.array([1.0]))
    got = drv.read_state()
    returned_at = time.monotonic()
    assert got.positions[0] == 5.0 and drv.stats.timeouts == 1
    assert state_sent_at[0] <= got.host_time_s <= retry_received_at[0]
    # The age the safety layer computes includes the ~0.3 s wait for the re-sent COMMAND.
    assert returned_at - got.host_time_s > 0.1
    drv.close()


def test_state_reply_ahead_of_the_command_reply_is_not_stale(
    furuta: RobotConfig, fake: FakeDevice
) -> None:
    held: list[Frame] = []
    fake.on_request[MsgType.COMMAND] = lambda f: held.append(f) or []
    fake.on_read_state = lambda f, n: [  # replies out of order: STATE, then the ACK
        encode(state(6.0), f.seq),
        encode(Ack(MsgType.COMMAND), held[-1].seq),
    ]
    drv = connected(furuta, fake.port)
    drv.submit_command(np.array([1.0]))
    assert drv.read_state().positions[0] == 6.0
    assert (drv.stats.stale, drv.stats.timeouts, drv.stats.unexpected) == (0, 0, 0)
    drv.close()


def test_another_request_abandons_a_submitted_command_without_resending_it(
    furuta: RobotConfig, fake: FakeDevice
) -> None:
    drv = connected(furuta, fake.port)
    drv.submit_command(np.array([1.0]))
    drv.disable()  # e.g. Ctrl+C during the deadline wait: torque off goes out at once
    kinds = [f.msg.TYPE for f in fake.requests[2:]]
    assert kinds == [MsgType.COMMAND, MsgType.DISABLE]
    assert drv.stats.stale == 1  # the COMMAND's ACK, discarded
    assert drv.read_state().positions[0] == 0.0
    drv.close()


def test_corrupted_replies_from_the_emulator_are_retried(
    emulator_factory, relaxed_config
) -> None:
    emu = emulator_factory("furuta", "--corrupt-rate", "0.05", "--seed", "3")
    with SerialDriver(relaxed_config("furuta"), port=emu.port) as drv:
        drv.enable()
        for _ in range(300):
            drv.send_command(np.array([0.0]))
            drv.read_state()
        assert drv.stats.corrupted > 10
        assert drv.stats.requests > 600


def test_pipelined_steps_survive_dropped_and_corrupted_replies(
    emulator_factory, relaxed_config
) -> None:
    emu = emulator_factory(
        "furuta", "--drop-rate", "0.03", "--corrupt-rate", "0.03", "--seed", "5"
    )
    with SerialDriver(relaxed_config("furuta"), port=emu.port) as drv:
        drv.enable()
        stamps = []
        for _ in range(200):
            drv.submit_command(np.array([0.0]))
            stamps.append(drv.read_state().device_time_s)
        stats = drv.stats
        assert stats.timeouts > 3 and stats.corrupted > 3
        assert stats.requests == 3 + 400  # HELLO, SET_WATCHDOG, ENABLE, then the steps
        assert stats.attempts > stats.requests  # retried, and every request answered
    assert all(b >= a for a, b in zip(stamps[:-1], stamps[1:], strict=True))


def test_dropped_and_delayed_replies_from_the_emulator_are_survived(
    emulator_factory, relaxed_config
) -> None:
    emu = emulator_factory(
        "furuta", "--drop-rate", "0.03", "--delay-rate", "0.03", "--delay-ms", "40"
    )
    with SerialDriver(relaxed_config("furuta"), port=emu.port) as drv:
        stamps = [drv.read_state().device_time_s for _ in range(250)]
        assert drv.stats.timeouts > 5 and drv.stats.stale > 0
    assert all(b >= a for a, b in zip(stamps[:-1], stamps[1:], strict=True))
