# SPDX-License-Identifier: Apache-2.0
"""Processed dataset reading and the train/eval transforms."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import torch
from datasets import SEGMENTATION_CLASSES, make_processed_dataset

from mtl_perception.core.constants import IGNORE_INDEX
from mtl_perception.core.errors import UserError
from mtl_perception.train.config import AugmentConfig
from mtl_perception.train.dataset import ProcessedDataset, ResumableSampler
from mtl_perception.train.transforms import build_eval_transform, build_train_transform


@pytest.fixture
def dataset_root(tmp_path: Path) -> Path:
    return make_processed_dataset(tmp_path / "ds")


def test_samples_match_the_annotations_including_odd_frames(dataset_root: Path) -> None:
    data = ProcessedDataset(dataset_root, "train")
    assert len(data) == 6
    annotations = json.loads((dataset_root / "annotations.json").read_text())
    for index in range(len(data)):
        image, target = data[index]
        record = data.images[index]
        assert image.shape == (3, 48, 64) and image.dtype == torch.uint8
        expected = [a for a in annotations["annotations"] if a["image_id"] == record["id"]]
        assert target["boxes"].shape == (len(expected), 4)
        if expected:
            x, y, w, h = expected[0]["bbox"]
            assert target["boxes"][0].tolist() == [x, y, x + w, y + h]
        if "mask_file" not in record:  # no segmentation labels: every pixel ignored
            assert (target["mask"] == IGNORE_INDEX).all()
        else:
            assert set(target["mask"].unique().tolist()) <= {
                *range(len(SEGMENTATION_CLASSES)),
                IGNORE_INDEX,
            }


def test_unknown_mask_ids_become_ignore(dataset_root: Path) -> None:
    data = ProcessedDataset(dataset_root, "train")
    record = next(r for r in data.images if "mask_file" in r)
    mask = cv2.imread(str(dataset_root / record["mask_file"]), cv2.IMREAD_UNCHANGED)
    mask[0, 0] = 17  # a class id from another label set
    cv2.imwrite(str(dataset_root / record["mask_file"]), mask)
    _, target = data[data.images.index(record)]
    assert int(target["mask"][0, 0]) == IGNORE_INDEX


def test_flip_moves_boxes_and_mask_with_the_image(dataset_root: Path) -> None:
    augment = AugmentConfig(
        hflip_prob=1.0, crop_prob=0.0, brightness=0, contrast=0, saturation=0, hue=0
    )
    plain = ProcessedDataset(dataset_root, "train", build_eval_transform((48, 64)))
    flipped = ProcessedDataset(dataset_root, "train", build_train_transform((48, 64), augment))
    index = next(
        i for i, r in enumerate(plain.images) if plain.boxes[r["id"]] and "mask_file" in r
    )
    image, target = plain[index]
    image_f, target_f = flipped[index]
    assert image.dtype == torch.float32 and float(image.max()) <= 1.0
    assert torch.allclose(image_f, image.flip(-1))
    assert torch.equal(target_f["mask"], target["mask"].flip(-1))
    x1, y1, x2, y2 = target["boxes"][0].tolist()
    assert target_f["boxes"][0].tolist() == pytest.approx([64 - x2, y1, 64 - x1, y2])


def test_train_transform_resizes_and_is_repeatable_per_epoch_and_index(dataset_root: Path) -> None:
    data = ProcessedDataset(
        dataset_root,
        "train",
        build_train_transform((32, 40), AugmentConfig(crop_prob=1.0)),
        seed=3,
    )
    first = [data[i] for i in range(len(data))]
    for image, target in first:
        assert image.shape == (3, 32, 40) and target["mask"].shape == (32, 40)
        boxes = target["boxes"]
        assert len(boxes) == len(target["labels"])
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    again = data[2]
    assert torch.equal(again[0], first[2][0])
    data.set_epoch(1)
    assert not all(torch.equal(data[i][0], first[i][0]) for i in range(len(data)))


def test_resumable_sampler_skips_the_done_part_of_the_same_order(dataset_root: Path) -> None:
    data = ProcessedDataset(dataset_root, "train")
    sampler = ResumableSampler(data, num_replicas=1, rank=0, seed=0)
    sampler.set_position(epoch=2, start_index=0)
    full = list(sampler)
    sampler.set_position(epoch=2, start_index=4)
    assert list(sampler) == full[4:] and len(sampler) == 2


def test_broken_datasets_fail_with_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a folder"):
        ProcessedDataset(tmp_path / "missing", "train")
    root = make_processed_dataset(tmp_path / "ds")
    train_id = json.loads((root / "splits.json").read_text())["train"][0]
    record = next(
        im
        for im in json.loads((root / "annotations.json").read_text())["images"]
        if im["id"] == train_id
    )
    (root / record["file_name"]).unlink()
    with pytest.raises(UserError, match=f"missing, first {record['file_name']}"):
        ProcessedDataset(root, "train")
    with pytest.raises(UserError, match="no 'tset' split"):
        ProcessedDataset(root, "tset")
