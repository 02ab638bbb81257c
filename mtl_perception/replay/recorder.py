# SPDX-License-Identifier: Apache-2.0
"""Recording the node's outputs into a rosbag2 ``.mcap`` that Foxglove, rviz and rosbags read.

Messages arrive already serialised (CDR bytes from ``rclpy.serialization.serialize_message``)
and are written verbatim. Each connection carries its message definition, which rosbags
builds from a typestore: the Jazzy store plus ``vision_msgs``, registered from the package's
own ``.msg`` files (the installed ones next to the ``vision_msgs`` Python package, or this
repository's copy in ``ros_interfaces/``), so the bag is self-describing.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from functools import cache
from pathlib import Path
from types import TracebackType

from rosbags.interfaces import Connection
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

__all__ = ["OutputRecorder", "replay_typestore", "vision_msgs_msg_dir"]

_REPO_MSG_DIR = Path(__file__).resolve().parents[2] / "ros_interfaces" / "vision_msgs" / "msg"


def vision_msgs_msg_dir() -> Path:
    """Folder with the vision_msgs ``.msg`` files: the installed package's, else the repo copy.

    An installed interface package keeps them in ``<prefix>/share/vision_msgs/msg`` and its
    Python module in ``<prefix>/lib/pythonX.Y/site-packages/vision_msgs`` (venv and /opt/ros
    alike).
    """
    spec = importlib.util.find_spec("vision_msgs")
    if spec is not None and spec.origin:
        prefix = Path(spec.origin).resolve().parents[4]
        installed = prefix / "share" / "vision_msgs" / "msg"
        if any(installed.glob("*.msg")):
            return installed
    return _REPO_MSG_DIR


@cache
def replay_typestore() -> Typestore:
    """The ROS 2 Jazzy typestore with every vision_msgs message registered."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for msg_file in sorted(vision_msgs_msg_dir().glob("*.msg")):
        types.update(
            get_types_from_msg(
                msg_file.read_text(encoding="utf-8"), f"vision_msgs/msg/{msg_file.stem}"
            )
        )
    store.register(types)
    return store


class OutputRecorder:
    """Writes raw CDR messages to ``<folder>`` (a rosbag2 folder holding ``<name>.mcap``).

    The bag is built in a temporary folder next to the destination and moved into place by
    ``close`` (an interrupted replay leaves no half bag; a re-run replaces the old one).
    Use as a context manager; on an exception the partial bag is discarded.
    """

    def __init__(self, folder: Path, typestore: Typestore | None = None) -> None:
        self.folder = Path(folder)
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self._typestore = typestore or replay_typestore()
        self._tmp_root = Path(
            tempfile.mkdtemp(prefix=f".{self.folder.name}-", dir=self.folder.parent)
        )
        # The writer names the .mcap file after this folder.
        self._tmp_bag = self._tmp_root / self.folder.name
        self._writer = Writer(self._tmp_bag, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections: dict[tuple[str, str], Connection] = {}
        self.messages = 0

    def write(self, topic: str, msgtype: str, cdr: bytes, time_ns: int) -> None:
        """Append one serialised message received at ``time_ns``."""
        key = (topic, msgtype)
        if key not in self._connections:
            self._connections[key] = self._writer.add_connection(
                topic, msgtype, typestore=self._typestore
            )
        self._writer.write(self._connections[key], time_ns, cdr)
        self.messages += 1

    def close(self) -> Path:
        """Finish the bag and move it to ``folder``; returns ``folder``."""
        self._writer.close()
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self._tmp_bag.rename(self.folder)
        shutil.rmtree(self._tmp_root, ignore_errors=True)
        return self.folder

    def discard(self) -> None:
        """Drop the partial bag (after an error)."""
        try:
            self._writer.close()
        finally:
            shutil.rmtree(self._tmp_root, ignore_errors=True)

    def __enter__(self) -> OutputRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()
