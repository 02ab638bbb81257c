# SPDX-License-Identifier: Apache-2.0
"""The fast SSIM must give skimage's answer (the reference semantics of the prune step)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity as reference

from data_tools.ssim import (
    block_stats,
    dtype_data_range,
    sampled_ssim,
    ssim_from_stats,
    structural_similarity,
    to_gray,
    window_stats,
)

SHAPES = [(7, 7), (8, 13), (24, 32), (31, 45), (61, 47), (96, 95)]


def random_pair(shape: tuple[int, int], dtype: type, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random image and a noisy copy of it (SSIM neither 0 nor 1)."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    a = rng.integers(0, top + 1, shape, dtype=np.int64)
    b = np.clip(a + rng.integers(-top // 8, top // 8, shape), 0, top)
    return a.astype(dtype), b.astype(dtype)


def structured_pair(
    shape: tuple[int, int], dtype: type, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth gradients, a hard edge and flat areas, then the same scene shifted with noise."""
    rng = np.random.default_rng(seed)
    top = float(np.iinfo(dtype).max)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    scene = 0.5 + 0.4 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    scene[: shape[0] // 2, : shape[1] // 3] = 0.9  # flat patch: variance ~0, where C2 dominates
    a = scene * top
    b = np.roll(a, 1, axis=1) + rng.normal(0, top / 100, shape)
    return np.clip(a, 0, top).astype(dtype), np.clip(b, 0, top).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("make", [random_pair, structured_pair])
def test_matches_skimage(make, shape, dtype) -> None:
    a, b = make(shape, dtype, seed=sum(shape))
    expected = reference(a, b, data_range=dtype_data_range(dtype))
    assert abs(structural_similarity(a, b) - expected) < 1e-5
    assert 0.0 < expected < 0.999  # the case is not trivially identical or unrelated


def test_matches_skimage_on_a_real_photo_with_sensor_noise() -> None:
    from skimage import data

    gray = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)[100:180, 150:246]
    noisy = np.clip(gray + np.random.default_rng(0).normal(0, 2, gray.shape), 0, 255).astype(
        np.uint8
    )
    assert abs(structural_similarity(gray, noisy) - reference(gray, noisy, data_range=255)) < 1e-5


@pytest.mark.parametrize(("shift", "noise"), [(0, 1.5), (1, 2.0), (3, 4.0), (12, 2.0)])
def test_sampled_estimate_is_close_to_the_exact_value(shift, noise) -> None:
    """The block-window estimate that settles clear near-duplicates tracks skimage's value."""
    from skimage import data

    gray = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)[:270, :480]
    rng = np.random.default_rng(shift)
    moved = np.clip(
        np.roll(gray, shift, axis=1) + rng.normal(0, noise, gray.shape), 0, 255
    ).astype(np.uint8)
    estimate = sampled_ssim(block_stats(gray), block_stats(moved))
    assert abs(estimate - reference(gray, moved, data_range=255)) < 0.01


def test_sampled_estimate_only_for_8_bit_frames() -> None:
    assert block_stats(np.zeros((20, 20), np.uint16)) is None
    assert block_stats(np.zeros((10, 40), np.uint8)) is None  # fewer than two block rows


def test_float_images_use_the_joint_value_range() -> None:
    a, b = (x.astype(np.float32) / 255 for x in structured_pair((40, 50), np.uint8, seed=3))
    joint = max(a.max(), b.max()) - min(a.min(), b.min())
    assert abs(structural_similarity(a, b) - reference(a, b, data_range=joint)) < 1e-5
    assert (
        abs(structural_similarity(a, b, data_range=1.0) - reference(a, b, data_range=1.0)) < 1e-5
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_identical_images_score_exactly_one(dtype) -> None:
    image = structured_pair((20, 30), np.uint8, seed=1)[0].astype(dtype)
    assert structural_similarity(image, image.copy()) == 1.0


def test_cached_stats_are_not_changed_by_later_comparisons() -> None:
    """Per-thread scratch buffers are reused; the cached statistics of a frame must not be."""
    a, b = structured_pair((48, 64), np.uint8, seed=5)
    c = np.flipud(b).copy()
    sa, sb, sc = window_stats(a), window_stats(b), window_stats(c)
    first = ssim_from_stats(sa, sb)
    ssim_from_stats(sa, sc)
    window_stats(np.zeros((48, 64), np.uint8))
    assert ssim_from_stats(sa, sb) == first
    assert ssim_from_stats(sb, sa) == pytest.approx(first, abs=1e-7)  # symmetric


def test_threads_get_their_own_scratch_space() -> None:
    pairs = [structured_pair((40 + i, 56), np.uint8, seed=i) for i in range(8)]
    serial = [structural_similarity(a, b) for a, b in pairs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda p: structural_similarity(*p), pairs * 4))
    assert parallel == serial * 4


def test_gray_conversion_is_the_same_for_rgb_and_bgr_storage() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    expected = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(to_gray(rgb, "rgb"), expected)
    np.testing.assert_array_equal(to_gray(np.ascontiguousarray(rgb[..., ::-1]), "bgr"), expected)
    rgba = np.dstack([rgb, np.full((9, 11), 7, np.uint8)])
    np.testing.assert_array_equal(to_gray(rgba, "rgb"), expected)
    np.testing.assert_array_equal(to_gray(rgb[..., :1], "rgb"), rgb[..., 0])
    with pytest.raises(ValueError, match="grayscale"):
        to_gray(np.zeros((4, 4, 2), np.uint8), "rgb")


def test_rejects_what_ssim_cannot_compare() -> None:
    with pytest.raises(ValueError, match="smaller than the 7x7"):
        window_stats(np.zeros((6, 40), np.uint8))
    with pytest.raises(ValueError, match="cannot compare"):
        ssim_from_stats(
            window_stats(np.zeros((8, 8), np.uint8)), window_stats(np.zeros((8, 9), np.uint8))
        )
    with pytest.raises(ValueError, match="cannot compare"):
        ssim_from_stats(
            window_stats(np.zeros((8, 8), np.uint8)), window_stats(np.zeros((8, 8), np.uint16))
        )
    with pytest.raises(ValueError, match="dtype"):
        dtype_data_range(np.dtype(np.int8))
