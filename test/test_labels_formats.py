# SPDX-License-Identifier: Apache-2.0
"""Label readers (COCO json, CVAT XML) and rasterisation into class-id masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from mtl_perception.core.constants import IGNORE_INDEX
from mtl_perception.core.errors import UserError
from mtl_perception.core.labels import Region, read_labels
from mtl_perception.core.rasterize import BoxStatus, detection_box, rasterize
from mtl_perception.core.summary import JobSummary

H, W = 30, 40


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major run lengths, background first), as CVAT/LS export it."""
    flat = mask.astype(np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": [mask.shape[0], mask.shape[1]], "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def band(y0: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1] = True
    return mask


@pytest.fixture
def coco_file(tmp_path: Path) -> Path:
    """A COCO export with arbitrary category ids and every geometry kind."""
    person = np.zeros((H, W), bool)
    person[2:8, 30:38] = True
    coco = {
        "images": [{"id": 11, "file_name": "images/frame.jpg", "width": W, "height": H}],
        "categories": [
            {"id": 7, "name": "floor"},
            {"id": 42, "name": "cone"},
            {"id": 1000, "name": "person"},
            {"id": 3, "name": "tree"},
            {"id": 5, "name": "wall"},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 11,
                "category_id": 7,
                "segmentation": uncompressed_rle(band(15, 30)),
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 11,
                "category_id": 5,
                "segmentation": compressed_rle(band(0, 15)),
                "iscrowd": 0,
            },
            {
                "id": 3,
                "image_id": 11,
                "category_id": 42,
                "bbox": [10, 12, 10, 10],
                "segmentation": [[10, 22, 20, 22, 15, 12]],
                "iscrowd": 0,
            },
            {
                "id": 4,
                "image_id": 11,
                "category_id": 1000,
                "segmentation": uncompressed_rle(person),
                "iscrowd": 1,
            },
            {"id": 5, "image_id": 11, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 0},
            {
                "id": 6,
                "image_id": 11,
                "category_id": 42,
                "segmentation": [[1, 1, 2, 2]],
                "iscrowd": 0,
            },
            {"id": 7, "image_id": 99, "category_id": 42, "bbox": [1, 1, 2, 2]},
            {"id": 8, "image_id": 11, "category_id": 77, "bbox": [1, 1, 2, 2]},
        ],
    }
    path = tmp_path / "export.json"
    path.write_text(json.dumps(coco))
    return path


def test_coco_maps_arbitrary_ids_by_name_and_counts_problems(coco_file: Path) -> None:
    summary = JobSummary("t")
    (image,) = read_labels(coco_file, summary)
    assert image.stem == "frame" and (image.width, image.height) == (W, H)
    assert [r.label for r in image.regions] == ["floor", "wall", "cone", "person", "tree"]
    assert image.regions[3].iscrowd and not image.regions[2].iscrowd
    assert summary.problems["polygon with fewer than 3 points"] == 1
    assert summary.problems["annotation for an image not in 'images'"] == 1
    assert summary.problems["unknown category id"] == 1
    assert "annotation 8" in summary.first_example["unknown category id"]


@pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning"
)  # pycocotools vs NumPy 2
def test_rasterize_rle_polygon_and_crowd(coco_file: Path) -> None:
    (image,) = read_labels(coco_file, JobSummary("t"))
    seg_ids = {"floor": 1, "wall": 2, "cone": 3, "person": 4}
    mask = rasterize([(seg_ids[r.label], r) for r in image.regions if r.label in seg_ids], H, W)
    assert mask[0, 0] == 2 and mask[29, 0] == 1  # compressed and uncompressed RLE
    assert mask[20, 15] == 3  # cone polygon painted over the floor
    assert mask[5, 33] == IGNORE_INDEX  # iscrowd region
    assert mask[14, 0] == 2 and mask[15, 0] == 1  # exact band edge
    expected_cone = mask_utils.decode(mask_utils.frPyObjects([[10, 22, 20, 22, 15, 12]], H, W))[
        :, :, 0
    ]
    assert ((mask == 3) == expected_cone.astype(bool)).all()


def test_small_regions_stay_on_top_whatever_the_order() -> None:
    floor = Region("floor", "t", polygons=[[0, 0, W, 0, W, H, 0, H]])
    ball = Region("ball", "t", polygons=[[5, 5, 15, 5, 15, 15, 5, 15]])
    for order in ([(1, floor), (2, ball)], [(2, ball), (1, floor)]):
        mask = rasterize(order, H, W)
        assert mask[10, 10] == 2 and mask[25, 30] == 1


def test_box_only_segmentation_is_ignore_or_filled() -> None:
    box = Region("cone", "t", bbox=(4.0, 4.0, 6.0, 6.0))
    assert rasterize([(1, box)], H, W)[6, 6] == IGNORE_INDEX
    filled = rasterize([(1, box)], H, W, box_masks="fill")
    assert filled[6, 6] == 1 and filled[3, 3] == 0 and int((filled == 1).sum()) == 36


@pytest.mark.parametrize(
    ("bbox", "status", "clipped"),
    [
        ((5, 5, 10, 10), BoxStatus.OK, (5, 5, 10, 10)),
        ((-5, 20, 10, 20), BoxStatus.CLIPPED, (0, 20, 5, 10)),
        ((50, 5, 10, 10), BoxStatus.OUTSIDE, None),
        ((5, 5, 0, 10), BoxStatus.ZERO_AREA, None),
    ],
)
def test_detection_box_clipping(bbox, status, clipped) -> None:
    box = detection_box(Region("cone", "t", bbox=tuple(map(float, bbox))), H, W)
    assert box.status is status
    if clipped is not None:
        assert box.bbox == pytest.approx(clipped)


def test_detection_box_from_polygon_only() -> None:
    box = detection_box(Region("cone", "t", polygons=[[10, 10, 20, 10, 20, 20, 10, 20]]), H, W)
    assert box.status is BoxStatus.OK
    assert box.bbox == pytest.approx((10, 10, 10, 10), abs=1)


CVAT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><name>t</name></task></meta>
  <image id="0" name="images/1700000000000000000.jpg" width="40" height="30">
    <box label="cone" source="manual" occluded="1"
         xtl="10.5" ytl="4.0" xbr="20.0" ybr="14.0" z_order="0"/>
    <polygon label="floor" occluded="0" points="0.0,20.0;40.0,20.0;40.0,30.0;0.0,30.0"/>
    <mask label="wall" source="manual" rle="3, 2, 1, 4"
          left="2" top="1" width="5" height="2" z_order="0"/>
    <polygon label="floor" points="1.0,1.0;2.0,2.0"/>
    <polyline label="lane" points="0,0;5,5"/>
  </image>
  <image id="1" name="empty.png" width="40" height="30"/>
</annotations>
"""


def test_cvat_xml_boxes_polygons_masks(tmp_path: Path) -> None:
    path = tmp_path / "annotations.xml"
    path.write_text(CVAT_XML)
    summary = JobSummary("t")
    first, empty = read_labels(path, summary)
    assert first.stem == "1700000000000000000" and empty.regions == []
    labels = [r.label for r in first.regions]
    assert labels == ["cone", "floor", "wall"]
    assert first.regions[0].bbox == pytest.approx((10.5, 4.0, 9.5, 10.0))
    assert summary.problems["polygon with fewer than 3 points"] == 1
    assert summary.problems["unsupported CVAT shape <polyline>"] == 1
    mask = rasterize([(1, first.regions[1]), (2, first.regions[2])], H, W)
    assert (mask[21:29] == 1).all()
    # CVAT mask rle "3,2,1,4" over a 5x2 box at (2,1), row-major:
    # row 1 = 0 0 0 1 1, row 2 = 0 1 1 1 1
    np.testing.assert_array_equal(mask[1:3, 2:7], [[0, 0, 0, 2, 2], [0, 2, 2, 2, 2]])
    assert (mask[0] == 0).all()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("this is not json", "not a COCO json file"),
        ('{"annotations": []}', "no 'images' list"),
        ("<html><body/></html>", "not a CVAT"),
        ("<annotations><image", "not a valid XML"),
    ],
)
def test_unreadable_label_files_are_one_line_user_errors(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "labels.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as info:
        read_labels(path, JobSummary("t"))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_label_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        read_labels(tmp_path / "nope.json", JobSummary("t"))


def test_duplicate_image_ids_keep_the_first(tmp_path: Path) -> None:
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}],
        "categories": [{"id": 1, "name": "cone"}],
        "annotations": [],
    }
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(coco))
    summary = JobSummary("t")
    assert [i.name for i in read_labels(path, summary)] == ["a.png"]
    assert summary.problems["duplicate image id"] == 1
