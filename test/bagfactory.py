# SPDX-License-Identifier: Apache-2.0
"""Write tiny ROS 1 / ROS 2 bags for tests with the rosbags writers.

Build messages with :func:`image_msg` / :func:`compressed_msg` (or any message of the ROS 2
Jazzy typestore, :data:`ROS2_TYPES`) and write them with :func:`write_bag`::

    write_bag(tmp_path / "run1.mcap", "mcap", [
        ("/camera/image_raw", IMAGE, stamp, image_msg(array, "rgb8", stamp)),
    ])

For ROS 1 the messages are converted field by field to the Noetic definitions (adding
``Header.seq``), so the same message objects serve every format.

Import it as ``from bagfactory import ...`` (pytest puts ``test/`` on ``sys.path``; the name
``test`` itself is the standard library's test package).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Ros2Writer
from rosbags.typesys import Stores, get_typestore

BagFormat = Literal["ros1", "db3", "mcap"]
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"

ROS2_STORE = get_typestore(Stores.ROS2_JAZZY)
ROS1_STORE = get_typestore(Stores.ROS1_NOETIC)
ROS2_TYPES = ROS2_STORE.types


def header(stamp_ns: int, frame_id: str = "camera") -> Any:
    """A ``std_msgs/Header`` with the stamp given in nanoseconds."""
    time = ROS2_TYPES["builtin_interfaces/msg/Time"](
        sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000
    )
    return ROS2_TYPES["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)


def image_msg(
    pixels: np.ndarray | bytes,
    encoding: str,
    stamp_ns: int,
    *,
    width: int | None = None,
    height: int | None = None,
    step: int | None = None,
    is_bigendian: bool = False,
    frame_id: str = "camera",
) -> Any:
    """A ``sensor_msgs/Image``.

    ``pixels`` as an array gives height/width (and, by default, a compact step) from its
    shape and is serialised in the requested byte order; raw ``bytes`` are used verbatim
    (then width, height and step are required), which lets tests build padded or broken data.
    """
    if isinstance(pixels, np.ndarray):
        height = pixels.shape[0] if height is None else height
        width = pixels.shape[1] if width is None else width
        ordered = pixels.astype(pixels.dtype.newbyteorder(">" if is_bigendian else "<"))
        data = np.ascontiguousarray(ordered).tobytes()
        step = len(data) // max(height, 1) if step is None else step
    else:
        data = pixels
        if width is None or height is None or step is None:
            raise ValueError("raw bytes need explicit width, height and step")
    return ROS2_TYPES[IMAGE](
        header=header(stamp_ns, frame_id),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(is_bigendian),
        step=step,
        data=np.frombuffer(data, dtype=np.uint8).copy(),
    )


def compressed_msg(data: bytes, fmt: str, stamp_ns: int, *, frame_id: str = "camera") -> Any:
    """A ``sensor_msgs/CompressedImage`` carrying ``data`` verbatim."""
    return ROS2_TYPES[COMPRESSED](
        header=header(stamp_ns, frame_id),
        format=fmt,
        data=np.frombuffer(data, dtype=np.uint8).copy(),
    )


def _to_ros1(value: Any, msgtype: str | None = None) -> Any:
    """Rebuild a ROS 2 message as the ROS 1 (Noetic) class of the same type, recursively."""
    if not dataclasses.is_dataclass(value):
        return value
    cls = ROS1_STORE.types[msgtype or type(value).__msgtype__]
    fields = {}
    for field in dataclasses.fields(cls):
        if hasattr(value, field.name):
            fields[field.name] = _to_ros1(getattr(value, field.name))
        else:  # ROS 1 only fields, e.g. Header.seq
            fields[field.name] = 0
    return cls(**fields)


def write_bag(
    path: str | Path,
    fmt: BagFormat,
    messages: Iterable[tuple[str, str, int, Any]],
    *,
    ros1_compression: Literal["bz2", "lz4"] | None = None,
    ros1_chunk_size: int | None = None,
) -> Path:
    """Write ``messages`` (topic, msgtype, bag time ns, message) to a new bag; return its path.

    ``fmt``: ``"ros1"`` writes the file ``path`` (``.bag``; chunks compressed with
    ``ros1_compression``, closed after ``ros1_chunk_size`` bytes); ``"db3"``/``"mcap"`` write a
    rosbag2 folder ``path`` (with metadata.yaml). Use :func:`single_file_bag` for a bare
    ``.db3``/``.mcap`` file. Topics keep their names exactly (with or without leading slash).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    messages = list(messages)
    if fmt == "ros1":
        writer = Ros1Writer(path)
        if ros1_compression is not None:
            writer.set_compression(Ros1Writer.CompressionFormat[ros1_compression.upper()])
        if ros1_chunk_size is not None:
            writer.chunk_threshold = ros1_chunk_size
        with writer:
            conns: dict[tuple[str, str], Any] = {}
            for topic, msgtype, stamp, msg in messages:
                key = (topic, msgtype)
                if key not in conns:
                    conns[key] = writer.add_connection(topic, msgtype, typestore=ROS1_STORE)
                raw = ROS1_STORE.serialize_ros1(_to_ros1(msg, msgtype), msgtype)
                writer.write(conns[key], stamp, raw)
        return path
    plugin = {"db3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[fmt]
    with Ros2Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {}
        for topic, msgtype, stamp, msg in messages:
            key = (topic, msgtype)
            if key not in conns:
                conns[key] = writer.add_connection(topic, msgtype, typestore=ROS2_STORE)
            writer.write(conns[key], stamp, ROS2_STORE.serialize_cdr(msg, msgtype))
    return path


def write_recorder_mcap(
    path: str | Path,
    messages: Iterable[tuple[str, str, int, Any]],
    *,
    compression: Literal["zstd", "lz4", ""] = "zstd",
    chunk_size: int = 4096,
    chunked: bool = True,
) -> Path:
    """Write a bare ``.mcap`` the way ``ros2 bag record`` does (the ``mcap`` library's writer:
    ``ros2msg`` schemas, chunk CRCs, zstd chunks by default); ``chunk_size`` bytes per chunk.
    ``chunked=False`` writes every record at the top level (the ``fastwrite`` storage preset)."""
    from mcap.writer import CompressionType
    from mcap.writer import Writer as McapWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kinds = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "": CompressionType.NONE}
    with path.open("wb") as stream:
        writer = McapWriter(
            stream, chunk_size=chunk_size, compression=kinds[compression], use_chunking=chunked
        )
        writer.start(profile="ros2", library="bagfactory")
        schemas: dict[str, int] = {}
        channels: dict[tuple[str, str], int] = {}
        for sequence, (topic, msgtype, stamp, msg) in enumerate(messages):
            if msgtype not in schemas:
                text = ROS2_STORE.generate_msgdef(msgtype, ros_version=2)[0]
                schemas[msgtype] = writer.register_schema(
                    name=msgtype, encoding="ros2msg", data=text.encode()
                )
            if (topic, msgtype) not in channels:
                channels[(topic, msgtype)] = writer.register_channel(
                    topic=topic, message_encoding="cdr", schema_id=schemas[msgtype]
                )
            writer.add_message(
                channel_id=channels[(topic, msgtype)],
                log_time=stamp,
                publish_time=stamp,
                sequence=sequence,
                data=bytes(ROS2_STORE.serialize_cdr(msg, msgtype)),
            )
        writer.finish()
    return path


def single_file_bag(folder_bag: Path, dest: Path) -> Path:
    """Copy the storage file of a rosbag2 folder to ``dest`` (a bare ``.db3``/``.mcap`` bag)."""
    (storage,) = [p for p in folder_bag.iterdir() if p.suffix in (".db3", ".mcap")]
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(storage, dest)
    return dest
