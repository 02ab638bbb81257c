# SPDX-License-Identifier: Apache-2.0
"""Reading a labelled split for evaluation, tolerant of real-world COCO datasets.

Unlike the training dataset (which refuses a flawed folder before a long run), evaluation
must score whatever a user brings: a COCO export from an annotation tool, images without
annotations, categories without instances, frames without masks. Classes are matched to
the checkpoint **by name** (trimmed, case-insensitive), never by id, because another
dataset's ids mean nothing to our model. Problems with single items are counted in a
``JobSummary`` and the item is skipped; problems with the whole dataset are a ``UserError``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from mtl_perception.core.constants import IGNORE_INDEX
from mtl_perception.core.depth import read_depth_target
from mtl_perception.core.errors import UserError
from mtl_perception.core.json_io import read_json
from mtl_perception.core.summary import JobSummary

__all__ = ["SPLITS", "EvalDataset", "EvalSample"]

SPLITS = ("train", "val", "test", "all")


@dataclass
class EvalSample:
    """One frame at its original resolution with ground truth in the checkpoint's label ids."""

    image_id: int
    file_name: str
    rgb: np.ndarray  # [H, W, 3] uint8
    target: dict[str, torch.Tensor]  # boxes xyxy float32, labels int64 (1-based), iscrowd int64
    mask: (
        np.ndarray | None
    )  # [H, W] uint8 checkpoint segmentation ids, 255 = ignore; None = no mask
    depth: np.ndarray | None = None  # [H, W] float32 metres, 0 = invalid; None = no depth map
    labeled: bool = True  # False: a depth-only frame, not scored for detection / segmentation


def _key(name: str) -> str:
    """Class names compare trimmed and case-insensitively ("Cone " is "cone")."""
    return str(name).strip().casefold()


def _match_classes(
    model_classes: Sequence[str], dataset_classes: Sequence[str], where: str
) -> dict[str, int]:
    """Map dataset class names to the model's index; every model class must be in the dataset."""
    model_index = {_key(name): index for index, name in enumerate(model_classes)}
    dataset_keys = {_key(name) for name in dataset_classes}
    missing = [name for name in model_classes if _key(name) not in dataset_keys]
    if missing:
        raise UserError(
            f"{where}: the checkpoint's class(es) {missing} are not in the dataset, "
            f"which has {list(dataset_classes)}; was the model trained on another label set?"
        )
    return {
        _key(name): model_index[_key(name)]
        for name in dataset_classes
        if _key(name) in model_index
    }


class EvalDataset:
    """The images of one split with boxes and masks translated to the checkpoint's classes.

    ``detection_classes`` / ``segmentation_classes`` are the checkpoint's (``None`` when the
    model lacks that task). Segmentation needs ``classes.json`` to know what mask ids mean;
    without it segmentation is not scored (``segmentation_available`` is False). With
    ``depth=True`` each sample carries its ``depth_file`` in metres (docs/CONTRACTS.md 11.1).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        detection_classes: Sequence[str] | None,
        segmentation_classes: Sequence[str] | None,
        summary: JobSummary,
        depth: bool = False,
    ) -> None:
        self.root = Path(root)
        self.summary = summary
        self.depth_scored = depth
        if not self.root.is_dir():
            raise UserError(f"--data {self.root} is not a folder")
        if split not in SPLITS:
            raise UserError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
        annotations_path = self.root / "annotations.json"
        coco = read_json(annotations_path)
        if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
            raise UserError(f"{annotations_path}: not a COCO file (no 'images' list)")
        images = {
            image["id"]: image
            for image in coco["images"]
            if isinstance(image, dict) and "id" in image
        }
        self.images = self._split_images(images, split)
        if not self.images:
            raise UserError(f"{self.root}: the {split!r} split has no images")

        self.detection_scored = detection_classes is not None
        self.category_to_label: dict[Any, int] = {}  # keyed by the file's category ids
        if detection_classes is not None:
            categories = {
                c["id"]: c["name"] for c in coco.get("categories", []) if "id" in c and "name" in c
            }
            to_model = _match_classes(
                detection_classes, list(categories.values()), f"{annotations_path} categories"
            )
            self.category_to_label = {
                cid: to_model[_key(name)] + 1
                for cid, name in categories.items()
                if _key(name) in to_model
            }
        self.annotations: dict[Any, list[dict[str, Any]]] = {}
        for ann in coco.get("annotations", []):
            self.annotations.setdefault(ann.get("image_id"), []).append(ann)

        self.mask_lut: np.ndarray | None = None
        if segmentation_classes is not None:
            self.mask_lut = self._mask_lookup(segmentation_classes)

    @property
    def segmentation_available(self) -> bool:
        """Whether masks can be scored: ``classes.json`` says what the mask ids mean."""
        return self.mask_lut is not None

    def _split_images(self, images: dict[Any, dict[str, Any]], split: str) -> list[dict[str, Any]]:
        if split == "all":
            return list(images.values())
        splits_path = self.root / "splits.json"
        splits = read_json(splits_path)
        if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
            raise UserError(
                f"{splits_path}: no {split!r} list (use --split all to evaluate every image)"
            )
        selected = []
        for image_id in splits[split]:
            if image_id in images:
                selected.append(images[image_id])
            else:
                self.summary.fail(
                    "split id not in annotations.json", f"{splits_path}: {split} id {image_id}"
                )
        return selected

    def _mask_lookup(self, segmentation_classes: Sequence[str]) -> np.ndarray | None:
        """A 256-entry table from the dataset's mask ids to the checkpoint's, 255 elsewhere."""
        classes_path = self.root / "classes.json"
        if not classes_path.is_file():
            self.summary.add("segmentation not scored (no classes.json)")
            return None
        classes = read_json(classes_path)
        dataset_classes = (
            classes.get("segmentation_classes") if isinstance(classes, dict) else None
        )
        if not isinstance(dataset_classes, list) or not dataset_classes:
            raise UserError(f"{classes_path}: no 'segmentation_classes' list")
        to_model = _match_classes(
            segmentation_classes, dataset_classes, f"{classes_path} segmentation_classes"
        )
        lut = np.full(256, IGNORE_INDEX, np.uint8)
        for dataset_id, name in enumerate(dataset_classes[:255]):
            if _key(name) in to_model:
                lut[dataset_id] = to_model[_key(name)]
        return lut

    def __len__(self) -> int:
        return len(self.images)

    def _resolve(self, file_name: str) -> Path | None:
        """The image file: relative to the dataset root, or (plain COCO exports) under images/."""
        for candidate in (self.root / file_name, self.root / "images" / file_name):
            if candidate.is_file():
                return candidate
        return None

    @staticmethod
    def _read_rgb(path: Path, record: dict[str, Any]) -> np.ndarray | None:
        """RGB uint8 frame whose size matches the annotation's width/height.

        Pixels are read as stored; only if the annotated size is the rotated one is the EXIF
        orientation applied (annotation tools differ in whether they honour EXIF).
        """
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        expected = (record.get("height"), record.get("width"))
        if (
            bgr is not None
            and None not in expected
            and bgr.shape[:2] != expected
            and bgr.shape[1::-1] == expected
        ):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _target(self, record: dict[str, Any], height: int, width: int) -> dict[str, torch.Tensor]:
        boxes, labels, crowd = [], [], []
        for ann in self.annotations.get(record["id"], []) if self.detection_scored else []:
            label = self.category_to_label.get(ann.get("category_id"))
            if label is None:
                self.summary.add("annotations of classes the model lacks")
                continue
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4:
                self.summary.fail(
                    "annotation without a valid bbox",
                    f"annotation {ann.get('id')} of {record['file_name']}",
                )
                continue
            x, y, w, h = (float(v) for v in bbox)
            if w <= 0 or h <= 0:
                self.summary.add("zero-area boxes skipped")
                continue
            boxes.append(
                [max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)]
            )
            labels.append(label)
            crowd.append(int(ann.get("iscrowd", 0)))
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "iscrowd": torch.tensor(crowd, dtype=torch.int64),
        }

    def _mask(self, record: dict[str, Any], shape: tuple[int, int]) -> np.ndarray | None:
        if self.mask_lut is None:
            return None
        mask_file = record.get("mask_file")
        path = self.root / mask_file if mask_file else None
        if path is None or not path.is_file():
            self.summary.add("segmentation skipped (no mask)")
            return None
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if mask is None or mask.ndim != 2 or mask.dtype != np.uint8 or mask.shape != shape:
            found = "unreadable" if mask is None else f"{mask.dtype} {list(mask.shape)}"
            self.summary.fail(
                "mask not a uint8 map of the image size", f"{path} ({found}, image {list(shape)})"
            )
            return None
        return self.mask_lut[mask]

    def __iter__(self) -> Iterator[EvalSample]:
        """Samples in split order; unreadable images are counted as failures and skipped."""
        for record in self.images:
            file_name = str(record.get("file_name", ""))
            path = self._resolve(file_name) if file_name else None
            rgb = self._read_rgb(path, record) if path is not None else None
            if rgb is None:
                kind = "image unreadable" if path is not None else "image missing"
                self.summary.fail(kind, str(path or self.root / file_name))
                continue
            height, width = rgb.shape[:2]
            self.summary.add("read")
            if not record.get("labeled", True):
                self.summary.add("depth-only frames (not scored for detection/segmentation)")
                depth = self._depth(record, (height, width))
                no_boxes = {
                    "boxes": torch.zeros(0, 4),
                    "labels": torch.zeros(0, dtype=torch.int64),
                    "iscrowd": torch.zeros(0, dtype=torch.int64),
                }
                yield EvalSample(record["id"], file_name, rgb, no_boxes, None, depth, False)
                continue
            target, mask = self._target(record, height, width), self._mask(record, (height, width))
            yield EvalSample(
                record["id"], file_name, rgb, target, mask, self._depth(record, (height, width))
            )

    def _depth(self, record: dict[str, Any], shape: tuple[int, int]) -> np.ndarray | None:
        """The frame's depth in metres, or None (not scored, no depth file, or a bad one)."""
        if not self.depth_scored:
            return None
        depth_file = record.get("depth_file")
        if not depth_file:
            self.summary.add("depth skipped (frame has no depth)")
            return None
        try:
            return read_depth_target(self.root / depth_file, shape)
        except UserError as err:
            self.summary.fail("depth file unreadable or of the wrong size", str(err))
            return None
