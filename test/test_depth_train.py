# SPDX-License-Identifier: Apache-2.0
"""Depth targets in the training data (reading, transforms, depth-only frames) and depth runs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from datasets import make_processed_dataset, tiny_run_overrides

from mtl_perception.checkpoint import load_checkpoint
from mtl_perception.core.errors import UserError
from mtl_perception.train import cli
from mtl_perception.train.config import AugmentConfig, load_config
from mtl_perception.train.dataset import IGNORE_INDEX, ProcessedDataset, collate
from mtl_perception.train.engine import train_step
from mtl_perception.train.trainer import Trainer
from mtl_perception.train.transforms import build_eval_transform, build_train_transform

NO_COLOUR = {"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}


@pytest.fixture(scope="module")
def depth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_processed_dataset(tmp_path_factory.mktemp("ds"), depth=True, depth_only=2)


def _record(data: ProcessedDataset, **wanted: object) -> int:
    return next(
        i for i, r in enumerate(data.images) if all(r.get(k) == v for k, v in wanted.items())
    )


def test_depth_is_read_in_metres_with_invalid_pixels_as_zero(depth_root: Path) -> None:
    data = ProcessedDataset(depth_root, "train")
    for index, record in enumerate(data.images):
        _, target = data[index]
        if "depth_file" not in record:
            assert "depth" not in target
            continue
        stored = cv2.imread(str(depth_root / record["depth_file"]), cv2.IMREAD_UNCHANGED)
        assert target["depth"].dtype == torch.float32 and target["depth"].shape == stored.shape
        assert np.allclose(target["depth"].numpy(), stored / 1000.0)
        assert float(target["depth"][0, 0]) == 0.0  # the sensor's "no return" stays invalid
    assert any("depth_file" not in r for r in data.images) and data.has_depth


def test_depth_only_frames_carry_no_detection_or_segmentation_labels(depth_root: Path) -> None:
    data = ProcessedDataset(depth_root, "train")
    index = _record(data, labeled=False)
    _, target = data[index]
    assert target["labeled"] is False and len(target["boxes"]) == 0
    assert bool((target["mask"] == IGNORE_INDEX).all()) and "depth" in target
    _, labeled = data[_record(data, mask_file=data.images[0].get("mask_file"))]
    assert labeled["labeled"] is True


def test_flip_moves_depth_with_the_image(depth_root: Path) -> None:
    augment = AugmentConfig(hflip_prob=1.0, crop_prob=0.0, **NO_COLOUR)
    plain = ProcessedDataset(depth_root, "train", build_eval_transform((48, 64)))
    flipped = ProcessedDataset(depth_root, "train", build_train_transform((48, 64), augment))
    index = next(i for i, r in enumerate(plain.images) if "depth_file" in r)
    image, target = plain[index]
    image_f, target_f = flipped[index]
    assert torch.allclose(image_f, image.flip(-1))
    assert torch.equal(target_f["depth"], target["depth"].flip(-1))
    assert torch.equal(target_f["mask"], target["mask"].flip(-1))


def test_crop_and_resize_keep_depth_values_aligned_with_the_mask(depth_root: Path) -> None:
    """Nearest resampling: no new depth values (no blending of invalid zeros into valid depth),
    and every pixel's depth still belongs to the class the mask gives it (objects 1.5 m)."""
    augment = AugmentConfig(hflip_prob=0.5, crop_prob=1.0, **NO_COLOUR)
    data = ProcessedDataset(depth_root, "train", build_train_transform((30, 34), augment), seed=5)
    raw = ProcessedDataset(depth_root, "train")
    for index, record in enumerate(data.images):
        if "depth_file" not in record or "mask_file" not in record:
            continue
        _, target = data[index]
        _, original = raw[index]
        assert target["depth"].shape == target["mask"].shape == (30, 34)
        assert set(target["depth"].unique().tolist()) <= set(original["depth"].unique().tolist())
        objects = (target["mask"] >= 2) & (target["mask"] != IGNORE_INDEX) & (target["depth"] > 0)
        assert torch.allclose(target["depth"][objects], torch.tensor(1.5))


def test_bad_depth_files_are_clear_errors(tmp_path: Path) -> None:
    root = make_processed_dataset(tmp_path / "ds", depth=True)
    train_ids = json.loads((root / "splits.json").read_text())["train"]
    records = [
        im
        for im in json.loads((root / "annotations.json").read_text())["images"]
        if im["id"] in train_ids
    ]
    record = next(r for r in records if "depth_file" in r)
    path = root / record["depth_file"]
    cv2.imwrite(str(path), np.zeros((48, 64), np.uint8))  # 8-bit, not millimetres
    data = ProcessedDataset(root, "train")
    with pytest.raises(UserError, match=f"{path.name}: depth targets are single-channel uint16"):
        data[data.images.index(next(r for r in data.images if r["id"] == record["id"]))]
    path.unlink()
    with pytest.raises(UserError, match=f"missing, first {record['depth_file']}"):
        ProcessedDataset(root, "train")


# ----------------------------------------------------------------------------- training runs
def _args(root: Path, out: Path, name: str, *extra: str) -> list[str]:
    return tiny_run_overrides(
        root, out, name, "logging.preview_images=1", "logging.log_every=1", *extra, batch_size=3
    )


def test_three_task_run_records_the_task_set_and_depth_metrics(
    depth_root: Path, tmp_path: Path
) -> None:
    tasks = "model.tasks=[detection,segmentation,depth]"
    assert (
        cli.run(
            _args(
                depth_root, tmp_path, "three", tasks, "optim.epochs=1", "balancing.weighting=dwa"
            )
        )
        == 0
    )
    last = load_checkpoint(tmp_path / "three" / "last.pt")
    assert last["model_kwargs"]["tasks"] == ["detection", "segmentation", "depth"]
    depth = last["metrics"]["depth"]
    assert depth["valid_pixels"] > 0 and 0.0 <= depth["delta1"] <= 1.0
    assert last["balancer"]["_extra_state"]["history"][0].keys() == {
        "detection",
        "segmentation",
        "depth",
    }
    from mtl_perception.predictor import Predictor

    prediction = Predictor.from_checkpoint(tmp_path / "three" / "last.pt", device="cpu").predict(
        np.zeros((30, 40, 3), np.uint8)
    )
    assert prediction.depth is not None and prediction.depth.shape == (30, 40)
    assert prediction.depth.dtype == np.float32 and bool((prediction.depth > 0).all())


def test_depth_task_without_depth_in_the_data_is_a_clear_error(tmp_path: Path) -> None:
    root = make_processed_dataset(tmp_path / "plain")
    with pytest.raises(
        UserError, match=r"model\.tasks includes depth but no train image has a depth_file"
    ):
        Trainer(load_config(None, _args(root, tmp_path, "x", "model.tasks=[depth]")))
    with pytest.raises(UserError, match=r"model\.tasks"):
        load_config(None, _args(root, tmp_path, "x", "model.tasks=[]"))


def test_depth_only_baseline_learns_one_batch(depth_root: Path, tmp_path: Path) -> None:
    config = load_config(
        None,
        _args(
            depth_root,
            tmp_path,
            "solo",
            "model.tasks=[depth]",
            "optim.warmup_steps=0",
            "optim.epochs=20",
            "augment.crop_prob=0",
            "augment.hflip_prob=0",
            "model.kwargs={bn_momentum: 0.1}",
        ),
    )
    trainer = Trainer(config)
    assert trainer.model.tasks == ("depth",)
    records = [i for i, r in enumerate(trainer.train_set.images) if "depth_file" in r][:3]
    batch = collate([trainer.train_set[i] for i in records])
    losses = [train_step(trainer.step_context, batch, step)["loss/depth"] for step in range(12)]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
