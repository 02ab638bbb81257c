# SPDX-License-Identifier: Apache-2.0
"""The frames a replay publishes: one image topic of one bag (ROS 1 or 2, any storage).

Bag access goes through ``mtl_perception.core.bags`` (rosbags ``AnyReader``; a damaged bag is
salvaged, see ``mtl_perception.core.salvage``). Frames come out as the
rosbags message plus its header stamp and bag time, and are turned into rclpy messages only
in ``mtl_perception.ros.replay`` (so this module stays free of rclpy).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosbags.interfaces import Connection

from mtl_perception.core.bags import COMPRESSED_TYPE, image_connections, is_bag, open_bag
from mtl_perception.core.errors import UserError
from mtl_perception.core.images import decode_compressed, decode_image, to_rgb8
from mtl_perception.core.salvage import RecoveringReader
from mtl_perception.core.stamps import stamp_to_ns
from mtl_perception.replay.depth_scoring import DepthReference

__all__ = ["BagFrame", "ImageBag", "open_depth_reference", "open_image_bag"]


@dataclass(frozen=True)
class BagFrame:
    """One image message of the replayed topic."""

    index: int  # position within the topic
    stamp_ns: int  # header stamp (the key the node's answers carry)
    bag_time_ns: int  # when it was recorded (drives the replay rate)
    msg: Any  # rosbags message (sensor_msgs Image or CompressedImage fields)
    compressed: bool

    def rgb(self) -> Any:
        """The frame as RGB uint8 (for example overlays); raises ``ValueError`` if undecodable."""
        return to_rgb8(decode_compressed(self.msg) if self.compressed else decode_image(self.msg))


@dataclass
class ImageBag:
    """An open bag restricted to one image connection."""

    path: Path
    reader: RecoveringReader
    connection: Connection

    @property
    def topic(self) -> str:
        """The image topic's name."""
        return self.connection.topic

    @property
    def compressed(self) -> bool:
        """Whether the topic carries ``CompressedImage`` messages."""
        return self.connection.msgtype == COMPRESSED_TYPE

    @property
    def msgtype(self) -> str:
        """The topic's message type (``sensor_msgs/msg/Image`` or ``.../CompressedImage``)."""
        return self.connection.msgtype

    def __len__(self) -> int:
        return int(self.connection.msgcount)

    @property
    def salvaged(self) -> str:
        """What salvage recovered from a damaged bag, for a warning (empty for an intact bag)."""
        return self.reader.describe()

    def frames(self) -> Iterator[BagFrame | ValueError]:
        """Frames in bag order; a message that cannot be deserialised yields its error instead."""
        for index, (conn, bag_time, raw) in enumerate(
            self.reader.messages(connections=[self.connection])
        ):
            try:
                msg = self.reader.deserialize(raw, conn.msgtype)
            except Exception as err:  # rosbags raises several types for truncated/foreign data
                yield ValueError(
                    f"message {index} of {self.topic}: cannot be deserialised ({err})"
                )
                continue
            yield BagFrame(
                index, stamp_to_ns(msg.header.stamp), int(bag_time), msg, self.compressed
            )


def _choose_connection(path: Path, reader: RecoveringReader, topic: str | None) -> Connection:
    images = image_connections(reader)
    listing = (
        ", ".join(sorted({f"{c.topic} ({c.msgtype.rsplit('/', 1)[-1]})" for c in images}))
        or "none"
    )
    if topic is not None:
        matches = image_connections(reader, [topic])
        if not matches:
            raise UserError(
                f"{path}: no image topic {topic!r}; image topics in the bag: {listing}"
            )
    else:
        matches = images
        if not matches:
            raise UserError(f"{path}: the bag has no sensor_msgs/Image or CompressedImage topic")
        if len({c.topic for c in matches}) > 1:
            raise UserError(f"{path}: several image topics, choose one with --topic: {listing}")
    if len({c.msgtype for c in matches}) > 1:
        raise UserError(
            f"{path}: topic {matches[0].topic} has several message types; cannot replay it"
        )
    # One topic can have several connections (e.g. split recordings); replay the busiest.
    return max(matches, key=lambda c: c.msgcount)


def _open_reader(path: Path, stack: ExitStack) -> RecoveringReader:
    """Open ``path`` on ``stack``; ``UserError`` for a missing, foreign or corrupt bag."""
    if not path.exists():
        raise UserError(f"{path}: bag not found")
    if not is_bag(path):
        raise UserError(
            f"{path}: not a bag (expected .bag, .bag.active, .db3, .mcap or a rosbag2 folder)"
        )
    try:
        return stack.enter_context(open_bag(path))
    except Exception as err:  # rosbags' reader errors: corrupt or foreign files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: cannot read the bag ({first})") from None


@contextmanager
def open_depth_reference(path: str | Path, topic: str) -> Iterator[DepthReference]:
    """The bag's depth topic (``16UC1``/``32FC1`` Image or compressedDepth) by header stamp.

    The bag is opened with a reader of its own (the replay's frame reader runs on another
    thread). Stamps are read in one pass; frames are read back and decoded one at a time by
    bag time, so a long bag's depth is never held in memory.

    Raises:
        UserError: Missing/unreadable bag or no image topic ``topic`` in it.
    """
    path = Path(path)
    with ExitStack() as stack:
        reader = _open_reader(path, stack)
        connections = image_connections(reader, [topic])
        if not connections:
            listing = ", ".join(sorted({c.topic for c in image_connections(reader)})) or "none"
            raise UserError(
                f"--depth-topic {topic}: not an image topic of {path} (image topics: {listing})"
            )
        stamps: list[int] = []
        bag_times: list[int] = []
        skipped = 0
        for conn, bag_time, raw in reader.messages(connections=connections):
            try:
                stamps.append(stamp_to_ns(reader.deserialize(raw, conn.msgtype).header.stamp))
            except Exception:  # rosbags raises several types for truncated/foreign data
                skipped += 1  # such a frame has no depth reference; counted in the report
                continue
            bag_times.append(int(bag_time))

        def load(position: int) -> Any:
            stamp, bag_time = stamps[position], bag_times[position]
            for conn, _, raw in reader.messages(
                connections=connections, start=bag_time, stop=bag_time + 1
            ):
                msg = reader.deserialize(raw, conn.msgtype)
                if stamp_to_ns(msg.header.stamp) == stamp:
                    return (
                        decode_compressed(msg)
                        if conn.msgtype == COMPRESSED_TYPE
                        else decode_image(msg)
                    )
            raise ValueError(f"{topic}: depth frame with stamp {stamp} not found again in the bag")

        yield DepthReference(connections[0].topic, stamps, load, skipped=skipped)


@contextmanager
def open_image_bag(path: str | Path, topic: str | None = None) -> Iterator[ImageBag]:
    """Open ``path`` and pick the image topic (``topic``, or the only one in the bag)."""
    path = Path(path)
    stack = ExitStack()
    try:
        reader = _open_reader(path, stack)
        connection = _choose_connection(path, reader, topic)
    except UserError:
        stack.close()
        raise
    with stack:  # errors of the caller's code inside the with-block pass through unchanged
        yield ImageBag(path, reader, connection)
