# SPDX-License-Identifier: Apache-2.0
"""Accuracy of the node's answers against ground truth, matched by header stamp.

Detections arrive as class *names* (``ObjectHypothesis.class_id``) and are mapped to the
ground truth's 1-based labels for ``DetectionEvaluator``; names the ground truth does not know
are counted and left out. Segmentation masks hold the *model's* class ids; the ground-truth
mask is translated to those ids by class name, and ground-truth classes the model lacks
become ``ignore`` (the model cannot be right or wrong about a class it was not trained on).
Only frames that were answered and have ground truth are scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mtl_perception.core.constants import IGNORE_INDEX
from mtl_perception.evaluation.metrics import ConfusionMatrix, DetectionEvaluator
from mtl_perception.replay.ground_truth import GroundTruth

__all__ = ["StampScorer"]


class StampScorer:
    """Accumulates mAP and mIoU over the frames of one replay."""

    def __init__(
        self, truth: GroundTruth, model_segmentation_classes: Sequence[str] | None = None
    ) -> None:
        self.truth = truth
        self._label_of = {name: i + 1 for i, name in enumerate(truth.detection_classes)}
        self._detections = (
            DetectionEvaluator(truth.detection_classes) if truth.detection_classes else None
        )
        self._seg_classes = list(model_segmentation_classes or truth.segmentation_classes or [])
        self._confusion = (
            ConfusionMatrix(len(self._seg_classes))
            if self._seg_classes and truth.segmentation_classes
            else None
        )
        self._mask_lut = self._ground_truth_lut(
            truth.segmentation_classes or [], self._seg_classes
        )
        self.detection_frames = 0
        self.segmentation_frames = 0
        self.unknown_class_detections = 0
        self.mask_problems = 0

    @staticmethod
    def _ground_truth_lut(
        truth_classes: Sequence[str], model_classes: Sequence[str]
    ) -> np.ndarray:
        """uint8 table: ground-truth class id -> model class id (255 = ignore)."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        model_index = {name: i for i, name in enumerate(model_classes)}
        for truth_id, name in enumerate(truth_classes[:IGNORE_INDEX]):
            if name in model_index:
                lut[truth_id] = model_index[name]
        return lut

    def add_detections(
        self, stamp_ns: int, boxes_xyxy: np.ndarray, scores: np.ndarray, class_names: Sequence[str]
    ) -> bool:
        """Score one frame's detections; False if the stamp has no ground truth."""
        frame = self.truth.frames.get(stamp_ns)
        if frame is None or self._detections is None:
            return False
        keep = [i for i, name in enumerate(class_names) if name in self._label_of]
        self.unknown_class_detections += len(class_names) - len(keep)
        pred = {
            "boxes": torch.as_tensor(
                np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)[keep]
            ),
            "scores": torch.as_tensor(np.asarray(scores, dtype=np.float32).reshape(-1)[keep]),
            "labels": torch.as_tensor(
                [self._label_of[class_names[i]] for i in keep], dtype=torch.int64
            ),
        }
        target = {
            "boxes": torch.as_tensor(frame.boxes),
            "labels": torch.as_tensor([self._label_of[n] for n in frame.names], dtype=torch.int64),
            "iscrowd": torch.as_tensor(frame.iscrowd),
        }
        self._detections.update([pred], [target])
        self.detection_frames += 1
        return True

    def add_mask(self, stamp_ns: int, mask: np.ndarray) -> bool:
        """Score one frame's class-id mask; False if there is nothing to compare it with."""
        frame = self.truth.frames.get(stamp_ns)
        if frame is None or self._confusion is None:
            return False
        truth_mask = frame.load_mask()
        if (
            truth_mask is None
            or truth_mask.shape != mask.shape
            or int(mask.max(initial=0)) >= len(self._seg_classes)
        ):
            self.mask_problems += 1
            return False
        target = self._mask_lut[truth_mask]  # ground-truth ids -> model ids
        self._confusion.update(
            torch.from_numpy(mask.astype(np.int64)), torch.from_numpy(target.astype(np.int64))
        )
        self.segmentation_frames += 1
        return True

    def compute(self) -> dict[str, Any]:
        """``{"detection": {...}, "segmentation": {...}}`` for the tasks that were scored."""
        result: dict[str, Any] = {}
        if self._detections is not None and self.detection_frames:
            result["detection"] = {
                **self._detections.compute(),
                "frames": self.detection_frames,
                "unknown_class_detections": self.unknown_class_detections,
                "classes": list(self.truth.detection_classes),
            }
        if self._confusion is not None and self.segmentation_frames:
            seg = self._confusion.compute()
            seg.pop("confusion")
            result["segmentation"] = {
                **seg,
                "frames": self.segmentation_frames,
                "mask_problems": self.mask_problems,
                "classes": self._seg_classes,
            }
        return result
