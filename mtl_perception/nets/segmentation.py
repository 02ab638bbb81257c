"""Segmentation heads on the shared MobileNetV3 taps: DeepLabv3 (ASPP) and LR-ASPP.

The heads are torchvision's ``DeepLabHead`` and ``LRASPPHead``; this module adds the part
torchvision keeps in its model wrappers: upsampling the logits to the input size, the
cross-entropy loss (255 = ignore) and the per-pixel argmax.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead
from torchvision.models.segmentation.lraspp import LRASPPHead

from mtl_perception.nets.backbone import TAP_STRIDE8, TAP_STRIDE32
from mtl_perception.nets.task_head import SEGMENTATION, Targets

IGNORE_INDEX = 255


class SegmentationHead(nn.Module):
    """Loss and prediction shared by all segmentation heads; subclasses provide ``logits``."""

    task = SEGMENTATION
    feature_taps: tuple[str, ...] = ()

    def __init__(self, num_classes: int) -> None:
        """``num_classes`` includes background (2 for binary segmentation)."""
        super().__init__()
        self.num_classes = num_classes

    def logits(self, features: Mapping[str, Tensor]) -> Tensor:
        """Class scores ``[B, C, h, w]`` at the head's own (reduced) resolution."""
        raise NotImplementedError

    def forward(
        self, features: Mapping[str, Tensor], images: Tensor, targets: Targets | None = None
    ) -> Tensor | list[dict[str, Tensor]]:
        """The loss when ``targets`` are given, else the masks."""
        return self.predict(features, images) if targets is None else self.loss(features, images, targets)

    def _full_resolution_logits(self, features: Mapping[str, Tensor], images: Tensor) -> Tensor:
        return F.interpolate(self.logits(features), size=images.shape[-2:], mode="bilinear", align_corners=False)

    def loss(self, features: Mapping[str, Tensor], images: Tensor, targets: Targets) -> Tensor:
        """Pixel-mean cross-entropy over non-ignored pixels; 0 (still in the graph) if all are ignored."""
        masks = self._target_masks(targets, images)
        logits = self._full_resolution_logits(features, images)
        # reduction="mean" divides by zero (NaN) for an all-ignore batch; divide by the clamped count instead.
        total = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (masks != IGNORE_INDEX).sum().clamp(min=1)

    def predict(self, features: Mapping[str, Tensor], images: Tensor) -> list[dict[str, Tensor]]:
        """One int64 class-id ``mask`` ``[H, W]`` per image, at input resolution."""
        classes = self._full_resolution_logits(features, images).argmax(dim=1)
        return [{"mask": mask} for mask in classes]

    def _target_masks(self, targets: Targets, images: Tensor) -> Tensor:
        """Stack the targets' masks ``[B, H, W]`` int64 after checking size and class ids."""
        size = tuple(images.shape[-2:])
        for index, target in enumerate(targets):
            mask = target["mask"]
            if tuple(mask.shape) != size:
                raise ValueError(f"target {index}: mask shape {tuple(mask.shape)} must equal the input size {size}")
        masks = torch.stack([target["mask"] for target in targets]).long()
        valid = masks[masks != IGNORE_INDEX]
        if valid.numel() and (valid.min() < 0 or valid.max() >= self.num_classes):
            bad = valid[(valid < 0) | (valid >= self.num_classes)][0].item()
            allowed = f"0..{self.num_classes - 1} (or {IGNORE_INDEX} = ignore)"
            raise ValueError(f"mask class id {bad} is outside {allowed}")
        return masks


# DeepLabv3 uses atrous rates (6, 12, 18) at output stride 16 and doubles them at stride 8
# (torchvision's DeepLabHead fixes (12, 24, 36)). The shared body is not dilated (stride 32), so
# the rates are halved instead: larger ones would only sample zero padding on its small maps.
ASPP_RATES_STRIDE32 = (3, 6, 9)


class DeepLabV3Segmenter(SegmentationHead):
    """DeepLabv3: ASPP (atrous 3/6/9 + image pooling) on the last, stride-32 feature map."""

    feature_taps = (TAP_STRIDE32,)

    def __init__(self, tap_channels: Mapping[str, int], num_classes: int) -> None:
        super().__init__(num_classes)
        in_channels = tap_channels[TAP_STRIDE32]
        self.head = DeepLabHead(in_channels, num_classes)
        self.head[0] = ASPP(in_channels, list(ASPP_RATES_STRIDE32))

    def logits(self, features: Mapping[str, Tensor]) -> Tensor:
        return self.head(features[TAP_STRIDE32])


class LRASPPSegmenter(SegmentationHead):
    """LR-ASPP (MobileNetV3 paper): attention-gated stride-32 features plus a stride-8 skip."""

    feature_taps = (TAP_STRIDE8, TAP_STRIDE32)

    def __init__(self, tap_channels: Mapping[str, int], num_classes: int, inter_channels: int = 128) -> None:
        super().__init__(num_classes)
        self.head = LRASPPHead(tap_channels[TAP_STRIDE8], tap_channels[TAP_STRIDE32], num_classes, inter_channels)

    def logits(self, features: Mapping[str, Tensor]) -> Tensor:
        return self.head({"low": features[TAP_STRIDE8], "high": features[TAP_STRIDE32]})
