# SPDX-License-Identifier: Apache-2.0
"""DetectionEvaluator against pycocotools' COCOeval run directly on the same hand-made case."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mtl_perception.evaluation.metrics import DetectionEvaluator, combined_score

CLASSES = ["box", "cone", "ball", "person"]  # "person" never appears in the ground truth

# Three images, three classes with GT: hits, a poorly localised hit, misses (GT without a
# detection), false positives (wrong class, background) and an image with no GT at all.
GT = {
    1: [([10, 10, 50, 60], 1), ([60, 20, 90, 80], 2), ([5, 70, 25, 90], 3)],
    2: [([0, 0, 40, 40], 1), ([45, 45, 95, 95], 1), ([10, 50, 30, 90], 2)],
    3: [],
}
DETS = {
    1: [
        ([12, 11, 50, 58], 0.95, 1),
        ([58, 25, 88, 78], 0.80, 2),
        ([70, 70, 90, 90], 0.60, 3),
        ([0, 0, 8, 8], 0.40, 1),
    ],
    2: [
        ([1, 2, 38, 41], 0.90, 1),
        ([50, 50, 80, 80], 0.70, 1),
        ([10, 50, 30, 90], 0.30, 3),
        ([0, 0, 40, 40], 0.2, 4),
    ],
    3: [([20, 20, 40, 40], 0.85, 2)],
}


def _xywh(box: list[float]) -> list[float]:
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def _cocoeval_reference(cat_ids: list[int] | None = None) -> np.ndarray:
    """COCOeval.stats for the case above (optionally restricted to some categories)."""
    images = [{"id": i, "width": 100, "height": 100} for i in GT]
    anns = []
    for image_id, objects in GT.items():
        for box, label in objects:
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": _xywh(box),
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    dets = [
        {"image_id": image_id, "category_id": label, "bbox": _xywh(box), "score": score}
        for image_id, items in DETS.items()
        for box, score, label in items
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)],
        }
        gt.createIndex()
        dt = gt.loadRes(dets)
        coco_eval = COCOeval(gt, dt, "bbox")
        if cat_ids is not None:
            coco_eval.params.catIds = cat_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


def _torch_case() -> tuple[list[dict], list[dict]]:
    preds, targets = [], []
    for image_id in GT:
        items = DETS[image_id]
        preds.append(
            {
                "boxes": torch.tensor([b for b, _, _ in items], dtype=torch.float32).reshape(
                    -1, 4
                ),
                "scores": torch.tensor([s for _, s, _ in items]),
                "labels": torch.tensor([c for _, _, c in items]),
            }
        )
        targets.append(
            {
                "boxes": torch.tensor([b for b, _ in GT[image_id]], dtype=torch.float32).reshape(
                    -1, 4
                ),
                "labels": torch.tensor([c for _, c in GT[image_id]], dtype=torch.int64),
            }
        )
    return preds, targets


def _evaluate(batch_size: int = 1) -> dict:
    evaluator = DetectionEvaluator(CLASSES)
    preds, targets = _torch_case()
    for start in range(0, len(preds), batch_size):
        evaluator.update(preds[start : start + batch_size], targets[start : start + batch_size])
    return evaluator.compute()


def test_map_matches_cocoeval() -> None:
    result = _evaluate()
    stats = _cocoeval_reference()
    assert result["map"] == pytest.approx(stats[0], abs=1e-6)
    assert result["map_50"] == pytest.approx(stats[1], abs=1e-6)
    assert result["map_75"] == pytest.approx(stats[2], abs=1e-6)
    assert 0.0 < result["map"] < result["map_50"] < 1.0  # the case really has misses and FPs


@pytest.mark.parametrize("category", [1, 2, 3])
def test_per_class_ap_matches_cocoeval(category: int) -> None:
    result = _evaluate(batch_size=2)
    stats = _cocoeval_reference([category])
    name = CLASSES[category - 1]
    assert result["per_class_ap"][name] == pytest.approx(stats[0], abs=1e-6)
    assert result["per_class_ap_50"][name] == pytest.approx(stats[1], abs=1e-6)


def test_class_without_ground_truth_is_none_and_excluded() -> None:
    result = _evaluate()
    assert result["per_class_ap"]["person"] is None
    assert result["per_class_ap_50"]["person"] is None
    defined = [v for v in result["per_class_ap"].values() if v is not None]
    assert result["map"] == pytest.approx(sum(defined) / len(defined), abs=1e-6)


def test_two_evaluations_in_a_row_are_independent() -> None:
    evaluator = DetectionEvaluator(CLASSES)
    preds, targets = _torch_case()
    evaluator.update(preds, targets)
    first = evaluator.compute()
    evaluator.reset()
    # Second "epoch": a perfect model on image 1 only.
    perfect = {
        "boxes": targets[0]["boxes"],
        "scores": torch.ones(len(targets[0]["labels"])),
        "labels": targets[0]["labels"],
    }
    evaluator.update([perfect], [targets[0]])
    second = evaluator.compute()
    assert evaluator.num_images == 1
    assert second["map"] == pytest.approx(1.0)
    assert first["map"] < 1.0
    # And repeating the first evaluation gives exactly the first result again.
    evaluator.reset()
    evaluator.update(preds, targets)
    assert evaluator.compute()["map"] == pytest.approx(first["map"], abs=1e-9)


def test_empty_evaluation_is_nan_not_zero() -> None:
    evaluator = DetectionEvaluator(CLASSES)
    result = evaluator.compute()
    assert math.isnan(result["map"]) and math.isnan(result["map_50"])
    assert all(v is None for v in result["per_class_ap"].values())


def test_images_without_predictions_or_ground_truth() -> None:
    evaluator = DetectionEvaluator(["a"])
    empty_pred = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    empty_gt = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    gt = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}
    evaluator.update([empty_pred, empty_pred], [empty_gt, gt])
    result = evaluator.compute()
    assert result["map"] == pytest.approx(0.0)  # GT exists but was missed: 0, not NaN
    assert result["per_class_ap"]["a"] == pytest.approx(0.0)


def test_combined_score() -> None:
    assert combined_score({"map": 0.4, "miou": 0.6}) == pytest.approx(0.5)
    assert combined_score(
        {"detection": {"map": 0.4}, "segmentation": {"miou": 0.8}}
    ) == pytest.approx(0.6)
    assert combined_score({"map": 0.3}) == pytest.approx(0.3)
    assert combined_score({"map": float("nan"), "miou": 0.7}) == pytest.approx(0.7)
    assert math.isnan(combined_score({}))


def test_only_the_best_max_detections_per_image_count() -> None:
    """Like COCOeval: a flood of low-score boxes past the limit changes nothing, warns nothing."""
    import warnings

    target = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "labels": torch.tensor([1])}]
    good = {
        "boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
    }
    flood = {
        "boxes": torch.cat(
            [good["boxes"], torch.tensor([[60.0, 60.0, 70.0, 70.0]]).repeat(150, 1)]
        ),
        "scores": torch.cat([good["scores"], torch.full((150,), 0.1)]),
        "labels": torch.cat([good["labels"], torch.ones(150, dtype=torch.int64)]),
    }
    clean, flooded = (
        DetectionEvaluator(["a"], max_detections=100),
        DetectionEvaluator(["a"], max_detections=100),
    )
    clean.update([good], target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flooded.update([flood], target)
        result = flooded.compute()
    assert result["map"] == pytest.approx(clean.compute()["map"])
    assert result["map_50"] == pytest.approx(1.0)
