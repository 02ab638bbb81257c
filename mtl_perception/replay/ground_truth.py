"""Ground truth for bag replay, indexed by header stamp (the key that links a bag frame, the
node's answer and its label).

Two sources are read (docs/CONTRACTS.md):

- a processed dataset folder (``mtl-data build``, §4): ``annotations.json`` + ``classes.json``
  + ``masks/``; detection classes in ``classes.json`` order, masks already class ids;
- a COCO file with ``stamp_ns`` per image, such as the synth bag's ``synth_coco.json`` (§3):
  categories with ``supercategory: "stuff"`` are segmentation-only; everything else is a
  detection class. Masks are rasterised from the annotations (stuff first, then objects on
  top in annotation order); unlabelled pixels are ``background``.

Masks are produced lazily (one frame at a time) so long bags do not hold every mask in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from mtl_perception.core.errors import UserError
from mtl_perception.core.summary import JobSummary
from mtl_perception.core.json_io import read_json

__all__ = ["FrameTruth", "GroundTruth", "load_ground_truth"]

BACKGROUND = "background"


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


def _index_images(coco: dict[str, Any], source: Path, summary: JobSummary) -> dict[int, dict[str, Any]]:
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
        raise UserError(f"{source}: no image has a 'stamp_ns' field; cannot match frames by header stamp")
    return by_id


def _group_annotations(coco: dict[str, Any], image_ids: set[int], summary: JobSummary) -> dict[int, list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in image_ids}
    for ann in coco.get("annotations") or []:
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            summary.fail("malformed annotation", str(ann)[:80])
            continue
        if ann["image_id"] in grouped:
            grouped[ann["image_id"]].append(ann)
    return grouped


def _boxes(anns: list[dict[str, Any]], category_names: dict[int, str], detection: set[str],
           summary: JobSummary) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
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
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), tuple(names), np.asarray(crowd, dtype=np.int64))


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
        boxes, names, crowd = _boxes(grouped[image_id], category_names, set(detection_classes), summary)
        frames[image["stamp_ns"]] = FrameTruth(boxes, names, crowd, mask_loader(image) if segmentation_classes else lambda: None)
    return GroundTruth(folder, detection_classes, segmentation_classes, frames, summary)


def _rasterise(anns: list[dict[str, Any]], height: int, width: int, class_of: dict[int, int],
               stuff_ids: set[int]) -> np.ndarray:
    """Class-id mask from COCO polygons/RLE: stuff first, objects painted over it."""
    mask = np.zeros((height, width), dtype=np.uint8)
    ordered = sorted(anns, key=lambda a: a["category_id"] not in stuff_ids)  # stable: stuff, then objects
    for ann in ordered:
        segmentation = ann.get("segmentation")
        if not segmentation or ann["category_id"] not in class_of:
            continue
        if isinstance(segmentation, list):  # polygons
            rles = mask_utils.frPyObjects(segmentation, height, width)
            rle = mask_utils.merge(rles)
        elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:  # compressed RLE; JSON holds its counts as text, pycocotools wants bytes
            counts = segmentation["counts"]
            rle = dict(segmentation, counts=counts.encode("ascii") if isinstance(counts, str) else counts)
        mask[mask_utils.decode(rle).astype(bool)] = class_of[ann["category_id"]]
    return mask


def _load_coco(path: Path) -> GroundTruth:
    """A COCO file whose images carry ``stamp_ns`` (e.g. the synth bag's ``synth_coco.json``)."""
    summary = JobSummary("ground truth")
    coco = read_json(path)
    if not isinstance(coco, dict) or not isinstance(coco.get("categories"), list):
        raise UserError(f"{path}: not a COCO file (no 'categories' list)")
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    category_names = {c["id"]: c["name"] for c in categories}
    stuff_ids = {c["id"] for c in categories if c.get("supercategory") == "stuff"}
    detection_classes = [c["name"] for c in categories if c["id"] not in stuff_ids]
    segmentation_classes = [BACKGROUND] + [c["name"] for c in categories if c["name"] != BACKGROUND]
    class_of = {c["id"]: segmentation_classes.index(c["name"]) for c in categories}
    has_segmentation = any(a.get("segmentation") for a in coco.get("annotations") or [] if isinstance(a, dict))
    images = _index_images(coco, path, summary)
    grouped = _group_annotations(coco, set(images), summary)

    frames = {}
    for image_id, image in images.items():
        anns = grouped[image_id]
        boxes, names, crowd = _boxes(anns, category_names, set(detection_classes), summary)
        height, width = int(image.get("height", 0)), int(image.get("width", 0))

        def load(anns: list[dict[str, Any]] = anns, height: int = height, width: int = width) -> np.ndarray | None:
            return _rasterise(anns, height, width, class_of, stuff_ids) if height > 0 and width > 0 else None

        frames[image["stamp_ns"]] = FrameTruth(boxes, names, crowd, load)
    return GroundTruth(path, detection_classes, segmentation_classes if has_segmentation else None, frames, summary)


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Ground truth from a processed dataset folder or a COCO JSON file with ``stamp_ns``."""
    path = Path(path)
    if path.is_dir():
        if not (path / "annotations.json").is_file():
            raise UserError(f"{path}: not a processed dataset (no annotations.json); "
                            "pass the folder of mtl-data build or a COCO .json")
        return _load_processed(path)
    if not path.exists():
        raise UserError(f"{path}: ground truth not found")
    return _load_coco(path)
