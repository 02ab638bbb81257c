# SPDX-License-Identifier: Apache-2.0
"""File and folder names made from data: topic names, bag names, entries of manifests.

A ROS 1 bag can hold any string as a topic name (``/..``, ``.``, empty, 10 kB long,
non-ASCII, control characters), a crafted ROS 2 bag too, and bag file names and manifest rows
are just as arbitrary. :func:`safe_component` turns such a name into exactly one path
component that cannot leave its parent folder; :func:`inside` resolves a relative entry of a
manifest and refuses one that would leave its folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

MAX_COMPONENT_BYTES = 200
"""File systems allow 255 bytes per name; room is left for suffixes such as ``.png``."""
_KEEP_BYTES = MAX_COMPONENT_BYTES - 17  # the rest: "~" and 16 hex digits of a hash
_UNSAFE = set('/\\%:*?"<>|')  # separators, the escape character, and what Windows refuses
EMPTY_NAME = "%"
"""The component of an empty name (no encoded name is a lone ``%``)."""


def _encode(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def safe_component(name: str, slash: str = "__") -> str:
    r"""One path component for ``name``, readable and collision-free for ordinary names.

    * ``/`` becomes ``slash`` (``/camera/image_raw`` -> ``camera__image_raw``; pass ``"%2F"``
      where names must stay distinguishable from ones containing ``__``);
    * ``\\ % : * ? " < > |`` and non-printable characters are percent-encoded (UTF-8 bytes);
      other non-ASCII characters are kept (``/kamera/straße`` -> ``kamera__straße``);
    * a leading ``.`` is encoded (``..`` -> ``%2E.``, ``.x`` -> ``%2Ex``): never ``.`` or
      ``..``, and no hidden folders (other steps skip those);
    * the empty name becomes :data:`EMPTY_NAME`;
    * a result longer than :data:`MAX_COMPONENT_BYTES` (UTF-8) keeps its beginning plus ``~``
      and 16 hex digits of the SHA-256 of ``name``.
    """
    parts = []
    for char in name:
        if char == "/":
            parts.append(slash)
        elif char in _UNSAFE or not char.isprintable():
            parts.append(_encode(char))
        else:
            parts.append(char)
    text = "".join(parts)
    if not text:
        return EMPTY_NAME
    if text.startswith("."):
        text = "%2E" + text[1:]
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= MAX_COMPONENT_BYTES:
        return text
    head = data[:_KEEP_BYTES].decode("utf-8", "ignore")
    if "%" in head[-2:]:  # do not end inside an escape
        head = head[: head.rindex("%")]
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{head}~{digest}"


def inside(folder: Path, entry: str) -> Path:
    r"""The file named by a relative ``entry`` (``/`` or ``\\`` separated) inside ``folder``.

    Raises:
        ValueError: ``entry`` is empty, absolute, or has a ``..`` part.
    """
    relative = PurePosixPath(entry.replace("\\", "/"))
    if not entry or relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ValueError(f"{entry!r} is not a path inside {folder}")
    return folder.joinpath(*relative.parts)
