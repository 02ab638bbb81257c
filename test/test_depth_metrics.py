# SPDX-License-Identifier: Apache-2.0
"""DepthMetrics against a pixel-by-pixel Python reference and a hand-worked example."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtl_perception.evaluation.depth_metrics import DEPTH_METRIC_KEYS, DepthMetrics


def reference_metrics(
    frames: list[tuple[np.ndarray, np.ndarray]],
    min_depth: float = 1e-3,
    max_depth: float | None = None,
) -> dict[str, float]:
    """The textbook formulas, one pixel at a time in plain Python floats (no shared code)."""
    abs_rel = sq_rel = sq = sq_log = abs_err = 0.0
    d1 = d2 = d3 = 0
    n = 0
    for pred, gt in frames:
        for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist(), strict=True):
            if not math.isfinite(g) or g <= 0 or (max_depth is not None and g > max_depth):
                continue
            p = max(p, min_depth)
            if max_depth is not None:
                p = min(p, max_depth)
            n += 1
            abs_rel += abs(p - g) / g
            sq_rel += (p - g) ** 2 / g
            sq += (p - g) ** 2
            sq_log += (math.log(p) - math.log(g)) ** 2
            abs_err += abs(p - g)
            r = max(p / g, g / p)
            d1 += r < 1.25
            d2 += r < 1.25**2
            d3 += r < 1.25**3
    return {
        "abs_rel": abs_rel / n,
        "sq_rel": sq_rel / n,
        "rmse": math.sqrt(sq / n),
        "rmse_log": math.sqrt(sq_log / n),
        "delta1": d1 / n,
        "delta2": d2 / n,
        "delta3": d3 / n,
        "mae": abs_err / n,
        "valid_pixels": n,
    }


def random_frames(seed: int, count: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        h, w = 9 + i, 11 + 2 * i  # frames of different sizes
        gt = rng.uniform(0.3, 12.0, size=(h, w)).astype(np.float32)
        holes = rng.random((h, w))
        gt[holes < 0.10] = 0.0
        gt[(holes >= 0.10) & (holes < 0.13)] = np.nan
        gt[(holes >= 0.13) & (holes < 0.15)] = np.inf
        gt[(holes >= 0.15) & (holes < 0.16)] = -1.0
        pred = (gt * rng.uniform(0.6, 1.5, size=(h, w))).astype(np.float32)
        pred = np.where(np.isfinite(pred) & (pred > 0), pred, rng.uniform(0.5, 5.0, (h, w)))
        pred[0, 0] = 0.0  # a zero prediction is clamped to min_depth, not a crash
        frames.append((pred.astype(np.float32), gt))
    return frames


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pixelwise_reference_on_random_data_with_holes(seed: int) -> None:
    frames = random_frames(seed)
    metrics = DepthMetrics()
    for pred, gt in frames:
        metrics.update(pred, gt)
    got = metrics.compute()
    want = reference_metrics(frames)
    assert got["valid_pixels"] == want["valid_pixels"] > 0
    assert got["frames"] == len(frames)
    for key in DEPTH_METRIC_KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


def test_max_depth_drops_far_targets_and_caps_predictions() -> None:
    frames = random_frames(5)
    metrics = DepthMetrics(max_depth=6.0)
    for pred, gt in frames:
        metrics.update(pred, gt)
    got = metrics.compute()
    want = reference_metrics(frames, max_depth=6.0)
    assert got["valid_pixels"] == want["valid_pixels"]
    for key in DEPTH_METRIC_KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-9), key


def test_hand_worked_example() -> None:
    # Valid pixels: (pred, gt) = (2, 1), (1, 1), (3, 4); the 0 and NaN targets are holes.
    pred = np.array([[2.0, 1.0, 3.0, 7.0, 9.0]])
    gt = np.array([[1.0, 1.0, 4.0, 0.0, np.nan]])
    m = DepthMetrics()
    assert m.update(pred, gt) == 3
    r = m.compute()
    assert r["abs_rel"] == pytest.approx((1 + 0 + 0.25) / 3)
    assert r["sq_rel"] == pytest.approx((1 + 0 + 1 / 4) / 3)
    assert r["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert r["mae"] == pytest.approx(2 / 3)
    assert r["rmse_log"] == pytest.approx(math.sqrt((math.log(2) ** 2 + math.log(3 / 4) ** 2) / 3))
    # ratios 2, 1, 4/3: below 1.25 only the exact one; below 1.5625 also 4/3; 2 > 1.953125
    assert (r["delta1"], r["delta2"], r["delta3"]) == pytest.approx((1 / 3, 2 / 3, 2 / 3))


def test_pixel_weighted_over_the_split_not_mean_of_frame_means() -> None:
    m = DepthMetrics()
    m.update(np.array([[2.0]]), np.array([[1.0]]))  # abs_rel 1 on one pixel
    m.update(np.ones((1, 3)), np.ones((1, 3)))  # abs_rel 0 on three pixels
    assert m.compute()["abs_rel"] == pytest.approx(1 / 4)  # not (1 + 0) / 2


def test_torch_tensors_accepted_and_same_result() -> None:
    frames = random_frames(3, count=2)
    a, b = DepthMetrics(), DepthMetrics()
    for pred, gt in frames:
        a.update(pred, gt)
        b.update(torch.from_numpy(pred).requires_grad_(True), torch.from_numpy(gt))
    assert a.compute() == pytest.approx(b.compute())


def test_no_valid_pixel_gives_nan_and_reset_forgets() -> None:
    m = DepthMetrics()
    assert m.update(np.ones((2, 2)), np.zeros((2, 2))) == 0
    r = m.compute()
    assert r["valid_pixels"] == 0 and r["frames"] == 1
    assert all(math.isnan(r[k]) for k in DEPTH_METRIC_KEYS)
    m.update(np.ones((2, 2)), np.ones((2, 2)))
    assert m.compute()["rmse"] == 0.0
    m.reset()
    assert m.valid_pixels == 0 and m.frames == 0


def test_bad_inputs_raise_clear_errors() -> None:
    m = DepthMetrics()
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*\(3, 2\)"):
        m.update(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="not finite on 1 of 4"):
        m.update(np.array([[1.0, np.nan], [1.0, 1.0]]), np.ones((2, 2)))
    # a NaN prediction on a hole is ignored like the hole itself
    m.update(np.array([[1.0, np.nan]]), np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="min_depth"):
        DepthMetrics(min_depth=0.0)
    with pytest.raises(ValueError, match="max_depth"):
        DepthMetrics(min_depth=1.0, max_depth=0.5)
