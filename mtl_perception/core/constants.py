# SPDX-License-Identifier: Apache-2.0
"""Facts many layers share: the mask ignore value, the smallest input side, HxW size strings.

Sizes are always height first (``HxW``, ``(H, W)``), like numpy arrays and torch tensors.
"""

from __future__ import annotations

import re

IGNORE_INDEX = 255
"""Mask value meaning "no label here": skipped by the loss and by every metric."""

MIN_INPUT_SIDE = 32
"""Smallest network input height/width: below it the stride-32 feature map is empty."""

MANIFEST_NAME = "manifest.csv"
"""Per-topic frame list written by ``mtl-data unpack`` and ``prune`` (docs/CONTRACTS.md 1-2)."""

MANIFEST_COLUMNS = (
    "index",
    "stamp_ns",
    "bag_time_ns",
    "frame_id",
    "encoding",
    "width",
    "height",
    "bag",
    "file",
)
"""Columns, in order, of the manifest ``mtl-data unpack`` writes (docs/CONTRACTS.md 1)."""

SYNTH_CAMERA_TOPIC = "/camera/image_raw"
"""Colour topic of ``mtl-data synth``'s bag (``/compressed`` appended for jpeg/png)."""

SYNTH_DEPTH_TOPIC = "/camera/aligned_depth_to_color/image_raw"
"""Aligned 16UC1 depth topic of ``mtl-data synth``'s bag."""

DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
"""Device names the train config, the node's ``device`` parameter and the commands accept
(lower case); whether CUDA is there is checked only when the device is used."""
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"


def parse_hw(text: str, what: str = "size", min_side: int = 1) -> tuple[int, int]:
    """Parse ``"480x640"`` (height x width) into ``(480, 640)``.

    Args:
        text: The size string, ``HEIGHTxWIDTH``; case and spaces around the numbers are ignored.
        what: How the value is named in the error message (e.g. ``"--size"``); empty = only
            the value is quoted.
        min_side: Smallest accepted height and width.

    Returns:
        ``(height, width)``.

    Raises:
        ValueError: The text is not two positive integers joined by ``x``, or a side is below
            ``min_side``; the message names ``what`` and the value.
    """
    where = f"{what} {text!r}" if what else repr(text)
    parts = str(text).strip().lower().split("x")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise ValueError(f"{where}: expected HEIGHTxWIDTH such as 480x640")
    height, width = (int(part) for part in parts)
    if min(height, width) < min_side:
        raise ValueError(f"{where}: height and width must both be >= {min_side}")
    return height, width


def format_hw(size: tuple[int, int] | list[int]) -> str:
    """``(480, 640)`` -> ``"480x640"`` (height x width), the inverse of :func:`parse_hw`."""
    height, width = size
    return f"{int(height)}x{int(width)}"
