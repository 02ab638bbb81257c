# SPDX-License-Identifier: Apache-2.0
"""``mtl-eval`` with depth: metrics against an independent computation, depth-only frames."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from datasets import DETECTION_CLASSES, SEGMENTATION_CLASSES, make_processed_dataset

from mtl_perception.core.summary import JobSummary
from mtl_perception.evaluation.cli import evaluate, main
from mtl_perception.evaluation.dataset import EvalDataset
from mtl_perception.predictor import Prediction


class OraclePredictor:
    """Answers from a table keyed by the frame's bytes (the real Predictor is tested elsewhere)."""

    detection_classes = DETECTION_CLASSES
    segmentation_classes = SEGMENTATION_CLASSES
    max_detections = 100
    tasks = ("detection", "segmentation", "depth")

    def __init__(self, answers: dict[bytes, Prediction]) -> None:
        self.answers = answers

    def predict_batch(self, frames: list[np.ndarray]) -> list[Prediction]:
        return [self.answers[frame.tobytes()] for frame in frames]


def test_depth_metrics_match_an_independent_computation_and_skip_depth_only_frames_for_boxes(
    tmp_path: Path,
) -> None:
    root = make_processed_dataset(tmp_path / "ds", depth=True, depth_only=2)
    annotations = json.loads((root / "annotations.json").read_text())
    boxes: dict[int, list] = {}
    for ann in annotations["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes.setdefault(ann["image_id"], []).append(([x, y, x + w, y + h], ann["category_id"]))
    answers, pairs = {}, []
    rng = np.random.default_rng(0)
    for record in annotations["images"]:
        bgr = cv2.imread(str(root / record["file_name"]), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        shape = rgb.shape[:2]
        target = np.zeros(shape, np.float64)
        if "depth_file" in record:
            target = cv2.imread(str(root / record["depth_file"]), cv2.IMREAD_UNCHANGED) / 1000.0
        pred = (target if target.any() else np.ones(shape)) * rng.uniform(0.7, 1.4, shape)
        pred = np.where(target > 0, pred, 3.0).astype(np.float32)
        if "depth_file" in record:
            pairs.append((pred.astype(np.float64), target))
        own = boxes.get(record["id"], [])
        if record.get("labeled") is False:
            own = [
                ([0, 0, 30, 30], 1)
            ]  # would be a false positive if depth-only frames were scored
        answers[rgb.tobytes()] = Prediction(
            boxes=np.array([b for b, _ in own], np.float32).reshape(-1, 4),
            scores=np.ones(len(own), np.float32),
            labels=np.array([c for _, c in own], np.int64),
            label_names=[""] * len(own),
            mask=None,
            image_size=shape,
            depth=pred,
        )
    summary = JobSummary("t")
    dataset = EvalDataset(root, "all", DETECTION_CLASSES, None, summary, depth=True)
    report = evaluate(OraclePredictor(answers), dataset)  # type: ignore[arg-type]
    assert report["detection"]["map"] == pytest.approx(1.0)
    # Independent reference: pixel-weighted over every valid pixel of the split.
    pred = np.concatenate([p[t > 0] for p, t in pairs])
    gt = np.concatenate([t[t > 0] for _, t in pairs])
    ratio = np.maximum(pred / gt, gt / pred)
    depth = report["depth"]
    assert depth["valid_pixels"] == gt.size and depth["frames"] == len(pairs)
    assert depth["abs_rel"] == pytest.approx(np.mean(np.abs(pred - gt) / gt))
    assert depth["rmse"] == pytest.approx(np.sqrt(np.mean((pred - gt) ** 2)))
    assert depth["rmse_log"] == pytest.approx(np.sqrt(np.mean((np.log(pred) - np.log(gt)) ** 2)))
    assert depth["delta1"] == pytest.approx(np.mean(ratio < 1.25))
    assert depth["mae"] == pytest.approx(np.mean(np.abs(pred - gt)))
    assert summary.counts["depth skipped (frame has no depth)"] == 1
    assert summary.counts["depth-only frames (not scored for detection/segmentation)"] == 2


def test_cli_reports_depth_for_a_three_task_checkpoint(
    make_checkpoint, tmp_path: Path, capsys
) -> None:
    root = make_processed_dataset(tmp_path / "ds", depth=True, depth_only=1)
    (root / "depth" / "broken.png").write_bytes(b"")
    annotations = json.loads((root / "annotations.json").read_text())
    annotations["images"][0]["depth_file"] = "depth/broken.png"
    (root / "annotations.json").write_text(json.dumps(annotations))
    checkpoint = make_checkpoint(
        detection_classes=tuple(DETECTION_CLASSES),
        segmentation_classes=tuple(SEGMENTATION_CLASSES),
        tasks=("detection", "segmentation", "depth"),
    )
    out = tmp_path / "m.json"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--data",
                str(root),
                "--split",
                "all",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--profile-runs",
                "0",
            ]
        )
    captured = capsys.readouterr()
    assert (
        exit_info.value.code == 1
    )  # the broken depth file is a reported failure, the rest scored
    report = json.loads(out.read_text())
    assert report["tasks"] == ["detection", "segmentation", "depth"]
    assert report["depth"]["frames"] == 7 and report["depth"]["valid_pixels"] > 0
    assert 0 <= report["score"] <= 1
    assert "AbsRel" in captured.out and "d<1.25" in captured.out
    assert "depth file unreadable or of the wrong size: 1" in captured.err


def test_model_without_depth_ignores_depth_files(make_checkpoint, tmp_path: Path) -> None:
    root = make_processed_dataset(tmp_path / "ds", depth=True)
    dataset = EvalDataset(root, "all", None, None, JobSummary("t"))
    assert all(sample.depth is None for sample in dataset)


def test_demo_report_shows_the_depth_metrics_of_mtl_eval() -> None:
    from mtl_perception.demo.report import _per_class_tables, headline

    metrics = {
        "depth": {"abs_rel": 0.125, "rmse": 0.5, "delta1": 0.875, "frames": 3, "valid_pixels": 10}
    }
    summary = headline(metrics, None)
    assert summary["depth AbsRel"] == 0.125 and summary["depth δ<1.25"] == 0.875
    tables, _ = _per_class_tables(metrics)
    rows = {row[0]: row[1] for row in tables[-1].rows}
    assert rows["AbsRel"] == "0.125" and rows["RMSE (m)"] == "0.500" and rows["SqRel"] == "n/a"
    assert "depth AbsRel" not in headline({"detection": {"map": 0.5}}, None)
