"""Transport: requests and their replies over a pyserial port (docs/protocol.md section 5).

`open_port(url, ...)` opens anything `serial.serial_for_url` understands: a device path
(`/dev/ttyUSB0`, `COM3`), a pseudo-terminal path (the device emulator), `socket://host:port`,
`loop://`. A port that cannot be opened raises `RobotConnectionError` listing the ports that
do exist and how to fix the usual causes.

`Transport.request(msg)` sends one request and returns its reply (the expected reply type or
an `ErrorReply`). It is `result(send(msg))`: `send` transmits a request and returns a
`Pending` at once, so that a caller can have a second request on the wire before it reads the
first reply (pipelining; the device answers requests in order, docs/protocol.md section 6),
and `result(pending)` returns that request's reply; `forget(pending)` abandons one. After
`result`, `pending.arrived_s` is `time.monotonic()` at the read that completed the reply's
frame: for a reply kept while another request was awaited, when it arrived, not when it was
returned (the age of a state, docs/safety.md).

Each transmission gets a new sequence number. A valid reply whose sequence number belongs to
another outstanding request is kept for that request's `result`; any other sequence number
(a late reply to an abandoned attempt or a forgotten request, an out-of-order frame) is
discarded and counted, never returned. A timeout or a corrupted reply (bad header check /
CRC) while waiting for a request costs that request one attempt, and it is re-sent with a new
sequence number (logged as a warning by logger `hardware.transport`, with the port name in
the record's `port` attribute); after `retries` re-sends `RobotConnectionError` says what
went wrong.
Timing: each attempt waits about `timeout_s` for its reply to start (at most twice that in
total when a reply stalls half-way), so a silent device is reported after about
`timeout_s * (retries + 1)`.

Per-request cost is kept low for a 250 Hz loop: the port object and the frame decoder live as
long as the transport, and a reply is read as its 8-byte header followed by exactly the
payload length it announces; once a reply type's size is known, a reply takes one `read`.
Only after garbage does it read what is waiting.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Literal

import serial
import serial.tools.list_ports

from hardware.driver import RobotConnectionError
from hardware.protocol import (
    CRC_SIZE,
    HEADER_SIZE,
    REPLY_TYPE,
    FrameDecoder,
    Message,
    MsgType,
    Undecodable,
    encode,
    next_seq,
)

_log = logging.getLogger(__name__)

PORT_HELP = (
    "Fix: check the USB cable and that the robot is powered; pass the right port with --port "
    "(or set serial.port in the robot config); on Linux a 'Permission denied' means your user "
    "is not in the dialout group (sudo usermod -aG dialout $USER, then log in again); "
    "'busy' or 'lock' means another program holds the port."
)


def available_ports() -> list[str]:
    """Serial ports present on this machine, as 'device (description)'."""
    ports = []
    for info in sorted(serial.tools.list_ports.comports(), key=lambda p: p.device):
        desc = info.description if info.description and info.description != "n/a" else ""
        ports.append(f"{info.device} ({desc})" if desc else info.device)
    return ports


def open_port(url: str, baudrate: int, timeout_s: float) -> serial.SerialBase:
    """Open `url` (device path, pty path, `socket://`, `loop://`) with a read timeout."""
    try:
        # No write timeout: without flow control a port drains at the baud rate, and
        # pyserial's write timeout also fires when this process is merely descheduled.
        return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout_s, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as err:
        ports = available_ports()
        found = ", ".join(ports) if ports else "none"
        raise RobotConnectionError(
            f"cannot open serial port '{url}': {err}. Ports found on this machine: {found}. "
            f"{PORT_HELP}"
        ) from None


@dataclass
class TransportStats:
    """Counters since the transport was made (diagnostics; cheap to keep)."""

    requests: int = 0  # requests sent (request() or send() calls)
    attempts: int = 0  # frames transmitted (requests + retries)
    timeouts: int = 0  # attempts with no valid reply in time
    corrupted: int = 0  # attempts abandoned on a bad header check / CRC
    stale: int = 0  # valid frames discarded for a sequence number nobody waits for
    unexpected: int = 0  # valid frames of the right seq but an unexpected type / undecodable


@dataclass(eq=False)
class Pending:
    """A request on the wire whose reply has not been returned yet (`Transport.send`)."""

    msg: Message
    expected: MsgType  # the reply type on success (ERROR is always possible)
    seq: int = -1  # of its latest transmission
    arrived_s: float = math.nan  # time.monotonic() when its reply arrived (set by `result`)


class Transport:
    """Request/reply over an open port with sequence numbers, timeouts and bounded retries."""

    def __init__(self, port: serial.SerialBase, *, timeout_s: float, retries: int) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.port = port
        self.timeout_s = timeout_s
        self.retries = retries
        self.stats = TransportStats()
        self._decoder = FrameDecoder()
        self._seq = 0xFFFF  # the first request goes out with seq 0
        self._reply_size: dict[MsgType, int] = {}  # frame size of the last reply per type
        self._outstanding: dict[int, Pending] = {}  # seq -> request awaiting its reply
        # seq -> (reply, arrival time) of a reply that arrived before its turn
        self._replies: dict[int, tuple[Message, float]] = {}

    @property
    def name(self) -> str:
        """The port's name or URL."""
        return str(self.port.port)

    def discard_input(self) -> None:
        """Drop whatever the device sent that nobody asked for (e.g. before a handshake)."""
        try:
            self.port.reset_input_buffer()
        except (serial.SerialException, OSError) as err:
            raise self._lost(err) from None
        self._decoder.reset()

    def request(self, msg: Message) -> Message:
        """Send `msg`; return its reply (expected type or `ErrorReply`); retry on failure."""
        return self.result(self.send(msg))

    def send(self, msg: Message) -> Pending:
        """Transmit `msg` now; its reply is read by `result` (or dropped by `forget`)."""
        self.stats.requests += 1
        pending = Pending(msg, REPLY_TYPE[msg.TYPE])
        self._transmit(pending)
        return pending

    def result(self, pending: Pending) -> Message:
        """The reply to `pending` (expected type or `ErrorReply`); re-send it on failure."""
        stats = self.stats
        timeouts = corrupted = 0
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    self._transmit(pending)
                kept = self._replies.pop(pending.seq, None)
                if kept is not None:
                    reply, pending.arrived_s = kept
                else:
                    reply = self._await_reply(pending)
                if isinstance(reply, Message):
                    return reply
                del self._outstanding[pending.seq]  # a late reply to this attempt is stale
                if reply == "corrupted":
                    corrupted += 1
                    stats.corrupted += 1
                else:
                    timeouts += 1
                    stats.timeouts += 1
                if attempt < self.retries:
                    _log.warning(
                        "%s reply to %s on '%s'; re-sending (attempt %d of %d)",
                        "corrupted" if reply == "corrupted" else "no",
                        pending.msg.TYPE.name,
                        self.name,
                        attempt + 2,
                        self.retries + 1,
                        extra={"port": self.name},
                    )
        finally:
            self.forget(pending)
        raise RobotConnectionError(
            f"no valid reply to {pending.msg.TYPE.name} from the device on '{self.name}' after "
            f"{self.retries + 1} attempt(s) ({timeouts} timed out after {self.timeout_s * 1e3:.0f}"
            f" ms, {corrupted} corrupted). Check that the device is powered and running its "
            f"firmware (or that the emulator is running), the port and the baud rate "
            f"({self.port.baudrate})."
        )

    def forget(self, pending: Pending) -> None:
        """Stop waiting for `pending`: its reply, now or later, is discarded (idempotent)."""
        self._outstanding.pop(pending.seq, None)
        self._replies.pop(pending.seq, None)

    def close(self) -> None:
        """Close the port (idempotent)."""
        self.port.close()

    # -- internals ------------------------------------------------------------------------
    def _lost(self, err: BaseException) -> RobotConnectionError:
        return RobotConnectionError(
            f"lost the connection to the device on '{self.name}': {err}. The device was "
            f"unplugged, powered off or crashed; reconnect it and start again."
        )

    def _transmit(self, pending: Pending) -> None:
        """Send `pending` with a new seq; a fresh start when nothing else is outstanding."""
        self._seq = seq = next_seq(self._seq)
        if not self._outstanding:
            self._decoder.reset()  # bytes left from abandoned attempts: nobody needs them
        self._write(encode(pending.msg, seq))
        self.stats.attempts += 1
        pending.seq = seq
        self._outstanding[seq] = pending

    def _write(self, frame: bytes) -> None:
        try:
            self.port.write(frame)
        except (serial.SerialException, OSError) as err:
            raise self._lost(err) from None

    def _read(self, n: int) -> bytes:
        try:
            return self.port.read(n)
        except (serial.SerialException, OSError) as err:
            raise self._lost(err) from None

    def _await_reply(self, pending: Pending) -> Message | Literal["timeout", "corrupted"]:
        """The reply to `pending`, or "timeout" / "corrupted" (then the caller retries).

        Sets `pending.arrived_s` when it returns the reply. Replies to other outstanding
        requests that arrive meanwhile are kept in `_replies` with their arrival time.
        Fast path: one read of the size the last reply of this type had (learned); else a
        read of the 8-byte header and one of the rest of its frame. After garbage, or bytes
        left over from another frame, it reads what is waiting (at least 1 byte).
        """
        decoder, stats = self._decoder, self.stats
        outstanding, expected = self._outstanding, pending.expected
        bad_before = decoder.stats.bad_crc + decoder.stats.bad_header
        deadline = time.monotonic() + self.timeout_s
        first = self._reply_size.get(expected, HEADER_SIZE)
        while True:
            size = 0  # frame size announced by a header read below
            if decoder.buffered == 0:
                data = self._read(first)
                if len(data) < first:
                    self._reply_size.pop(expected, None)  # a guess too big would cost a timeout
                first = HEADER_SIZE
                frames = decoder.feed(data)
                if not frames and decoder.buffered == len(data) >= HEADER_SIZE:
                    # A plausible header (it survived the header check): read its frame's rest.
                    size = (data[2] | data[3] << 8) + HEADER_SIZE + CRC_SIZE
                    data = self._read(size - decoder.buffered)
                    frames = decoder.feed(data)
            else:
                data = self._read(max(1, self.port.in_waiting))
                frames = decoder.feed(data)
            now = time.monotonic()  # the arrival time of the frames this read completed
            found = None
            for seq, msg in frames:
                owner = outstanding.get(seq)
                if owner is None or seq in self._replies or (
                    found is not None and owner is pending
                ):
                    stats.stale += 1
                elif isinstance(msg, Undecodable) or (
                    msg.TYPE is not owner.expected and msg.TYPE is not MsgType.ERROR
                ):
                    stats.unexpected += 1
                elif owner is pending:
                    if size and msg.TYPE is expected and len(frames) == 1:
                        self._reply_size[expected] = size
                    found = msg
                else:
                    self._replies[seq] = (msg, now)
            if found is not None:
                pending.arrived_s = now
                return found
            if decoder.stats.bad_crc + decoder.stats.bad_header != bad_before:
                return "corrupted"
            if not data or now > deadline:
                return "timeout"
