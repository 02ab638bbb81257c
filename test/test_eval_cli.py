# SPDX-License-Identifier: Apache-2.0
"""``mtl-eval`` and its tolerant dataset reader on tiny hand-written datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from mtl_perception.core.errors import UserError
from mtl_perception.core.summary import JobSummary
from mtl_perception.evaluation.cli import evaluate, main
from mtl_perception.evaluation.dataset import EvalDataset
from mtl_perception.predictor import Prediction

MODEL_DET = ["box", "cone", "ball"]
MODEL_SEG = ["background", "floor", "wall"]


def _write_dataset(
    root: Path,
    num_images: int = 3,
    categories: list[dict[str, Any]] | None = None,
    segmentation_classes: list[str] | None = None,
    size: tuple[int, int] = (48, 64),
) -> dict[str, Any]:
    """A processed dataset (CONTRACTS §4), boxes on images 0 and 1 only; return the COCO dict."""
    categories = categories or [{"id": i + 1, "name": n} for i, n in enumerate(MODEL_DET)]
    segmentation_classes = segmentation_classes or MODEL_SEG
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for index in range(num_images):
        height, width = size
        cv2.imwrite(
            str(root / "images" / f"{index}.png"),
            rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        )
        mask = np.zeros((height, width), np.uint8)
        mask[height // 2 :] = 1
        mask[:4, :4] = 255
        cv2.imwrite(str(root / "masks" / f"{index}.png"), mask)
        images.append(
            {
                "id": 100 + index,
                "file_name": f"images/{index}.png",
                "width": width,
                "height": height,
                "mask_file": f"masks/{index}.png",
            }
        )
        if index < 2:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 100 + index,
                    "category_id": categories[0]["id"],
                    "bbox": [5, 5, 20, 15],
                    "area": 300,
                    "iscrowd": 0,
                }
            )
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations.json").write_text(json.dumps(coco))
    ids = [image["id"] for image in images]
    (root / "splits.json").write_text(
        json.dumps({"train": [], "val": ids, "test": ids[:1], "group_by": "time", "seed": 0})
    )
    palette = [[i * 40, 0, 0] for i in range(len(segmentation_classes))]
    (root / "classes.json").write_text(
        json.dumps(
            {
                "detection_classes": [c["name"] for c in categories],
                "segmentation_classes": segmentation_classes,
                "palette": palette,
            }
        )
    )
    return coco


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--device", "cpu", "--profile-runs", "1"])
    captured = capsys.readouterr()
    return int(exit_info.value.code), captured.out, captured.err


def test_full_evaluation_writes_report(
    make_checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    _write_dataset(data)
    out = tmp_path / "metrics.json"
    code, stdout, stderr = _run(
        capsys,
        "--checkpoint",
        str(make_checkpoint()),
        "--data",
        str(data),
        "--out",
        str(out),
        "--batch-size",
        "2",
    )
    assert code == 0, stderr
    report = json.loads(out.read_text())  # strict JSON: NaN written as null
    assert report["num_images"] == 3
    assert set(report["detection"]["per_class_ap"]) == set(MODEL_DET)
    assert report["detection"]["per_class_ap"]["cone"] is None  # no ground truth
    assert 0.0 <= report["detection"]["map"] <= 1.0
    seg = report["segmentation"]
    # Every non-ignored pixel of the 3 masks is counted exactly once.
    assert sum(map(sum, seg["confusion"])) == 3 * (48 * 64 - 16)
    assert seg["num_images"] == 3 and list(seg["per_class_iou"]) == MODEL_SEG
    assert seg["per_class_iou"]["background"] is not None  # background is scored
    assert report["profile"]["parameters"] > 0 and report["profile"]["gflops"] > 0
    assert "mAP@[.5:.95]" in stdout and "mIoU" in stdout and "GFLOPs" in stdout


def test_default_output_next_to_checkpoint_and_test_split(
    make_checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "mydata"
    _write_dataset(data)
    checkpoint = make_checkpoint(arch="ssdlite")
    code, _, stderr = _run(
        capsys, "--checkpoint", str(checkpoint), "--data", str(data), "--split", "test"
    )
    assert code == 0, stderr
    report = json.loads((checkpoint.parent / "eval_mydata_test.json").read_text())
    assert report["num_images"] == 1 and "segmentation" not in report


def test_real_world_dataset_quirks(
    make_checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Foreign category ids/case, an extra class, a missing mask and an unreadable image."""
    data = tmp_path / "data"
    categories = [
        {"id": 7, "name": "Cone "},
        {"id": 3, "name": "BOX"},
        {"id": 11, "name": "person"},
        {"id": 9, "name": "ball"},
    ]
    coco = _write_dataset(
        data,
        num_images=4,
        categories=categories,
        segmentation_classes=["background", "wall", "sky", "floor"],
    )
    (data / "masks" / "1.png").unlink()
    (data / "images" / "3.png").write_bytes(b"not a png")
    coco["annotations"].append(
        {
            "id": 99,
            "image_id": 100,
            "category_id": 11,
            "bbox": [0, 0, 5, 5],
            "area": 25,
            "iscrowd": 0,
        }
    )
    (data / "annotations.json").write_text(json.dumps(coco))
    out = tmp_path / "m.json"
    code, _, stderr = _run(
        capsys, "--checkpoint", str(make_checkpoint()), "--data", str(data), "--out", str(out)
    )
    assert code == 1  # the unreadable image is a failure, the rest still evaluated
    report = json.loads(out.read_text())
    assert report["num_images"] == 3 and report["segmentation"]["num_images"] == 2
    assert report["summary"]["problems"] == {"image unreadable": 1}
    assert report["summary"]["counts"]["segmentation skipped (no mask)"] == 1
    assert report["summary"]["counts"]["annotations of classes the model lacks"] == 1
    assert "image unreadable: 1" in stderr


def test_dataset_maps_classes_by_name(tmp_path: Path) -> None:
    data = tmp_path / "data"
    categories = [{"id": 7, "name": "cone"}, {"id": 3, "name": "Box"}, {"id": 9, "name": "ball"}]
    _write_dataset(
        data, categories=categories, segmentation_classes=["background", "wall", "sky", "floor"]
    )
    dataset = EvalDataset(data, "val", MODEL_DET, MODEL_SEG, JobSummary("t"))
    sample = next(iter(dataset))
    assert sample.target["labels"].tolist() == [2]  # dataset id 7 "cone" -> model label 2
    assert sample.target["boxes"].tolist() == [[5.0, 5.0, 25.0, 20.0]]  # xywh -> xyxy
    # Dataset mask id 1 = "wall" -> model id 2; ignore stays 255.
    assert set(np.unique(sample.mask)) == {0, 2, 255}


def test_checkpoint_classes_missing_from_dataset(
    make_checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    _write_dataset(data, categories=[{"id": 1, "name": "box"}, {"id": 2, "name": "car"}])
    code, _, stderr = _run(capsys, "--checkpoint", str(make_checkpoint()), "--data", str(data))
    assert code == 2
    assert "['cone', 'ball']" in stderr and "car" in stderr and stderr.count("\n") == 1


def test_segmentation_classes_missing_from_dataset(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_dataset(data, segmentation_classes=["background", "floor"])
    with pytest.raises(
        UserError, match=r"segmentation_classes: the checkpoint's class\(es\) \['wall'\]"
    ):
        EvalDataset(data, "val", MODEL_DET, MODEL_SEG, JobSummary("t"))


def test_empty_split_and_bad_inputs(
    make_checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    _write_dataset(data)
    checkpoint = str(make_checkpoint(arch="lraspp"))
    code, _, stderr = _run(
        capsys, "--checkpoint", checkpoint, "--data", str(data), "--split", "train"
    )
    assert code == 2 and "'train' split has no images" in stderr
    not_a_checkpoint = tmp_path / "x.pt"
    not_a_checkpoint.write_bytes(b"hello")
    code, _, stderr = _run(capsys, "--checkpoint", str(not_a_checkpoint), "--data", str(data))
    assert code == 2 and "cannot be read" in stderr
    code, _, stderr = _run(capsys, "--checkpoint", checkpoint, "--data", str(tmp_path / "missing"))
    assert code == 2 and "is not a folder" in stderr


def test_split_ids_unknown_and_split_all(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_dataset(data)
    (data / "splits.json").write_text(json.dumps({"val": [100, 555]}))
    summary = JobSummary("t")
    assert len(EvalDataset(data, "val", MODEL_DET, None, summary)) == 1
    assert summary.problems["split id not in annotations.json"] == 1
    (data / "splits.json").unlink()
    assert len(EvalDataset(data, "all", MODEL_DET, None, JobSummary("t"))) == 3
    with pytest.raises(UserError, match=r"splits\.json does not exist"):
        EvalDataset(data, "val", MODEL_DET, None, JobSummary("t"))


class OraclePredictor:
    """Duck-typed Predictor answering each frame with its ground truth in the model's ids."""

    detection_classes = MODEL_DET
    segmentation_classes = MODEL_SEG
    max_detections = 100

    def __init__(self, answers: dict[bytes, Prediction]) -> None:
        self.answers = answers

    def predict_batch(self, frames: list[np.ndarray]) -> list[Prediction]:
        return [self.answers[frame.tobytes()] for frame in frames]


def test_perfect_predictions_score_one_through_foreign_ids(tmp_path: Path) -> None:
    """Class ids remapped by name, boxes and masks in original pixels: an oracle gets 1.0."""
    data = tmp_path / "data"
    categories = [{"id": 7, "name": "cone"}, {"id": 3, "name": "box"}, {"id": 9, "name": "ball"}]
    _write_dataset(
        data, categories=categories, segmentation_classes=["background", "wall", "sky", "floor"]
    )
    answers = {}
    for index in range(3):
        rgb = cv2.cvtColor(cv2.imread(str(data / "images" / f"{index}.png")), cv2.COLOR_BGR2RGB)
        dataset_mask = cv2.imread(str(data / "masks" / f"{index}.png"), cv2.IMREAD_UNCHANGED)
        mask = np.where(dataset_mask == 1, 2, 0).astype(np.uint8)  # dataset "wall" = model id 2
        has_box = index < 2
        answers[rgb.tobytes()] = Prediction(
            boxes=np.array([[5, 5, 25, 20]] if has_box else np.zeros((0, 4)), np.float32),
            scores=np.ones(int(has_box), np.float32),
            labels=np.full(int(has_box), 2),  # "cone"
            label_names=["cone"] * int(has_box),
            mask=mask,
            image_size=mask.shape,
        )
    summary = JobSummary("t")
    report = evaluate(
        OraclePredictor(answers), EvalDataset(data, "val", MODEL_DET, MODEL_SEG, summary)
    )  # type: ignore[arg-type]
    assert report["detection"]["map"] == pytest.approx(1.0)
    assert report["detection"]["per_class_ap"] == {
        "box": None,
        "cone": pytest.approx(1.0),
        "ball": None,
    }
    assert report["segmentation"]["miou"] == pytest.approx(1.0)
    assert report["segmentation"]["per_class_iou"]["floor"] is None
    assert summary.failed == 0


def test_plain_coco_export_without_classes_json(tmp_path: Path) -> None:
    """A foreign COCO export: images referenced without the images/ prefix, no classes.json."""
    data = tmp_path / "data"
    coco = _write_dataset(data)
    (data / "classes.json").unlink()
    for image in coco["images"]:
        image["file_name"] = image["file_name"].removeprefix("images/")
        del image["mask_file"]
    (data / "annotations.json").write_text(json.dumps(coco))
    summary = JobSummary("t")
    dataset = EvalDataset(data, "val", MODEL_DET, MODEL_SEG, summary)
    samples = list(dataset)
    assert not dataset.segmentation_available and all(s.mask is None for s in samples)
    assert len(samples) == 3 and summary.failed == 0
    assert summary.counts["segmentation not scored (no classes.json)"] == 1


def test_table_shows_depth_errors_in_metres_and_deltas_in_percent() -> None:
    import io

    from mtl_perception.evaluation.cli import print_table

    depth = {
        "abs_rel": 0.1234,
        "sq_rel": 0.05,
        "rmse": 1.5,
        "rmse_log": 0.2,
        "mae": 0.75,
        "delta1": 0.9,
        "delta2": 0.95,
        "delta3": float("nan"),
        "frames": 3,
        "valid_pixels": 100,
    }
    stream = io.StringIO()
    print_table(
        {
            "checkpoint": "m.pt",
            "data": "ds",
            "split": "val",
            "num_images": 3,
            "depth": depth,
            "score": 0.5,
        },
        stream,
    )
    text = stream.getvalue()
    assert "AbsRel 0.123" in text and "RMSE 1.500 m" in text
    assert "d<1.25 90.0" in text and "d<1.25^3 n/a" in text and "combined score 50.0" in text
