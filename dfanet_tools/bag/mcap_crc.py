"""The CRC32 checks the mcap format (rosbag2's default storage) provides, written and verified.

An mcap file may carry three kinds of CRC (0 means "not computed"):
* each chunk's ``uncompressed_crc``, over the chunk's records;
* the Data End record's ``data_section_crc``, over every byte from the file's start to it;
* the Footer's ``summary_crc``, over the summary section and the footer's first two fields.

``ros2 bag record`` (the mcap C++ writer) fills the chunk and data-section CRCs; ``rosbags``
leaves them all 0, so ``add_crcs`` fills them in the bags we write.  ``verify`` checks every
CRC a file has and the record framing; a file without any CRC can only be checked for
framing, and ``verify`` says how many CRCs it checked.  Only uncompressed chunks are verified
without optional packages (zstd and lz4 chunks when ``zstandard`` / ``lz4`` import).
"""
from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"\x89MCAP0\r\n"
OP_FOOTER, OP_CHUNK, OP_DATA_END = 0x02, 0x06, 0x0F
_FOOTER_SIZE = 9 + 20  # opcode, length, summary_start, summary_offset_start, summary_crc
_CHUNK_CRC_AT = 24     # within a chunk's body: after three uint64 fields


class McapCorrupt(ValueError):
    """An mcap file whose framing or a CRC shows damage; the message says where."""


def _records(f: BinaryIO, size: int) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(offset, opcode, 9-byte record header, body) of each record up to Data End or Footer."""
    if f.read(8) != MAGIC:
        raise McapCorrupt("not an mcap file (no magic at the start)")
    pos = 8
    while True:
        head = f.read(9)
        if len(head) < 9:
            raise McapCorrupt(f"ends inside the record header at byte {pos} (truncated)")
        opcode, length = head[0], struct.unpack_from("<Q", head, 1)[0]
        if pos + 9 + length > size:
            raise McapCorrupt(f"the record at byte {pos} (opcode {opcode:#04x}) claims "
                              f"{length} bytes, past the end of the file")
        body = f.read(length)
        yield pos, opcode, head, body
        if opcode in (OP_DATA_END, OP_FOOTER):
            return
        pos += 9 + length


def _chunk_records(body: bytes, pos: int) -> tuple[int, bytes | None]:
    """(stored CRC, the chunk's uncompressed records or None when they cannot be read here)."""
    try:
        _, _, uncompressed_size, crc, name_len = struct.unpack_from("<QQQII", body, 0)
        compression = body[32:32 + name_len].decode()
        records_len = struct.unpack_from("<Q", body, 32 + name_len)[0]
    except (struct.error, UnicodeDecodeError):
        raise McapCorrupt(f"the chunk at byte {pos} has a malformed header") from None
    records = body[40 + name_len:40 + name_len + records_len]
    if len(records) != records_len:
        raise McapCorrupt(f"the chunk at byte {pos} is shorter than it claims")
    if compression == "":
        data: bytes | None = records
    elif compression == "zstd":
        data = _decompress("zstandard", lambda m: m.ZstdDecompressor().decompress(
            records, max_output_size=uncompressed_size))
    elif compression == "lz4":
        data = _decompress("lz4.frame", lambda m: m.decompress(records))
    else:
        data = None
    if data is not None and len(data) != uncompressed_size:
        raise McapCorrupt(f"the chunk at byte {pos} holds {len(data)} bytes, not the "
                          f"{uncompressed_size} it claims")
    return crc, data


def _decompress(module: str, run: Callable[[Any], bytes]) -> bytes | None:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return run(mod)


def _footer(f: BinaryIO, size: int) -> tuple[int, bytes, int, int]:
    """(footer offset, footer record, summary_start, summary_crc) of a complete file."""
    if size < 8 + _FOOTER_SIZE + 8:
        raise McapCorrupt(f"{size} bytes: too short to be a complete mcap file")
    f.seek(size - 8)
    if f.read(8) != MAGIC:
        raise McapCorrupt("no magic at the end (truncated or overwritten)")
    at = size - 8 - _FOOTER_SIZE
    f.seek(at)
    footer = f.read(_FOOTER_SIZE)
    if footer[0] != OP_FOOTER:
        raise McapCorrupt(f"no footer record before the closing magic (byte {at})")
    summary_start, _, summary_crc = struct.unpack_from("<QQI", footer, 9)
    return at, footer, summary_start, summary_crc


def _summary_crc(f: BinaryIO, at: int, footer: bytes, summary_start: int) -> int:
    f.seek(summary_start)
    return zlib.crc32(footer[:9 + 16], zlib.crc32(f.read(at - summary_start)))


def verify(path: str | os.PathLike) -> int:
    """Check the framing and every CRC of an mcap file; the number of CRCs checked.

    Raises ``McapCorrupt`` naming the first damage found.
    """
    path = Path(path)
    size = path.stat().st_size
    checked = 0
    with open(path, "rb") as f:
        at, footer, summary_start, summary_crc = _footer(f, size)
        f.seek(0)
        crc = zlib.crc32(MAGIC)
        for pos, opcode, head, body in _records(f, size):
            if opcode == OP_DATA_END:
                stored = struct.unpack_from("<I", body)[0] if len(body) >= 4 else 0
                if stored and stored != crc:
                    raise McapCorrupt(f"the data section fails its CRC (stored {stored:#010x}, "
                                      f"computed {crc:#010x})")
                checked += bool(stored)
                break
            crc = zlib.crc32(body, zlib.crc32(head, crc))
            if opcode == OP_CHUNK:
                stored, data = _chunk_records(body, pos)
                if stored and data is not None:
                    computed = zlib.crc32(data)
                    if computed != stored:
                        raise McapCorrupt(f"the chunk at byte {pos} fails its CRC (stored "
                                          f"{stored:#010x}, computed {computed:#010x})")
                    checked += 1
        if summary_crc and summary_start:
            computed = _summary_crc(f, at, footer, summary_start)
            if computed != summary_crc:
                raise McapCorrupt(f"the summary section fails its CRC (stored "
                                  f"{summary_crc:#010x}, computed {computed:#010x})")
            checked += 1
    return checked


def add_crcs(path: str | os.PathLike) -> int:
    """Fill, in place, the CRCs an mcap writer left 0 (uncompressed chunks, the data section
    and the summary); the number filled."""
    path = Path(path)
    size = path.stat().st_size
    filled = 0
    with open(path, "r+b") as f:
        at, footer, summary_start, summary_crc = _footer(f, size)
        f.seek(0)
        crc = zlib.crc32(MAGIC)
        patches: list[tuple[int, int]] = []
        for pos, opcode, head, body in _records(f, size):
            if opcode == OP_DATA_END:
                if len(body) >= 4 and struct.unpack_from("<I", body)[0] == 0:
                    patches.append((pos + 9, crc))
                break
            if opcode == OP_CHUNK:
                stored, data = _chunk_records(body, pos)
                if stored == 0 and data is not None:
                    chunk_crc = zlib.crc32(data)
                    patches.append((pos + 9 + _CHUNK_CRC_AT, chunk_crc))
                    body = (body[:_CHUNK_CRC_AT] + struct.pack("<I", chunk_crc)
                            + body[_CHUNK_CRC_AT + 4:])
            crc = zlib.crc32(body, zlib.crc32(head, crc))
        for offset, value in patches:
            f.seek(offset)
            f.write(struct.pack("<I", value))
        filled += len(patches)
        if summary_crc == 0 and summary_start:
            value = _summary_crc(f, at, footer, summary_start)
            f.seek(at + 9 + 16)
            f.write(struct.pack("<I", value))
            filled += 1
    return filled
