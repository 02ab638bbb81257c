# SPDX-License-Identifier: Apache-2.0
"""Depth accuracy of a replay: the node's ``~/depth`` against the bag's own depth topic.

An RGB-D bag is its own ground truth: the aligned depth topic (``16UC1`` millimetres,
``32FC1`` metres or ``compressedDepth``) holds what the camera measured at each colour frame.
Each depth answer (``32FC1`` metres at input resolution, carrying the input's header stamp) is
scored against the bag's depth frame nearest that stamp within a tolerance, with the same
conversions and invalid-pixel rules as ``mtl-data build`` (``mtl_perception.core.depth``) and
the same metrics as ``mtl-eval`` (``DepthMetrics``: every valid pixel of the replay counts once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mtl_perception.core.depth import DEFAULT_DEPTH_UNIT_M, depth_to_metres, nearest_stamp
from mtl_perception.evaluation.depth_metrics import DepthMetrics

__all__ = ["DepthReference", "DepthScorer"]


class DepthReference:
    """The bag's depth frames by header stamp; ``load(i)`` decodes frame ``i`` on demand.

    Args:
        topic: The depth topic's name (for the report).
        stamps_ns: Header stamps of the depth frames, in any order.
        load: Returns the decoded depth image (uint16 units or float32 metres) of the frame at
            a position of ``stamps_ns``; raises ``ValueError`` if it cannot be decoded.
        skipped: Messages of the topic that could not be read at all (reported).
    """

    def __init__(
        self,
        topic: str,
        stamps_ns: Sequence[int],
        load: Callable[[int], np.ndarray],
        skipped: int = 0,
    ) -> None:
        self.topic = topic
        self.skipped = skipped
        self._order = sorted(range(len(stamps_ns)), key=lambda i: stamps_ns[i])
        self._stamps = [stamps_ns[i] for i in self._order]
        self._load = load

    def __len__(self) -> int:
        return len(self._stamps)

    def nearest(self, stamp_ns: int, tolerance_ns: int) -> int | None:
        """Position (for ``load``) of the depth frame nearest ``stamp_ns`` within the tolerance."""
        i = nearest_stamp(self._stamps, stamp_ns, tolerance_ns)
        return None if i is None else self._order[i]

    def load(self, position: int) -> np.ndarray:
        """The decoded depth image at ``position``; ``ValueError`` if it cannot be decoded."""
        return self._load(position)


class DepthScorer:
    """Accumulates depth metrics over the node's depth answers of one replay.

    Args:
        reference: The bag's depth frames.
        tolerance_ns: Largest stamp difference between an answer and its depth frame.
        unit_m: Metres per unit of integer depth (``16UC1``: 0.001).
        max_depth: Depth beyond this (metres) is invalid; ``None`` keeps all.
    """

    def __init__(
        self,
        reference: DepthReference,
        tolerance_ns: int,
        unit_m: float = DEFAULT_DEPTH_UNIT_M,
        max_depth: float | None = None,
    ) -> None:
        self.reference = reference
        self.tolerance_ns = tolerance_ns
        self.unit_m = unit_m
        self.max_depth = max_depth
        self.metrics = DepthMetrics(max_depth=max_depth)
        self.frames_without_depth = 0
        self.size_mismatches = 0
        self.unreadable_depth = 0
        self.first_problem: str | None = None

    def _problem(self, text: str) -> None:
        if self.first_problem is None:
            self.first_problem = text

    def add_depth(self, stamp_ns: int, pred_m: np.ndarray) -> bool:
        """Score one answer (``[H, W]`` float metres); False when it could not be scored.

        Raises:
            ValueError: The answer is not a single-channel image or is non-finite on a valid
                pixel (a node bug, reported by the caller).
        """
        if pred_m.ndim != 2:
            raise ValueError(f"depth answer has shape {pred_m.shape}, expected 32FC1 [H, W]")
        position = self.reference.nearest(stamp_ns, self.tolerance_ns)
        if position is None:
            self.frames_without_depth += 1
            return False
        try:
            target = depth_to_metres(self.reference.load(position), self.unit_m, self.max_depth)
        except ValueError as err:
            self.unreadable_depth += 1
            self._problem(f"stamp {stamp_ns}: {err}")
            return False
        if target.shape != pred_m.shape:
            self.size_mismatches += 1
            self._problem(
                f"stamp {stamp_ns}: depth answer {pred_m.shape[1]}x{pred_m.shape[0]} vs "
                f"{self.reference.topic} {target.shape[1]}x{target.shape[0]}"
            )
            return False
        self.metrics.update(pred_m, target)
        return True

    def compute(self) -> dict[str, Any]:
        """The depth section of ``report.json`` (CONTRACTS §11.5)."""
        result = self.metrics.compute()
        return {
            **result,
            "depth_topic": self.reference.topic,
            "frames_without_depth": self.frames_without_depth,
            "size_mismatches": self.size_mismatches,
            "unreadable_depth": self.unreadable_depth + self.reference.skipped,
            "first_problem": self.first_problem,
        }
