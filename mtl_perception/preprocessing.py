# SPDX-License-Identifier: Apache-2.0
"""The one resize from a frame to the network's input size: training, evaluation and the node.

A network only works as well in deployment as the pixels it is given resemble the ones it was
trained on. Training, validation (``train.transforms``) and inference (``Predictor``: mtl-eval,
the node, bag replay, the experiment's scoring) therefore all resize with ``resize_to_input``:
antialiased bilinear on the uint8 frame, on the CPU, before any conversion to float. The same
frame gives the same input tensor, bit for bit, on every path (``test_preprocessing.py``).

Antialiased because camera frames are usually shrunk (720x1280 -> 320x320): plain bilinear
interpolation then samples only a few source pixels per output pixel and aliases thin edges,
which differs visibly between libraries. torchvision's uint8 kernel is used (not OpenCV's
``INTER_AREA``) because training must resize boxes and masks with the image through
``transforms.v2``; on an ``[H, W, 3]`` numpy frame viewed as ``[3, H, W]`` it runs at about
cv2's speed (0.8 ms vs 0.6 ms for 720x1280 -> 240x320 on one core).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

INTERPOLATION = InterpolationMode.BILINEAR
ANTIALIAS = True


def resize_to_input(inputs: Any, size: Sequence[int]) -> Any:
    """Resize to ``size`` ``(H, W)``.

    ``inputs``: a uint8 ``[..., 3, H, W]`` image tensor (any strides, e.g. a permuted numpy
    frame) or a ``tv_tensors`` image, boxes or mask (masks are resized nearest-neighbour by
    torchvision, so class ids stay valid).
    """
    return v2.functional.resize(
        inputs, [int(size[0]), int(size[1])], interpolation=INTERPOLATION, antialias=ANTIALIAS
    )


def to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float32 in [0, 1], exactly as in training.

    Training uses ``v2.ToDtype(torch.float32, scale=True)``: ``x * (1/255)``, which differs from
    ``x / 255`` in the last bit.
    """
    return v2.functional.to_dtype(image, torch.float32, scale=True)


class ResizeToInput(v2.Transform):
    """``resize_to_input`` as a ``transforms.v2`` step: image, boxes and mask move together."""

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Resize one input (``transforms.v2`` calls this per image, boxes and mask)."""
        return resize_to_input(inpt, self.size)
