# SPDX-License-Identifier: Apache-2.0
"""The one place that knows ROS image encodings: messages <-> numpy arrays.

Duck-typed on the ``sensor_msgs`` fields, so it works on rosbags messages (unpack, replay)
and on rclpy messages (the ROS node) alike.

Raw encodings whose pixels are stored as they are (rgb8, bgr8, mono8, 16UC1, 32FC1, ...; see
``_PLAIN_LAYOUTS``) are read by numpy alone, so the perception node needs no rosbags-image for
ordinary cameras. Bayer and YUV conversion is delegated to rosbags-image (which in turn uses
OpenCV's colour conversions, including cv_bridge's Bayer pattern mapping), imported only for
those encodings (it is a pip-only dependency, not in rosdep). rosbags-image
ignores ``step``, so padded rows come out sheared; :func:`decode_image` therefore first
copies the pixel rows out of the padded buffer (and validates the sizes) and hands the
library a compact message. Big-endian data is byte-swapped by the library itself.

Natural arrays returned by :func:`decode_image` / :func:`decode_compressed`:

========================================  ===================================
encoding                                  array
========================================  ===================================
rgb8, bgr8, 8UC3, yuv422/uyvy/yuyv,       ``[H, W, 3]`` uint8, RGB order
yuv422_yuy2, bayer_{rggb,bggr,gbrg,grbg}8
rgba8, bgra8, 8UC4                        ``[H, W, 4]`` uint8, RGBA order
mono8, 8UC1                               ``[H, W]`` uint8
mono16, 16UC1                             ``[H, W]`` uint16
rgb16, bgr16, bayer_*16                   ``[H, W, 3]`` uint16, RGB order
rgba16, bgra16                            ``[H, W, 4]`` uint16, RGBA order
32FC1                                     ``[H, W]`` float32
CompressedImage jpeg/png                  RGB(A) uint8 (or uint16 for 16-bit PNG), mono 2-D
compressedDepth (16UC1 / 32FC1 png)       ``[H, W]`` uint16 / float32 (inverse depth decoded)
========================================  ===================================

``8UC3``/``8UC4`` carry no channel order; they are passed through unchanged (as cv_bridge does).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mtl_perception.core.atomic_io import write_with


class UnsupportedEncoding(ValueError):
    """The message uses an encoding (or compression format) this package cannot decode."""


# Encodings we decode and can store losslessly. rosbags-image parses more (e.g. 64FC1, nv12),
# but those have no file format in our pipeline (or are mis-shaped by the library: nv12).
_NAMED_ENCODINGS = frozenset(
    {
        "rgb8",
        "bgr8",
        "rgba8",
        "bgra8",
        "mono8",
        "mono16",
        "rgb16",
        "bgr16",
        "rgba16",
        "bgra16",
        "yuv422",
        "uyvy",
        "yuyv",
        "yuv422_yuy2",
        *(
            f"bayer_{pattern}{bits}"
            for pattern in ("rggb", "bggr", "gbrg", "grbg")
            for bits in (8, 16)
        ),
    }
)
_GENERIC_ENCODINGS = frozenset({"8UC1", "8UC3", "8UC4", "16UC1", "16UC3", "16UC4", "32FC1"})

# Encodings whose natural array is the buffer as it is: (numpy type, channels, blue first).
# Hand-written (a plain reshape) so decoding them needs neither rosbags-image nor a conversion.
_PLAIN_LAYOUTS: dict[str, tuple[str, int, bool]] = {
    "rgb8": ("u1", 3, False),
    "bgr8": ("u1", 3, True),
    "rgba8": ("u1", 4, False),
    "bgra8": ("u1", 4, True),
    "mono8": ("u1", 1, False),
    "8UC1": ("u1", 1, False),
    "8UC3": ("u1", 3, False),
    "8UC4": ("u1", 4, False),
    "rgb16": ("u2", 3, False),
    "bgr16": ("u2", 3, True),
    "rgba16": ("u2", 4, False),
    "bgra16": ("u2", 4, True),
    "mono16": ("u2", 1, False),
    "16UC1": ("u2", 1, False),
    "16UC3": ("u2", 3, False),
    "16UC4": ("u2", 4, False),
    "32FC1": ("f4", 1, False),
}

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# compressed_depth_image_transport's ConfigHeader: int32 format + float32 depthParam[2].
_DEPTH_HEADER = struct.Struct("<iff")


def canonical_encoding(encoding: str) -> str:
    """Normalise an encoding string (``"RGB8 "`` -> ``rgb8``, ``"16uc1"`` -> ``16UC1``).

    Raises:
        UnsupportedEncoding: The encoding is not in the supported table above.
    """
    text = str(encoding).strip()
    if text.lower() in _NAMED_ENCODINGS:
        return text.lower()
    if text.upper() in _GENERIC_ENCODINGS:
        return text.upper()
    raise UnsupportedEncoding(f"unsupported image encoding {encoding!r}")


def _pixel_rows(msg: Any, row_bytes: int) -> np.ndarray:
    """``[height, row_bytes]`` uint8 view of the pixel bytes, row padding (``step``) cut off.

    Raises ``ValueError`` when ``step`` or the data length do not fit width/height.
    """
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f"empty image {width}x{height}")
    if step < row_bytes:
        raise ValueError(f"step {step} smaller than width*bytes_per_pixel {row_bytes}")
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if raw.size < step * height:
        raise ValueError(f"data has {raw.size} bytes, expected step*height = {step * height}")
    return raw[: step * height].reshape(height, step)[:, :row_bytes]


def _decode_plain(msg: Any, encoding: str) -> np.ndarray:
    """The buffer of a ``_PLAIN_LAYOUTS`` encoding as its natural array (native order, RGB)."""
    typestr, channels, blue_first = _PLAIN_LAYOUTS[encoding]
    dtype = np.dtype(typestr).newbyteorder(">" if msg.is_bigendian else "<")
    height, width = int(msg.height), int(msg.width)
    pixels = (
        _pixel_rows(msg, width * channels * dtype.itemsize)
        .view(dtype)
        .reshape(height, width, channels)
    )
    if blue_first:
        pixels = pixels[:, :, [2, 1, 0, 3][:channels]]
    if channels == 1:
        pixels = pixels[:, :, 0]
    return np.ascontiguousarray(pixels, dtype=dtype.newbyteorder("="))


def _decode_converted(msg: Any, encoding: str) -> np.ndarray:
    """Bayer and YUV encodings, converted to RGB by rosbags-image (imported only for these)."""
    try:
        from rosbags.image import ImageError, image_to_cvimage
        from rosbags.image.image import to_cvtype
        from rosbags.typesys.stores.latest import (
            builtin_interfaces__msg__Time,
            sensor_msgs__msg__Image,
            std_msgs__msg__Header,
        )
    except ImportError:
        raise UnsupportedEncoding(
            f"image encoding {encoding!r} needs rosbags-image (pip install rosbags-image)"
        ) from None
    depth, _, typestr, channels = to_cvtype(encoding)
    row_bytes = int(msg.width) * channels * np.dtype(typestr).itemsize
    rows = _pixel_rows(msg, row_bytes)
    # rosbags-image reads ``data`` as if ``step == width * bpp``: hand it the rows without padding.
    compact = sensor_msgs__msg__Image(
        header=std_msgs__msg__Header(
            stamp=builtin_interfaces__msg__Time(sec=0, nanosec=0), frame_id=""
        ),
        height=int(msg.height),
        width=int(msg.width),
        encoding=encoding,
        is_bigendian=int(bool(msg.is_bigendian)),
        step=row_bytes,
        data=np.ascontiguousarray(rows).reshape(-1),
    )
    try:
        array = image_to_cvimage(compact, "rgb16" if depth == 16 else "rgb8")
    except (ImageError, cv2.error) as err:
        raise ValueError(f"cannot convert {encoding}: {err}") from err
    # The library returns a byte-swapped view/copy; make it native, contiguous and writable.
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))


def decode_image(msg: Any) -> np.ndarray:
    """Convert a ``sensor_msgs/Image`` to its natural array (see the module table).

    Honours ``step`` (padded rows) and ``is_bigendian``.

    Raises:
        UnsupportedEncoding: An unknown encoding, or Bayer/YUV without rosbags-image.
        ValueError: ``step``, width, height and the data length do not match, or the
            Bayer/YUV conversion fails.
    """
    encoding = canonical_encoding(msg.encoding)
    if encoding in _PLAIN_LAYOUTS:
        return _decode_plain(msg, encoding)
    return _decode_converted(msg, encoding)


def compressed_kind(msg: Any) -> str:
    """Classify a ``CompressedImage``: ``"jpeg"``, ``"png"`` or ``"compressedDepth"``.

    The format field is free text ("jpeg", "bgr8; jpeg compressed bgr8", "16UC1;
    compressedDepth png"), so plain images are identified by their magic bytes; the format
    string decides only for compressedDepth (whose payload starts with a binary header).

    Raises:
        ValueError: The format says JPEG/PNG but the bytes are not.
        UnsupportedEncoding: Any other format (e.g. "h264").
    """
    fmt = str(msg.format).lower()
    if "compresseddepth" in fmt:
        return "compressedDepth"
    head = bytes(np.frombuffer(msg.data, dtype=np.uint8)[:8])
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if any(name in fmt for name in ("jpeg", "jpg", "png")):
        raise ValueError(
            f"corrupt {msg.format!r} data: it does not start with a JPEG or PNG signature"
        )
    raise UnsupportedEncoding(
        f"unsupported compressed format {msg.format!r} (data is neither JPEG nor PNG)"
    )


def _imdecode(data: np.ndarray, what: str) -> np.ndarray:
    """Decode JPEG/PNG bytes with OpenCV, keeping bit depth and channels; ValueError if corrupt."""
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"corrupt {what} data ({data.size} bytes)")
    return image


def decode_compressed(msg: Any) -> np.ndarray:
    """``CompressedImage`` -> array: jpeg/png -> RGB(A) or mono, compressedDepth -> depth.

    compressedDepth "16UC1" gives uint16; "32FC1" (inverse-depth quantised PNG) gives float32
    metres with NaN where no depth was measured. RVL-compressed depth is unsupported.

    Raises:
        UnsupportedEncoding: A format other than JPEG, PNG or PNG compressedDepth.
        ValueError: The data is corrupt or not what the format says.
    """
    data = np.frombuffer(msg.data, dtype=np.uint8)
    kind = compressed_kind(msg)
    if kind == "compressedDepth":
        return _decode_compressed_depth(str(msg.format), data)
    image = _imdecode(data, kind)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def _decode_compressed_depth(fmt: str, data: np.ndarray) -> np.ndarray:
    """Decode compressed_depth_image_transport's payload (12-byte header, then PNG)."""
    encoding = fmt.split(";", 1)[0].strip().upper()
    if "rvl" in fmt.lower():
        raise UnsupportedEncoding(f"unsupported compressedDepth format {fmt!r} (RVL)")
    if encoding not in ("16UC1", "32FC1"):
        raise UnsupportedEncoding(f"unsupported compressedDepth encoding {fmt!r}")
    if data.size <= _DEPTH_HEADER.size or not bytes(data[_DEPTH_HEADER.size :][:8]).startswith(
        _PNG_MAGIC
    ):
        raise ValueError(
            f"compressedDepth {fmt!r}: no PNG after the {_DEPTH_HEADER.size}-byte header"
        )
    _, quant_a, quant_b = _DEPTH_HEADER.unpack(bytes(data[: _DEPTH_HEADER.size]))
    image = _imdecode(data[_DEPTH_HEADER.size :], "compressedDepth PNG")
    if image.dtype != np.uint16 or image.ndim != 2:
        raise ValueError(
            f"compressedDepth {fmt!r}: expected a 16-bit single-channel PNG, "
            f"got {image.dtype} {image.shape}"
        )
    if encoding == "16UC1":
        return image
    # Inverse of the transport's quantisation: inv = A / depth + B, 0 meaning "no depth".
    inverse = image.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.float32(quant_a) / (inverse - np.float32(quant_b))
    return np.where(image == 0, np.float32(np.nan), depth).astype(np.float32)


def to_rgb8(array: np.ndarray) -> np.ndarray:
    """Any decoded array -> ``[H, W, 3]`` uint8 RGB for the network or a viewer.

    Mono is replicated, alpha dropped; non-uint8 data (16-bit, float depth) is min-max scaled
    over its finite values (NaN/inf become 0).
    """
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"cannot convert array of shape {array.shape} to RGB")
    if array.dtype != np.uint8:
        array = _minmax_to_uint8(array)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array)


def _minmax_to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale the finite range of ``array`` to 0..255 (constant or empty range -> 0)."""
    values = array.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(array.shape, np.uint8)
    low, high = float(values[finite].min()), float(values[finite].max())
    scale = 255.0 / (high - low) if high > low else 0.0
    scaled = np.where(finite, (values - low) * scale, 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def rgb8_to_image_fields(array: np.ndarray) -> dict[str, Any]:
    """``[H, W, 3]`` uint8 RGB (or ``[H, W]`` mono8) -> the ``sensor_msgs/Image`` fields.

    Returns ``dict(height, width, encoding, is_bigendian, step, data: bytes)``.
    """
    if array.dtype != np.uint8 or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)
    ):
        raise ValueError(f"expected uint8 [H,W,3] or [H,W], got {array.dtype} {array.shape}")
    channels = 1 if array.ndim == 2 else 3
    height, width = array.shape[:2]
    return {
        "height": int(height),
        "width": int(width),
        "encoding": "mono8" if channels == 1 else "rgb8",
        "is_bigendian": 0,
        "step": int(width * channels),
        "data": np.ascontiguousarray(array).tobytes(),
    }


def write_image(
    path: str | os.PathLike[str], image: np.ndarray, params: Sequence[int] = ()
) -> None:
    """Atomically write an image file with OpenCV (format from the suffix; BGR channel order).

    Raises:
        OSError: OpenCV could not write it (it reports failure only by returning False).
    """

    def write(tmp: Path) -> None:
        if not cv2.imwrite(str(tmp), image, list(params)):
            raise OSError(f"{path}: OpenCV could not write the image")

    write_with(path, write)
