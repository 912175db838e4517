"""mcap bags written and checked with Foxglove's ``mcap`` library, the format's reference Python
implementation.

An mcap file may carry three CRC32s (0 means "not computed"): each chunk's, over its records;
the data section's, over every byte before the Data End record; the summary's, over the summary
section and the footer's first fields.  ``ros2 bag record`` (the mcap C++ writer with its
defaults) writes the chunk and summary CRCs.  ``rosbags`` writes the rosbag2 directory
(metadata.yaml, message definitions, QoS) and hands the records to a storage plugin; its own
mcap plugin leaves every CRC 0, so ``Writer`` swaps in ``McapStorage``, the same records written
by ``mcap.writer.Writer`` with all three CRCs.

``verify`` reads a file with the library's stream reader, which checks chunk and data-section
CRCs, and adds what the library lacks: the summary CRC (the library never checks it), where the
damage is (the byte offset and kind of the record; the library's errors name neither) and a
cut-off file named as such (the library reports a short read, or a CRC or decompression error
of whatever record the cut fell in).
"""
from __future__ import annotations

import os
import zlib
from importlib.metadata import version
from pathlib import Path
from typing import BinaryIO

from mcap.opcode import Opcode
from mcap.records import Chunk, DataEnd, Footer
from mcap.stream_reader import CRCValidationError, StreamReader, get_chunk_data_stream
from mcap.writer import MCAP0_MAGIC, CompressionType
from mcap.writer import Writer as _McapWriter
from rosbags.interfaces import Connection, ConnectionExtRosbag2, MessageDefinitionFormat
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as _RosbagWriter
from rosbags.rosbag2.enums import CompressionMode

_FOOTER_SIZE = 1 + 8 + 8 + 8 + 4  # opcode, length, summary_start, summary_offset_start, crc


class McapCorrupt(ValueError):
    """An mcap file whose framing or a CRC shows damage; the message says where."""


class McapStorage:
    """rosbags' mcap storage plugin interface, written by the mcap library with every CRC."""

    def __init__(self, path: Path, compression: CompressionMode) -> None:
        self.path = path / f"{path.name}.mcap"
        self._file = self.path.open("xb")
        chunks = CompressionType.ZSTD if compression == CompressionMode.STORAGE \
            else CompressionType.NONE
        self._writer = _McapWriter(self._file, compression=chunks, enable_crcs=True,
                                   enable_data_crcs=True)
        self._writer.start(profile="ros2", library=f"rosbags {version('rosbags')}, mcap "
                                                   f"{version('mcap')}")
        self._schemas: dict[str, int] = {}
        self._channels: dict[int, int] = {}

    def add_msgtype(self, connection: Connection) -> None:
        encoding = ("ros2msg" if connection.msgdef.format == MessageDefinitionFormat.MSG
                    else "ros2idl")
        self._schemas[connection.msgtype] = self._writer.register_schema(
            connection.msgtype, encoding, connection.msgdef.data.encode())

    def add_connection(self, connection: Connection, offered_qos_profiles: str) -> None:
        # The channel metadata rosbag2's own mcap plugin writes.
        ext = connection.ext
        if not isinstance(ext, ConnectionExtRosbag2):  # only rosbag2 writers reach here
            raise TypeError(f"connection {connection.topic}: not a rosbag2 connection")
        self._channels[connection.id] = self._writer.register_channel(
            connection.topic, ext.serialization_format,
            self._schemas[connection.msgtype],
            {"offered_qos_profiles": offered_qos_profiles,
             "topic_type_hash": connection.digest})

    def write(self, connection: Connection, timestamp: int, data: bytes | memoryview) -> None:
        self._writer.add_message(self._channels[connection.id], log_time=timestamp,
                                 data=bytes(data), publish_time=timestamp)

    def close(self, version: int, metadata: str) -> None:
        """Write the last chunk, the bag's metadata record, the summary and the footer."""
        self._writer.flush()
        self._writer.add_metadata("rosbag2", {"serialized_metadata": metadata})
        self._writer.finish()
        self._file.close()

    def abort(self) -> None:
        self._file.close()


class Writer(_RosbagWriter):
    """``rosbags.rosbag2.Writer`` whose mcap storage is ``McapStorage``."""

    STORAGE_PLUGINS = {**_RosbagWriter.STORAGE_PLUGINS, StoragePlugin.MCAP: McapStorage}


def _record_name(f: BinaryIO, at: int) -> str:
    """'the chunk at byte N' for the record starting at ``at``."""
    opcode = os.pread(f.fileno(), 1, at)
    try:
        kind = Opcode(opcode[0]).name.lower().replace("_", " ")
    except (IndexError, ValueError):
        kind = "record"
    return f"the {kind} at byte {at}"


def _footer_offset(f: BinaryIO, size: int) -> int:
    """Where the footer record starts, once the file's end shows it is complete."""
    if size < 2 * len(MCAP0_MAGIC) + _FOOTER_SIZE:
        raise McapCorrupt(f"{size} bytes: too short to be a complete mcap file")
    at = size - len(MCAP0_MAGIC) - _FOOTER_SIZE
    tail = os.pread(f.fileno(), _FOOTER_SIZE + len(MCAP0_MAGIC), at)
    if tail[_FOOTER_SIZE:] != MCAP0_MAGIC:
        raise McapCorrupt("no magic at the end (truncated or overwritten)")
    if tail[0] != Opcode.FOOTER:
        raise McapCorrupt(f"no footer record before the closing magic (byte {at})")
    return at


def _check_summary(f: BinaryIO, footer: Footer, footer_at: int) -> int:
    """1 if the summary CRC is set and holds, 0 if it is not set; McapCorrupt if it fails."""
    if not footer.summary_crc or not footer.summary_start:
        return 0
    summary = os.pread(f.fileno(), footer_at - footer.summary_start, footer.summary_start)
    head = os.pread(f.fileno(), _FOOTER_SIZE - 4, footer_at)  # the footer up to its CRC
    computed = zlib.crc32(head, zlib.crc32(summary))
    if computed != footer.summary_crc:
        raise McapCorrupt(f"the summary section (byte {footer.summary_start}) fails its CRC "
                          f"(stored {footer.summary_crc:#010x}, computed {computed:#010x})")
    return 1


def verify(path: str | os.PathLike) -> int:
    """Check the framing and every CRC of an mcap file; the number of CRCs checked.

    Raises ``McapCorrupt`` naming the first damage found and where it is.
    """
    path = Path(path)
    size = path.stat().st_size
    checked = 0
    with open(path, "rb") as f:
        footer_at = _footer_offset(f, size)
        reader = StreamReader(f, emit_chunks=True, validate_crcs=True, record_size_limit=size)
        at, footer = len(MCAP0_MAGIC), None
        try:
            for record in reader.records:
                if isinstance(record, Chunk):
                    get_chunk_data_stream(record, validate_crc=True)
                    checked += bool(record.uncompressed_crc)
                elif isinstance(record, DataEnd):
                    checked += bool(record.data_section_crc)
                elif isinstance(record, Footer):
                    footer = record
                at = f.tell()
        except CRCValidationError as e:
            what = (f"the data section (bytes 0-{at})" if isinstance(e.record, DataEnd)
                    else _record_name(f, at))
            raise McapCorrupt(f"{what} fails its CRC (stored {e.expected:#010x}, computed "
                              f"{e.actual:#010x})") from None
        except Exception as e:  # the library and its decompressors raise many types
            raise McapCorrupt(f"{_record_name(f, at)} cannot be read ({type(e).__name__}: "
                              f"{e})") from None
        assert footer is not None  # the reader stops at the footer record
        checked += _check_summary(f, footer, footer_at)
    return checked
