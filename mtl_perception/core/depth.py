# SPDX-License-Identifier: Apache-2.0
"""Depth images: which encodings are depth, unit conversion, invalid pixels, stamp pairing.

The one place that knows the depth conventions of docs/CONTRACTS.md §11: metres in memory,
millimetres (uint16 PNG) on disk, 0 = invalid. Used by ``mtl-data build`` (pairing colour
with aligned depth and writing targets), by the training/evaluation loaders (reading the
targets) and by ``mtl-replay`` (scoring the node's depth against the bag's depth topic).
No torch, no rclpy.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from mtl_perception.core.errors import UserError

__all__ = [
    "DEFAULT_DEPTH_TOLERANCE_MS",
    "DEFAULT_DEPTH_UNIT_M",
    "DEPTH_ENCODINGS",
    "MAX_DEPTH_PNG_M",
    "depth_to_metres",
    "is_depth_encoding",
    "metres_to_depth_png",
    "nearest_stamp",
    "read_depth_file",
    "read_depth_png_m",
    "read_depth_target",
]

#: ``sensor_msgs/Image`` encodings that carry depth (REP 118): integer units or float metres.
DEPTH_ENCODINGS = frozenset({"16UC1", "32FC1"})
#: Metres per unit of integer depth images (REP 118: millimetres; an L515 uses 0.25 mm).
DEFAULT_DEPTH_UNIT_M = 0.001
#: Largest stamp gap between a colour frame and "its" depth frame: under a frame period at 30 Hz
#: (33 ms), so a dropped depth frame is reported instead of being replaced by its neighbour.
DEFAULT_DEPTH_TOLERANCE_MS = 20.0
#: Farthest depth a millimetre uint16 PNG can hold.
MAX_DEPTH_PNG_M = np.iinfo(np.uint16).max / 1000.0


def is_depth_encoding(encoding: str) -> bool:
    """True for a depth ``encoding`` (``16UC1``, ``32FC1``) or a ``compressedDepth`` format string.

    ``mono16`` is left out on purpose: it is a 16-bit intensity image (IR, thermal), not depth.
    """
    text = str(encoding).strip()
    return text.upper() in DEPTH_ENCODINGS or "compresseddepth" in text.lower()


def depth_to_metres(
    depth: np.ndarray, unit_m: float = DEFAULT_DEPTH_UNIT_M, max_depth: float | None = None
) -> np.ndarray:
    """A decoded depth image as float32 metres with 0 marking every invalid pixel.

    Args:
        depth: ``[H, W]`` integer depth in units of ``unit_m`` (``16UC1``: millimetres) or float
            depth already in metres (``32FC1``).
        unit_m: Metres per unit of integer depth; ignored for float depth.
        max_depth: Pixels farther than this (metres) become invalid; ``None`` keeps all.

    Returns:
        float32 ``[H, W]``; 0 where the sensor gave 0, NaN, +-inf, a negative value, or a
        value beyond ``max_depth``.

    Raises:
        ValueError: ``depth`` is not a single-channel integer or float image.
    """
    if depth.ndim != 2:
        raise ValueError(f"depth image must be single-channel [H, W], got shape {depth.shape}")
    if np.issubdtype(depth.dtype, np.integer):
        metres = depth.astype(np.float64) * unit_m
    elif np.issubdtype(depth.dtype, np.floating):
        metres = depth.astype(np.float64)
    else:
        raise ValueError(f"depth image must be integer or float, got {depth.dtype}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(metres) & (metres > 0)
        if max_depth is not None:
            valid &= metres <= max_depth
    return np.where(valid, metres, 0.0).astype(np.float32)


def metres_to_depth_png(depth_m: np.ndarray) -> np.ndarray:
    """Float metres (0/non-finite = invalid) -> uint16 millimetres for ``depth/<stem>.png``.

    Values that round to 0 mm or do not fit 16 bits (> 65.535 m) become 0 (invalid): a clipped
    value would be a wrong label, a hole is only a missing one.
    """
    with np.errstate(invalid="ignore"):
        mm = np.rint(np.asarray(depth_m, dtype=np.float64) * 1000.0)
        valid = np.isfinite(mm) & (mm > 0) & (mm <= np.iinfo(np.uint16).max)
    return np.where(valid, mm, 0).astype(np.uint16)


def read_depth_png_m(path: str | Path) -> np.ndarray:
    """A dataset depth target (``depth/<stem>.png``, uint16 mm) as float32 metres, 0 = invalid.

    Raises:
        ValueError: The file is missing, unreadable or not a single-channel 16-bit PNG.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path}: cannot read the depth image")
    if image.dtype != np.uint16 or image.ndim != 2:
        raise ValueError(
            f"{path}: depth targets are single-channel uint16 millimetres, got "
            f"{image.dtype} with shape {image.shape}"
        )
    return image.astype(np.float32) / np.float32(1000.0)


def read_depth_file(
    path: str | Path, unit_m: float = DEFAULT_DEPTH_UNIT_M, max_depth: float | None = None
) -> np.ndarray:
    """An unpacked depth frame (docs/CONTRACTS.md §1) as float32 metres, 0 = invalid.

    ``.npy`` holds float32 metres (``32FC1``); an image file (16-bit PNG/TIFF) holds integer
    units of ``unit_m`` (``16UC1``: millimetres; ``--depth-float scaled``: millimetres).

    Raises:
        ValueError: Unreadable file or not a single-channel depth image.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read the depth array ({err})") from None
    else:
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise ValueError(f"{path}: cannot read the depth image")
        if array.dtype == np.uint8:
            raise ValueError(
                f"{path}: 8-bit image, not depth (expected 16-bit units or float metres)"
            )
    try:
        return depth_to_metres(array, unit_m, max_depth)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def nearest_stamp(sorted_stamps: Sequence[int], stamp: int, tolerance_ns: int) -> int | None:
    """Index of the stamp nearest to ``stamp`` within ``tolerance_ns``, or ``None``.

    ``sorted_stamps`` must be ascending. On a tie the earlier stamp wins (deterministic).
    """
    pos = bisect.bisect_left(sorted_stamps, stamp)
    best: int | None = None
    for i in (pos - 1, pos):
        if 0 <= i < len(sorted_stamps):
            gap = abs(sorted_stamps[i] - stamp)
            if gap <= tolerance_ns and (best is None or gap < abs(sorted_stamps[best] - stamp)):
                best = i
    return best


def read_depth_target(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A dataset's depth map (``depth/<stem>.png``) as float32 metres ``[H, W]``, 0 = invalid.

    Raises:
        UserError: the file is unreadable, not single-channel uint16, or not of ``shape`` (HxW).
    """
    try:
        depth = read_depth_png_m(path)
    except ValueError as err:
        raise UserError(str(err)) from None
    if depth.shape != shape:
        raise UserError(
            f"{path}: depth map of {list(depth.shape)} for an image of {list(shape)} (HxW)"
        )
    return depth
