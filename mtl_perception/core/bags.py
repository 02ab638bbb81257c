"""Finding and opening robot bags: ROS 1 ``.bag``, ROS 2 folders, bare ``.db3``/``.mcap`` files.

Everything goes through rosbags' ``AnyReader``; a bag it cannot read (cut short, damaged, a
``.bag.active`` left by a killed recorder) is salvaged (``mtl_perception.core.salvage``). ROS 1
bags carry their message definitions; ROS 2 bags may not, so the Jazzy typestore is the default.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rosbags.interfaces import Connection
from rosbags.typesys import Stores, get_typestore

from mtl_perception.core.errors import UserError
from mtl_perception.core.salvage import RecoveringReader

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = frozenset({IMAGE_TYPE, COMPRESSED_TYPE})
BAG_FILE_SUFFIXES = (".bag", ".db3", ".mcap")
ACTIVE_ROS1_SUFFIX = ".bag.active"  # a ROS 1 bag whose recorder never closed it (no index)
ROS2_METADATA = "metadata.yaml"


def topic_dirname(topic: str) -> str:
    """Folder name of a topic: leading ``/`` removed, ``/`` -> ``__`` (``/cam/raw`` -> ``cam__raw``)."""
    return topic.lstrip("/").replace("/", "__")


def same_topic(a: str, b: str) -> bool:
    """True when two topic names differ at most by the leading slash."""
    return a.lstrip("/") == b.lstrip("/")


def bag_name(path: Path) -> str:
    """Output name of a bag: the file name without extension, or the rosbag2 folder name."""
    if path.is_dir():
        return path.name
    return path.name.removesuffix(ACTIVE_ROS1_SUFFIX) if path.name.endswith(ACTIVE_ROS1_SUFFIX) else path.stem


def is_bag(path: Path) -> bool:
    """True for a bag file (by suffix) or a rosbag2 folder (with ``metadata.yaml``)."""
    if path.is_dir():
        return (path / ROS2_METADATA).is_file()
    # case as rosbags expects it
    return path.is_file() and (path.suffix in BAG_FILE_SUFFIXES or path.name.endswith(ACTIVE_ROS1_SUFFIX))


def _walk_bags(folder: Path) -> Iterator[Path]:
    """Bags below ``folder``, not descending into rosbag2 folders (their storage files belong to them)."""
    for child in sorted(folder.iterdir()):
        if is_bag(child):
            yield child
        elif child.is_dir():
            yield from _walk_bags(child)


def find_bags(inputs: Iterable[str | Path]) -> list[Path]:
    """Resolve the user's inputs (bag files, rosbag2 folders, folders of bags) to a list of bags.

    Raises ``UserError`` for a path that does not exist, a file that is not a bag, a folder
    without bags, or two bags that would unpack to the same output name.
    """
    bags: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.name == ROS2_METADATA and path.is_file():
            path = path.parent
        if not path.exists():
            raise UserError(f"{path}: no such file or folder")
        if is_bag(path):
            bags.append(path)
        elif path.is_dir():
            found = list(_walk_bags(path))
            if not found:
                raise UserError(f"{path}: no bags found (.bag, .db3, .mcap or rosbag2 folders with {ROS2_METADATA})")
            bags.extend(found)
        else:
            raise UserError(f"{path}: not a bag (expected {', '.join(BAG_FILE_SUFFIXES)} or a rosbag2 folder)")
    unique = list(dict.fromkeys(p.resolve() for p in bags))
    by_name: dict[str, Path] = {}
    for bag in unique:
        if (other := by_name.setdefault(bag_name(bag), bag)) != bag:
            raise UserError(f"{other} and {bag}: both would unpack to the same folder {bag_name(bag)!r}")
    return unique


@contextmanager
def open_bag(path: Path) -> Iterator[RecoveringReader]:
    """Open one bag (Jazzy types for ROS 2 bags without definitions), salvaging a damaged one.

    Raises:
        BagSalvageError: rosbags cannot read the bag and salvage finds no complete message.
    """
    with RecoveringReader(path, default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        yield reader


def image_connections(reader: RecoveringReader, topics: Sequence[str] = ()) -> list[Connection]:
    """The reader's image connections: all of them, or those on ``topics`` (leading ``/`` optional)."""
    return [
        conn for conn in reader.connections
        if conn.msgtype in IMAGE_TYPES and (not topics or any(same_topic(conn.topic, t) for t in topics))
    ]
