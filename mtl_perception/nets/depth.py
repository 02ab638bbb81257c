# SPDX-License-Identifier: Apache-2.0
"""Monocular depth head on the shared MobileNetV3 taps, and its losses.

The decoder is LR-ASPP's (torchvision's ``LRASPPHead``, MobileNetV3 paper section 6.4) with one
output channel: attention-gated stride-32 features plus a stride-8 skip, i.e. the same light
decoder the package uses for segmentation. Its output is upsampled to the input size and made
positive with softplus (smooth, unlike ReLU never stuck at zero, and unlike exp it does not
explode early in training). Targets are metres; invalid pixels (0, negative or non-finite) are
ignored by every loss.

Losses (``DEPTH_LOSSES``):
- ``silog``: scale-invariant log error (Eigen et al. 2014) in the square-root form of BTS /
  AdaBins, ``sqrt(mean(d^2) - lambda * mean(d)^2)`` with ``d = log(pred) - log(target)`` per
  image, averaged over the images that have valid pixels;
- ``berhu``: reverse Huber (Laina et al. 2016), L1 below ``c = 0.2 * max |error|`` of the batch,
  scaled L2 above it;
- ``l1``: mean absolute error in metres.
Written here because torchvision has no depth losses and the depth libraries that do (e.g. the
AdaBins / BTS repositories) are research code, not installable packages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torchvision.models.segmentation.lraspp import LRASPPHead

from mtl_perception.core.errors import UserError
from mtl_perception.nets.backbone import TAP_STRIDE8, TAP_STRIDE32
from mtl_perception.nets.task_head import DEPTH, Targets

# Smallest depth the head outputs (metres): keeps log(pred) finite for SILog.
MIN_DEPTH_M = 1e-3
# Initial output (metres) of an untrained head: a typical indoor distance, so the first steps
# fit the scene's structure instead of first climbing from softplus(0) = 0.69 m.
INIT_DEPTH_M = 2.0
# SILog's variance focus: 1 = fully scale invariant, 0 = plain log RMSE; 0.85 as in BTS / AdaBins.
SILOG_LAMBDA = 0.85
# berHu's threshold as a fraction of the batch's largest absolute error (Laina et al. 2016).
BERHU_FRACTION = 0.2
DEFAULT_DEPTH_LOSS = "silog"
DEFAULT_DEPTH_CHANNELS = 128


def valid_depth(target: Tensor) -> Tensor:
    """Pixels with a usable depth: finite and > 0 (the contract's 0 = invalid)."""
    return torch.isfinite(target) & (target > 0)


def _zero(pred: Tensor) -> Tensor:
    """A zero loss still connected to the graph (no valid pixel in the batch)."""
    return pred.sum() * 0.0


def silog_loss(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Scale-invariant log loss over valid pixels (``[B, 1, H, W]`` tensors, metres)."""
    per_image = []
    for p, t, v in zip(pred, target, valid, strict=True):
        if not bool(v.any()):
            continue
        d = torch.log(p[v]) - torch.log(t[v])
        # The variance term is >= 0 for lambda <= 1; the epsilon keeps sqrt's gradient finite at 0.
        per_image.append(
            torch.sqrt((d.square().mean() - SILOG_LAMBDA * d.mean().square()).clamp(min=0) + 1e-8)
        )
    return torch.stack(per_image).mean() if per_image else _zero(pred)


def berhu_loss(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Reverse Huber loss over valid pixels, metres."""
    if not bool(valid.any()):
        return _zero(pred)
    error = (pred[valid] - target[valid]).abs()
    c = (BERHU_FRACTION * error.detach().max()).clamp(min=1e-6)
    return torch.where(error <= c, error, (error.square() + c * c) / (2 * c)).mean()


def l1_loss(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean absolute error over valid pixels, metres."""
    return (pred[valid] - target[valid]).abs().mean() if bool(valid.any()) else _zero(pred)


DEPTH_LOSSES: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "silog": silog_loss,
    "berhu": berhu_loss,
    "l1": l1_loss,
}


class DepthHead(nn.Module):
    """LR-ASPP-style depth decoder on the stride-8 and stride-32 taps; metres at input size."""

    task = DEPTH
    feature_taps: tuple[str, ...] = (TAP_STRIDE8, TAP_STRIDE32)
    option_names: tuple[str, ...] = ("depth_loss", "depth_channels")

    def __init__(
        self,
        tap_channels: Mapping[str, int],
        *,
        depth_loss: str = DEFAULT_DEPTH_LOSS,
        depth_channels: int = DEFAULT_DEPTH_CHANNELS,
    ) -> None:
        """``depth_loss``: one of ``DEPTH_LOSSES``; ``depth_channels``: decoder width."""
        super().__init__()
        if depth_loss not in DEPTH_LOSSES:
            raise UserError(f"depth_loss={depth_loss!r} is not one of {', '.join(DEPTH_LOSSES)}")
        if (
            isinstance(depth_channels, bool)
            or not isinstance(depth_channels, int)
            or depth_channels < 8
        ):
            raise UserError(f"depth_channels={depth_channels!r} must be an integer >= 8")
        self.options: dict[str, object] = {
            "depth_loss": depth_loss,
            "depth_channels": depth_channels,
        }
        self._loss = DEPTH_LOSSES[depth_loss]
        self.head = LRASPPHead(
            tap_channels[TAP_STRIDE8], tap_channels[TAP_STRIDE32], 1, depth_channels
        )
        with torch.no_grad():  # softplus^-1(INIT_DEPTH_M - MIN_DEPTH_M): the untrained output
            self.head.high_classifier.bias.fill_(math.log(math.expm1(INIT_DEPTH_M - MIN_DEPTH_M)))
            self.head.low_classifier.bias.zero_()

    def depth(self, features: Mapping[str, Tensor], images: Tensor) -> Tensor:
        """Depth ``[B, 1, H, W]`` in metres (>= ``MIN_DEPTH_M``) at the input size."""
        raw = self.head({"low": features[TAP_STRIDE8], "high": features[TAP_STRIDE32]})
        raw = nn.functional.interpolate(
            raw, size=images.shape[-2:], mode="bilinear", align_corners=False
        )
        # float32: under autocast softplus and the log in SILog lose the small depths in fp16.
        return nn.functional.softplus(raw.float()) + MIN_DEPTH_M

    def forward(
        self, features: Mapping[str, Tensor], images: Tensor, targets: Targets | None = None
    ) -> Tensor | list[dict[str, Tensor]]:
        """The loss when ``targets`` are given, else the depth maps."""
        return (
            self.predict(features, images)
            if targets is None
            else self.loss(features, images, targets)
        )

    def loss(self, features: Mapping[str, Tensor], images: Tensor, targets: Targets) -> Tensor:
        """The configured depth loss over the valid pixels of the targets' ``depth`` maps."""
        target = self._target_depth(targets, images)
        return self._loss(self.depth(features, images), target, valid_depth(target))

    def predict(self, features: Mapping[str, Tensor], images: Tensor) -> list[dict[str, Tensor]]:
        """One float32 ``depth`` ``[1, H, W]`` (metres) per image, at input resolution."""
        return [{"depth": depth} for depth in self.depth(features, images)]

    @staticmethod
    def _target_depth(targets: Targets, images: Tensor) -> Tensor:
        """Stack the targets' depth maps (``[H, W]`` or ``[1, H, W]``) to ``[B, 1, H, W]`` float32.

        A target without one is all invalid (adds nothing to the loss).
        """
        size = tuple(images.shape[-2:])
        maps = []
        for index, target in enumerate(targets):
            depth = target.get("depth")
            if depth is None:
                maps.append(images.new_zeros((1, *size), dtype=torch.float32))
                continue
            if tuple(depth.shape[-2:]) != size or depth.numel() != size[0] * size[1]:
                raise ValueError(
                    f"target {index}: depth shape {tuple(depth.shape)} "
                    f"must equal the input size {size}"
                )
            maps.append(depth.reshape(1, *size).float())
        return torch.stack(maps)
