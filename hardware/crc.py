"""CRC-16/CCITT-FALSE, the frame check of the serial protocol (see docs/protocol.md).

Parameters (Rocksoft/reveng notation; reveng also calls it CRC-16/IBM-3740):
width 16, poly 0x1021, init 0xFFFF, refin false, refout false, xorout 0x0000,
check ("123456789") 0x29B1.

`binascii.crc_hqx` computes exactly this non-reflected 0x1021 CRC with a caller-given
initial value, in C, so no table is needed on the host.
"""

from __future__ import annotations

import binascii

CRC16_POLY = 0x1021
CRC16_INIT = 0xFFFF
CRC16_XOROUT = 0x0000
CRC16_CHECK = 0x29B1  # crc16(b"123456789")


def crc16(data: bytes | bytearray | memoryview, crc: int = CRC16_INIT) -> int:
    """CRC-16/CCITT-FALSE of `data`; pass a previous result as `crc` to continue a running CRC."""
    return binascii.crc_hqx(data, crc) ^ CRC16_XOROUT
