# SPDX-License-Identifier: Apache-2.0
"""Image conversion for the node: every encoding, padded rows, bad images, cv_bridge adapter."""

from __future__ import annotations

import sys
import types
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from mtl_perception.core.errors import UserError
from mtl_perception.ros.conversions import (
    CoreDecoder,
    CvBridgeDecoder,
    UnsupportedEncoding,
    image_message,
    make_decoder,
    to_network_rgb,
)
from mtl_perception.ros.params import SPECS

HEIGHT, WIDTH = 6, 8
RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)


def _raw(array: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """An Image message holding ``array`` with ``pad`` extra bytes at the end of every row."""
    if bigendian:
        array = array.astype(array.dtype.newbyteorder(">"))
    rows = array.reshape(array.shape[0], -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    msg = Image(
        height=array.shape[0], width=array.shape[1], encoding=encoding, is_bigendian=int(bigendian)
    )
    msg.step = rows.shape[1]
    msg.data = rows.tobytes()
    return msg


def _minmax(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return np.rint((values.astype(np.float64) - low) * 255.0 / (high - low)).astype(np.uint8)


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


DEPTH16 = RNG.integers(0, 65535, (HEIGHT, WIDTH), dtype=np.uint16)
DEPTH32 = RNG.uniform(0.2, 9.0, (HEIGHT, WIDTH)).astype(np.float32)
ALPHA = RNG.integers(0, 256, (HEIGHT, WIDTH, 1), dtype=np.uint8)

# (encoding, array in that encoding's layout, expected RGB for the network)
CASES: list[tuple[str, np.ndarray, np.ndarray]] = [
    ("rgb8", RGB, RGB),
    ("bgr8", RGB[:, :, ::-1], RGB),
    ("rgba8", np.concatenate([RGB, ALPHA], axis=2), RGB),
    ("bgra8", np.concatenate([RGB[:, :, ::-1], ALPHA], axis=2), RGB),
    ("mono8", GRAY, _gray3(GRAY)),
    ("8UC1", GRAY, _gray3(GRAY)),
    ("mono16", DEPTH16, _gray3(_minmax(DEPTH16))),
    ("16UC1", DEPTH16, _gray3(_minmax(DEPTH16))),
    ("32FC1", DEPTH32, _gray3(_minmax(DEPTH32))),
    ("rgb16", RGB.astype(np.uint16) * 257, RGB),
    ("bgr16", RGB[:, :, ::-1].astype(np.uint16) * 257, RGB),
]


@pytest.mark.parametrize("pad", [0, 5], ids=["packed", "padded-step"])
@pytest.mark.parametrize(("encoding", "array", "expected"), CASES, ids=[case[0] for case in CASES])
def test_every_encoding_gives_network_rgb(
    encoding: str, array: np.ndarray, expected: np.ndarray, pad: int
) -> None:
    rgb = to_network_rgb(CoreDecoder(), _raw(array, encoding, pad), compressed=False)
    assert rgb.dtype == np.uint8 and rgb.shape == (HEIGHT, WIDTH, 3) and rgb.flags.c_contiguous
    # Float/16-bit scaling may round differently by one level; 8-bit data must be exact.
    tolerance = 0 if array.dtype == np.uint8 else 1
    assert np.abs(rgb.astype(int) - expected.astype(int)).max() <= tolerance


def test_big_endian_16_bit() -> None:
    rgb = to_network_rgb(
        CoreDecoder(), _raw(DEPTH16, "mono16", pad=2, bigendian=True), compressed=False
    )
    assert np.abs(rgb.astype(int) - _gray3(_minmax(DEPTH16)).astype(int)).max() <= 1


@pytest.mark.parametrize("encoding", ["bayer_rggb8", "yuv422", "yuv422_yuy2"])
def test_bayer_and_yuv_become_rgb(encoding: str) -> None:
    channels = 2 if encoding.startswith("yuv") else 1
    array = np.full((HEIGHT, WIDTH * channels), 120, np.uint8)
    msg = _raw(array, encoding)
    msg.width = WIDTH
    rgb = to_network_rgb(CoreDecoder(), msg, compressed=False)
    assert rgb.shape == (HEIGHT, WIDTH, 3) and rgb.dtype == np.uint8


def _bad_messages() -> dict[str, tuple[Image, type[Exception]]]:
    truncated = _raw(RGB, "rgb8")
    truncated.data = bytes(truncated.data)[: -WIDTH * 3 - 1]
    short_step = _raw(RGB, "rgb8")
    short_step.step = WIDTH * 3 - 1
    return {
        "unknown encoding": (_raw(RGB, "rgb9"), UnsupportedEncoding),
        "empty encoding": (_raw(RGB, ""), UnsupportedEncoding),
        "truncated": (truncated, ValueError),
        "zero-size": (Image(height=0, width=0, encoding="rgb8", step=0), ValueError),
        "step < width": (short_step, ValueError),
    }


@pytest.mark.parametrize("case", list(_bad_messages()))
def test_bad_images_raise_value_errors(case: str) -> None:
    msg, error = _bad_messages()[case]
    with pytest.raises(error):
        to_network_rgb(CoreDecoder(), msg, compressed=False)


def _compressed(data: bytes, fmt: str) -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.data = data
    return msg


def test_compressed_png_is_exact_and_jpeg_is_close() -> None:
    png = cv2.imencode(".png", RGB[:, :, ::-1])[1].tobytes()
    assert np.array_equal(
        to_network_rgb(CoreDecoder(), _compressed(png, "rgb8; png compressed bgr8"), True), RGB
    )
    flat = np.zeros((16, 16, 3), np.uint8)
    flat[:] = (200, 30, 90)
    jpeg = cv2.imencode(".jpg", flat[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    rgb = to_network_rgb(CoreDecoder(), _compressed(jpeg, "jpeg"), True)
    assert rgb.shape == (16, 16, 3) and np.abs(rgb.astype(int) - flat.astype(int)).max() <= 4
    mono = cv2.imencode(".png", GRAY)[1].tobytes()
    assert np.array_equal(
        to_network_rgb(CoreDecoder(), _compressed(mono, "png"), True), _gray3(GRAY)
    )


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff\xe0 broken jpeg", b"not an image at all"])
def test_bad_compressed_data_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"^corrupt '?jpeg'? data"):
        to_network_rgb(CoreDecoder(), _compressed(data, "jpeg"), True)


def test_image_message_round_trip_keeps_header() -> None:
    header = Header(frame_id="cam")
    header.stamp.sec = 5
    msg = image_message(RGB, header)
    assert (msg.encoding, msg.step, msg.header.frame_id, msg.header.stamp.sec) == (
        "rgb8",
        WIDTH * 3,
        "cam",
        5,
    )
    assert np.array_equal(to_network_rgb(CoreDecoder(), msg, compressed=False), RGB)
    assert image_message(GRAY, header).encoding == "mono8"


# ---------------------------------------------------------------- cv_bridge adapter
class _FakeBridgeError(Exception):
    pass


class _FakeBridge:
    """Records the calls and answers like cv_bridge's documented API: passthrough arrays in
    OpenCV (BGR) order. The adapter tests below prove what the adapter asks cv_bridge for and how
    it reorders and wraps the answers; whether real cv_bridge answers so is only checked where it
    is installed (``test_real_cv_bridge_matches_the_builtin_decoder``), which CI is not."""

    calls: ClassVar[list[tuple[str, str, str]]] = []

    def imgmsg_to_cv2(self, msg: Any, desired_encoding: str = "passthrough") -> np.ndarray:
        self.calls.append(("imgmsg_to_cv2", msg.encoding, desired_encoding))
        if msg.encoding == "rgb9":
            raise _FakeBridgeError("Unrecognized image encoding [rgb9]")
        if msg.encoding == "truncated":
            raise TypeError("buffer is too small for requested array")
        if desired_encoding == "rgb8":
            return RGB.copy()
        return {
            "bgr8": RGB[:, :, ::-1],
            "bgra8": np.concatenate([RGB[:, :, ::-1], ALPHA], 2),
            "mono8": GRAY,
        }[msg.encoding].copy()

    def compressed_imgmsg_to_cv2(
        self, msg: Any, desired_encoding: str = "passthrough"
    ) -> np.ndarray:
        self.calls.append(("compressed_imgmsg_to_cv2", msg.format, desired_encoding))
        return cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.fixture
def fake_cv_bridge(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("cv_bridge")
    module.CvBridge = _FakeBridge  # type: ignore[attr-defined]
    module.CvBridgeError = _FakeBridgeError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cv_bridge", module)
    _FakeBridge.calls = []
    return module


def test_cv_bridge_only_when_asked_for(
    fake_cv_bridge: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An importable cv_bridge is not used by default: only ``decoder: cv_bridge`` selects it."""
    assert SPECS["decoder"].default == "builtin" and make_decoder("builtin").name == "builtin"
    assert make_decoder("cv_bridge").name == "cv_bridge"
    monkeypatch.setitem(sys.modules, "cv_bridge", None)  # import now fails
    with pytest.raises(UserError, match="decoder is cv_bridge but it does not import"):
        make_decoder("cv_bridge")
    with pytest.raises(ValueError, match="not one of builtin, cv_bridge"):
        make_decoder("pillow")


def test_cv_bridge_adapter_calls_and_layout(fake_cv_bridge: types.ModuleType) -> None:
    decoder = CvBridgeDecoder()
    for encoding in ("bgr8", "bgra8", "mono8"):
        expected = _raw(CASES[[c[0] for c in CASES].index(encoding)][1], encoding)
        assert np.array_equal(
            to_network_rgb(decoder, expected, False),
            to_network_rgb(CoreDecoder(), expected, False),
        )
    assert _FakeBridge.calls == [
        ("imgmsg_to_cv2", e, "passthrough") for e in ("bgr8", "bgra8", "mono8")
    ]
    # Bayer/YUV have no natural passthrough layout: cv_bridge converts to rgb8 itself.
    decoder.decode_image(_raw(np.zeros((HEIGHT, WIDTH), np.uint8), "bayer_rggb8"))
    assert _FakeBridge.calls[-1] == ("imgmsg_to_cv2", "bayer_rggb8", "rgb8")
    with pytest.raises(UnsupportedEncoding, match="rgb9"):
        decoder.decode_image(_raw(RGB, "rgb9"))
    with pytest.raises(ValueError, match="too small"):
        decoder.decode_image(_raw(RGB, "truncated"))


def test_cv_bridge_adapter_compressed(fake_cv_bridge: types.ModuleType) -> None:
    decoder = CvBridgeDecoder()
    png = cv2.imencode(".png", RGB[:, :, ::-1])[1].tobytes()
    assert np.array_equal(to_network_rgb(decoder, _compressed(png, "png"), True), RGB)
    assert _FakeBridge.calls == [("compressed_imgmsg_to_cv2", "png", "passthrough")]
    with pytest.raises(ValueError, match="compressed format 'jpeg': data cannot be decoded"):
        decoder.decode_compressed(_compressed(b"garbage", "jpeg"))


def test_real_cv_bridge_matches_the_builtin_decoder() -> None:
    """On a machine with ROS's cv_bridge (the robot), both paths must give identical arrays."""
    pytest.importorskip("cv_bridge", reason="cv_bridge is not installed here (PyPI ROS wheels)")
    bridge, own = CvBridgeDecoder(), CoreDecoder()
    for encoding, array, _ in CASES:
        for pad in (0, 5):
            msg = _raw(array, encoding, pad)
            assert np.array_equal(
                to_network_rgb(bridge, msg, False), to_network_rgb(own, msg, False)
            ), encoding
