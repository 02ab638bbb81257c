# SPDX-License-Identifier: Apache-2.0
"""Region geometry -> pixels: class-id masks and clipped detection boxes.

The one rasteriser: ``mtl-data build`` (the masks ``mtl-train`` and ``mtl-eval`` read) and
``mtl-replay --ground-truth labels.json`` both turn labels into targets with
:func:`frame_targets`, so the same labels score against the same masks everywhere.

Polygon and RLE decoding is pycocotools' (the same code COCO evaluation uses), so a mask
painted here matches what any COCO tool shows for the annotation.

Paint order: regions are painted largest first, so a small object lying on a large stuff
region (a cone on the floor) stays on top instead of being painted over; ``iscrowd`` regions
are painted as ``IGNORE_INDEX`` (255) in the same order. A region known only by its box has no
exact shape: by default its box is painted ``IGNORE_INDEX`` (the pixels are neither surely the
class nor surely background); ``box_masks="fill"`` paints the box with the class instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import numpy as np
from pycocotools import mask as mask_utils

from mtl_perception.core.constants import IGNORE_INDEX
from mtl_perception.core.labels import BBox, Region
from mtl_perception.core.summary import JobSummary

BoxMaskMode = Literal["ignore", "fill"]


def region_mask(region: Region, height: int, width: int) -> np.ndarray:
    """Boolean ``[height, width]`` mask of a region's shape (polygons, RLE, else its box)."""
    if region.polygons:
        rles = mask_utils.frPyObjects(region.polygons, height, width)
        return _decode(mask_utils.merge(rles))
    if region.rle is not None:
        counts = region.rle["counts"]
        if isinstance(counts, list):  # uncompressed RLE: pycocotools converts it
            rle = mask_utils.frPyObjects(region.rle, height, width)
        else:
            rle = {
                "size": region.rle["size"],
                "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
            }
        return _decode(rle)
    mask = np.zeros((height, width), bool)
    if region.bbox is not None:
        x0, y0, x1, y1 = _pixel_span(clip_box(region.bbox, height, width))
        mask[y0:y1, x0:x1] = True
    return mask


def _decode(rle: dict) -> np.ndarray:
    """Decode an RLE with pycocotools, as a boolean mask.

    pycocotools 2.0.x calls ``np.array(..., copy=False)`` internally, which NumPy 2 flags with a
    DeprecationWarning per call; the result is correct, so that one warning is silenced here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="__array__ implementation", category=DeprecationWarning
        )
        return mask_utils.decode(rle).astype(bool)


def _pixel_span(bbox: BBox) -> tuple[int, int, int, int]:
    """Pixel index range covered by an ``[x, y, w, h]`` box (pixel centres inside)."""
    x, y, w, h = bbox
    return round(x), round(y), round(x + w), round(y + h)


def clip_box(bbox: BBox, height: int, width: int) -> BBox:
    """``bbox`` clipped to the image; width/height become 0 when nothing is left."""
    x, y, w, h = bbox
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    return (x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0))


class BoxStatus(Enum):
    """How a detection box relates to the image it belongs to."""

    OK = "ok"
    CLIPPED = "clipped"  # partly outside: clipped, still used
    OUTSIDE = "outside"  # nothing left after clipping: dropped
    ZERO_AREA = "zero_area"  # degenerate as annotated: dropped


@dataclass(frozen=True)
class DetectionBox:
    """A region's detection box, its area and how it relates to the image."""

    bbox: BBox  # COCO x, y, w, h, clipped to the image
    area: float  # pixels of the shape if known, else of the box
    status: BoxStatus


def detection_box(region: Region, height: int, width: int) -> DetectionBox:
    """The region's detection box (its ``bbox``, else the bounds of its shape), clipped."""
    mask = None
    raw: BBox
    if region.bbox is not None:
        raw = region.bbox
    else:
        mask = region_mask(region, height, width)
        x, y, w, h = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))
        raw = (float(x), float(y), float(w), float(h))
    if raw[2] <= 0 or raw[3] <= 0:
        return DetectionBox(raw, 0.0, BoxStatus.ZERO_AREA)
    clipped = clip_box(raw, height, width)
    if clipped[2] <= 0 or clipped[3] <= 0:
        return DetectionBox(clipped, 0.0, BoxStatus.OUTSIDE)
    if region.has_shape:
        mask = region_mask(region, height, width) if mask is None else mask
        area = float(mask.sum()) or clipped[2] * clipped[3]
    else:
        area = clipped[2] * clipped[3]
    status = BoxStatus.OK if np.allclose(clipped, raw) else BoxStatus.CLIPPED
    return DetectionBox(clipped, area, status)


def rasterize(
    regions: list[tuple[int, Region]], height: int, width: int, box_masks: BoxMaskMode = "ignore"
) -> np.ndarray:
    """uint8 class-id mask from ``(class_id, region)`` pairs; 0 where nothing is painted."""
    out = np.zeros((height, width), np.uint8)
    layers = []
    for class_id, region in regions:
        mask = region_mask(region, height, width)
        if region.iscrowd or (not region.has_shape and box_masks == "ignore"):
            value = IGNORE_INDEX
        else:
            value = class_id
        layers.append((int(mask.sum()), value, mask))
    # Largest first; ties keep input order (stable sort) so the result is deterministic.
    for _, value, mask in sorted(layers, key=lambda layer: -layer[0]):
        out[mask] = value
    return out


def frame_targets(
    regions: list[Region],
    detection: dict[str, int],
    segmentation: dict[str, int],
    size: tuple[int, int],
    box_masks: BoxMaskMode,
    summary: JobSummary,
) -> tuple[np.ndarray, list[dict]]:
    """Class-id mask and COCO detection annotations of one image's regions.

    Args:
        regions: The image's labelled regions (any annotation format, see ``core.labels``).
        detection: Detection class name -> category id; other names are no detection target.
        segmentation: Segmentation class name -> mask value (1..254; 0 is background).
        size: ``(height, width)`` of the image.
        box_masks: How a segmentation region known only by its box is painted (see module).
        summary: Receives unusable regions (counted, first example kept) and warnings.

    Returns:
        The ``uint8`` mask (0 background, ``IGNORE_INDEX`` for crowds and box-only regions by
        default) and one ``{"category_id", "bbox" (x, y, w, h clipped), "area", "iscrowd": 0}``
        per detection target. Crowd regions are never detection targets.
    """
    height, width = size
    seg_regions, detections = [], []
    for region in regions:
        if region.label not in detection and region.label not in segmentation:
            summary.add(f"ignored regions ({region.label})")
            continue
        if region.rle is not None and list(region.rle["size"]) != [
            height,
            width,
        ]:  # export without sizes
            summary.fail(
                "RLE size differs from the image size",
                f"{region.source}: {region.rle['size']} vs {[height, width]}",
            )
            continue
        if region.label in segmentation:
            seg_regions.append((segmentation[region.label], region))
        if region.label in detection and not region.iscrowd:
            ann = _detection_annotation(region, detection[region.label], height, width, summary)
            if ann is not None:
                detections.append(ann)
    return rasterize(seg_regions, height, width, box_masks), detections


def _detection_annotation(
    region: Region, category_id: int, height: int, width: int, summary: JobSummary
) -> dict | None:
    """COCO detection annotation of a region, or None (recorded) when its box is unusable."""
    box = detection_box(region, height, width)
    if box.status is BoxStatus.ZERO_AREA:
        summary.fail("box with zero area", f"{region.source}: {list(box.bbox)}")
        return None
    if box.status is BoxStatus.OUTSIDE:
        summary.fail(
            "box outside the image",
            f"{region.source}: {list(region.bbox or box.bbox)} in {width}x{height}",
        )
        return None
    if box.status is BoxStatus.CLIPPED:
        summary.warn(
            "box partly outside the image (clipped)", f"{region.source}: {list(region.bbox or ())}"
        )
    return {
        "category_id": category_id,
        "bbox": [round(v, 2) for v in box.bbox],
        "area": round(box.area, 2),
        "iscrowd": 0,
    }
