# SPDX-License-Identifier: Apache-2.0
"""mtl_perception.core.images: every supported encoding decodes to the expected array."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
from bagfactory import compressed_msg, image_msg

from mtl_perception.core.images import (
    UnsupportedEncoding,
    canonical_encoding,
    compressed_kind,
    decode_compressed,
    decode_image,
    rgb8_to_image_fields,
    to_rgb8,
)

H, W = 6, 8
RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
RGBA = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
MONO = RNG.integers(0, 256, (H, W), dtype=np.uint8)
MONO16 = RNG.integers(0, 65536, (H, W), dtype=np.uint16)
DEPTH = RNG.uniform(0.2, 9.0, (H, W)).astype(np.float32)


def padded(pixels: np.ndarray, pad: int) -> tuple[bytes, int]:
    """Row-padded bytes of ``pixels`` (little-endian) and the resulting step."""
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8).reshape(pixels.shape[0], -1)
    step = rows.shape[1] + pad
    buffer = np.full((pixels.shape[0], step), 0xAB, np.uint8)  # junk in the padding
    buffer[:, : rows.shape[1]] = rows
    return buffer.tobytes(), step


@pytest.mark.parametrize(
    ("encoding", "pixels", "expected"),
    [
        ("rgb8", RGB, RGB),
        ("bgr8", RGB[:, :, ::-1], RGB),
        ("8UC3", RGB, RGB),
        ("rgba8", RGBA, RGBA),
        ("bgra8", RGBA[:, :, [2, 1, 0, 3]], RGBA),
        ("mono8", MONO, MONO),
        ("8UC1", MONO, MONO),
        ("mono16", MONO16, MONO16),
        ("16UC1", MONO16, MONO16),
        ("32FC1", DEPTH, DEPTH),
    ],
)
@pytest.mark.parametrize("pad", [0, 5])
def test_raw_encodings_round_trip_with_and_without_row_padding(encoding, pixels, expected, pad):
    data, step = padded(np.ascontiguousarray(pixels), pad)
    msg = image_msg(data, encoding, 1, width=W, height=H, step=step)
    decoded = decode_image(msg)
    assert decoded.dtype == expected.dtype
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize(
    ("encoding", "pixels"), [("mono16", MONO16), ("16UC1", MONO16), ("32FC1", DEPTH)]
)
@pytest.mark.parametrize("pad", [0, 3])
def test_big_endian_data_is_byte_swapped(encoding, pixels, pad):
    big = pixels.astype(pixels.dtype.newbyteorder(">"))
    rows = np.ascontiguousarray(big).view(np.uint8).reshape(H, -1)
    step = rows.shape[1] + pad
    buffer = np.zeros((H, step), np.uint8)
    buffer[:, : rows.shape[1]] = rows
    msg = image_msg(buffer.tobytes(), encoding, 1, width=W, height=H, step=step, is_bigendian=True)
    decoded = decode_image(msg)
    assert decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, pixels)


def bayer_mosaic(colour: tuple[int, int, int], pattern: str, dtype: type) -> np.ndarray:
    """A uniformly coloured scene seen through the Bayer filter ``pattern`` (e.g. "rggb")."""
    mosaic = np.zeros((H, W), dtype)
    channel = {"r": 0, "g": 1, "b": 2}
    for i, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        mosaic[dy::2, dx::2] = colour[channel[pattern[i]]]
    return mosaic


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize(
    ("bits", "dtype", "colour"),
    [(8, np.uint8, (200, 90, 20)), (16, np.uint16, (50000, 20000, 3000))],
)
def test_bayer_patterns_demosaic_to_the_right_colour(pattern, bits, dtype, colour):
    msg = image_msg(bayer_mosaic(colour, pattern, dtype), f"bayer_{pattern}{bits}", 1)
    decoded = decode_image(msg)
    assert decoded.shape == (H, W, 3) and decoded.dtype == dtype
    # interior pixels of a uniform scene demosaic exactly to the scene colour (R and B not swapped)
    np.testing.assert_allclose(
        decoded[2:-2, 2:-2].reshape(-1, 3), np.tile(colour, (4 * 2, 1)), atol=1
    )


def yuv422(y: np.ndarray, u: int, v: int, layout: str) -> np.ndarray:
    """Pack luma ``y`` [H, W] and constant chroma into UYVY or YUYV bytes [H, W*2]."""
    packed = np.zeros((H, W * 2), np.uint8)
    chroma = np.tile([u, v], W // 2).astype(np.uint8)
    if layout == "uyvy":
        packed[:, 0::2], packed[:, 1::2] = chroma, y
    else:
        packed[:, 0::2], packed[:, 1::2] = y, chroma
    return packed


@pytest.mark.parametrize(
    ("encoding", "layout"),
    [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuyv", "yuyv"), ("yuv422_yuy2", "yuyv")],
)
def test_yuv422_layouts(encoding, layout):
    luma = np.linspace(30, 220, H * W).reshape(H, W).astype(np.uint8)
    grey = decode_image(
        image_msg(
            yuv422(luma, 128, 128, layout).tobytes(), encoding, 1, width=W, height=H, step=W * 2
        )
    )
    assert grey.shape == (H, W, 3)
    # neutral chroma: R == G == B and brightness follows luma
    assert np.abs(grey.astype(int) - grey[:, :, :1]).max() <= 1
    assert np.all(np.diff(grey[:, :, 0].reshape(-1).astype(int)) >= 0)
    reddish = decode_image(
        image_msg(
            yuv422(luma, 110, 200, layout).tobytes(), encoding, 1, width=W, height=H, step=W * 2
        )
    )
    assert (reddish[:, :, 0].astype(int) > reddish[:, :, 2]).all()


def test_encoding_names_are_normalised_and_unknown_ones_rejected():
    assert canonical_encoding(" RGB8") == "rgb8"
    assert canonical_encoding("16uc1") == "16UC1"
    with pytest.raises(UnsupportedEncoding, match="weird"):
        decode_image(image_msg(MONO, "weird", 1))
    with pytest.raises(UnsupportedEncoding):
        decode_image(image_msg(MONO, "64FC1", 1))
    assert issubclass(UnsupportedEncoding, ValueError)


@pytest.mark.parametrize(
    ("step", "size", "match"),
    [
        (W * 3 - 1, H * W * 3, "step"),
        (W * 3, H * W * 3 - 1, "data has"),
        (W * 3 + 4, H * W * 3, "data has"),
    ],
)
def test_wrong_step_or_short_data_is_a_value_error(step, size, match):
    msg = image_msg(bytes(size), "rgb8", 1, width=W, height=H, step=step)
    with pytest.raises(ValueError, match=match):
        decode_image(msg)


def test_compressed_jpeg_and_png_decode_to_rgb_whatever_the_format_string():
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert ok
    for fmt in ("png", "rgb8; png compressed rgb8", "", "image/whatever"):
        msg = compressed_msg(png.tobytes(), fmt, 1)
        assert compressed_kind(msg) == "png"
        np.testing.assert_array_equal(decode_compressed(msg), RGB)
    ok, jpg = cv2.imencode(".jpg", MONO)
    msg = compressed_msg(jpg.tobytes(), "bgr8; jpeg compressed bgr8", 1)
    assert compressed_kind(msg) == "jpeg"
    mono = decode_compressed(msg)
    assert mono.shape == (H, W) and np.abs(mono.astype(int) - MONO).mean() < 8


def test_compressed_garbage_is_rejected():
    with pytest.raises(UnsupportedEncoding):
        decode_compressed(compressed_msg(b"GIF89a....", "gif", 1))
    with pytest.raises(ValueError, match="signature") as info:
        decode_compressed(compressed_msg(b"not a jpeg", "bgr8; jpeg compressed bgr8", 1))
    assert not isinstance(info.value, UnsupportedEncoding)
    with pytest.raises(ValueError, match="corrupt"):
        decode_compressed(compressed_msg(b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "png", 1))


def depth_payload(fmt_code: int, a: float, b: float, png_of: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", png_of)
    assert ok
    return struct.pack("<iff", fmt_code, a, b) + png.tobytes()


def test_compressed_depth_16uc1_decodes_to_the_original_uint16():
    msg = compressed_msg(depth_payload(0, 0.0, 0.0, MONO16), "16UC1; compressedDepth png", 1)
    assert compressed_kind(msg) == "compressedDepth"
    decoded = decode_compressed(msg)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, MONO16)


def test_compressed_depth_32fc1_inverse_depth_is_decoded():
    # compressed_depth_image_transport defaults: depth_quantization 100, depth_max 10 m
    a, b = 100.0, -100.0 / 10.0
    inverse = (a / DEPTH + b).astype(np.uint16)
    inverse[0, 0] = 0  # "no depth"
    decoded = decode_compressed(
        compressed_msg(depth_payload(0, a, b, inverse), "32FC1; compressedDepth", 1)
    )
    assert decoded.dtype == np.float32
    assert np.isnan(decoded[0, 0])
    np.testing.assert_allclose(decoded.reshape(-1)[1:], DEPTH.reshape(-1)[1:], rtol=0.1)


def test_compressed_depth_rvl_is_reported_unsupported():
    with pytest.raises(UnsupportedEncoding, match="RVL"):
        decode_compressed(compressed_msg(b"\0" * 40, "16UC1; compressedDepth rvl", 1))


def test_to_rgb8_replicates_mono_drops_alpha_and_scales_depth():
    np.testing.assert_array_equal(to_rgb8(RGB), RGB)
    np.testing.assert_array_equal(to_rgb8(RGBA), RGBA[:, :, :3])
    np.testing.assert_array_equal(to_rgb8(MONO), np.repeat(MONO[:, :, None], 3, axis=2))
    depth = DEPTH.copy()
    depth[0, 0] = np.nan
    scaled = to_rgb8(depth)
    assert scaled.shape == (H, W, 3) and scaled.dtype == np.uint8
    assert scaled[0, 0, 0] == 0 and scaled.max() == 255
    assert to_rgb8(np.full((H, W), 7, np.uint16)).max() == 0  # constant image: no division by zero


def test_rgb8_to_image_fields_round_trips_through_decode_image():
    for array in (RGB, MONO):
        fields = rgb8_to_image_fields(array)
        assert fields["step"] * fields["height"] == len(fields["data"])
        msg = image_msg(
            fields["data"],
            fields["encoding"],
            1,
            width=fields["width"],
            height=fields["height"],
            step=fields["step"],
        )
        np.testing.assert_array_equal(decode_image(msg), array)
    with pytest.raises(ValueError, match=r"expected uint8 \[H,W,3\] or \[H,W\], got uint16"):
        rgb8_to_image_fields(MONO16)
