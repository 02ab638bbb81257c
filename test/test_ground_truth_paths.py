# SPDX-License-Identifier: Apache-2.0
"""The same labels give the same targets through `mtl-eval`'s path and `mtl-replay`'s path.

`mtl-eval` scores against the dataset `mtl-data build` wrote (masks on disk, read by
`EvalDataset`); `mtl-replay --ground-truth labels.json` rasterises the label file itself
(`load_ground_truth`). Both must apply the same rules: largest region painted first, crowd
regions and regions known only by a box ignored (255), categories outside the class lists
dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from interim import build_args, write_topic_folder

from data_tools import build
from mtl_perception.core.constants import IGNORE_INDEX
from mtl_perception.core.labels import ClassConfig
from mtl_perception.core.summary import JobSummary
from mtl_perception.evaluation.dataset import EvalDataset
from mtl_perception.replay.ground_truth import load_ground_truth

H, W = 40, 64
T0 = 1_700_000_000_000_000_000
STAMPS = [T0 + i * 500_000_000 for i in range(3)]
DETECTION = ["box", "cone"]
SEGMENTATION = ["floor", "box", "cone"]  # background (0) is implicit


def _frames(root: Path) -> Path:
    """Interim layout (docs/CONTRACTS.md section 2) with one topic of three frames."""
    frames = {stamp: np.full((H, W, 3), 40 * i, np.uint8) for i, stamp in enumerate(STAMPS)}
    write_topic_folder(root / "run" / "camera__image_raw", "run", frames)
    return root


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _labels(path: Path) -> Path:
    """Overlapping regions (paint order matters), a crowd, a box-only region, an extra class."""
    images, anns = [], []
    for i, stamp in enumerate(STAMPS):
        image_id = 10 + i
        images.append(
            {
                "id": image_id,
                "file_name": f"{stamp}.png",
                "width": W,
                "height": H,
                "stamp_ns": stamp,
            }
        )
        shift = 3 * i
        regions = [
            # A small box listed before the floor it stands on: painted last (largest first).
            (1, _rect(20 + shift, 10, 30 + shift, 30), [20 + shift, 10, 10, 20], 0),
            (3, _rect(0, 20, W, H), [0, 20, W, H - 20], 0),  # floor (stuff)
            (1, _rect(44, 4, 60, 16), [44, 4, 16, 12], 1),  # a crowd of boxes
            (2, None, [4 + shift, 2, 8, 10], 0),  # cone: box only
            (4, _rect(2, 30, 10, 38), [2, 30, 8, 8], 0),  # "person": no list
        ]
        for category, polygon, bbox, crowd in regions:
            ann = {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": category,
                "bbox": bbox,
                "iscrowd": crowd,
            }
            if polygon is not None:
                ann["segmentation"] = polygon
            anns.append(ann)
    categories = [
        {"id": 1, "name": "box", "supercategory": "object"},
        {"id": 2, "name": "cone", "supercategory": "object"},
        {"id": 3, "name": "floor", "supercategory": "stuff"},
        {"id": 4, "name": "person", "supercategory": "object"},
    ]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


@pytest.fixture(scope="module")
def both_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """Per stamp: (boxes, mask) as mtl-eval sees them, and as mtl-replay sees them."""
    tmp = tmp_path_factory.mktemp("paths")
    labels = _labels(tmp / "labels.json")
    args = build_args(
        _frames(tmp / "interim"),
        [labels],
        tmp / "processed",
        "--split",
        "1,0,0",
        "--det-classes",
        ",".join(DETECTION),
        "--seg-classes",
        ",".join(SEGMENTATION),
    )
    assert build.run(args) == 0
    dataset = tmp / "processed" / "ds"
    stamp_of = {
        image["id"]: image["stamp_ns"]
        for image in json.loads((dataset / "annotations.json").read_text())["images"]
    }
    evaluated = {
        stamp_of[sample.image_id]: (sample.target["boxes"].numpy(), sample.mask)
        for sample in EvalDataset(
            dataset, "all", DETECTION, ["background", *SEGMENTATION], JobSummary("eval")
        )
    }
    truth = load_ground_truth(
        labels, ClassConfig(detection_classes=DETECTION, segmentation_classes=SEGMENTATION)
    )
    assert truth.segmentation_classes == ["background", *SEGMENTATION]
    replayed = {stamp: (frame.boxes, frame.load_mask()) for stamp, frame in truth.frames.items()}
    return evaluated, replayed


def test_same_masks_through_eval_and_replay(both_paths: tuple[dict, dict]) -> None:
    evaluated, replayed = both_paths
    assert sorted(evaluated) == sorted(replayed) == STAMPS
    for stamp in STAMPS:
        np.testing.assert_array_equal(replayed[stamp][1], evaluated[stamp][1], err_msg=str(stamp))


def test_same_boxes_through_eval_and_replay(both_paths: tuple[dict, dict]) -> None:
    evaluated, replayed = both_paths
    for stamp in STAMPS:
        np.testing.assert_allclose(
            replayed[stamp][0], evaluated[stamp][0], atol=0.01, err_msg=str(stamp)
        )


def test_the_shared_rules_are_the_build_rules(both_paths: tuple[dict, dict]) -> None:
    """Independent of both implementations: the pixels the rules above imply."""
    _, replayed = both_paths
    boxes, mask = replayed[STAMPS[0]]
    floor, box, cone = (SEGMENTATION.index(name) + 1 for name in ("floor", "box", "cone"))
    assert mask[25, 25] == box  # the small box stays on top of the larger floor
    assert mask[35, 40] == floor
    assert mask[10, 50] == IGNORE_INDEX  # crowd
    assert mask[6, 8] == IGNORE_INDEX  # cone known only by its box
    assert mask[34, 6] == floor  # "person" is in no list: the floor under it shows
    assert mask[2, 40] == 0
    assert cone not in np.unique(mask)
    # Detection: the box and the box-only cone; never the crowd, never "person".
    np.testing.assert_allclose(sorted(boxes.tolist()), [[4, 2, 12, 12], [20, 10, 30, 30]])
