# SPDX-License-Identifier: Apache-2.0
"""Read annotation exports into one internal form, whatever tool produced them.

Supported inputs:
- COCO json (CVAT, Label Studio, labelme2coco, our own ``synth``): boxes, polygons (lists of
  flat x,y lists), RLE with compressed (string) or uncompressed (list) ``counts``, ``iscrowd``
  0/1, arbitrary category ids (they are mapped to names here; names are what build matches).
- CVAT "for images 1.1" XML: ``<box>``, ``<polygon>`` and ``<mask>`` (CVAT's own RLE) per
  ``<image>``; other shapes (polyline, points, cuboid, ...) are counted as unsupported.

Problems in a file (unknown category ids, annotations for undeclared images, polygons with
fewer than 3 points, malformed numbers) are recorded in the ``JobSummary`` and the offending
item is dropped; a file that cannot be parsed at all is a ``UserError``.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml
from pycocotools import mask as mask_utils
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from mtl_perception.core.errors import UserError
from mtl_perception.core.palette import default_palette
from mtl_perception.core.summary import JobSummary

BBox = tuple[float, float, float, float]  # COCO x, y, width, height in pixels
BACKGROUND = "background"
"""Segmentation class 0 of every dataset and checkpoint."""


@dataclass
class Region:
    """One annotated region: its class name and whatever geometry the tool exported."""

    label: str
    source: str  # "file: annotation 17", for messages
    bbox: BBox | None = None
    polygons: list[list[float]] = field(default_factory=list)  # flat [x0, y0, x1, y1, ...]
    rle: dict[str, Any] | None = None  # pycocotools RLE, ``counts`` str/bytes/list
    iscrowd: bool = False

    @property
    def has_shape(self) -> bool:
        """True when the region has a pixel-exact shape (polygon or RLE), not only a box."""
        return bool(self.polygons) or self.rle is not None


@dataclass
class LabeledImage:
    """All regions annotated on one image, with the image reference as the tool wrote it."""

    name: str  # file name/path from the export (may include folders)
    source: Path  # label file it came from
    width: int | None = None
    height: int | None = None
    stamp_ns: int | None = None
    regions: list[Region] = field(default_factory=list)

    @property
    def stem(self) -> str:
        """File name without folders and extension (tools change both: images/x.jpg vs x.png)."""
        return PurePosixPath(self.name.replace("\\", "/")).stem


def label_files(paths: list[Path]) -> list[Path]:
    """The label files named by ``paths``, each once.

    Files are taken as given; folders (an unpacked CVAT or Label Studio export) are searched for
    .json/.xml files.
    """
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            inside = sorted(
                p for p in path.rglob("*") if p.suffix.lower() in (".json", ".xml") and p.is_file()
            )
            if not inside:
                raise UserError(f"{path}: folder holds no .json or .xml label files")
            found.update(dict.fromkeys(p.resolve() for p in inside))
        else:
            found[path.resolve() if path.exists() else path] = None
    return list(found)


def read_labels(path: Path, summary: JobSummary) -> list[LabeledImage]:
    """Read one COCO json or CVAT XML export, chosen by content (not only by extension)."""
    if not path.exists():
        raise UserError(f"{path}: label file not found")
    if not path.is_file():
        raise UserError(
            f"{path}: not a regular file (pass the exported .json/.xml file or its folder)"
        )
    head = path.read_bytes()[:512].lstrip()
    if head.startswith(b"<"):
        return read_cvat_xml(path, summary)
    return read_coco(path, summary)


# --------------------------------------------------------------------------- COCO


def read_coco(path: Path, summary: JobSummary) -> list[LabeledImage]:
    """Read a COCO instances file; see the module docstring for what is accepted."""
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a COCO json file ({err})") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise UserError(f"{path}: not a COCO file: no 'images' list")
    categories = {
        c.get("id"): str(c.get("name")) for c in coco.get("categories", []) if isinstance(c, dict)
    }

    images: dict[Any, LabeledImage] = {}
    for entry in coco["images"]:
        if not isinstance(entry, dict) or "id" not in entry or not entry.get("file_name"):
            summary.fail("image entry without id/file_name", f"{path}: {str(entry)[:80]}")
            continue
        if entry["id"] in images:
            summary.fail(
                "duplicate image id", f"{path}: image id {entry['id']} (first entry kept)"
            )
            continue
        images[entry["id"]] = LabeledImage(
            name=str(entry["file_name"]),
            source=path,
            width=_opt_int(entry.get("width")),
            height=_opt_int(entry.get("height")),
            stamp_ns=_opt_int(entry.get("stamp_ns")),
        )

    for ann in coco.get("annotations", []):
        where = (
            f"{path}: annotation {ann.get('id', '?')}"
            if isinstance(ann, dict)
            else f"{path}: {ann!r:.60}"
        )
        if not isinstance(ann, dict):
            summary.fail("malformed annotation", where)
            continue
        image = images.get(ann.get("image_id"))
        if image is None:
            summary.fail(
                "annotation for an image not in 'images'",
                f"{where} (image_id {ann.get('image_id')})",
            )
            continue
        label = categories.get(ann.get("category_id"))
        if label is None:
            summary.fail("unknown category id", f"{where} (category_id {ann.get('category_id')})")
            continue
        region = _coco_region(ann, label, where, image, summary)
        if region is not None:
            image.regions.append(region)
    return list(images.values())


def _coco_region(
    ann: dict, label: str, where: str, image: LabeledImage, summary: JobSummary
) -> Region | None:
    """One COCO annotation -> ``Region``; None (and a recorded problem) if it has no geometry."""
    region = Region(label=label, source=where, iscrowd=bool(ann.get("iscrowd", 0)))
    bbox = ann.get("bbox")
    if bbox:
        try:
            x, y, w, h = (float(v) for v in bbox)
            region.bbox = (x, y, w, h)
        except (TypeError, ValueError):
            summary.fail("malformed bbox", f"{where}: {bbox!r:.60}")
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        region.polygons = _valid_polygons(seg, where, summary)
    elif isinstance(seg, dict):
        region.rle = _valid_rle(seg, where, image, summary)
    if region.bbox is None and not region.has_shape:
        summary.fail("annotation without usable geometry", where)
        return None
    return region


def _valid_polygons(polygons: list, where: str, summary: JobSummary) -> list[list[float]]:
    """Keep polygons of >= 3 points with numeric coordinates; record the others."""
    kept = []
    for poly in polygons:
        try:
            coords = [float(v) for v in poly]
        except (TypeError, ValueError):
            summary.fail("malformed polygon", f"{where}: {poly!r:.60}")
            continue
        if len(coords) < 6 or len(coords) % 2:
            summary.fail("polygon with fewer than 3 points", f"{where}: {len(coords)} coordinates")
            continue
        kept.append(coords)
    return kept


def _valid_rle(rle: dict, where: str, image: LabeledImage, summary: JobSummary) -> dict | None:
    """Check an RLE's ``size`` against the image and its ``counts`` type."""
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and isinstance(counts, (str, list))):
        summary.fail("malformed RLE", where)
        return None
    if (
        image.height is not None
        and image.width is not None
        and list(size) != [image.height, image.width]
    ):
        summary.fail(
            "RLE size differs from the image size",
            f"{where}: {size} vs {[image.height, image.width]}",
        )
        return None
    return {"size": [int(size[0]), int(size[1])], "counts": counts}


def _opt_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- CVAT XML


def read_cvat_xml(path: Path, summary: JobSummary) -> list[LabeledImage]:
    """Read a CVAT "for images 1.1" XML export."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise UserError(f"{path}: not a valid XML file ({err})") from None
    if root.tag != "annotations":
        raise UserError(
            f"{path}: not a CVAT 'for images' XML file: "
            f"root element is <{root.tag}>, not <annotations>"
        )
    images = []
    for node in root.iter("image"):
        name = node.get("name")
        if not name:
            summary.fail("CVAT <image> without name", f"{path}: image id {node.get('id')}")
            continue
        image = LabeledImage(
            name=name,
            source=path,
            width=_opt_int(node.get("width")),
            height=_opt_int(node.get("height")),
        )
        for index, shape in enumerate(node):
            where = f"{path}: image {name!r} <{shape.tag}> #{index}"
            region = _cvat_region(shape, image, where, summary)
            if region is not None:
                image.regions.append(region)
        images.append(image)
    return images


def _cvat_region(
    shape: ET.Element, image: LabeledImage, where: str, summary: JobSummary
) -> Region | None:
    label = shape.get("label")
    if shape.tag not in ("box", "polygon", "mask"):
        if label is not None:  # a shape we do not convert (polyline, points, cuboid, ...)
            summary.fail(f"unsupported CVAT shape <{shape.tag}>", where)
        return None
    if not label:
        summary.fail("CVAT shape without label", where)
        return None
    region = Region(label=label, source=where)
    try:
        if shape.tag == "box":
            x0, y0, x1, y1 = (float(shape.get(k, "nan")) for k in ("xtl", "ytl", "xbr", "ybr"))
            if not np.isfinite([x0, y0, x1, y1]).all():
                raise ValueError("missing corner")
            region.bbox = (x0, y0, x1 - x0, y1 - y0)
        elif shape.tag == "polygon":
            points = [
                float(v)
                for pair in shape.get("points", "").split(";")
                if pair
                for v in pair.split(",")
            ]
            region.polygons = _valid_polygons([points], where, summary)
            if not region.polygons:
                return None
        else:
            region.rle = _cvat_mask_rle(shape, image)
    except ValueError as err:
        summary.fail(f"malformed CVAT <{shape.tag}>", f"{where}: {err}")
        return None
    return region


def _cvat_mask_rle(shape: ET.Element, image: LabeledImage) -> dict:
    """CVAT's mask RLE -> COCO RLE of the whole image.

    CVAT stores alternating run lengths (background first) of the mask's bounding box
    ``left, top, width, height`` in row-major order; COCO RLE is column-major over the full
    image, so we expand it to pixels and let pycocotools re-encode (no library reads CVAT RLE).
    """
    if image.width is None or image.height is None:
        raise ValueError("<mask> needs the image's width and height")
    runs = [int(v) for v in shape.get("rle", "").split(",") if v.strip()]
    left, top, width, height = (
        int(float(shape.get(k, "nan"))) for k in ("left", "top", "width", "height")
    )
    if sum(runs) != width * height:
        raise ValueError(f"rle covers {sum(runs)} pixels, box has {width * height}")
    values = np.repeat(np.arange(len(runs)) % 2, runs).astype(np.uint8).reshape(height, width)
    full = np.zeros((image.height, image.width), np.uint8)
    full[top : top + height, left : left + width] = values[
        : max(0, image.height - top), : max(0, image.width - left)
    ]
    return mask_utils.encode(np.asfortranarray(full))


# --------------------------------------------------------------------------- classes


class ClassConfig(BaseModel):
    """Configured classes; the YAML ``--classes-file`` has exactly these keys."""

    model_config = ConfigDict(extra="forbid")

    detection_classes: list[str] = []
    segmentation_classes: list[str] = []  # without "background"
    palette: dict[str, tuple[int, int, int]] = {}

    @field_validator("detection_classes", "segmentation_classes")
    @classmethod
    def _unique_names(cls, names: list[str]) -> list[str]:
        names = [n.strip() for n in names]
        if any(not n for n in names):
            raise ValueError("empty class name")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate class name in {names}")
        if "background" in names:
            raise ValueError("'background' is implicit (id 0); do not list it")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> ClassConfig:
        if not self.detection_classes and not self.segmentation_classes:
            raise ValueError("no detection and no segmentation classes configured")
        if len(self.segmentation_classes) > 254:
            raise ValueError("at most 254 segmentation classes (255 = ignore)")
        unknown = set(self.palette) - {"background", *self.segmentation_classes}
        if unknown:
            raise ValueError(
                f"palette names classes that are not segmentation classes: {sorted(unknown)}"
            )
        return self

    def palette_rgb(self) -> list[list[int]]:
        """One RGB colour per segmentation class, background first."""
        names = [BACKGROUND, *self.segmentation_classes]
        defaults = default_palette(len(names))
        return [list(self.palette.get(n, d)) for n, d in zip(names, defaults, strict=True)]

    def detection_ids(self) -> dict[str, int]:
        """Detection class name -> COCO category id (1-based, in list order)."""
        return {name: i + 1 for i, name in enumerate(self.detection_classes)}

    def segmentation_ids(self) -> dict[str, int]:
        """Segmentation class name -> mask value (1-based; 0 is background)."""
        return {name: i + 1 for i, name in enumerate(self.segmentation_classes)}


def load_class_config(det: str | None, seg: str | None, classes_file: Path | None) -> ClassConfig:
    """Classes from the YAML file, ``--det-classes``/``--seg-classes`` overriding its lists."""
    raw: dict = {}
    where = "--det-classes/--seg-classes"
    if classes_file is not None:
        where = str(classes_file)
        try:
            raw = yaml.safe_load(classes_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UserError(
                f"{classes_file}: cannot read classes file ({err})".replace("\n", " ")
            ) from None
        if not isinstance(raw, dict):
            raise UserError(
                f"{classes_file}: expected a mapping with detection_classes/segmentation_classes"
            )
    if det is not None:
        raw["detection_classes"] = [n for n in det.split(",") if n.strip()]
    if seg is not None:
        raw["segmentation_classes"] = [n for n in seg.split(",") if n.strip()]
    try:
        return ClassConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "classes"
        raise UserError(f"{where}: {loc}: {first['msg']}") from None
