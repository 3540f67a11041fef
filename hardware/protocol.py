"""Framed binary serial protocol between the host and a robot's firmware (pure: no I/O).

`docs/protocol.md` is the normative specification (written for firmware authors); this
module is its reference codec, used by the host driver and by the device emulator.

Frame, all integers little-endian::

    AA 55 | len u16 | seq u16 | type u8 | hck u8 | payload[len] | crc u16
    hck = 0xFF ^ (the 5 bytes len..type XORed together)       header check
    crc = CRC-16/CCITT-FALSE over bytes 2 .. 8+len-1           (len, seq, type, hck, payload)

Public API
----------
Messages (frozen dataclasses, subclasses of `Message`; `msg.TYPE` is its `MsgType`):
    host -> device: `Hello`, `Enable`, `Disable`, `Command`, `ReadState`, `Estop`,
    `ClearFault`, `SetWatchdog`; device -> host: `HelloReply`, `Ack`, `StateReply`,
    `ErrorReply`. A field value that the wire cannot carry or the spec forbids raises
    `ProtocolError(code=ErrorCode.BAD_VALUE)`. Float fields are rounded to float32 when the
    message is built, so a message always equals its own encode/decode round trip.
`encode(msg, seq) -> bytes`: one complete frame.
`encode_raw(type_id, payload, seq) -> bytes`: a well-framed frame with any type and payload
    (tests and fault injection: unknown types, malformed payloads).
`decode_frame(data) -> Frame`: exactly one frame -> `Frame(seq, msg)` (unpacks as a tuple);
    raises `ProtocolError` for anything else.
`FrameDecoder`: streaming; `feed(data) -> list[Frame]` resynchronises after garbage, keeps
    less than `MAX_FRAME_SIZE` bytes between calls, counts what it drops in `.stats`
    (`DecoderStats`). A CRC-valid frame whose type or payload is invalid comes out as
    `Frame(seq, Undecodable(...))` so that a device can answer it with `ErrorReply`.
`ProtocolError(ValueError)`: `.code` is the `ErrorCode` a device answers with (None when the
    framing itself is broken: no reply), `.seq` / `.type_id` when the frame was intact.
Flags and enums: `MsgType`, `ErrorCode`, `StatusFlag`, `FaultFlag`, `StateField`;
    `decode_faults(bits) -> list[str]`.
Helpers and tables: `next_seq(seq)`, `REPLY_TYPE` (request type -> expected reply type),
    `ROBOT_MODEL_IDS` (name -> id), `robot_model_name(model_id)`.

Cost (a 250 Hz host loop encodes and decodes four frames per step): frames are packed with
one precompiled `struct.Struct` per message layout and count; flags and enums come from
lookup tables, not IntFlag/IntEnum construction. A decoded COMMAND, STATE or ACK that passes
the decoder's checks (counts, finiteness; its floats are float32 by construction) is built
without re-running the constructor's checks; anything else goes through the validating
constructor, so decoding accepts and refuses exactly what construction does.
"""

from __future__ import annotations

import enum
import math
import operator
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, NamedTuple, TypeVar

from hardware.crc import crc16

PROTOCOL_VERSION = 1
SYNC = b"\xaa\x55"
HEADER_SIZE = 8  # sync 2 + len 2 + seq 2 + type 1 + hck 1
CRC_SIZE = 2
MAX_PAYLOAD = 512
MIN_FRAME_SIZE = HEADER_SIZE + CRC_SIZE
MAX_FRAME_SIZE = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
MAX_JOINTS = 16
MAX_NAME_BYTES = 32
SEQ_MODULO = 1 << 16

WATCHDOG_MIN_MS = 10
WATCHDOG_MAX_MS = 10_000
DEFAULT_WATCHDOG_MS = 200  # device watchdog timeout after power-up
DEVICE_REPLY_MS = 2  # device starts its reply at most this long after a request's last byte

ROBOT_MODEL_IDS = MappingProxyType({"furuta": 1, "arm2": 2})


class ProtocolError(ValueError):
    """A frame or message that breaks the protocol.

    `code`: the `ErrorCode` a device answers with, or None when the frame itself is broken
    (bad sync, header, length or CRC: such frames get no reply). `seq` and `type_id` are set
    when the frame was intact but its content is invalid.
    """

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        seq: int | None = None,
        type_id: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.seq = seq
        self.type_id = type_id


class MsgType(enum.IntEnum):
    """Message type byte. Bit 7 clear: host -> device request; set: device -> host reply."""

    HELLO = 0x01
    ENABLE = 0x02
    DISABLE = 0x03
    COMMAND = 0x04
    READ_STATE = 0x05
    ESTOP = 0x06
    CLEAR_FAULT = 0x07
    SET_WATCHDOG = 0x08
    HELLO_REPLY = 0x81
    ACK = 0x82
    STATE = 0x83
    ERROR = 0x84

    @property
    def is_request(self) -> bool:
        """True for host -> device messages."""
        return not self & 0x80


REPLY_TYPE = MappingProxyType(
    {
        t: {MsgType.HELLO: MsgType.HELLO_REPLY, MsgType.READ_STATE: MsgType.STATE}.get(
            t, MsgType.ACK
        )
        for t in MsgType
        if t.is_request
    }
)
"""The reply each request gets when the device accepts it (any request may get ERROR)."""


class ErrorCode(enum.IntEnum):
    """Why the device refused a request (payload of ERROR)."""

    UNKNOWN_TYPE = 1  # type byte is not a request type of this protocol version
    BAD_LENGTH = 2  # payload length does not match the type (or its own counts)
    BAD_VALUE = 3  # a field is out of range, non-finite, or wrong for this device
    NOT_ENABLED = 4  # COMMAND while torque is off
    FAULTED = 5  # ENABLE or COMMAND while a fault is latched
    ESTOPPED = 6  # ENABLE or COMMAND while the e-stop is latched


class StatusFlag(enum.IntFlag):
    """Status byte of STATE."""

    ENABLED = 0x01  # torque on
    ESTOPPED = 0x02  # e-stop latched (until CLEAR_FAULT)
    FAULTED = 0x04  # at least one fault bit latched
    CLAMPED = 0x08  # the last COMMAND was clamped to the device's limits


class FaultFlag(enum.IntFlag):
    """Fault word of STATE; every bit is latched until CLEAR_FAULT and forces torque off."""

    WATCHDOG = 0x0001  # no accepted COMMAND within the watchdog timeout while enabled
    OVER_TEMPERATURE = 0x0002
    OVER_CURRENT = 0x0004
    LIMIT = 0x0008  # a joint beyond its hard position or velocity limit
    BAD_COMMAND = 0x0010  # a malformed or invalid COMMAND arrived while enabled
    SENSOR = 0x0020  # encoder / sensor failure
    SUPPLY = 0x0040  # supply voltage out of range
    INTERNAL = 0x0080  # firmware error


class StateField(enum.IntFlag):
    """Which optional per-actuator arrays a STATE carries."""

    CURRENT = 0x01
    TEMPERATURE = 0x02


def decode_faults(bits: int) -> list[str]:
    """Names of the fault bits set in `bits`, lowest bit first; unknown bits as 'BIT<n>'."""
    bits = _uint("fault bits", bits, 16)
    if not bits:
        return []
    names = []
    for n in range(16):
        if bits >> n & 1:
            names.append(_FAULT_NAMES.get(1 << n, f"BIT{n}"))
    return names


_FAULT_NAMES = {int(f): f.name for f in FaultFlag}
_STATUS_FLAGS = tuple(StatusFlag(bits) for bits in range(256))  # status byte -> StatusFlag
_FAULT_FLAGS: dict[int, FaultFlag] = {}  # fault word -> FaultFlag, filled as words are seen
_STATE_FIELD_BITS = int(StateField.CURRENT | StateField.TEMPERATURE)


def _fault_flag(bits: int) -> FaultFlag:
    """`FaultFlag(bits)` for a 16-bit word, memoised (IntFlag construction is slow)."""
    flag = _FAULT_FLAGS.get(bits)
    if flag is None:
        flag = _FAULT_FLAGS[bits] = FaultFlag(bits)
    return flag


def next_seq(seq: int) -> int:
    """The sequence number after `seq` (wraps 65535 -> 0)."""
    return (seq + 1) % SEQ_MODULO


def robot_model_name(model_id: int) -> str:
    """Name of a robot model id from `ROBOT_MODEL_IDS`, or 'unknown model <id>'."""
    for name, known in ROBOT_MODEL_IDS.items():
        if known == model_id:
            return name
    return f"unknown model {model_id}"


# --------------------------------------------------------------------- field validation


def _bad(message: str) -> ProtocolError:
    return ProtocolError(message, code=ErrorCode.BAD_VALUE)


def _uint(name: str, value: int, bits: int, low: int = 0, high: int | None = None) -> int:
    high = (1 << bits) - 1 if high is None else high
    try:
        value = operator.index(value)
    except TypeError:
        raise _bad(f"{name} must be an integer, got {value!r}") from None
    if not low <= value <= high:
        raise _bad(f"{name} must be in [{low}, {high}], got {value}")
    return value


_MEMBERS: dict[type[enum.IntEnum], dict[int, enum.IntEnum]] = {
    cls: {member.value: member for member in cls} for cls in (MsgType, ErrorCode)
}


def _enum(name: str, cls: type[enum.IntEnum], value: int) -> enum.IntEnum:
    """`cls(value)` (same values accepted) through a lookup table."""
    try:
        return _MEMBERS[cls][value]
    except (KeyError, TypeError):
        raise _bad(f"{name}: {value!r} is not a valid {cls.__name__}") from None


# n little-endian float32s, for every n a payload can hold
_F32 = tuple(struct.Struct(f"<{n}f") for n in range(MAX_PAYLOAD // 4 + 1))


def _f32s(
    name: str, values: Iterable[float], like: tuple[str, int] | None = None
) -> tuple[float, ...]:
    """Validate a float array (1..MAX_JOINTS values, as many as `like` = (name, count) if
    given) and round it to float32."""
    try:
        floats = tuple(map(float, values))
    except (TypeError, ValueError):
        raise _bad(f"{name} must be a sequence of numbers, got {values!r}") from None
    n = len(floats)
    if not 1 <= n <= MAX_JOINTS:
        raise _bad(f"{name} must hold 1..{MAX_JOINTS} values, got {n}")
    if like is not None and n != like[1]:
        raise _bad(f"{name} must hold {like[1]} values (as many as {like[0]}), got {n}")
    if not math.isfinite(sum(floats)):  # a finite sum proves every value finite
        for i, v in enumerate(floats):
            if not math.isfinite(v):
                raise _bad(f"{name}[{i}] must be finite, got {v}")
    packer = _F32[n]
    try:
        return packer.unpack(packer.pack(*floats))
    except OverflowError:
        raise _bad(f"{name} has a value beyond the float32 range (+-3.4e38): {floats}") from None


def _expect_len(cls: type[Message], payload: bytes, expected: int) -> None:
    if len(payload) != expected:
        raise ProtocolError(
            f"{cls.TYPE.name} payload must be {expected} bytes, got {len(payload)}",
            code=ErrorCode.BAD_LENGTH,
        )


_M = TypeVar("_M", bound="Message")


def _trusted(cls: type[_M], fields: dict[str, object]) -> _M:
    """A `cls` message holding `fields` as given, bypassing `__post_init__`.

    Only for values the decoder has already checked to be exactly what the validating
    constructor would store (same types, ranges, float32 values): decoded hot-path messages.
    """
    msg = object.__new__(cls)
    object.__setattr__(msg, "__dict__", fields)
    return msg


# ------------------------------------------------------------------------------ messages


@dataclass(frozen=True)
class Message:
    """Base of all messages. Subclasses set `TYPE` and pack/unpack their payload."""

    TYPE: ClassVar[MsgType]

    def _pack(self) -> bytes:
        return b""

    def _encode(self, seq: int) -> bytes:
        """The complete frame (seq already checked); subclasses may pack it in one go."""
        return _frame(self.TYPE.value, self._pack(), seq)

    @classmethod
    def _unpack(cls, payload: bytes) -> Message:
        _expect_len(cls, payload, 0)
        return cls()


@dataclass(frozen=True)
class Hello(Message):
    """Handshake request; the host states its protocol version. Reply: HELLO_REPLY."""

    TYPE = MsgType.HELLO
    protocol_version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _uint("Hello.protocol_version", self.protocol_version, 8, low=1)

    def _pack(self) -> bytes:
        return bytes([self.protocol_version])

    @classmethod
    def _unpack(cls, payload: bytes) -> Hello:
        _expect_len(cls, payload, 1)
        return cls(payload[0])


@dataclass(frozen=True)
class Enable(Message):
    """Torque on (refused while a fault or e-stop is latched). Reply: ACK."""

    TYPE = MsgType.ENABLE


@dataclass(frozen=True)
class Disable(Message):
    """Torque off; always accepted. Reply: ACK."""

    TYPE = MsgType.DISABLE


@dataclass(frozen=True)
class Command(Message):
    """One target per actuated joint, in config joint order. Reply: ACK.

    Units: volts for voltage-driven robots, radians for position servos.
    """

    TYPE = MsgType.COMMAND
    targets: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", _f32s("Command.targets", self.targets))

    def _encode(self, seq: int) -> bytes:
        targets = self.targets
        n = len(targets)
        length = 1 + 4 * n
        head = (length, seq, _COMMAND_ID, _hck(length, seq, _COMMAND_ID), n)
        return _seal(_COMMAND_FRAME[n].pack(*head, *targets))

    @classmethod
    def _unpack(cls, payload: bytes) -> Command:
        if not payload:
            _expect_len(cls, payload, 1)
        n = payload[0]
        _expect_len(cls, payload, 1 + 4 * n)
        targets = _F32[n].unpack_from(payload, 1)
        if not 1 <= n <= MAX_JOINTS or not math.isfinite(sum(targets)):
            return cls(targets)  # invalid: the validating constructor raises its error
        return _trusted(cls, {"targets": targets})  # float32 by construction


_COMMAND_ID = MsgType.COMMAND.value
_COMMAND_FRAME = tuple(
    struct.Struct(f"<HHBBB{n}f") for n in range(MAX_JOINTS + 1)
)  # frame without sync and CRC, by target count


@dataclass(frozen=True)
class ReadState(Message):
    """Ask for the current state. Reply: STATE."""

    TYPE = MsgType.READ_STATE


@dataclass(frozen=True)
class Estop(Message):
    """Emergency stop: torque off at once, ESTOPPED latched until CLEAR_FAULT. Reply: ACK."""

    TYPE = MsgType.ESTOP


@dataclass(frozen=True)
class ClearFault(Message):
    """Clear latched faults and the e-stop; torque stays off. Reply: ACK."""

    TYPE = MsgType.CLEAR_FAULT


@dataclass(frozen=True)
class SetWatchdog(Message):
    """Set the device watchdog timeout in milliseconds. Reply: ACK."""

    TYPE = MsgType.SET_WATCHDOG
    timeout_ms: int

    def __post_init__(self) -> None:
        _uint("SetWatchdog.timeout_ms", self.timeout_ms, 16, WATCHDOG_MIN_MS, WATCHDOG_MAX_MS)

    def _pack(self) -> bytes:
        return struct.pack("<H", self.timeout_ms)

    @classmethod
    def _unpack(cls, payload: bytes) -> SetWatchdog:
        _expect_len(cls, payload, 2)
        return cls(struct.unpack("<H", payload)[0])


_HELLO_REPLY = struct.Struct("<BHBBBBBB")


@dataclass(frozen=True)
class HelloReply(Message):
    """Device identity: protocol version, robot model, joint/actuator counts, firmware, name."""

    TYPE = MsgType.HELLO_REPLY
    protocol_version: int
    model_id: int
    joint_count: int
    actuator_count: int
    firmware_version: tuple[int, int, int]
    name: str

    def __post_init__(self) -> None:
        _uint("HelloReply.protocol_version", self.protocol_version, 8, low=1)
        _uint("HelloReply.model_id", self.model_id, 16)
        _uint("HelloReply.joint_count", self.joint_count, 8, 1, MAX_JOINTS)
        _uint("HelloReply.actuator_count", self.actuator_count, 8, 1, MAX_JOINTS)
        version = tuple(self.firmware_version)
        if len(version) != 3:
            raise _bad(f"HelloReply.firmware_version must be (major, minor, patch), got {version}")
        for part in version:
            _uint("HelloReply.firmware_version part", part, 8)
        object.__setattr__(self, "firmware_version", version)
        if not isinstance(self.name, str):
            raise _bad(f"HelloReply.name must be a str, got {self.name!r}")
        try:
            encoded = self.name.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad(f"HelloReply.name is not encodable as UTF-8: {self.name!r}") from None
        if len(encoded) > MAX_NAME_BYTES:
            raise _bad(f"HelloReply.name must be at most {MAX_NAME_BYTES} UTF-8 bytes")

    def _pack(self) -> bytes:
        name = self.name.encode("utf-8")
        head = _HELLO_REPLY.pack(
            self.protocol_version,
            self.model_id,
            self.joint_count,
            self.actuator_count,
            *self.firmware_version,
            len(name),
        )
        return head + name

    @classmethod
    def _unpack(cls, payload: bytes) -> HelloReply:
        if len(payload) < _HELLO_REPLY.size:
            _expect_len(cls, payload, _HELLO_REPLY.size)
        version, model, joints, actuators, major, minor, patch, n = _HELLO_REPLY.unpack_from(
            payload
        )
        _expect_len(cls, payload, _HELLO_REPLY.size + n)
        try:
            name = payload[_HELLO_REPLY.size :].decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("HelloReply.name is not valid UTF-8") from None
        return cls(version, model, joints, actuators, (major, minor, patch), name)


@dataclass(frozen=True)
class Ack(Message):
    """The request of type `request_type` (echoed) was accepted and carried out."""

    TYPE = MsgType.ACK
    request_type: MsgType

    def __post_init__(self) -> None:
        kind = _enum("Ack.request_type", MsgType, self.request_type)
        if not kind.is_request:
            raise _bad(f"Ack.request_type must be a request type, got {kind.name}")
        object.__setattr__(self, "request_type", kind)

    def _pack(self) -> bytes:
        return bytes([self.request_type])

    @classmethod
    def _unpack(cls, payload: bytes) -> Ack:
        _expect_len(cls, payload, 1)
        ack = _ACKS.get(payload[0])
        return cls(payload[0]) if ack is None else ack  # None: the constructor raises


_ACKS = {int(t): Ack(t) for t in MsgType if t.is_request}  # immutable, so shared


_STATE_HEAD = struct.Struct("<QBHBBB")


@dataclass(frozen=True)
class StateReply(Message):
    """Device state at `timestamp_us` (device clock, microseconds since power-up).

    `position`/`velocity`: one per joint (rad, rad/s). `current`/`temperature`: one per
    actuated joint (A, degrees C), None when the device does not measure them.
    """

    TYPE = MsgType.STATE
    timestamp_us: int
    status: StatusFlag
    faults: FaultFlag
    position: tuple[float, ...]
    velocity: tuple[float, ...]
    current: tuple[float, ...] | None = None
    temperature: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _uint("StateReply.timestamp_us", self.timestamp_us, 64)
        status = _STATUS_FLAGS[_uint("StateReply.status", self.status, 8)]
        faults = _fault_flag(_uint("StateReply.faults", self.faults, 16))
        position = _f32s("StateReply.position", self.position)
        velocity = _f32s("StateReply.velocity", self.velocity, ("position", len(position)))
        current = None if self.current is None else _f32s("StateReply.current", self.current)
        temperature = self.temperature
        if temperature is not None:
            like = None if current is None else ("current", len(current))
            temperature = _f32s("StateReply.temperature", temperature, like)
        for name, value in (
            ("status", status),
            ("faults", faults),
            ("position", position),
            ("velocity", velocity),
            ("current", current),
            ("temperature", temperature),
        ):
            object.__setattr__(self, name, value)

    # Flag tests on the int value: IntFlag operators cost microseconds each.
    @property
    def enabled(self) -> bool:
        """Torque is on."""
        return bool(int(self.status) & _ENABLED_BIT)

    @property
    def estopped(self) -> bool:
        """The e-stop is latched."""
        return bool(int(self.status) & _ESTOPPED_BIT)

    @property
    def faulted(self) -> bool:
        """A fault is latched (see `fault_names`)."""
        return bool(int(self.status) & _FAULTED_BIT or int(self.faults))

    @property
    def fault_names(self) -> list[str]:
        """Names of the latched fault bits."""
        return decode_faults(self.faults)

    def _encode(self, seq: int) -> bytes:
        values = self.position + self.velocity
        fields = actuators = 0
        if self.current is not None:
            fields, actuators = _CURRENT_BIT, len(self.current)
            values += self.current
        if self.temperature is not None:
            fields, actuators = fields | _TEMPERATURE_BIT, len(self.temperature)
            values += self.temperature
        length = _STATE_HEAD.size + 4 * len(values)
        head = (
            length,
            seq,
            _STATE_ID,
            _hck(length, seq, _STATE_ID),
            self.timestamp_us,
            int(self.status),
            int(self.faults),
            fields,
            len(self.position),
            actuators,
        )
        return _seal(_STATE_FRAME[len(values)].pack(*head, *values))

    @classmethod
    def _unpack(cls, payload: bytes) -> StateReply:
        if len(payload) < _STATE_HEAD.size:
            _expect_len(cls, payload, _STATE_HEAD.size)
        stamp, status, faults, fields, joints, actuators = _STATE_HEAD.unpack_from(payload)
        if fields & ~_STATE_FIELD_BITS:
            raise _bad(f"STATE fields byte has unknown bits: 0x{fields:02X}")
        extra = actuators * ((fields & _CURRENT_BIT) + (fields >> 1))  # fields: 2 bits
        count = 2 * joints + extra
        _expect_len(cls, payload, _STATE_HEAD.size + 4 * count)
        values = _F32[count].unpack_from(payload, _STATE_HEAD.size)
        position, velocity = values[:joints], values[joints : 2 * joints]
        current = temperature = None
        if fields & _CURRENT_BIT:
            current = values[2 * joints : 2 * joints + actuators]
        if fields & _TEMPERATURE_BIT:
            temperature = values[count - actuators :]
        if (
            not 1 <= joints <= MAX_JOINTS
            or (fields and not 1 <= actuators <= MAX_JOINTS)
            or not math.isfinite(sum(values))
        ):
            # Invalid: the validating constructor raises its precise error.
            return cls(stamp, status, faults, position, velocity, current, temperature)
        # Valid: every field is what the constructor would store (floats are float32).
        return _trusted(
            cls,
            {
                "timestamp_us": stamp,
                "status": _STATUS_FLAGS[status],
                "faults": _fault_flag(faults),
                "position": position,
                "velocity": velocity,
                "current": current,
                "temperature": temperature,
            },
        )


_STATE_ID = MsgType.STATE.value
_ENABLED_BIT, _ESTOPPED_BIT, _FAULTED_BIT = (
    StatusFlag.ENABLED.value,
    StatusFlag.ESTOPPED.value,
    StatusFlag.FAULTED.value,
)
_CURRENT_BIT, _TEMPERATURE_BIT = StateField.CURRENT.value, StateField.TEMPERATURE.value
_STATE_FRAME = tuple(
    struct.Struct(f"<HHBB{_STATE_HEAD.format[1:]}{n}f") for n in range(4 * MAX_JOINTS + 1)
)  # frame without sync and CRC, by float count


@dataclass(frozen=True)
class ErrorReply(Message):
    """The request (`request_type`, `request_seq`) was refused for reason `code`."""

    TYPE = MsgType.ERROR
    code: ErrorCode
    request_type: int
    request_seq: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", _enum("ErrorReply.code", ErrorCode, self.code))
        _uint("ErrorReply.request_type", self.request_type, 8)
        _uint("ErrorReply.request_seq", self.request_seq, 16)

    def _pack(self) -> bytes:
        return struct.pack("<BBH", self.code, self.request_type, self.request_seq)

    @classmethod
    def _unpack(cls, payload: bytes) -> ErrorReply:
        _expect_len(cls, payload, 4)
        return cls(*struct.unpack("<BBH", payload))


MESSAGE_CLASSES: MappingProxyType[MsgType, type[Message]] = MappingProxyType(
    {
        cls.TYPE: cls
        for cls in (
            Hello,
            Enable,
            Disable,
            Command,
            ReadState,
            Estop,
            ClearFault,
            SetWatchdog,
            HelloReply,
            Ack,
            StateReply,
            ErrorReply,
        )
    }
)
"""Message class of each type."""
_CLASS_OF = {int(t): cls for t, cls in MESSAGE_CLASSES.items()}  # type byte -> class


@dataclass(frozen=True)
class Undecodable:
    """A CRC-valid frame whose type is unknown or whose payload is invalid.

    A device answers it with `ErrorReply(error, type_id, seq)`.
    """

    type_id: int
    payload: bytes
    error: ErrorCode
    reason: str


class Frame(NamedTuple):
    """A received frame: its sequence number and message."""

    seq: int
    msg: Message | Undecodable


# ---------------------------------------------------------------------------- framing


_FRAME_HEAD = struct.Struct("<HHBB")  # len, seq, type, hck (the sync is added by _seal)
_CRC = struct.Struct("<H")


def _hck(length: int, seq: int, type_id: int) -> int:
    """The header check byte of a frame, from its len, seq and type."""
    return 0xFF ^ (length & 0xFF) ^ (length >> 8) ^ (seq & 0xFF) ^ (seq >> 8) ^ type_id


def _seal(body: bytes) -> bytes:
    """The frame SYNC + body + CRC, where `body` holds len, seq, type, hck and payload."""
    return SYNC + body + _CRC.pack(crc16(body))


def _frame(type_id: int, payload: bytes, seq: int) -> bytes:
    """A frame from checked parts (type byte, payload of at most MAX_PAYLOAD bytes, seq)."""
    n = len(payload)
    return _seal(_FRAME_HEAD.pack(n, seq, type_id, _hck(n, seq, type_id)) + payload)


def encode_raw(type_id: int, payload: bytes, seq: int) -> bytes:
    """A complete frame with any type byte and payload (for tests and fault injection)."""
    type_id = _uint("type_id", type_id, 8)
    seq = _uint("seq", seq, 16)
    if len(payload) > MAX_PAYLOAD:
        raise _bad(f"payload is {len(payload)} bytes, the maximum is {MAX_PAYLOAD}")
    return _frame(type_id, bytes(payload), seq)


def encode(msg: Message, seq: int) -> bytes:
    """Encode `msg` as one frame with sequence number `seq` (0..65535)."""
    if not isinstance(msg, Message) or type(msg) is Message:
        raise TypeError(f"encode needs a protocol message (Hello, Command, ...), got {msg!r}")
    if type(seq) is not int or not 0 <= seq < SEQ_MODULO:
        seq = _uint("seq", seq, 16)  # raises, or converts an integer-like seq
    return msg._encode(seq)


def _decode_message(type_id: int, payload: bytes) -> Message:
    cls = _CLASS_OF.get(type_id)
    if cls is None:
        raise ProtocolError(f"unknown message type 0x{type_id:02X}", code=ErrorCode.UNKNOWN_TYPE)
    return cls._unpack(payload)


def decode_frame(data: bytes | bytearray) -> Frame:
    """Decode exactly one complete frame; raise `ProtocolError` saying what is wrong."""
    data = bytes(data)
    if len(data) < MIN_FRAME_SIZE:
        raise ProtocolError(
            f"frame too short: {len(data)} bytes, a frame has at least {MIN_FRAME_SIZE}"
        )
    if data[:2] != SYNC:
        raise ProtocolError(f"bad sync bytes {data[:2].hex(' ').upper()}, expected AA 55")
    length, seq, type_id, hck = _FRAME_HEAD.unpack_from(data, 2)
    if hck != _hck(length, seq, type_id):
        raise ProtocolError(
            f"bad header check byte 0x{hck:02X}, expected 0x{_hck(length, seq, type_id):02X}"
            " (corrupted header)"
        )
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"payload length {length} exceeds the maximum {MAX_PAYLOAD}")
    total = HEADER_SIZE + length + CRC_SIZE
    if len(data) != total:
        raise ProtocolError(
            f"frame is {len(data)} bytes but its header announces {total}"
            f" ({length}-byte payload); pass exactly one frame"
        )
    expected = crc16(data[2:-CRC_SIZE])
    (received,) = _CRC.unpack_from(data, total - CRC_SIZE)
    if received != expected:
        raise ProtocolError(
            f"bad CRC 0x{received:04X}, expected 0x{expected:04X} (corrupted frame)"
        )
    payload = data[HEADER_SIZE:-CRC_SIZE]
    try:
        return Frame(seq, _decode_message(type_id, payload))
    except ProtocolError as err:
        raise ProtocolError(
            f"frame seq {seq}, type 0x{type_id:02X}: {err}",
            code=err.code,
            seq=seq,
            type_id=type_id,
        ) from None


@dataclass
class DecoderStats:
    """Diagnostics of a `FrameDecoder` since it was made."""

    frames: int = 0  # CRC-valid frames returned (Undecodable ones included)
    undecodable: int = 0  # of those, frames with an unknown type or invalid payload
    dropped_bytes: int = 0  # bytes discarded while hunting for a frame (incl. reset())
    bad_header: int = 0  # candidate frames rejected by the header check or length
    bad_crc: int = 0  # candidate frames rejected by the CRC


class FrameDecoder:
    """Streaming decoder: feed it bytes as they arrive, get complete frames back.

    On a bad header or CRC it drops one byte and hunts for the next sync pattern, so it
    recovers from garbage, lost bytes and corrupted frames; frames already buffered behind
    a bad candidate are still found. Between calls it keeps less than `MAX_FRAME_SIZE`
    bytes (one incomplete frame at most).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.stats = DecoderStats()

    @property
    def buffered(self) -> int:
        """Bytes held back as the start of an incomplete frame."""
        return len(self._buf)

    def reset(self) -> None:
        """Discard any partial frame (e.g. before sending a new request)."""
        self.stats.dropped_bytes += len(self._buf)
        self._buf.clear()

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        """Add received bytes; return the frames completed by them, in order."""
        buf = self._buf
        buf += data
        stats = self.stats
        frames: list[Frame] = []
        end = len(buf)
        pos = 0
        while pos < end:  # (at the end nothing is left to drop or keep)
            start = buf.find(SYNC, pos)
            if start < 0:
                keep = 1 if end > pos and buf[end - 1] == SYNC[0] else 0
                stats.dropped_bytes += end - pos - keep
                pos = end - keep
                break
            stats.dropped_bytes += start - pos
            pos = start
            if end - pos < HEADER_SIZE:
                break
            length, seq, type_id, hck = _FRAME_HEAD.unpack_from(buf, pos + 2)
            if hck != _hck(length, seq, type_id) or length > MAX_PAYLOAD:
                stats.bad_header += 1
                stats.dropped_bytes += 1
                pos += 1
                continue
            total = HEADER_SIZE + length + CRC_SIZE
            if end - pos < total:
                break
            crc_end = pos + total - CRC_SIZE
            if crc16(buf[pos + 2 : crc_end]) != _CRC.unpack_from(buf, crc_end)[0]:
                stats.bad_crc += 1
                stats.dropped_bytes += 1
                pos += 1
                continue
            payload = bytes(buf[pos + HEADER_SIZE : crc_end])
            try:
                msg: Message | Undecodable = _decode_message(type_id, payload)
            except ProtocolError as err:
                assert err.code is not None
                msg = Undecodable(type_id, payload, err.code, str(err))
                stats.undecodable += 1
            stats.frames += 1
            frames.append(Frame(seq, msg))
            pos += total
        del buf[:pos]
        return frames
