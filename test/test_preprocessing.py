# SPDX-License-Identifier: Apache-2.0
"""One resize everywhere: a full-size camera frame reaches the network as the same pixels in
training, validation and deployment (``Predictor``: mtl-eval, the node, replay)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from mtl_perception.predictor import Predictor
from mtl_perception.train.config import AugmentConfig
from mtl_perception.train.dataset import ProcessedDataset
from mtl_perception.train.transforms import build_eval_transform, build_train_transform

INPUT_SIZE = (240, 320)
FRAME_SIZE = (720, 1280)  # a 720p camera frame, shrunk 3x / 4x as on the robot


def _camera_frame() -> np.ndarray:
    """Fine detail (noise, thin lines) that any two different resizes render differently."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (*FRAME_SIZE, 3), dtype=np.uint8)
    for x in range(0, FRAME_SIZE[1], 7):
        cv2.line(frame, (x, 0), (x, FRAME_SIZE[0] - 1), (255, 255, 255), 1)
    return frame


def _dataset_with(frame: np.ndarray, root: Path) -> Path:
    """A one-image processed dataset holding ``frame`` (PNG: lossless)."""
    (root / "images").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "f.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    height, width = frame.shape[:2]
    annotations = {
        "images": [{"id": 1, "file_name": "images/f.png", "width": width, "height": height}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 100, 200, 150], "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "box"}],
    }
    (root / "annotations.json").write_text(json.dumps(annotations))
    (root / "classes.json").write_text(
        json.dumps(
            {
                "detection_classes": ["box"],
                "segmentation_classes": ["background", "floor"],
                "palette": [[0, 0, 0], [9, 9, 9]],
            }
        )
    )
    (root / "splits.json").write_text(json.dumps({"train": [1], "val": [1], "test": []}))
    return root


class _Recorder(torch.nn.Module):
    """Stands in for the network only to capture the input tensor the Predictor hands it."""

    tasks = ("segmentation",)

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.seen.extend(image.clone() for image in images)
        return [{"mask": torch.zeros(image.shape[-2:], dtype=torch.int64)} for image in images]


def _deployed_input(frame: np.ndarray) -> torch.Tensor:
    recorder = _Recorder()
    predictor = Predictor(
        recorder,
        detection_classes=[],
        segmentation_classes=["background", "floor"],
        palette=[[0, 0, 0], [9, 9, 9]],
        input_size=INPUT_SIZE,
        device="cpu",
        half=False,
    )
    predictor.predict(frame)
    return recorder.seen[0]


@pytest.fixture(scope="module")
def frame_and_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    frame = _camera_frame()
    return frame, _dataset_with(frame, tmp_path_factory.mktemp("ds"))


def test_training_validation_and_deployment_see_identical_pixels(
    frame_and_root: tuple[np.ndarray, Path],
) -> None:
    frame, root = frame_and_root
    deployed = _deployed_input(frame)
    validation, _ = ProcessedDataset(root, "val", build_eval_transform(INPUT_SIZE))[0]
    no_augmentation = AugmentConfig(
        hflip_prob=0, crop_prob=0, brightness=0, contrast=0, saturation=0, hue=0
    )
    training, target = ProcessedDataset(
        root, "train", build_train_transform(INPUT_SIZE, no_augmentation)
    )[0]
    assert deployed.shape == (3, *INPUT_SIZE) and deployed.dtype == torch.float32
    torch.testing.assert_close(validation, deployed, rtol=0, atol=0)
    torch.testing.assert_close(training, deployed, rtol=0, atol=0)
    # Boxes follow the image: x scaled by 320/1280, y by 240/720.
    torch.testing.assert_close(target["boxes"], torch.tensor([[25.0, 100 / 3, 75.0, 250 / 3]]))


def test_the_shared_resize_is_antialiased_not_plain_bilinear(
    frame_and_root: tuple[np.ndarray, Path],
) -> None:
    """The shared resize matches an independent antialiased reference (Pillow's bilinear, a
    triangle filter widened by the scale factor); plain bilinear (what deployment used before)
    samples a few source pixels per output pixel and is far from the training pixels."""
    frame, _ = frame_and_root
    deployed = (
        (_deployed_input(frame) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy().astype(int)
    )
    pillow = np.asarray(
        Image.fromarray(frame).resize(INPUT_SIZE[::-1], Image.Resampling.BILINEAR)
    ).astype(int)
    plain = cv2.resize(frame, INPUT_SIZE[::-1], interpolation=cv2.INTER_LINEAR).astype(int)
    assert np.abs(pillow - deployed).max() <= 1
    assert np.abs(plain - deployed).mean() > 10 * np.abs(pillow - deployed).mean()
