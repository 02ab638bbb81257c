# SPDX-License-Identifier: Apache-2.0
"""Validation/test metrics shared by training (``best.pt`` selection) and ``mtl-eval``.

- ``DetectionEvaluator``: COCO box mAP through torchmetrics' ``MeanAveragePrecision``
  (pycocotools semantics, or faster_coco_eval when installed), plus per-class AP.
- ``ConfusionMatrix``: semantic segmentation confusion matrix over a whole split, from which
  mIoU, per-class IoU and pixel accuracy follow.
- ``combined_score``: the one number that decides which checkpoint is ``best.pt``.

All results are plain Python values (floats, lists, dicts) so they go straight into JSON,
TensorBoard and checkpoint files. "Undefined" is ``NaN`` for scalars and ``None`` for
per-class entries (a class without ground truth has no AP/IoU, it is not 0).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision

# Inputs are converted with torch.as_tensor: predictions and labels may come as numpy arrays.
Array = torch.Tensor | np.ndarray

__all__ = ["ConfusionMatrix", "DetectionEvaluator", "coco_backend", "combined_score"]


def coco_backend() -> Literal["faster_coco_eval", "pycocotools"]:
    """The COCO evaluation backend: faster_coco_eval when installed (faster), else pycocotools."""
    return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"


def _undefined_to_nan(value: float) -> float:
    """COCO tools mark "no ground truth" with -1; report that as NaN, not as a score."""
    return float("nan") if value < 0 else float(value)


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


class DetectionEvaluator:
    """COCO box mAP@[.5:.95], mAP@.5, mAP@.75 and per-class AP over one evaluation pass.

    ``update`` takes torchvision-style lists of dicts: predictions with ``boxes`` (xyxy pixels),
    ``scores``, ``labels`` (1-based: label ``k`` is ``class_names[k-1]``) and targets with
    ``boxes``, ``labels`` (optionally ``iscrowd``). ``compute`` returns::

        {"map", "map_50", "map_75": float (NaN if the split has no ground-truth box),
         "per_class_ap", "per_class_ap_50": {name: float | None}}

    A class without ground truth gets ``None`` and is left out of the means, as COCO does.
    Each ``reset`` (and construction) creates a fresh torchmetrics state, so consecutive
    evaluations (e.g. one per epoch) never share detections.
    """

    def __init__(self, class_names: Sequence[str], max_detections: int = 100) -> None:
        if not class_names:
            raise ValueError("DetectionEvaluator needs at least one class name")
        self.class_names = list(class_names)
        self.max_detections = max_detections
        self.reset()

    def reset(self) -> None:
        """Forget every update: a brand-new metric object, not a shared/accumulated one."""
        self._metric = MeanAveragePrecision(
            box_format="xyxy",
            iou_type="bbox",
            class_metrics=True,
            extended_summary=True,  # the precision array gives per-class AP@.5
            max_detection_thresholds=[1, 10, self.max_detections],
            backend=coco_backend(),
        )
        self._num_images = 0

    @property
    def num_images(self) -> int:
        """Images added since the last reset."""
        return self._num_images

    def update(
        self,
        preds: Sequence[Mapping[str, Array]],
        targets: Sequence[Mapping[str, Array]],
    ) -> None:
        """Add one batch of per-image predictions and ground truth (moved to the CPU)."""
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        cpu_preds = [self._top_detections(p) for p in preds]
        cpu_targets = []
        for t in targets:
            target = {
                "boxes": torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4).cpu(),
                "labels": torch.as_tensor(t["labels"], dtype=torch.int64).reshape(-1).cpu(),
            }
            if "iscrowd" in t:
                target["iscrowd"] = (
                    torch.as_tensor(t["iscrowd"], dtype=torch.int64).reshape(-1).cpu()
                )
            cpu_targets.append(target)
        self._metric.update(cpu_preds, cpu_targets)
        self._num_images += len(preds)

    def _top_detections(self, pred: Mapping[str, Array]) -> dict[str, torch.Tensor]:
        """One image's predictions on the CPU, only the ``max_detections`` best.

        That is COCO's rule (COCOeval keeps the top-scoring ones too); cutting here keeps
        torchmetrics from warning.
        """
        scores = torch.as_tensor(pred["scores"], dtype=torch.float32).reshape(-1).cpu()
        keep = torch.argsort(scores, descending=True, stable=True)[: self.max_detections]
        return {
            "boxes": torch.as_tensor(pred["boxes"], dtype=torch.float32)
            .reshape(-1, 4)
            .cpu()[keep],
            "scores": scores[keep],
            "labels": torch.as_tensor(pred["labels"], dtype=torch.int64).reshape(-1).cpu()[keep],
        }

    def compute(self) -> dict[str, Any]:
        """COCO summary of everything added since the last reset (see the class docstring)."""
        nan = float("nan")
        per_class_ap: dict[str, float | None] = dict.fromkeys(self.class_names)
        per_class_ap_50: dict[str, float | None] = dict(per_class_ap)
        if self._num_images == 0:
            return {
                "map": nan,
                "map_50": nan,
                "map_75": nan,
                "per_class_ap": per_class_ap,
                "per_class_ap_50": per_class_ap_50,
            }

        result = self._metric.compute()
        classes = [int(c) for c in result["classes"].reshape(-1).tolist()]
        map_per_class = result["map_per_class"].reshape(-1).tolist()
        # precision: [iou_thr, recall_thr, class, area, max_det]; iou 0 = .5, area 0 = all,
        # max_det -1 = the largest. COCO's AP is the mean over recall thresholds, -1 = no GT.
        precision_50 = result["precision"][0, :, :, 0, -1]
        for column, label in enumerate(classes):
            if not 1 <= label <= len(self.class_names):
                continue  # a predicted label outside the class list has no ground truth anyway
            name = self.class_names[label - 1]
            per_class_ap[name] = _nan_to_none(_undefined_to_nan(map_per_class[column]))
            curve = precision_50[:, column]
            valid = curve[curve > -1]
            per_class_ap_50[name] = float(valid.mean()) if valid.numel() else None
        return {
            "map": _undefined_to_nan(float(result["map"])),
            "map_50": _undefined_to_nan(float(result["map_50"])),
            "map_75": _undefined_to_nan(float(result["map_75"])),
            "per_class_ap": per_class_ap,
            "per_class_ap_50": per_class_ap_50,
        }


class ConfusionMatrix:
    """Semantic-segmentation confusion matrix accumulated over a whole split.

    ``confusion[g, p]`` counts pixels of ground-truth class ``g`` predicted as ``p``; pixels
    whose target is ``ignore_index`` are skipped. Accumulating counts (not averaging per-image
    IoUs) gives the dataset-level IoU that segmentation benchmarks report.

    ``compute`` returns ``{"miou", "per_class_iou", "pixel_accuracy", "confusion"}``:
    IoU_k = TP / (TP + FP + FN) for every class **including background** (class 0). A class
    absent from both ground truth and prediction has 0/0 = NaN IoU (``None`` in
    ``per_class_iou``) and is left out of ``miou``; a class predicted but never present
    still counts (IoU 0), since those pixels are wrong.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Zero the counts."""
        self._counts = torch.zeros(self.num_classes * self.num_classes, dtype=torch.int64)

    def update(self, pred: Array, target: Array) -> None:
        """Add predicted and ground-truth class-id maps of the same shape (any batch layout).

        Raises ``ValueError`` if a non-ignored target or a prediction is outside
        ``[0, num_classes)``: a mask from another label set must not be scored silently.
        """
        pred = torch.as_tensor(pred)
        target = torch.as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(pred.shape)} differs from target shape "
                f"{tuple(target.shape)}"
            )
        pred = pred.reshape(-1).to(torch.int64)
        target = target.reshape(-1).to(device=pred.device, dtype=torch.int64)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        for name, values in (("target", target), ("prediction", pred)):
            if values.numel() and (int(values.min()) < 0 or int(values.max()) >= self.num_classes):
                bad = values[(values < 0) | (values >= self.num_classes)][0]
                raise ValueError(
                    f"{name} class id {int(bad)} is outside 0..{self.num_classes - 1}"
                )
        counts = torch.bincount(target * self.num_classes + pred, minlength=self.num_classes**2)
        self._counts += counts.cpu()

    @property
    def confusion(self) -> torch.Tensor:
        """The ``[num_classes, num_classes]`` int64 count matrix (rows = ground truth)."""
        return self._counts.reshape(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, Any]:
        """mIoU, per-class IoU, pixel accuracy and the raw matrix (see the class docstring)."""
        confusion = self.confusion.to(torch.float64)
        true_positive = confusion.diagonal()
        union = confusion.sum(0) + confusion.sum(1) - true_positive
        iou = true_positive / union  # 0/0 -> NaN for classes absent from GT and prediction
        total = confusion.sum()
        return {
            "miou": float(iou.nanmean()) if not torch.isnan(iou).all() else float("nan"),
            "per_class_iou": [_nan_to_none(float(v)) for v in iou.tolist()],
            "pixel_accuracy": float(true_positive.sum() / total) if total > 0 else float("nan"),
            "confusion": self.confusion.tolist(),
        }


def _task_value(metrics: Mapping[str, Any], task: str, key: str) -> float | None:
    """``metrics[key]`` or ``metrics[task][key]`` as a finite float, else None."""
    value = metrics.get(key)
    if value is None and isinstance(metrics.get(task), Mapping):
        value = metrics[task].get(key)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def combined_score(metrics: Mapping[str, Any]) -> float:
    """The single "higher is better" number used to pick ``best.pt``.

    Mean of detection COCO mAP@[.5:.95] (key ``map``), segmentation mIoU incl. background
    (key ``miou``) and depth delta1 (share of valid pixels with max(pred/gt, gt/pred) < 1.25,
    key ``delta1``) over the tasks present, all in [0, 1]. Keys are looked up at the top level
    or under ``metrics["detection"]`` / ``metrics["segmentation"]`` / ``metrics["depth"]``.
    mAP@[.5:.95] rather than mAP@.5 because it also rewards box precision, which the downstream
    consumers need; delta1 because it is the bounded accuracy-style depth figure.
    Returns NaN when no metric is available (e.g. empty validation split).
    """
    keys = (("detection", "map"), ("segmentation", "miou"), ("depth", "delta1"))
    values = [v for v in (_task_value(metrics, task, key) for task, key in keys) if v is not None]
    return sum(values) / len(values) if values else float("nan")
