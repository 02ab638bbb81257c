# SPDX-License-Identifier: Apache-2.0
"""Monocular depth metrics over a whole split: AbsRel, SqRel, RMSE, RMSE(log), δ thresholds, MAE.

The standard set of Eigen et al. (2014), as KITTI / NYUv2 papers report it. Pure numpy (torch
tensors are accepted and moved to the CPU) so that ``mtl-eval``, training validation and
``mtl-replay``'s scoring share one implementation without importing torch here.

Choices (kept in docs/CONTRACTS.md):

- **Valid pixels** are decided by the target only: finite and ``> 0`` metres (and
  ``<= max_depth`` when one is given). Everything else is a sensor hole and is ignored.
- **Averaging**: every valid pixel of the split counts once (pixel-weighted, not a mean of
  per-frame means), so a frame with few valid pixels weighs little. RMSE and RMSE(log) are the
  square root of the split's mean squared error.
- **Predictions** are clamped to ``[min_depth, max_depth]`` before scoring (the usual Eigen
  crop practice) so that ``log`` and the ratios are defined; a non-finite prediction on a valid
  pixel is a model bug and raises ``ValueError``.
- Sums are kept in float64: a split has millions of pixels and float32 sums drift.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["DELTA_THRESHOLDS", "DEPTH_METRIC_KEYS", "DepthMetrics", "as_numpy_depth"]

#: Keys of ``DepthMetrics.compute()`` besides the counts ``valid_pixels`` and ``frames``.
DEPTH_METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3", "mae")
#: δ thresholds: fraction of valid pixels with ``max(pred/gt, gt/pred) < 1.25 ** k``.
DELTA_THRESHOLDS = (1.25, 1.25**2, 1.25**3)

# Sums accumulated per split; each metric is a function of them (see ``compute``).
_SUM_NAMES = ("abs_rel", "sq_rel", "sq_err", "sq_log_err", "abs_err", "delta1", "delta2", "delta3")


def as_numpy_depth(depth: Any) -> np.ndarray:
    """A depth map (numpy array or torch tensor, any device) as a float64 numpy array."""
    if hasattr(depth, "detach"):  # torch.Tensor, without importing torch in this module
        depth = depth.detach().cpu().numpy()
    return np.asarray(depth, dtype=np.float64)


class DepthMetrics:
    """Accumulates depth errors over many frames; ``compute`` gives the split's metrics.

    Args:
        min_depth: Predictions below this (metres) are raised to it before scoring, so the
            log and the ratios stay finite. Must be ``> 0``.
        max_depth: If given, target pixels beyond it are invalid and predictions are capped
            at it. ``None`` keeps every positive finite target.

    Raises:
        ValueError: ``min_depth <= 0`` or ``max_depth <= min_depth``.

    Example::

        metrics = DepthMetrics()
        for pred_m, target_m in frames:
            metrics.update(pred_m, target_m)
        print(metrics.compute()["abs_rel"])
    """

    def __init__(self, min_depth: float = 1e-3, max_depth: float | None = None) -> None:
        if not min_depth > 0:
            raise ValueError(f"min_depth must be > 0 metres, got {min_depth}")
        if max_depth is not None and not max_depth > min_depth:
            raise ValueError(f"max_depth must be > min_depth ({min_depth}), got {max_depth}")
        self.min_depth = float(min_depth)
        self.max_depth = None if max_depth is None else float(max_depth)
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self._sums = dict.fromkeys(_SUM_NAMES, 0.0)
        self._valid_pixels = 0
        self._frames = 0

    @property
    def valid_pixels(self) -> int:
        """Valid target pixels accumulated since the last reset."""
        return self._valid_pixels

    @property
    def frames(self) -> int:
        """Frames passed to ``update`` since the last reset (with or without valid pixels)."""
        return self._frames

    def valid_mask(self, target_m: Any) -> np.ndarray:
        """Boolean mask of the target pixels that count (finite, ``> 0``, within max_depth)."""
        target = as_numpy_depth(target_m)
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(target) & (target > 0)
            if self.max_depth is not None:
                valid &= target <= self.max_depth
        return valid

    def update(self, pred_m: Any, target_m: Any) -> int:
        """Add one frame (or a batch of same-shaped frames).

        Args:
            pred_m: Predicted depth in metres, numpy array or torch tensor, e.g. ``[H, W]``.
            target_m: Ground-truth depth in metres of the same shape; ``<= 0`` or non-finite
                marks an invalid pixel.

        Returns:
            The number of valid pixels this frame contributed.

        Raises:
            ValueError: The shapes differ, or the prediction is non-finite on a valid pixel.
        """
        pred = as_numpy_depth(pred_m)
        target = as_numpy_depth(target_m)
        if pred.shape != target.shape:
            raise ValueError(
                f"depth prediction shape {pred.shape} differs from target shape {target.shape}"
            )
        self._frames += 1
        valid = self.valid_mask(target)
        gt = target[valid]
        pr = pred[valid]
        if gt.size == 0:
            return 0
        bad = ~np.isfinite(pr)
        if bad.any():
            raise ValueError(
                f"depth prediction is not finite on {int(bad.sum())} of {gt.size} valid pixels"
            )
        pr = np.clip(pr, self.min_depth, self.max_depth if self.max_depth is not None else np.inf)
        err = pr - gt
        ratio = np.maximum(pr / gt, gt / pr)
        sums = self._sums
        sums["abs_rel"] += float(np.sum(np.abs(err) / gt))
        sums["sq_rel"] += float(np.sum(err**2 / gt))
        sums["sq_err"] += float(np.sum(err**2))
        sums["sq_log_err"] += float(np.sum((np.log(pr) - np.log(gt)) ** 2))
        sums["abs_err"] += float(np.sum(np.abs(err)))
        for k, threshold in enumerate(DELTA_THRESHOLDS, start=1):
            sums[f"delta{k}"] += float(np.count_nonzero(ratio < threshold))
        self._valid_pixels += int(gt.size)
        return int(gt.size)

    def compute(self) -> dict[str, float | int]:
        """The split's metrics: plain Python numbers, NaN when there was no valid pixel.

        Returns:
            ``{"abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3", "mae":
            float, "valid_pixels": int, "frames": int}``. Lower is better for the errors,
            higher for the δ fractions (in ``[0, 1]``).
        """
        n = self._valid_pixels
        result: dict[str, float | int] = {}
        if n == 0:
            result.update(dict.fromkeys(DEPTH_METRIC_KEYS, math.nan))
        else:
            s = self._sums
            result.update(
                abs_rel=s["abs_rel"] / n,
                sq_rel=s["sq_rel"] / n,
                rmse=math.sqrt(s["sq_err"] / n),
                rmse_log=math.sqrt(s["sq_log_err"] / n),
                delta1=s["delta1"] / n,
                delta2=s["delta2"] / n,
                delta3=s["delta3"] / n,
                mae=s["abs_err"] / n,
            )
        result["valid_pixels"] = n
        result["frames"] = self._frames
        return result
