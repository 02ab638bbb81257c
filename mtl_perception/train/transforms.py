# SPDX-License-Identifier: Apache-2.0
"""Training and evaluation transforms (torchvision transforms.v2 on tv_tensors).

Image, boxes and mask are wrapped as ``tv_tensors`` so every geometric transform moves all
three together (the mask with nearest-neighbour resampling). Evaluation only resizes to the
model's input size: metrics are computed at input resolution. Both resize with
``preprocessing.resize_to_input``, the resize ``Predictor`` applies to frames in deployment.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from mtl_perception.preprocessing import ResizeToInput
from mtl_perception.train.config import AugmentConfig


def _finish() -> list[v2.Transform]:
    """Steps shared by train and eval: drop degenerate boxes, float image in [0, 1]."""
    return [
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=lambda sample: sample[1]["labels"]),
        v2.ToDtype(
            torch.float32, scale=True
        ),  # = preprocessing.to_float; a bare dtype converts only the image
    ]


def build_train_transform(input_size: tuple[int, int], augment: AugmentConfig) -> v2.Transform:
    """Random IoU crop, resize to ``input_size`` [H, W], horizontal flip, colour jitter."""
    return v2.Compose(
        [
            v2.RandomApply([v2.RandomIoUCrop()], p=augment.crop_prob),
            ResizeToInput(input_size),
            v2.RandomHorizontalFlip(p=augment.hflip_prob),
            v2.ColorJitter(augment.brightness, augment.contrast, augment.saturation, augment.hue),
            *_finish(),
        ]
    )


def build_eval_transform(input_size: tuple[int, int]) -> v2.Transform:
    """Resize only (no randomness), so validation is repeatable."""
    return v2.Compose([ResizeToInput(input_size), *_finish()])
