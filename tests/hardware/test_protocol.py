"""Tests of the serial protocol codec (hardware/protocol.py) and of docs/protocol.md."""

from __future__ import annotations

import dataclasses
import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hardware.protocol as P
from hardware.crc import CRC16_CHECK, crc16
from hardware.protocol import (
    MAX_FRAME_SIZE,
    MAX_JOINTS,
    MESSAGE_CLASSES,
    SYNC,
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
    ProtocolError,
    ReadState,
    SetWatchdog,
    StateReply,
    StatusFlag,
    Undecodable,
    decode_faults,
    decode_frame,
    encode,
    encode_raw,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True)
PER_CLASS = settings(max_examples=60, deadline=None, derandomize=True)

# ------------------------------------------------------------------------- strategies

f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


def vec(n: int) -> st.SearchStrategy[tuple[float, ...]]:
    return st.lists(f32, min_size=n, max_size=n).map(tuple)


counts = st.integers(1, MAX_JOINTS)
request_types = st.sampled_from([t for t in MsgType if t.is_request])


@st.composite
def state_replies(draw: st.DrawFn) -> StateReply:
    joints, actuators = draw(counts), draw(counts)
    return StateReply(
        timestamp_us=draw(st.integers(0, 2**64 - 1)),
        status=draw(st.integers(0, 0xFF)),
        faults=draw(st.integers(0, 0xFFFF)),
        position=draw(vec(joints)),
        velocity=draw(vec(joints)),
        current=draw(st.none() | vec(actuators)),
        temperature=draw(st.none() | vec(actuators)),
    )


STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: st.builds(Hello, st.integers(1, 255)),
    Enable: st.just(Enable()),
    Disable: st.just(Disable()),
    Command: counts.flatmap(vec).map(Command),
    ReadState: st.just(ReadState()),
    Estop: st.just(Estop()),
    ClearFault: st.just(ClearFault()),
    SetWatchdog: st.builds(SetWatchdog, st.integers(P.WATCHDOG_MIN_MS, P.WATCHDOG_MAX_MS)),
    HelloReply: st.builds(
        HelloReply,
        st.integers(1, 255),
        st.integers(0, 0xFFFF),
        counts,
        counts,
        st.tuples(*[st.integers(0, 255)] * 3),
        st.text(max_size=P.MAX_NAME_BYTES).filter(lambda s: len(s.encode()) <= 32),
    ),
    Ack: st.builds(Ack, request_types),
    StateReply: state_replies(),
    ErrorReply: st.builds(
        ErrorReply, st.sampled_from(ErrorCode), st.integers(0, 255), st.integers(0, 0xFFFF)
    ),
}
messages = st.one_of(*STRATEGIES.values())
seqs = st.integers(0, 0xFFFF)


def frame_size(frame: Frame) -> int:
    if isinstance(frame.msg, Undecodable):
        return P.MIN_FRAME_SIZE + len(frame.msg.payload)
    return len(encode(frame.msg, frame.seq))


def corrupt(data: bytes, index: int, xor: int) -> bytes:
    out = bytearray(data)
    out[index] ^= xor
    return bytes(out)


# ------------------------------------------------------------------------------- CRC


def crc16_bitwise(data: bytes) -> int:
    """The C reference implementation of docs/protocol.md, transcribed."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == CRC16_CHECK == 0x29B1
    assert crc16_bitwise(b"123456789") == 0x29B1
    # The second check given in docs/protocol.md section 3.1 (ENABLE, seq 2).
    assert crc16(bytes.fromhex("00 00 02 00 02 FF")) == 0x9BEA


@PROPERTY
@given(st.binary(max_size=600))
def test_crc_matches_bitwise_reference(data: bytes) -> None:
    assert crc16(data) == crc16_bitwise(data)
    half = len(data) // 2
    assert crc16(data[half:], crc16(data[:half])) == crc16(data)


# ------------------------------------------------------------------------ round trips


def test_every_message_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(MESSAGE_CLASSES.values())
    assert set(MESSAGE_CLASSES) == set(MsgType)


@pytest.mark.parametrize("cls", list(MESSAGE_CLASSES.values()), ids=lambda c: c.__name__)
@PER_CLASS
@given(data=st.data(), seq=seqs)
def test_round_trip_every_message_type(cls: type[Message], data: st.DataObject, seq: int) -> None:
    msg = data.draw(STRATEGIES[cls])
    frame = encode(msg, seq)
    assert frame[:2] == SYNC and frame[6] == cls.TYPE
    assert len(frame) <= MAX_FRAME_SIZE
    assert decode_frame(frame) == (seq, msg)
    decoder = FrameDecoder()
    assert decoder.feed(frame) == [Frame(seq, msg)]
    assert decoder.buffered == 0 and decoder.stats.dropped_bytes == 0


@PROPERTY
@given(st.lists(st.floats(-1e38, 1e38), min_size=1, max_size=MAX_JOINTS), seqs)
def test_floats_are_rounded_to_float32_so_round_trip_is_exact(values: list, seq: int) -> None:
    msg = Command(values)
    for value, target in zip(values, msg.targets, strict=True):
        assert math.isclose(value, target, rel_tol=1e-6, abs_tol=1e-38)
    assert decode_frame(encode(msg, seq)).msg == msg


# ----------------------------------------------------------------- robustness / fuzzing


@st.composite
def noisy_streams(draw: st.DrawFn) -> bytes:
    """Byte streams rich in near-frames: sync patterns, valid headers, truncated and
    corrupted frames, valid frames and random bytes."""
    chunks = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 4))
        if kind == 0:
            chunks.append(draw(st.binary(max_size=40)))
        elif kind == 1:
            chunks.append(SYNC + draw(st.binary(max_size=8)))
        else:
            frame = encode(draw(messages), draw(seqs))
            if kind == 2:
                frame = frame[: draw(st.integers(0, len(frame)))]
            elif kind == 3:
                i = draw(st.integers(0, len(frame) - 1))
                frame = corrupt(frame, i, draw(st.integers(1, 255)))
            chunks.append(frame)
    return b"".join(chunks)


@PROPERTY
@given(st.binary(max_size=200) | noisy_streams())
def test_decode_frame_on_random_bytes_raises_only_protocol_error(data: bytes) -> None:
    try:
        seq, msg = decode_frame(data)
    except ProtocolError as err:
        assert str(err)
    else:
        assert encode(msg, seq) == data


@PROPERTY
@given(st.binary(max_size=300) | noisy_streams(), st.integers(1, 64))
def test_stream_decoder_never_crashes_and_accounts_for_every_byte(data: bytes, chunk: int) -> None:
    decoder = FrameDecoder()
    frames = []
    for i in range(0, len(data), chunk):
        frames += decoder.feed(data[i : i + chunk])
        assert decoder.buffered < MAX_FRAME_SIZE
    for frame in frames:
        assert 0 <= frame.seq <= 0xFFFF
        assert isinstance(frame.msg, Message | Undecodable)
    stats = decoder.stats
    assert stats.frames == len(frames)
    assert sum(map(frame_size, frames)) + stats.dropped_bytes + decoder.buffered == len(data)


@PROPERTY
@given(noisy_streams(), messages, seqs, noisy_streams())
def test_valid_frame_in_noise_is_found(before: bytes, msg: Message, seq: int, after: bytes) -> None:
    decoder = FrameDecoder()
    # Zero bytes contain no sync: they complete any pending candidate so it is judged.
    frames = decoder.feed(before + encode(msg, seq) + after + bytes(MAX_FRAME_SIZE))
    assert Frame(seq, msg) in frames


@PROPERTY
@given(st.binary(max_size=100), messages, seqs, st.binary(max_size=100))
def test_frame_in_sync_free_noise_is_the_only_output(
    before: bytes, msg: Message, seq: int, after: bytes
) -> None:
    before, after = before.replace(b"\xaa", b""), after.replace(b"\xaa", b"")
    decoder = FrameDecoder()
    assert decoder.feed(before + encode(msg, seq) + after) == [Frame(seq, msg)]
    assert decoder.stats.dropped_bytes == len(before) + len(after)
    assert decoder.buffered == 0


@PROPERTY
@given(messages, seqs, st.data())
def test_single_corrupted_byte_is_never_accepted(msg: Message, seq: int, data: st.DataObject):
    frame = encode(msg, seq)
    index = data.draw(st.integers(0, len(frame) - 1), label="index")
    bad = corrupt(frame, index, data.draw(st.integers(1, 255), label="xor"))
    with pytest.raises(ProtocolError):
        decode_frame(bad)
    decoder = FrameDecoder()
    assert decoder.feed(bad + bytes(MAX_FRAME_SIZE)) == []
    # The decoder recovers: the next valid frame is delivered, and only it.
    follow = Frame(P.next_seq(seq), ReadState())
    assert FrameDecoder().feed(bad + encode(follow.msg, follow.seq)) == [follow]


def example_frames() -> list[tuple[str, int, bytes]]:
    rows = re.findall(r"^\| \d+ \| `(.+?)` \| (\d+) \| `([0-9A-F ]+)` \|", DOC.read_text(), re.M)
    return [(expr, int(seq), bytes.fromhex(hex_)) for expr, seq, hex_ in rows]


def test_every_single_byte_corruption_of_the_doc_examples_is_rejected() -> None:
    """Exhaustive: every position, every one of the 255 other values."""
    cases = 0
    for _, _, frame in example_frames():
        for index in range(len(frame)):
            for xor in range(1, 256):
                decoder = FrameDecoder()
                assert decoder.feed(corrupt(frame, index, xor)) == [], (frame.hex(), index, xor)
                cases += 1
    assert cases > 250 * 255


# ------------------------------------------------------------------------- split feeds


@PROPERTY
@given(st.lists(st.tuples(messages, seqs), min_size=1, max_size=5), st.data())
def test_split_feed_at_random_points(pairs: list, data: st.DataObject) -> None:
    stream = b"".join(encode(m, s) for m, s in pairs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    frames = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        frames += decoder.feed(stream[a:b])
    assert frames == [Frame(s, m) for m, s in pairs]


def test_feed_one_byte_at_a_time() -> None:
    msgs = [msg for _, _, frame in example_frames() for msg in [decode_frame(frame)]]
    stream = b"\x00\xaa" + b"".join(encode(m, s) for s, m in msgs) + b"\x55"
    decoder = FrameDecoder()
    frames = []
    for byte in stream:
        got = decoder.feed(bytes([byte]))
        assert len(got) <= 1
        frames += got
    assert frames == msgs
    assert decoder.stats.dropped_bytes == 3  # 00 AA at the start, 55 at the end


def test_buffer_stays_bounded_on_sync_floods_and_reset_drops_partial_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(SYNC * 5000) == []
    assert decoder.buffered < MAX_FRAME_SIZE
    partial = encode(ReadState(), 1)[:-1]
    decoder = FrameDecoder()
    assert decoder.feed(partial) == [] and decoder.buffered == len(partial)
    decoder.reset()
    assert decoder.buffered == 0 and decoder.stats.dropped_bytes == len(partial)
    assert decoder.feed(encode(ReadState(), 2)) == [Frame(2, ReadState())]


def test_decoder_counts_bad_headers_and_crcs() -> None:
    good = encode(Enable(), 5)
    decoder = FrameDecoder()
    frames = decoder.feed(corrupt(good, 7, 1) + corrupt(good, 9, 1) + good)
    assert frames == [Frame(5, Enable())]
    assert decoder.stats.bad_header == 1 and decoder.stats.bad_crc == 1
    assert decoder.stats.dropped_bytes == 2 * len(good)


# --------------------------------------------------------------- undecodable payloads

NAN_COMMAND = struct.pack("<Bf", 1, math.nan)
HELLO_BAD_NAME = bytes([1, 1, 0, 2, 1, 1, 0, 0, 1, 0xFF])  # name_len 1, name byte 0xFF


@pytest.mark.parametrize(
    ("type_id", "payload", "code", "words"),
    [
        (0x7F, b"", ErrorCode.UNKNOWN_TYPE, "unknown message type 0x7F"),
        (MsgType.ENABLE, b"\x00", ErrorCode.BAD_LENGTH, "ENABLE payload must be 0 bytes"),
        (MsgType.COMMAND, b"\x02" + bytes(4), ErrorCode.BAD_LENGTH, "must be 9 bytes"),
        (MsgType.COMMAND, b"", ErrorCode.BAD_LENGTH, "must be 1 bytes"),
        (MsgType.COMMAND, b"\x00", ErrorCode.BAD_VALUE, "1..16 values"),
        (MsgType.COMMAND, NAN_COMMAND, ErrorCode.BAD_VALUE, "must be finite"),
        (MsgType.SET_WATCHDOG, b"\x05\x00", ErrorCode.BAD_VALUE, "[10, 10000]"),
        (MsgType.HELLO, b"\x00", ErrorCode.BAD_VALUE, "protocol_version"),
        (MsgType.ACK, b"\x82", ErrorCode.BAD_VALUE, "must be a request type"),
        (MsgType.ERROR, b"\x63\x04\x07\x00", ErrorCode.BAD_VALUE, "not a valid ErrorCode"),
        (MsgType.HELLO_REPLY, bytes(9), ErrorCode.BAD_VALUE, "protocol_version"),
        (MsgType.HELLO_REPLY, HELLO_BAD_NAME, ErrorCode.BAD_VALUE, "not valid UTF-8"),
        (MsgType.HELLO_REPLY, HELLO_BAD_NAME[:-1], ErrorCode.BAD_LENGTH, "must be 10 bytes"),
        (MsgType.STATE, bytes(11) + b"\x04\x01\x00" + bytes(8), ErrorCode.BAD_VALUE, "fields"),
        (
            MsgType.STATE,
            bytes(12) + b"\x01\x00" + bytes(12),
            ErrorCode.BAD_LENGTH,
            "must be 22 bytes",
        ),
    ],
)
def test_invalid_payloads(type_id: int, payload: bytes, code: ErrorCode, words: str) -> None:
    frame = encode_raw(type_id, payload, 42)
    with pytest.raises(ProtocolError) as info:
        decode_frame(frame)
    assert info.value.code == code and info.value.seq == 42 and info.value.type_id == type_id
    assert words in str(info.value) and "seq 42" in str(info.value)
    decoder = FrameDecoder()
    [frame_out] = decoder.feed(frame)
    assert frame_out.seq == 42
    assert frame_out.msg == Undecodable(type_id, payload, code, frame_out.msg.reason)
    assert words in frame_out.msg.reason
    assert decoder.stats.undecodable == 1


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\xaa\x55\x00", "too short"),
        (b"\x55\xaa" + encode(Enable(), 1)[2:], "bad sync"),
        (corrupt(encode(Enable(), 1), 4, 1), "header check"),
        (encode(Enable(), 1) + b"\x00", "pass exactly one frame"),
        (corrupt(encode(Enable(), 1), 8, 1), "bad CRC"),
    ],
)
def test_broken_framing_is_reported_without_a_reply_code(data: bytes, words: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(words)) as info:
        decode_frame(data)
    assert info.value.code is None and info.value.seq is None
    assert isinstance(info.value, ValueError)


def test_oversized_length_is_rejected_as_header_error() -> None:
    header = bytearray(SYNC + struct.pack("<HHBB", P.MAX_PAYLOAD + 1, 0, 1, 0))
    header[7] = 0xFF ^ header[2] ^ header[3] ^ header[4] ^ header[5] ^ header[6]
    data = bytes(header) + bytes(P.MAX_PAYLOAD + 3)
    with pytest.raises(ProtocolError, match="exceeds the maximum 512"):
        decode_frame(data)
    decoder = FrameDecoder()
    assert decoder.feed(bytes(header)) == [] and decoder.stats.bad_header == 1


# ------------------------------------------------------------------ message validation


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: Command([]), "1..16 values"),
        (lambda: Command([0.0] * 17), "1..16 values"),
        (lambda: Command([math.inf]), "must be finite"),
        (lambda: Command([1e39]), "float32 range"),
        (lambda: Command([1e308, 1e308]), "float32 range"),  # finite values, infinite sum
        (lambda: Command([1.0, math.nan]), "Command.targets[1] must be finite"),
        (lambda: Command([math.inf, -math.inf]), "Command.targets[0] must be finite"),
        (lambda: StateReply(0, 0, 0, (0.0,), (-math.inf,)), "StateReply.velocity[0]"),
        (lambda: StateReply(0, 0, 0, (0.0,), (0.0,), None, (math.nan,)), "temperature[0]"),
        (lambda: StateReply(0, 0, 1 << 16, (0.0,), (0.0,)), "faults"),
        (lambda: Command(["a"]), "sequence of numbers"),
        (lambda: SetWatchdog(9), "[10, 10000]"),
        (lambda: SetWatchdog(10_001), "[10, 10000]"),
        (lambda: SetWatchdog(1.5), "must be an integer"),
        (lambda: HelloReply(1, 1, 2, 1, (1, 0), "x"), "(major, minor, patch)"),
        (lambda: HelloReply(1, 1, 2, 1, (1, 0, 0), "x" * 33), "at most 32"),
        (lambda: HelloReply(1, 1, 0, 1, (1, 0, 0), "x"), "joint_count"),
        (lambda: HelloReply(1, 1 << 16, 2, 1, (1, 0, 0), "x"), "model_id"),
        (lambda: Ack(MsgType.STATE), "must be a request type"),
        (lambda: ErrorReply(0, 1, 1), "not a valid ErrorCode"),
        (lambda: StateReply(0, 0, 0, (0.0, 0.0), (0.0,)), "2 values (as many as position)"),
        (lambda: StateReply(0, 0, 0, (0.0,), (0.0,), (1.0,), (1.0, 2.0)), "as many as current"),
        (lambda: StateReply(-1, 0, 0, (0.0,), (0.0,)), "timestamp_us"),
        (lambda: StateReply(0, 256, 0, (0.0,), (0.0,)), "status"),
    ],
)
def test_invalid_messages_are_refused_at_construction(build, words: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(words)) as info:
        build()
    assert info.value.code == ErrorCode.BAD_VALUE


def test_encode_checks_its_arguments() -> None:
    with pytest.raises(ProtocolError, match="seq must be in"):
        encode(Enable(), 65536)
    with pytest.raises(ProtocolError, match="seq must be in"):
        encode(Enable(), -1)
    with pytest.raises(TypeError, match="protocol message"):
        encode(b"\x01", 0)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="maximum is 512"):
        encode_raw(0x01, bytes(513), 0)
    assert len(encode_raw(0x01, bytes(512), 0)) == MAX_FRAME_SIZE


def test_command_accepts_numpy_like_sequences_and_keeps_order() -> None:
    msg = Command(iter([0.5, -2, 3]))
    assert msg.targets == (0.5, -2.0, 3.0)
    assert Command(np.array([0.1, 2.0])) == Command((0.1, 2.0))
    assert all(type(v) is float for v in Command(np.float32([1.5])).targets)


def test_encode_accepts_integer_like_seq() -> None:
    assert encode(Command((1.0,)), np.uint16(9)) == encode(Command((1.0,)), 9)
    assert encode(Enable(), True) == encode(Enable(), 1)


# -------------------------------------------------------------------- flags and tables


def test_fault_bits_decode_to_names() -> None:
    assert decode_faults(0) == []
    assert decode_faults(FaultFlag.WATCHDOG | FaultFlag.LIMIT) == ["WATCHDOG", "LIMIT"]
    assert decode_faults(0x0200 | FaultFlag.OVER_TEMPERATURE) == ["OVER_TEMPERATURE", "BIT9"]
    assert len(decode_faults(0xFFFF)) == 16
    with pytest.raises(ProtocolError, match="fault bits"):
        decode_faults(1 << 16)


def test_state_reply_flag_properties() -> None:
    ok = StateReply(1, StatusFlag.ENABLED | StatusFlag.CLAMPED, 0, (0.0,), (0.0,))
    assert ok.enabled and not ok.estopped and not ok.faulted and ok.fault_names == []
    tripped = StateReply(
        2, StatusFlag.ESTOPPED | StatusFlag.FAULTED, FaultFlag.OVER_CURRENT, (0.0,), (0.0,)
    )
    assert not tripped.enabled and tripped.estopped and tripped.faulted
    assert tripped.fault_names == ["OVER_CURRENT"]
    assert isinstance(tripped.status, StatusFlag) and isinstance(tripped.faults, FaultFlag)


def test_flag_properties_agree_with_the_bits_for_every_status_byte() -> None:
    for status in range(256):
        built = StateReply(status, status, 0, (0.0,), (0.0,))
        decoded = decode_frame(encode(built, 0)).msg
        for msg in (built, decoded):
            assert msg.status is StatusFlag(status)
            assert msg.enabled == bool(status & 0x01) and msg.estopped == bool(status & 0x02)
            assert msg.faulted == bool(status & 0x04)
    assert StateReply(0, 0, 0x0100, (0.0,), (0.0,)).faulted  # fault word alone suffices


def test_constants_and_tables() -> None:
    assert P.PROTOCOL_VERSION == 1
    assert dict(P.ROBOT_MODEL_IDS) == {"furuta": 1, "arm2": 2}
    assert P.robot_model_name(2) == "arm2" and P.robot_model_name(9) == "unknown model 9"
    assert P.next_seq(65535) == 0 and P.next_seq(7) == 8
    assert P.REPLY_TYPE[MsgType.HELLO] == MsgType.HELLO_REPLY
    assert P.REPLY_TYPE[MsgType.READ_STATE] == MsgType.STATE
    assert P.REPLY_TYPE[MsgType.COMMAND] == MsgType.ACK
    assert set(P.REPLY_TYPE) == {t for t in MsgType if t.is_request}
    assert MAX_FRAME_SIZE == 522


# ------------------------------------------------------ hot paths: one-shot packing, trusted
# decoding. The reference functions below pack / decode field by field, as the spec lays the
# payloads out, and decode through the validating constructors (the slow path).


def reference_payload(msg: Command | StateReply) -> bytes:
    """The payload of `msg`, packed field by field (docs/protocol.md 7.4, 7.11)."""
    if isinstance(msg, Command):
        arrays: list[tuple[float, ...]] = [msg.targets]
        head = struct.pack("<B", len(msg.targets))
    else:
        extras = [a for a in (msg.current, msg.temperature) if a is not None]
        fields = (msg.current is not None) | (msg.temperature is not None) << 1
        actuators = len(extras[0]) if extras else 0
        joints = len(msg.position)
        head = struct.pack(
            "<QBHBBB", msg.timestamp_us, msg.status, msg.faults, fields, joints, actuators
        )
        arrays = [msg.position, msg.velocity, *extras]
    return head + b"".join(struct.pack("<f", v) for array in arrays for v in array)


def reference_decode(type_id: int, payload: bytes) -> Message:
    """COMMAND or STATE decoded field by field through the validating constructor."""
    if type_id == MsgType.COMMAND:
        n = payload[0]
        return Command(struct.unpack_from(f"<{n}f", payload, 1))
    stamp, status, faults, fields, joints, actuators = struct.unpack_from("<QBHBBB", payload)
    arrays: list[tuple[float, ...] | None] = []
    offset = 14
    for count in (joints, joints, *(actuators if fields & bit else None for bit in (1, 2))):
        if count is None:
            arrays.append(None)
            continue
        arrays.append(struct.unpack_from(f"<{count}f", payload, offset))
        offset += 4 * count
    return StateReply(stamp, status, faults, *arrays)


def field_types(msg: Message) -> list[object]:
    """Type of every field of `msg`, and of every element of its tuple fields."""
    out: list[object] = []
    for field in dataclasses.fields(msg):
        value = getattr(msg, field.name)
        out.append(type(value))
        if isinstance(value, tuple):
            out.append([type(v) for v in value])
    return out


# float32 bit patterns: finite values, infinities, NaNs (quiet and signalling), denormals
f32_bytes = st.integers(0, 2**32 - 1).map(lambda u: struct.pack("<I", u)) | f32.map(
    lambda v: struct.pack("<f", v)
)


@st.composite
def near_valid_payloads(draw: st.DrawFn) -> tuple[int, bytes]:
    """(type, payload) of a COMMAND or STATE of the right length whose counts and floats
    may be invalid (0 or more than MAX_JOINTS; NaN, infinite)."""
    if draw(st.booleans()):
        n = draw(st.integers(0, MAX_JOINTS + 2))
        floats = draw(st.lists(f32_bytes, min_size=n, max_size=n))
        return MsgType.COMMAND, bytes([n]) + b"".join(floats)
    joints, actuators = draw(st.integers(0, MAX_JOINTS + 2)), draw(st.integers(0, 18))
    fields = draw(st.integers(0, 3))
    n = 2 * joints + actuators * bin(fields).count("1")
    floats = draw(st.lists(f32_bytes, min_size=n, max_size=n))
    head = struct.pack(
        "<QBHBBB",
        draw(st.integers(0, 2**64 - 1)),
        draw(st.integers(0, 255)),
        draw(st.integers(0, 0xFFFF)),
        fields,
        joints,
        actuators,
    )
    return MsgType.STATE, head + b"".join(floats)


@PROPERTY
@given(near_valid_payloads(), seqs)
def test_trusted_decoding_matches_the_validating_constructor(case: tuple, seq: int) -> None:
    """Fast decoding accepts exactly what the constructors accept, builds equal messages
    with the same field types, and refuses the rest with the constructors' errors."""
    type_id, payload = case
    frame = encode_raw(type_id, payload, seq)
    try:
        expected = reference_decode(type_id, payload)
    except ProtocolError as err:
        with pytest.raises(ProtocolError) as info:
            decode_frame(frame)
        assert info.value.code == err.code == ErrorCode.BAD_VALUE
        assert str(info.value) == f"frame seq {seq}, type 0x{type_id:02X}: {err}"
        [out] = FrameDecoder().feed(frame)
        assert out.msg == Undecodable(type_id, payload, ErrorCode.BAD_VALUE, str(err))
        return
    got = decode_frame(frame).msg
    assert got == expected and hash(got) == hash(expected) and repr(got) == repr(expected)
    assert field_types(got) == field_types(expected)
    assert decode_frame(encode(got, seq)) == (seq, got)  # (actuator_count 0 if no arrays)


@pytest.mark.parametrize("cls", [Command, StateReply], ids=lambda c: c.__name__)
@PER_CLASS
@given(data=st.data(), seq=seqs)
def test_one_shot_packing_matches_field_by_field_layout(
    cls: type[Message], data: st.DataObject, seq: int
) -> None:
    msg = data.draw(STRATEGIES[cls])
    assert encode(msg, seq) == encode_raw(cls.TYPE, reference_payload(msg), seq)


@pytest.mark.parametrize("cls", list(MESSAGE_CLASSES.values()), ids=lambda c: c.__name__)
@PER_CLASS
@given(data=st.data(), seq=seqs)
def test_decoded_messages_are_indistinguishable_from_built_ones(
    cls: type[Message], data: st.DataObject, seq: int
) -> None:
    msg = data.draw(STRATEGIES[cls])
    got = decode_frame(encode(msg, seq)).msg
    assert type(got) is cls and repr(got) == repr(msg) and hash(got) == hash(msg)
    assert field_types(got) == field_types(msg)
    assert dataclasses.replace(got) == msg  # the validating constructor accepts its fields
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.x = 1  # type: ignore[attr-defined]


def test_valid_hot_path_replies_skip_the_constructor_and_invalid_ones_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = StateReply(5, StatusFlag.ENABLED, 0, (0.5, 3.0), (-1.25, 0.0), (0.25,), (31.5,))
    valid = [encode(state, 1), encode(Command((1.5,)), 2), encode(Ack(MsgType.COMMAND), 3)]
    nan_state = bytearray(reference_payload(state))
    nan_state[14:18] = struct.pack("<f", math.nan)
    invalid = [encode_raw(MsgType.STATE, bytes(nan_state), 4), encode_raw(0x04, NAN_COMMAND, 5)]
    built: list[Message] = []
    for cls in (StateReply, Command, Ack):
        monkeypatch.setattr(cls, "__post_init__", lambda self: built.append(self))
    assert [seq for seq, _ in map(decode_frame, valid)] == [1, 2, 3] and built == []
    decoded = FrameDecoder().feed(b"".join(invalid))
    assert [type(m) for m in built] == [StateReply, Command]  # refused via the constructor
    assert [type(f.msg) for f in decoded] == [StateReply, Command]  # (patched: no checks)


# ---------------------------------------------------------------- docs/protocol.md


def test_doc_examples_are_what_the_codec_produces() -> None:
    namespace = {name: getattr(P, name) for name in dir(P) if not name.startswith("_")}
    examples = example_frames()
    assert len(examples) >= 12
    seen = set()
    for expr, seq, frame in examples:
        msg = eval(expr, {"__builtins__": {}}, namespace)  # our own doc, restricted namespace
        assert encode(msg, seq) == frame, f"{expr}: doc has {frame.hex(' ')}"
        assert decode_frame(frame) == (seq, msg)
        seen.add(msg.TYPE)
    assert seen == set(MsgType), "the doc must give an example of every message type"


def test_doc_byte_breakdowns_match_examples() -> None:
    text = DOC.read_text()
    blocks = re.findall(r"```frame-breakdown\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    frames = {frame for _, _, frame in example_frames()}
    for block in blocks:
        hex_parts = [line.split("  ")[0] for line in block.splitlines() if line.strip()]
        assert bytes.fromhex(" ".join(hex_parts)) in frames


def test_doc_states_crc_parameters_and_limits() -> None:
    text = DOC.read_text()
    for fact in ("0x1021", "0xFFFF", "0x29B1", "CRC-16/CCITT-FALSE", "little-endian", "512"):
        assert fact in text
    for t in MsgType:
        assert f"0x{t.value:02X} | {t.name}" in text
    for flag in [*StatusFlag, *FaultFlag, *ErrorCode]:
        assert flag.name in text
