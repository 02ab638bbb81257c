# SPDX-License-Identifier: Apache-2.0
"""Read what a cut-off or damaged bag still holds.

Robots lose power mid-recording. What is left on disk then:

* ROS 1: a ``.bag`` / ``.bag.active`` without its index (rosbag writes the index on close; a
  chunk still being written has zero sizes in its header and its records run to the end).
* MCAP: no summary and no footer (what ``ros2 bag record`` leaves when killed), possibly cut
  inside a chunk.
* SQLite ``.db3``: a damaged or missing tail.

rosbags (used for every intact bag) refuses all three: it needs the ROS 1 index and the MCAP
footer. No maintained Python library recovers them (``mcap``'s streaming reader reads records
in order, but trusts short reads and cannot decode a partly written chunk; ``rosbag reindex``
and ``mcap recover`` are not Python), so the record scanning below is written here.

What is recovered, in file order: every *complete* message before the first damage.

* A record counts only when all of its bytes are present; a message cut by the end of the
  file is dropped, never padded or shortened.
* A chunk whose checksum fails (MCAP chunk CRC, bz2 block CRC) or that does not decompress
  to its recorded size is damage: none of its messages are used. A chunk cut by the end of the
  file is decoded as far as its bytes go (no compression, lz4 and zstd decode a prefix of the
  data exactly; bz2 blocks are 900 kB, so a cut bz2 chunk rarely yields anything).
* Structure that does not parse (an unknown record, a length running past its container) is
  damage. The scan stops at the first damage: what follows cannot be framed reliably.
* ``.db3``: rows in insertion order until SQLite reports a damaged page. When nothing can be
  read (a ``.db3`` cut in half often cannot even be opened), :class:`BagSalvageError` says so.

Formats without checksums (ROS 1 and MCAP chunks without CRC, uncompressed or lz4) cannot show
that a byte *inside* a message was overwritten; truncation, the damage a power loss causes, is
always detected. Files are only ever opened for reading.
"""

from __future__ import annotations

import bz2
import re
import shutil
import sqlite3
import struct
import tempfile
import zlib
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import lz4.frame
import yaml
import zstandard
from mcap.data_stream import ReadDataStream
from mcap.exceptions import EndOfFile, McapError
from mcap.records import Channel, Chunk, DataEnd, Footer, Message, Schema
from mcap.stream_reader import StreamReader
from rosbags.interfaces import (
    Connection,
    ConnectionExtRosbag1,
    ConnectionExtRosbag2,
    MessageDefinition,
    MessageDefinitionFormat,
)
from rosbags.rosbag1.reader import Header as Ros1Header
from rosbags.rosbag1.reader import ReaderError as Ros1ReaderError
from rosbags.rosbag1.reader import normalize as normalize_ros1_topic
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.msg import normalize_msgtype
from rosbags.typesys.store import Typestore

from mtl_perception.core.errors import UserError

__all__ = ["BagSalvageError", "FileReport", "RecoveringReader", "SalvageReader", "storage_files"]

ROS1_MAGIC = b"#ROSBAG V2.0\n"
MCAP_MAGIC = b"\x89MCAP0\r\n"
_MCAP_CHUNK_OP = 0x06
_MCAP_CHUNK_FIXED = struct.Struct(
    "<QQQII"
)  # start, end, uncompressed size, crc, compression length
_ROS1_OP_MSGDATA, _ROS1_OP_BAGHEADER, _ROS1_OP_CHUNK, _ROS1_OP_CONNECTION = 2, 3, 5, 7
MAX_CUT_CHUNK = 1 << 28
"""A chunk cut by the end of the file is decoded only if the rest of the file is at most this
(256 MiB): recorders close chunks at about 1 MiB, so a longer rest means a corrupt length."""
_ROS1_SKIPPED_OPS = (4, 6)  # index data, chunk info: only the (missing or intact) index uses them


class BagSalvageError(UserError):
    """Nothing could be recovered from a damaged bag (the message says why)."""


class _Damage(Exception):
    """Raised inside a scanner: the file is damaged at this point; the scan stops here."""


@dataclass
class FileReport:
    """What the scan of one storage file found."""

    path: Path
    size: int
    messages: int = 0
    intact_bytes: int | None = 0
    """Bytes from the start of the file read as complete records (``None``: not known, SQLite)."""
    damage: str = ""
    """Why the scan stopped before the end of the data; empty when nothing was lost."""

    def describe(self) -> str:
        """One line: how much was salvaged and what was lost."""
        if not self.damage:
            return f"{self.path.name}: {self.messages} messages, no damage found"
        where = (
            f" at byte {self.intact_bytes} of {self.size}" if self.intact_bytes is not None else ""
        )
        return (
            f"{self.path.name}: salvaged {self.messages} complete messages; damage{where}: "
            f"{self.damage}; what follows is lost"
        )


@dataclass(frozen=True)
class _ConnInfo:
    """A connection as a scanner finds it (before ids are unified across files)."""

    key: Any
    topic: str
    msgtype: str
    msgdef: MessageDefinition
    digest: str
    ext: ConnectionExtRosbag1 | ConnectionExtRosbag2


@dataclass(frozen=True)
class _Msg:
    key: Any
    timestamp: int
    data: bytes


Scan = Iterator["_ConnInfo | _Msg"]


class _Exact:
    """A read-only byte source whose ``read(n)`` returns exactly ``n`` bytes or raises.

    The ``mcap`` stream reader trusts short reads (a message cut by the end of the file would
    come back shortened); this makes every short read an ``EndOfFile``, and refuses a length
    beyond the end before trying to allocate it (a corrupt length field can claim terabytes).
    """

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle, self.size = handle, size

    def tell(self) -> int:
        return self.handle.tell()

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            return self.handle.read()
        if self.handle.tell() + n > self.size:
            raise EndOfFile()
        data = self.handle.read(n)
        if len(data) != n:
            raise EndOfFile()
        return data


# ----------------------------------------------------------------------------- decoding chunks


def _decode_prefix(compression: str, data: bytes) -> bytes:
    """Decode as much as possible of a chunk's data that the end of the file cut short."""
    try:
        if compression in ("", "none"):
            return data
        if compression == "zstd":
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        if compression == "lz4":
            return lz4.frame.LZ4FrameDecompressor().decompress(data)
        if compression == "bz2":
            return bz2.BZ2Decompressor().decompress(data)
    except Exception:
        return b""
    return b""


def _decode_whole(compression: str, data: bytes, size: int, crc: int = 0) -> bytes:
    """Decode a complete chunk; ``_Damage`` if it is not ``size`` bytes then or fails its CRC."""
    try:
        if compression in ("", "none"):
            decoded = data
        elif compression == "zstd":
            decoded = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
        elif compression == "lz4":
            decoded = lz4.frame.decompress(data)
        elif compression == "bz2":
            decoded = bz2.decompress(data)
        else:
            raise _Damage(f"unknown chunk compression {compression!r}")
    except _Damage:
        raise
    except Exception as err:
        raise _Damage(
            f"{compression} chunk does not decompress ({type(err).__name__}: {err})"
        ) from None
    if len(decoded) != size:
        raise _Damage(f"chunk decompresses to {len(decoded)} bytes, its header says {size}")
    if crc and zlib.crc32(decoded) != crc:
        raise _Damage("chunk fails its CRC check")
    return decoded


# ----------------------------------------------------------------------------- MCAP


def _mcap_records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(opcode, body)`` of the records in a chunk's decoded data; stops at an incomplete one."""
    pos = 0
    while pos + 9 <= len(data):
        opcode, length = struct.unpack_from("<BQ", data, pos)
        if pos + 9 + length > len(data):
            return
        yield opcode, data[pos + 9 : pos + 9 + length]
        pos += 9 + length


def _mcap_stream(body: bytes) -> ReadDataStream:
    return ReadDataStream(_Exact(BytesIO(body), len(body)))  # type: ignore[arg-type]


class _McapState:
    """Schemas and channels seen so far in one MCAP file."""

    def __init__(self) -> None:
        self.schemas: dict[int, Schema] = {}
        self.channels: set[int] = set()

    def handle(self, record: object) -> Iterator[_ConnInfo | _Msg]:
        if isinstance(record, Schema):
            self.schemas[record.id] = record
        elif isinstance(record, Channel):
            if record.id not in self.channels:
                self.channels.add(record.id)
                yield self._connection(record)
        elif isinstance(record, Message):
            if record.channel_id not in self.channels:
                raise _Damage(f"message on unknown channel {record.channel_id}")
            yield _Msg(record.channel_id, record.log_time, bytes(record.data))

    def _connection(self, channel: Channel) -> _ConnInfo:
        schema = self.schemas.get(channel.schema_id)
        formats = {"ros2msg": MessageDefinitionFormat.MSG, "ros2idl": MessageDefinitionFormat.IDL}
        if schema is not None and schema.encoding in formats:
            msgdef = MessageDefinition(formats[schema.encoding], schema.data.decode())
        else:
            msgdef = MessageDefinition(MessageDefinitionFormat.NONE, "")
        msgtype = schema.name if schema is not None else "__schemaless__"
        ext = ConnectionExtRosbag2(channel.message_encoding, [])
        return _ConnInfo(channel.id, channel.topic, msgtype, msgdef, "", ext)

    def chunk_records(self, data: bytes) -> Iterator[_ConnInfo | _Msg]:
        for opcode, body in _mcap_records(data):
            record: object = None
            try:
                if opcode == 0x03:
                    record = Schema.read(_mcap_stream(body))
                elif opcode == 0x04:
                    record = Channel.read(_mcap_stream(body))
                elif opcode == 0x05:
                    record = Message.read(_mcap_stream(body), len(body))
            except (EndOfFile, ValueError, struct.error) as err:
                raise _Damage(f"malformed record in a chunk ({type(err).__name__})") from None
            yield from self.handle(record)


def _scan_mcap(path: Path, report: FileReport) -> Scan:
    state = _McapState()
    with path.open("rb") as handle:
        source = _Exact(handle, report.size)
        # chunk CRCs are checked below (with emit_chunks the library does not)
        reader = StreamReader(source, emit_chunks=True)  # type: ignore[arg-type]
        records = reader.records
        report.intact_bytes = len(MCAP_MAGIC)
        while True:
            start = report.intact_bytes
            try:
                record = next(records)
            except StopIteration:
                return
            except EndOfFile:
                if start == len(MCAP_MAGIC) and report.size < start:
                    raise _Damage("file ends inside the MCAP magic") from None
                recovered = yield from _mcap_partial_chunk(handle, start, state, report)
                raise _Damage(_cut_message(start, recovered)) from None
            except (McapError, ValueError, struct.error) as err:
                raise _Damage(
                    f"unreadable record at byte {start} ({type(err).__name__}: {err})"
                ) from None
            if isinstance(record, Chunk):
                decoded = _decode_whole(
                    record.compression,
                    record.data,
                    record.uncompressed_size,
                    record.uncompressed_crc,
                )
                # all records of a chunk are parsed before any is used: its CRC vouches for all
                items = list(state.chunk_records(decoded))
            else:
                items = list(state.handle(record))
            yield from items
            report.intact_bytes = source.tell()
            if isinstance(record, (DataEnd, Footer)):  # the summary after it holds no messages
                return


def _cut_message(start: int, recovered: int | None) -> str:
    if recovered is None:
        return f"the file ends inside the record at byte {start}"
    return (
        f"the file ends inside the chunk at byte {start}, "
        f"{recovered} of its messages are complete and kept"
    )


def _count_messages(items: Scan) -> Generator[_ConnInfo | _Msg, None, int]:
    """``items`` unchanged; the generator's return value is how many messages passed."""
    count = 0
    for item in items:
        count += isinstance(item, _Msg)
        yield item
    return count


def _mcap_partial_chunk(
    handle: BinaryIO, start: int, state: _McapState, report: FileReport
) -> Generator[_ConnInfo | _Msg, None, int | None]:
    """Messages of a chunk record cut short by the end of the file.

    Returns their count (``None`` when the record at ``start`` is not a chunk).
    """
    if report.size - start > MAX_CUT_CHUNK:
        return None
    handle.seek(start)
    rest = handle.read()
    fixed = 9 + _MCAP_CHUNK_FIXED.size
    if len(rest) < fixed or rest[0] != _MCAP_CHUNK_OP:
        return None
    *_, compression_length = _MCAP_CHUNK_FIXED.unpack_from(rest, 9)
    data_start = fixed + compression_length + 8
    if len(rest) < data_start:
        return 0
    compression = rest[fixed : fixed + compression_length].decode("utf-8", "replace")
    (data_length,) = struct.unpack_from("<Q", rest, data_start - 8)
    decoded = _decode_prefix(compression, rest[data_start : data_start + data_length])
    try:
        return (yield from _count_messages(state.chunk_records(decoded)))
    except _Damage:
        return 0


# ----------------------------------------------------------------------------- ROS 1


_ROS1_MAX_HEADER = 1 << 20  # record headers hold a few short fields; more means a corrupt length


def _read_exact(source: BinaryIO, n: int, end: int) -> bytes:
    """``n`` bytes from ``source``; ``EOFError`` if they run past ``end`` (incomplete record)."""
    if source.tell() + n > end:
        raise EOFError
    data = source.read(n)
    if len(data) != n:
        raise EOFError
    return data


def _ros1_fields(raw: bytes) -> Ros1Header:
    """Parse the ``name=value`` fields of a ROS 1 record header (or a connection's data)."""
    try:
        return Ros1Header.read(BytesIO(struct.pack("<I", len(raw)) + raw))
    except (Ros1ReaderError, UnicodeDecodeError, ValueError) as err:
        raise _Damage(f"malformed record header ({err})") from None


def _ros1_record(source: BinaryIO, end: int) -> tuple[int, Ros1Header, bytes]:
    """``(op, header, data)`` of the next record; ``EOFError`` if it is incomplete."""
    (header_length,) = struct.unpack("<I", _read_exact(source, 4, end))
    if header_length > _ROS1_MAX_HEADER:
        raise _Damage(f"implausible record header length {header_length}")
    header = _ros1_fields(_read_exact(source, header_length, end))
    try:
        op = header.get_uint8("op")
    except Ros1ReaderError:
        raise _Damage("record without an op field") from None
    (length,) = struct.unpack("<I", _read_exact(source, 4, end))
    return op, header, _read_exact(source, length, end)


def _ros1_topic(name: str) -> str:
    """The topic name as rosbags gives it (``//a/`` -> ``/a``); rosbags fails on an empty one."""
    return normalize_ros1_topic(name) if name else name


def _ros1_connection(header: Ros1Header, data: bytes) -> _ConnInfo:
    fields = _ros1_fields(data)
    try:
        latching = fields.get_string("latching") if "latching" in fields else ""
        return _ConnInfo(
            header.get_uint32("conn"),
            _ros1_topic(header.get_string("topic")),
            normalize_msgtype(fields.get_string("type")),
            MessageDefinition(
                MessageDefinitionFormat.MSG, fields.get_string("message_definition")
            ),
            fields.get_string("md5sum"),
            ConnectionExtRosbag1(
                fields.get_string("callerid") if "callerid" in fields else None,
                int(latching) if latching else None,
            ),
        )
    except (Ros1ReaderError, ValueError) as err:
        raise _Damage(f"malformed connection record ({err})") from None


class _Ros1State:
    def __init__(self) -> None:
        self.connections: set[int] = set()

    def record(self, op: int, header: Ros1Header, data: bytes) -> Iterator[_ConnInfo | _Msg]:
        if op == _ROS1_OP_CONNECTION:
            conn = _ros1_connection(header, data)
            if conn.key not in self.connections:
                self.connections.add(conn.key)
                yield conn
        elif op == _ROS1_OP_MSGDATA:
            try:
                key, stamp = header.get_uint32("conn"), header.get_time("time")
            except Ros1ReaderError as err:
                raise _Damage(f"malformed message record ({err})") from None
            if key not in self.connections:
                raise _Damage(f"message on unknown connection {key}")
            yield _Msg(key, stamp, data)
        elif op not in _ROS1_SKIPPED_OPS:
            raise _Damage(f"unexpected record op {op}")

    def chunk(self, decoded: bytes) -> Iterator[_ConnInfo | _Msg]:
        """Records of a chunk's decoded data; a record cut by its end is left out."""
        source = BytesIO(decoded)
        while source.tell() < len(decoded):
            try:
                op, header, data = _ros1_record(source, len(decoded))
            except EOFError:
                return
            yield from self.record(op, header, data)


def _scan_ros1(path: Path, report: FileReport) -> Scan:
    state = _Ros1State()
    with path.open("rb") as handle:
        if handle.read(len(ROS1_MAGIC)) != ROS1_MAGIC:
            raise _Damage(
                "not a ROS 1 bag (no '#ROSBAG V2.0' magic)"
                if report.size >= len(ROS1_MAGIC)
                else "file ends inside the ROS 1 magic"
            )
        report.intact_bytes = handle.tell()
        while report.intact_bytes < report.size:
            start = report.intact_bytes
            handle.seek(start)
            try:
                op, header, data = _ros1_record(handle, report.size)
            except EOFError:
                recovered = yield from _ros1_open_chunk(handle, start, state, report)
                raise _Damage(_cut_message(start, recovered)) from None
            if op == _ROS1_OP_CHUNK:
                compression, size = _ros1_chunk_header(header)
                if not data and size == 0 and handle.tell() < report.size:
                    # rosbag writes a chunk's sizes when it closes it: this one was still open
                    recovered = yield from _ros1_open_chunk(handle, start, state, report)
                    raise _Damage(
                        f"the chunk at byte {start} was never closed (the recording stopped "
                        f"while it was written), {recovered} of its messages are complete and kept"
                    )
                try:
                    items = list(state.chunk(_decode_whole(compression, data, size)))
                except _Damage as err:
                    raise _Damage(f"chunk at byte {start}: {err}") from None
                yield from items
            elif op != _ROS1_OP_BAGHEADER:
                yield from state.record(op, header, data)
            report.intact_bytes = handle.tell()


def _ros1_chunk_header(header: Ros1Header) -> tuple[str, int]:
    try:
        return header.get_string("compression"), header.get_uint32("size")
    except Ros1ReaderError as err:
        raise _Damage(f"malformed chunk header ({err})") from None


def _ros1_open_chunk(
    handle: BinaryIO, start: int, state: _Ros1State, report: FileReport
) -> Generator[_ConnInfo | _Msg, None, int | None]:
    """Messages of a chunk cut short or still open (records to the end of the file).

    Returns their count (None: the record at ``start`` is not a chunk).
    """
    handle.seek(start)
    try:
        (header_length,) = struct.unpack("<I", _read_exact(handle, 4, report.size))
        if header_length > _ROS1_MAX_HEADER:
            return None
        header = _ros1_fields(_read_exact(handle, header_length, report.size))
        if header.get_uint8("op") != _ROS1_OP_CHUNK:
            return None
        compression, _ = _ros1_chunk_header(header)
        (length,) = struct.unpack("<I", _read_exact(handle, 4, report.size))
    except (EOFError, _Damage, Ros1ReaderError):
        return None
    if report.size - handle.tell() > MAX_CUT_CHUNK:
        return None
    data = handle.read(length) if length else handle.read()
    try:
        return (yield from _count_messages(state.chunk(_decode_prefix(compression, data))))
    except _Damage:
        return 0


# ----------------------------------------------------------------------------- SQLite


def _sqlite_page_size(path: Path) -> int | None:
    """The page size in an SQLite file's header, ``None`` if the header is not readable."""
    with path.open("rb") as handle:
        header = handle.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return None
    (size,) = struct.unpack_from(">H", header, 16)
    return 65536 if size == 1 else size


def db3_cut_short(path: Path) -> bool:
    """True when an SQLite file is shorter than its header says, or ends inside a page.

    SQLite (so rosbags too) reads the missing bytes of such a file as zeros without an error.
    """
    with path.open("rb") as handle:
        header = handle.read(100)
    page = _sqlite_page_size(path)
    if page is None:
        return False  # not an SQLite header at all: the normal open fails by itself
    size = path.stat().st_size
    change_counter, pages = struct.unpack_from(">II", header, 24)
    (valid_for,) = struct.unpack_from(">I", header, 92)
    return size % page != 0 or (valid_for == change_counter and pages * page > size)


def _scan_db3(path: Path, report: FileReport) -> Scan:
    report.intact_bytes = None
    with ExitStack() as stack:
        wal = path.with_name(path.name + "-wal")
        has_wal = wal.is_file() and wal.stat().st_size > 0
        page = _sqlite_page_size(path)
        whole = page is None or report.size % page == 0
        db_path, uri_query = path, "?immutable=1"
        if has_wal or not whole:
            # Work on a copy, the input stays untouched. SQLite reads a page cut by the end of the
            # file as if the missing bytes were zeros, silently: the copy ends at the last whole
            # page, so a row reaching past it is an error instead of a garbled message. Rows in
            # the write-ahead log are only visible when SQLite may apply it (needs write access).
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="salvage_")))
            db_path = folder / path.name
            with path.open("rb") as source, db_path.open("wb") as target:
                shutil.copyfileobj(source, target)
                target.truncate(
                    report.size if whole or page is None else report.size // page * page
                )
            if has_wal:
                shutil.copyfile(wal, folder / wal.name)
                uri_query = ""
        uri = f"{db_path.as_uri()}{uri_query}"
        try:
            db = sqlite3.connect(uri, uri=True)
            stack.callback(db.close)
            # A header that claims more pages than the file holds makes SQLite refuse the whole
            # file; with this it reads the pages that exist (nothing is written either way).
            db.execute("PRAGMA writable_schema = ON")
            topics = db.execute(
                "SELECT id, name, type, serialization_format FROM topics ORDER BY id"
            ).fetchall()
            definitions: dict[str, MessageDefinition] = {}
            if db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'message_definitions'"
            ).fetchone():
                formats = {
                    "ros2msg": MessageDefinitionFormat.MSG,
                    "ros2idl": MessageDefinitionFormat.IDL,
                }
                for name, encoding, text in db.execute(
                    "SELECT topic_type, encoding, encoded_message_definition "
                    "FROM message_definitions"
                ):
                    if encoding in formats and text:
                        definitions[name] = MessageDefinition(formats[encoding], text)
        except sqlite3.Error as err:
            raise _Damage(f"SQLite cannot read the topics table ({err})") from None
        none = MessageDefinition(MessageDefinitionFormat.NONE, "")
        for key, topic, msgtype, fmt in topics:
            yield _ConnInfo(
                key,
                topic,
                msgtype,
                definitions.get(msgtype, none),
                "",
                ConnectionExtRosbag2(fmt, []),
            )
        known = {row[0] for row in topics}
        last_id = None
        try:
            for row_id, key, stamp, data in db.execute(
                "SELECT id, topic_id, timestamp, data FROM messages ORDER BY id"
            ):
                if key not in known:
                    raise _Damage(f"row {row_id} names unknown topic id {key}")
                yield _Msg(key, int(stamp), bytes(data))
                last_id = row_id
        except sqlite3.Error as err:
            after = f"after row id {last_id}" if last_id is not None else "before the first row"
            raise _Damage(f"SQLite stops {after}: {err}") from None


_SCANNERS: dict[str, Callable[[Path, FileReport], Scan]] = {
    ".mcap": _scan_mcap,
    ".db3": _scan_db3,
    ".bag": _scan_ros1,
}


def _scanner(path: Path) -> Callable[[Path, FileReport], Scan]:
    """The scanner of a storage file by suffix (``x.bag.active``: a ROS 1 bag being written)."""
    suffix = ".bag" if path.name.endswith(".bag.active") else path.suffix
    if suffix not in _SCANNERS:
        raise UserError(
            f"{path}: cannot salvage a {suffix or 'suffix-less'} file "
            "(.bag, .bag.active, .mcap, .db3)"
        )
    return _SCANNERS[suffix]


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def storage_files(path: Path) -> list[Path]:
    """The storage files of a bag: the file itself, or a rosbag2 folder's files in recording order.

    The folder's ``metadata.yaml`` gives the order when it is readable (a killed recorder may
    not have written it); else the files sort by their split index (``x_0.mcap``, ``x_1.mcap``).
    """
    if not path.is_dir():
        return [path]
    found = sorted(
        (p for p in path.iterdir() if p.suffix in (".mcap", ".db3") and p.is_file()),
        key=_natural_key,
    )
    try:
        info = yaml.safe_load((path / "metadata.yaml").read_text(encoding="utf-8"))
        listed = [
            path / Path(name).name
            for name in info["rosbag2_bagfile_information"]["relative_file_paths"]
        ]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return found
    return [p for p in listed if p in found] + [p for p in found if p not in listed]


# ----------------------------------------------------------------------------- reader


def _scan(path: Path, report: FileReport) -> Scan:
    """Records of one storage file; the report gets the damage (the scan never raises for it)."""
    try:
        for item in _scanner(path)(path, report):
            if isinstance(item, _Msg):
                report.messages += 1
            yield item
    except _Damage as err:
        report.damage = str(err)


class SalvageReader:
    """Reads the complete messages of damaged bags; a subset of rosbags' ``AnyReader`` API.

    ``connections``, ``messages(connections)`` and ``deserialize(raw, msgtype)`` behave like
    ``AnyReader``'s. Connections of the same topic and type in several storage files are one
    connection. Opening scans every file once (to find connections and counts); reading the
    messages scans again, so salvage reads a damaged bag twice.

    Raises:
        BagSalvageError: at open, when no complete message can be read from any file.
    """

    def __init__(self, path: Path, default_typestore: Typestore) -> None:
        self.path = Path(path)
        self.paths = [self.path]
        self.files = storage_files(self.path)
        self.default_typestore = default_typestore
        self.is_ros1 = bool(self.files) and all(_scanner(f) is _scan_ros1 for f in self.files)
        self.connections: list[Connection] = []
        self.reports: list[FileReport] = []
        self.typestore: Typestore | None = None
        self._ids: dict[tuple[str, str], int] = {}

    def __enter__(self) -> SalvageReader:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def open(self) -> None:
        """Scan every storage file once: connections, message counts, damage."""
        if not self.files:
            raise BagSalvageError(f"{self.path}: no storage files (.mcap, .db3) to salvage")
        infos: dict[int, _ConnInfo] = {}
        counts: dict[int, int] = {}
        self.reports = []
        for file in self.files:
            report = FileReport(file, file.stat().st_size)
            self.reports.append(report)
            keys: dict[Any, int] = {}
            for item in _scan(file, report):
                if isinstance(item, _ConnInfo):
                    uid = self._ids.setdefault((item.topic, item.msgtype), len(self._ids))
                    keys[item.key] = uid
                    infos.setdefault(uid, item)
                else:
                    counts[keys[item.key]] = counts.get(keys[item.key], 0) + 1
        if not sum(counts.values()):
            detail = "; ".join(r.damage or f"{r.path.name}: no messages" for r in self.reports)
            raise BagSalvageError(f"{self.path}: no complete message could be read ({detail})")
        self.connections = [
            Connection(
                uid,
                info.topic,
                info.msgtype,
                info.msgdef,
                info.digest,
                counts.get(uid, 0),
                info.ext,
                self,
            )
            for uid, info in infos.items()
        ]
        self.typestore = self._typestore()

    @property
    def damaged(self) -> bool:
        """True when any file of the bag was damaged."""
        return any(r.damage for r in self.reports)

    def describe(self) -> str:
        """One line per storage file: what was salvaged and what was lost."""
        return "; ".join(r.describe() for r in self.reports)

    def _typestore(self) -> Typestore:
        """Types from the bag's own definitions (like ``AnyReader``), else the default store's."""
        defined = [c for c in self.connections if c.msgdef.format != MessageDefinitionFormat.NONE]
        if not defined:
            return self.default_typestore
        types: dict[str, Any] = {}
        if len(defined) < len(
            self.connections
        ):  # some without definitions: those come from the default
            types.update(self.default_typestore.fielddefs)
        for conn in defined:
            if conn.msgdef.format == MessageDefinitionFormat.MSG:
                types.update(get_types_from_msg(conn.msgdef.data, conn.msgtype))
            else:
                for part in re.split(r"^={80}\nIDL: [^\n]*\n", conn.msgdef.data, flags=re.M):
                    if part.strip():
                        types.update(get_types_from_idl(part))
        store = get_typestore(Stores.EMPTY)
        store.register(types)
        return store

    def messages(
        self,
        connections: Sequence[Connection] = (),
        start: int | None = None,
        stop: int | None = None,
    ) -> Iterator[tuple[Connection, int, bytes]]:
        """``(connection, timestamp_ns, raw)`` of the complete messages, in file order.

        ``start``/``stop``: only messages with ``start <= timestamp < stop`` (the file is still
        scanned from its beginning: there is no index to seek with).
        """
        wanted = {c.id for c in connections} if connections else {c.id for c in self.connections}
        by_id = {c.id: c for c in self.connections}
        for first in self.reports:
            # at most what the first scan found: a file still being written may have grown since
            left = first.messages
            keys: dict[Any, int | None] = {}
            for item in _scan(first.path, FileReport(first.path, first.size)):
                if isinstance(item, _ConnInfo):
                    keys[item.key] = self._ids.get((item.topic, item.msgtype))
                    continue
                if left == 0:
                    break
                left -= 1
                uid = keys[item.key]
                if (
                    uid in wanted
                    and (start is None or item.timestamp >= start)
                    and (stop is None or item.timestamp < stop)
                ):
                    yield by_id[uid], item.timestamp, item.data

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        """Deserialize a raw message of this bag (a rosbags message of type ``msgtype``)."""
        assert self.typestore is not None, "open() first"
        if self.is_ros1:
            return self.typestore.deserialize_ros1(raw, msgtype)
        return self.typestore.deserialize_cdr(raw, msgtype)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


class RecoveringReader:
    """rosbags' ``AnyReader`` for a bag, switching to :class:`SalvageReader` when it fails.

    The switch happens when the bag cannot be opened (no index, no footer, damaged database)
    or when reading fails part-way (a damaged chunk): the messages already delivered are then
    skipped in the salvaged stream (same topic order), so every message arrives once. After the
    switch ``salvage`` is set; ``describe()`` says what happened.

    Raises:
        BagSalvageError: at open, when rosbags fails and salvage finds no complete message.
    """

    def __init__(self, path: Path, default_typestore: Typestore) -> None:
        self.path = Path(path)
        self.paths = [self.path]
        self.default_typestore = default_typestore
        self.normal: Any = None
        self.salvage: SalvageReader | None = None
        self.failure = ""
        """Why rosbags could not read the bag (empty while it can)."""
        self._stack = ExitStack()

    def __enter__(self) -> RecoveringReader:
        from rosbags.highlevel import AnyReader

        try:
            cut = [
                f.name for f in storage_files(self.path) if f.suffix == ".db3" and db3_cut_short(f)
            ]
            if cut:  # rosbags would read the missing pages as zeros: garbled messages, no error
                raise BagSalvageError(
                    f"{', '.join(cut)} is shorter than its SQLite header says (cut short)"
                )
            self.normal = self._stack.enter_context(
                AnyReader([self.path], default_typestore=self.default_typestore)
            )
        except Exception as err:
            self._switch(err)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _switch(self, err: BaseException) -> None:
        self.failure = _first_line(err)
        salvage = SalvageReader(self.path, self.default_typestore)
        try:
            salvage.open()
        except BagSalvageError as salvage_err:
            raise BagSalvageError(
                f"{self.path}: cannot read the bag ({self.failure}); salvage: "
                f"{str(salvage_err).removeprefix(f'{self.path}: ')}"
            ) from None
        self.salvage = salvage

    @property
    def connections(self) -> list[Connection]:
        """The bag's connections, from whichever reader is in use."""
        return self.normal.connections if self.normal is not None else self.salvage.connections  # type: ignore[union-attr]

    def describe(self) -> str:
        """What salvage did, for a warning (empty when rosbags read the bag normally)."""
        if self.salvage is None:
            return ""
        return (
            f"{self.path}: rosbags cannot read it ({self.failure}); "
            f"salvaged: {self.salvage.describe()}"
        )

    def messages(
        self,
        connections: Sequence[Connection] = (),
        start: int | None = None,
        stop: int | None = None,
    ) -> Iterator[tuple[Connection, int, bytes]]:
        """``(connection, timestamp_ns, raw)`` as ``AnyReader.messages`` (see the class)."""
        wanted = list(connections) or self.connections
        delivered: dict[tuple[str, str], int] = {}
        if self.salvage is None:
            try:
                for conn, stamp, raw in self.normal.messages(wanted, start=start, stop=stop):
                    yield conn, stamp, raw
                    key = (conn.topic, conn.msgtype)
                    delivered[key] = delivered.get(key, 0) + 1
                return
            except Exception as err:
                self._switch(err)
        assert self.salvage is not None
        ours = {(c.topic, c.msgtype): c for c in wanted}
        theirs = [c for c in self.salvage.connections if (c.topic, c.msgtype) in ours]
        if not theirs:
            return
        for conn, stamp, raw in self.salvage.messages(theirs, start, stop):
            key = (conn.topic, conn.msgtype)
            if delivered.get(key, 0) > 0:
                delivered[key] -= 1
                continue
            yield ours[key], stamp, raw

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        """Deserialize a raw message with the types of the reader in use (duck-typed fields)."""
        return (self.salvage or self.normal).deserialize(raw, msgtype)
