# SPDX-License-Identifier: Apache-2.0
"""Finding and opening robot bags: ROS 1 ``.bag``, ROS 2 folders, bare ``.db3``/``.mcap`` files.

Everything goes through rosbags' ``AnyReader``; a bag it cannot read (cut short, damaged, a
``.bag.active`` left by a killed recorder) is salvaged (``mtl_perception.core.salvage``). ROS 1
bags carry their message definitions; ROS 2 bags may not, so the Jazzy typestore is the default.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rosbags.interfaces import Connection
from rosbags.typesys import Stores, get_typestore

from mtl_perception.core.errors import UserError
from mtl_perception.core.names import safe_component
from mtl_perception.core.salvage import RecoveringReader

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = frozenset({IMAGE_TYPE, COMPRESSED_TYPE})
BAG_FILE_SUFFIXES = (".bag", ".db3", ".mcap")
ACTIVE_ROS1_SUFFIX = ".bag.active"  # a ROS 1 bag whose recorder never closed it (no index)
ROS2_METADATA = "metadata.yaml"


def topic_dirname(topic: str) -> str:
    """Folder name of a topic: no leading ``/``, ``/`` -> ``__`` (``/cam/raw`` -> ``cam__raw``).

    Topic names are data (a ROS 1 bag may hold ``/..``, an empty or a 10 kB name): the result is
    always one safe folder name inside the bag's folder (``mtl_perception.core.names``).
    """
    return safe_component(topic.lstrip("/"))


def same_topic(a: str, b: str) -> bool:
    """True when two topic names differ at most by the leading slash."""
    return a.lstrip("/") == b.lstrip("/")


def bag_name(path: Path) -> str:
    """Name of a bag: the file name without extension, or the rosbag2 folder name (made safe)."""
    if path.is_dir():
        name = path.name
    else:
        name = (
            path.name.removesuffix(ACTIVE_ROS1_SUFFIX)
            if path.name.endswith(ACTIVE_ROS1_SUFFIX)
            else path.stem
        )
    return safe_component(name)


def output_names(bags: Sequence[Path]) -> dict[Path, str]:
    """Output folder name of each bag of one run (docs/CONTRACTS.md §1).

    A bag's own name (:func:`bag_name`); bags that share a name get as many of their parent
    folders in front as make them unique (``a/data.bag``, ``b/data.bag`` -> ``a__data``,
    ``b__data``), and as a last resort ``-1``, ``-2`` in path order.
    """
    names = {bag: bag_name(bag) for bag in bags}
    depth = dict.fromkeys(bags, 0)
    while True:
        counts = Counter(names.values())
        clashing = sorted(bag for bag in bags if counts[names[bag]] > 1)
        if not clashing:
            return names
        grown = False
        for bag in clashing:
            parents = [p for p in bag.parents if p.name]
            if depth[bag] < len(parents):
                depth[bag] += 1
                prefix = [safe_component(p.name) for p in reversed(parents[: depth[bag]])]
                names[bag] = "__".join([*prefix, bag_name(bag)])
                grown = True
        if not grown:
            for number, bag in enumerate(clashing, 1):
                names[bag] = f"{names[bag]}-{number}"


def is_bag(path: Path) -> bool:
    """True for a bag file (by suffix) or a rosbag2 folder (with ``metadata.yaml``)."""
    if path.is_dir():
        return (path / ROS2_METADATA).is_file()
    # case as rosbags expects it
    return path.is_file() and (
        path.suffix in BAG_FILE_SUFFIXES or path.name.endswith(ACTIVE_ROS1_SUFFIX)
    )


def _walk_bags(folder: Path) -> Iterator[Path]:
    """Bags below ``folder``; rosbag2 folders are not entered (their storage files are theirs)."""
    for child in sorted(folder.iterdir()):
        if is_bag(child):
            yield child
        elif child.is_dir():
            yield from _walk_bags(child)


def find_bags(inputs: Iterable[str | Path]) -> list[Path]:
    """Resolve the user's inputs (bag files, rosbag2 folders, folders of bags) to a list of bags.

    Raises ``UserError`` for a path that does not exist, a file that is not a bag or a folder
    without bags.
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
                raise UserError(
                    f"{path}: no bags found "
                    f"(.bag, .db3, .mcap or rosbag2 folders with {ROS2_METADATA})"
                )
            bags.extend(found)
        else:
            raise UserError(
                f"{path}: not a bag (expected {', '.join(BAG_FILE_SUFFIXES)} or a rosbag2 folder)"
            )
    return list(dict.fromkeys(p.resolve() for p in bags))


@contextmanager
def open_bag(path: Path) -> Iterator[RecoveringReader]:
    """Open one bag (Jazzy types for ROS 2 bags without definitions), salvaging a damaged one.

    Raises:
        BagSalvageError: rosbags cannot read the bag and salvage finds no complete message.
    """
    with RecoveringReader(path, default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        yield reader


def image_connections(reader: RecoveringReader, topics: Sequence[str] = ()) -> list[Connection]:
    """The reader's image connections: all, or those on ``topics`` (leading ``/`` optional)."""
    return [
        conn
        for conn in reader.connections
        if conn.msgtype in IMAGE_TYPES
        and (not topics or any(same_topic(conn.topic, t) for t in topics))
    ]
