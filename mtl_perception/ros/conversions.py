# SPDX-License-Identifier: Apache-2.0
"""ROS image messages <-> numpy arrays for the node: the only place the node touches encodings.

Decoding uses the package's own decoder (``mtl_perception.core.images``: tested on every encoding
it accepts, pixel-exact against real bags) unless the ``decoder`` parameter asks for ``cv_bridge``
explicitly: ROS's cv_bridge cannot be built in CI, so the node never switches to it by itself
(docs/ROS2.md lists the encodings of each path). Both paths return the same layout: the
natural array of ``mtl_perception.core.images.decode_image`` (colour as RGB, alpha kept, mono 2-D),
which ``to_rgb8`` turns into the network's RGB uint8 input. cv_bridge hands out OpenCV's BGR
order, so its adapter swaps channels back. Publishing always goes through
``mtl_perception.core.images.rgb8_to_image_fields`` (``msg.data = bytes`` is fast; cv_bridge's
``cv2_to_imgmsg`` is not needed for rgb8/mono8).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Protocol

import numpy as np
from sensor_msgs.msg import Image

from mtl_perception.core import images
from mtl_perception.core.errors import UserError
from mtl_perception.core.images import UnsupportedEncoding

__all__ = [
    "DECODERS",
    "CoreDecoder",
    "CvBridgeDecoder",
    "ImageDecoder",
    "UnsupportedEncoding",
    "image_message",
    "make_decoder",
]

# Encodings whose cv_bridge "passthrough" array is in OpenCV's blue-first channel order.
_BLUE_FIRST = frozenset({"bgr8", "bgra8", "bgr16", "bgra16"})
# Encodings cv_bridge passes through already in the natural layout (RGB order, mono 2-D).
_NATURAL = frozenset(
    {
        "rgb8",
        "rgba8",
        "rgb16",
        "rgba16",
        "mono8",
        "mono16",
        "8UC1",
        "8UC3",
        "8UC4",
        "16UC1",
        "16UC3",
        "16UC4",
        "32FC1",
    }
)


class ImageDecoder(Protocol):
    """Turns ``sensor_msgs/Image`` and ``CompressedImage`` messages into natural arrays."""

    name: str

    def decode_image(self, msg: Any) -> np.ndarray:
        """The natural array of a ``sensor_msgs/Image`` (see ``mtl_perception.core.images``).

        Raises:
            UnsupportedEncoding: The decoder does not handle the message's encoding.
            ValueError: The data does not fit the size and encoding (truncated, empty).
        """
        ...

    def decode_compressed(self, msg: Any) -> np.ndarray:
        """The natural array of a ``sensor_msgs/CompressedImage`` (jpeg, png, compressedDepth).

        Raises:
            UnsupportedEncoding: The decoder does not handle the message's format.
            ValueError: The data cannot be decoded (corrupt, or not what the format says).
        """
        ...


class CoreDecoder:
    """The package's own decoder (docs/CONTRACTS.md section 8)."""

    name = "builtin"

    def decode_image(self, msg: Any) -> np.ndarray:
        """See :meth:`ImageDecoder.decode_image`."""
        return images.decode_image(msg)

    def decode_compressed(self, msg: Any) -> np.ndarray:
        """See :meth:`ImageDecoder.decode_compressed`."""
        return images.decode_compressed(msg)


class CvBridgeDecoder:
    """cv_bridge adapter giving the same arrays (RGB order) and errors as ``CoreDecoder``."""

    name = "cv_bridge"

    def __init__(self, module: ModuleType | None = None) -> None:
        self._module = module if module is not None else importlib.import_module("cv_bridge")
        self._bridge = self._module.CvBridge()

    def decode_image(self, msg: Any) -> np.ndarray:
        """See :meth:`ImageDecoder.decode_image`."""
        encoding = msg.encoding
        # Bayer and YUV have no natural "passthrough" layout: let cv_bridge (OpenCV) convert.
        desired = "passthrough" if encoding in _BLUE_FIRST | _NATURAL else "rgb8"
        try:
            array = self._bridge.imgmsg_to_cv2(msg, desired_encoding=desired)
        except self._module.CvBridgeError as err:
            raise UnsupportedEncoding(f"encoding {encoding!r}: {err}") from None
        except TypeError as err:  # numpy: "buffer is too small for requested array"
            raise ValueError(f"{msg.width}x{msg.height} {encoding} image: {err}") from None
        return _blue_first_to_rgb(array) if encoding in _BLUE_FIRST else array

    def decode_compressed(self, msg: Any) -> np.ndarray:
        """See :meth:`ImageDecoder.decode_compressed`."""
        if "compressedDepth" in msg.format:  # cv_bridge cannot decode the depth header
            return images.decode_compressed(msg)
        try:
            array = self._bridge.compressed_imgmsg_to_cv2(msg, desired_encoding="passthrough")
        except self._module.CvBridgeError as err:
            raise UnsupportedEncoding(f"compressed format {msg.format!r}: {err}") from None
        if array is None or array.size == 0:  # cv2.imdecode returns None for corrupt data
            raise ValueError(f"compressed format {msg.format!r}: data cannot be decoded")
        return _blue_first_to_rgb(array) if array.ndim == 3 else array


def _blue_first_to_rgb(array: np.ndarray) -> np.ndarray:
    """BGR(A) -> RGB(A), keeping alpha in place."""
    order = [2, 1, 0, 3][: array.shape[2]]
    return np.ascontiguousarray(array[:, :, order])


DECODERS = ("builtin", "cv_bridge")


def make_decoder(name: str) -> ImageDecoder:
    """The decoder named by the node's ``decoder`` parameter (one of ``DECODERS``).

    Raises:
        UserError: ``cv_bridge`` was asked for but does not import.
        ValueError: ``name`` is not one of ``DECODERS``.
    """
    if name == "builtin":
        return CoreDecoder()
    if name == "cv_bridge":
        try:
            return CvBridgeDecoder()
        except ImportError as err:
            raise UserError(
                f"parameter decoder is cv_bridge but it does not import ({err}); install "
                "ros-$ROS_DISTRO-cv-bridge or set decoder:=builtin"
            ) from None
    raise ValueError(f"decoder {name!r} is not one of {', '.join(DECODERS)}")


def to_network_rgb(decoder: ImageDecoder, msg: Any, compressed: bool) -> np.ndarray:
    """Decode ``msg`` and convert it to RGB uint8 ``[H, W, 3]``.

    Raises ``UnsupportedEncoding`` for encodings neither path knows and ``ValueError`` for
    empty, truncated or undecodable images.
    """
    array = decoder.decode_compressed(msg) if compressed else decoder.decode_image(msg)
    if array.ndim < 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image is empty (shape {array.shape})")
    return images.to_rgb8(array)


def image_message(array: np.ndarray, header: Any) -> Image:
    """``sensor_msgs/Image`` with ``header``: rgb8 for ``[H,W,3]`` uint8, mono8 for ``[H,W]``."""
    msg = Image(**images.rgb8_to_image_fields(array))
    msg.header = header
    return msg
