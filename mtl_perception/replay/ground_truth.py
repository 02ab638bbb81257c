# SPDX-License-Identifier: Apache-2.0
"""Ground truth for bag replay, indexed by header stamp.

The header stamp is the key that links a bag frame, the node's answer and its label.

Two sources are read (docs/CONTRACTS.md):

- a processed dataset folder (``mtl-data build``, §4): ``annotations.json`` + ``classes.json``
  + ``masks/``; detection classes in ``classes.json`` order, masks already class ids;
- a label export with ``stamp_ns`` per image (a COCO file such as the synth bag's
  ``synth_coco.json``, or CVAT XML). Its labels are turned into targets by the same code as
  ``mtl-data build`` (``core.rasterize.frame_targets``: largest region painted first, crowd and
  box-only regions ignored) with the class lists of the model's dataset, so a frame scores
  against the same mask whether it went through ``mtl-eval`` or ``mtl-replay``.

Masks are produced lazily (one frame at a time) so long bags do not hold every mask in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mtl_perception.core.errors import UserError
from mtl_perception.core.json_io import read_json
from mtl_perception.core.labels import BACKGROUND, ClassConfig, Region, read_labels
from mtl_perception.core.rasterize import frame_targets
from mtl_perception.core.summary import JobSummary

__all__ = ["FrameTruth", "GroundTruth", "load_ground_truth"]


@dataclass(frozen=True)
class FrameTruth:
    """Labels of one frame: boxes xyxy pixels with class names, and a lazily built mask."""

    boxes: np.ndarray  # float32 [N, 4] xyxy
    names: tuple[str, ...]  # detection class name per box
    iscrowd: np.ndarray  # int64 [N]
    load_mask: Callable[[], np.ndarray | None] = field(repr=False, compare=False)


@dataclass
class GroundTruth:
    """Per-stamp labels plus the class lists the ids in masks refer to."""

    source: Path
    detection_classes: list[str]
    segmentation_classes: list[str] | None  # None when the source has no segmentation labels
    frames: dict[int, FrameTruth]
    summary: JobSummary

    def __contains__(self, stamp_ns: int) -> bool:
        return stamp_ns in self.frames

    def __len__(self) -> int:
        return len(self.frames)


def _xywh_to_xyxy(bbox: Any) -> list[float] | None:
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]``; None for malformed or empty boxes."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    return [x, y, x + w, y + h] if w > 0 and h > 0 else None


def _index_images(
    coco: dict[str, Any], source: Path, summary: JobSummary
) -> dict[int, dict[str, Any]]:
    """COCO images by id, keeping those with a usable ``stamp_ns`` (first wins on duplicates)."""
    images = coco.get("images")
    if not isinstance(images, list):
        raise UserError(f"{source}: field 'images' is missing or not a list")
    by_id: dict[int, dict[str, Any]] = {}
    seen_stamps: set[int] = set()
    for image in images:
        stamp = image.get("stamp_ns") if isinstance(image, dict) else None
        if not isinstance(stamp, int) or isinstance(stamp, bool):
            name = image.get("file_name", image) if isinstance(image, dict) else image
            summary.fail("image without integer stamp_ns", str(name))
            continue
        if stamp in seen_stamps:
            summary.fail("duplicate stamp_ns", f"{image.get('file_name')} ({stamp})")
            continue
        seen_stamps.add(stamp)
        by_id[image["id"]] = image
    if not by_id:
        raise UserError(
            f"{source}: no image has a 'stamp_ns' field; cannot match frames by header stamp"
        )
    return by_id


def _group_annotations(
    coco: dict[str, Any], image_ids: set[int], summary: JobSummary
) -> dict[int, list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in image_ids}
    for ann in coco.get("annotations") or []:
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            summary.fail("malformed annotation", str(ann)[:80])
            continue
        if ann["image_id"] in grouped:
            grouped[ann["image_id"]].append(ann)
    return grouped


def _boxes(
    anns: list[dict[str, Any]],
    category_names: dict[int, str],
    detection: set[str],
    summary: JobSummary,
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    boxes, names, crowd = [], [], []
    for ann in anns:
        name = category_names.get(ann["category_id"])
        if name not in detection:
            continue
        box = _xywh_to_xyxy(ann.get("bbox"))
        if box is None:
            summary.fail("annotation with empty or malformed bbox", f"annotation {ann.get('id')}")
            continue
        boxes.append(box)
        names.append(name)
        crowd.append(int(ann.get("iscrowd", 0)))
    return (
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        tuple(names),
        np.asarray(crowd, dtype=np.int64),
    )


def _load_processed(folder: Path) -> GroundTruth:
    """A ``mtl-data build`` dataset folder (CONTRACTS §4)."""
    summary = JobSummary("ground truth")
    classes = read_json(folder / "classes.json")
    coco = read_json(folder / "annotations.json")
    detection_classes = list(classes.get("detection_classes") or [])
    segmentation_classes = list(classes.get("segmentation_classes") or []) or None
    category_names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    images = _index_images(coco, folder / "annotations.json", summary)
    grouped = _group_annotations(coco, set(images), summary)

    def mask_loader(image: dict[str, Any]) -> Callable[[], np.ndarray | None]:
        def load() -> np.ndarray | None:
            name = image.get("mask_file")
            mask = cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED) if name else None
            return mask if mask is not None and mask.ndim == 2 else None

        return load

    frames = {}
    for image_id, image in images.items():
        boxes, names, crowd = _boxes(
            grouped[image_id], category_names, set(detection_classes), summary
        )
        frames[image["stamp_ns"]] = FrameTruth(
            boxes, names, crowd, mask_loader(image) if segmentation_classes else lambda: None
        )
    return GroundTruth(folder, detection_classes, segmentation_classes, frames, summary)


def _mask_loader(
    regions: list[Region],
    segmentation: dict[str, int],
    size: tuple[int, int],
) -> Callable[[], np.ndarray | None]:
    """A loader that paints the mask when it is scored, not at load time (long bags).

    Problems of the regions were already counted when the frame was loaded.
    """
    if not segmentation:
        return lambda: None
    return lambda: frame_targets(regions, {}, segmentation, size, "ignore", JobSummary("mask"))[0]


def _load_export(path: Path, classes: ClassConfig) -> GroundTruth:
    """A label export whose images carry ``stamp_ns``, rasterised like ``mtl-data build``."""
    summary = JobSummary("ground truth")
    detection, segmentation = classes.detection_ids(), classes.segmentation_ids()
    names = {category_id: name for name, category_id in detection.items()}
    frames: dict[int, FrameTruth] = {}
    for image in read_labels(path, summary):
        if image.stamp_ns is None:
            summary.fail("image without integer stamp_ns", f"{path}: {image.name}")
            continue
        if image.stamp_ns in frames:
            summary.fail("duplicate stamp_ns", f"{path}: {image.name} ({image.stamp_ns})")
            continue
        if not image.height or not image.width:
            summary.fail("image without width/height", f"{path}: {image.name}")
            continue
        size = (image.height, image.width)
        _, anns = frame_targets(image.regions, detection, segmentation, size, "ignore", summary)
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (ann["bbox"] for ann in anns)]
        frames[image.stamp_ns] = FrameTruth(
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            tuple(names[ann["category_id"]] for ann in anns),
            np.zeros(len(anns), dtype=np.int64),
            _mask_loader(image.regions, segmentation, size),
        )
    if not frames:
        raise UserError(
            f"{path}: no image has a 'stamp_ns' field; cannot match frames by header stamp"
        )
    segmentation_classes = [BACKGROUND, *classes.segmentation_classes] if segmentation else None
    return GroundTruth(
        path, list(classes.detection_classes), segmentation_classes, frames, summary
    )


def load_ground_truth(path: str | Path, classes: ClassConfig | None = None) -> GroundTruth:
    """Ground truth from a processed dataset folder or a label export with ``stamp_ns``.

    Args:
        path: A ``mtl-data build`` folder, or a COCO JSON / CVAT XML file whose images carry
            ``stamp_ns``.
        classes: The class lists a label export is rasterised with (those of the model's
            dataset); unused for a dataset folder, which has its own ``classes.json``.

    Raises:
        UserError: The path is missing or not ground truth, no image has a stamp, or a label
            export comes without ``classes``.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "annotations.json").is_file():
            raise UserError(
                f"{path}: not a processed dataset (no annotations.json); "
                "pass the folder of mtl-data build or a COCO .json"
            )
        return _load_processed(path)
    if not path.exists():
        raise UserError(f"{path}: ground truth not found")
    if classes is None:
        raise UserError(
            f"{path}: a label file needs the class lists to rasterise it with; "
            "give --model (its dataset's classes) or --classes-file"
        )
    return _load_export(path, classes)
