# SPDX-License-Identifier: Apache-2.0
"""Segmentation heads on the shared MobileNetV3 taps: DeepLabv3 (ASPP) and LR-ASPP.

The heads are torchvision's ``DeepLabHead`` and ``LRASPPHead``; this module adds the part
torchvision keeps in its model wrappers: upsampling the logits to the input size, the
cross-entropy loss (255 = ignore) and the per-pixel argmax. DeepLabv3's ASPP can be made lighter
(``aspp_channels``, ``aspp_separable``) because at stride 32 torchvision's full-width ASPP costs
about twice the whole MobileNetV3 body.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.models.segmentation.lraspp import LRASPPHead
from torchvision.ops.misc import Conv2dNormActivation

from mtl_perception.core.constants import IGNORE_INDEX
from mtl_perception.core.errors import UserError
from mtl_perception.nets.backbone import TAP_STRIDE8, TAP_STRIDE32
from mtl_perception.nets.task_head import SEGMENTATION, Targets, is_labeled


class SegmentationHead(nn.Module):
    """Loss and prediction shared by all segmentation heads; subclasses provide ``logits``."""

    task = SEGMENTATION
    feature_taps: tuple[str, ...] = ()
    option_names: tuple[str, ...] = ()

    def __init__(self, num_classes: int) -> None:
        """``num_classes`` includes background (2 for binary segmentation)."""
        super().__init__()
        self.num_classes = num_classes
        self.options: dict[str, object] = {}

    def logits(self, features: Mapping[str, Tensor]) -> Tensor:
        """Class scores ``[B, C, h, w]`` at the head's own (reduced) resolution."""
        raise NotImplementedError

    def forward(
        self, features: Mapping[str, Tensor], images: Tensor, targets: Targets | None = None
    ) -> Tensor | list[dict[str, Tensor]]:
        """The loss when ``targets`` are given, else the masks."""
        return (
            self.predict(features, images)
            if targets is None
            else self.loss(features, images, targets)
        )

    def _full_resolution_logits(self, features: Mapping[str, Tensor], images: Tensor) -> Tensor:
        return nn.functional.interpolate(
            self.logits(features), size=images.shape[-2:], mode="bilinear", align_corners=False
        )

    def loss(self, features: Mapping[str, Tensor], images: Tensor, targets: Targets) -> Tensor:
        """Pixel-mean cross-entropy over the non-ignored pixels (0, in the graph, if none)."""
        masks = self._target_masks(targets, images)
        logits = self._full_resolution_logits(features, images)
        # reduction="mean" divides by zero (NaN) for an all-ignore batch; divide by the clamped
        # count instead.
        total = nn.functional.cross_entropy(
            logits, masks, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return total / (masks != IGNORE_INDEX).sum().clamp(min=1)

    def predict(self, features: Mapping[str, Tensor], images: Tensor) -> list[dict[str, Tensor]]:
        """One int64 class-id ``mask`` ``[H, W]`` per image, at input resolution."""
        # ``max(dim).indices`` instead of ``argmax(dim)``: the same indices (both documented to
        # return the first maximal index on ties; NaN counts as the maximum in both), but PyTorch's
        # CPU argmax over the channel dim of a [B, C, H, W] tensor is ~10-30x slower (~25 ms vs
        # ~1 ms at 240x320), which was a fifth of a whole SSDLite + LR-ASPP forward pass.
        classes = self._full_resolution_logits(features, images).max(dim=1).indices
        return [{"mask": mask} for mask in classes]

    def _target_masks(self, targets: Targets, images: Tensor) -> Tensor:
        """Stack the targets' masks ``[B, H, W]`` int64 after checking size and class ids.

        An unlabeled target (``"labeled": False``) is all ignore.
        """
        size = tuple(images.shape[-2:])
        for index, target in enumerate(targets):
            mask = target["mask"]
            if is_labeled(target) and tuple(mask.shape) != size:
                raise ValueError(
                    f"target {index}: mask shape {tuple(mask.shape)} must equal the input "
                    f"size {size}"
                )
        ignore = torch.full(size, IGNORE_INDEX, dtype=torch.int64, device=images.device)
        masks = torch.stack(
            [target["mask"].long() if is_labeled(target) else ignore for target in targets]
        )
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
# torchvision's (and the paper's) ASPP width; with it the head has exactly torchvision's
# DeepLabHead layout.
DEFAULT_ASPP_CHANNELS = 256
# Depthwise-separable atrous convolutions by default: speed on the robot at similar accuracy.
# With full 3x3 convs on the 960-channel stride-32 map the head costs ~1.3 GFLOPs at 240x320,
# about twice the whole MobileNetV3 body (~0.6), so sharing the body saves little; separable
# convs bring the head to ~0.3 GFLOPs (measured CPU latency gain is smaller, ~3 ms of ~23, since
# depthwise convs run at low arithmetic efficiency on CPU). DeepLabv3+ (Chen et al. 2018,
# sec. 3.2 and 4) reports that separable ASPP and decoder convs cut compute by 33-41% at equal or
# better mIoU, and MobileNetV2 (Sandler et al. 2018, table 7) found the full ASPP adds little
# (+0.4 mIoU for 2x the MAdds) on a mobile backbone.
DEFAULT_ASPP_SEPARABLE = True


def _conv3x3(in_channels: int, out_channels: int, dilation: int, separable: bool) -> nn.Sequential:
    """3x3 (atrous) conv + BN + ReLU.

    If ``separable``: a depthwise 3x3 + BN + ReLU then a pointwise 1x1 + BN + ReLU (the
    DeepLabv3+ / MobileNet factorisation).
    """
    if not separable:
        return Conv2dNormActivation(in_channels, out_channels, 3, dilation=dilation, bias=False)
    return nn.Sequential(
        Conv2dNormActivation(
            in_channels, in_channels, 3, dilation=dilation, groups=in_channels, bias=False
        ),
        Conv2dNormActivation(in_channels, out_channels, 1, bias=False),
    )


def deeplabv3_head(
    in_channels: int, num_classes: int, channels: int, separable: bool
) -> nn.Sequential:
    """DeepLabv3's head: ASPP, a 3x3 conv and the 1x1 classifier.

    The ASPP has a 1x1 branch, three atrous 3x3 branches at ``ASPP_RATES_STRIDE32`` and image
    pooling. Built here rather than with torchvision's ``DeepLabHead``, which fixes the width at
    256 and full convs; with ``channels=256, separable=False`` the layers and state_dict keys are
    exactly ``DeepLabHead``'s (ASPP's atrous branches are ``Conv2dNormActivation``-shaped: conv,
    BN, ReLU).
    """
    aspp = ASPP(in_channels, list(ASPP_RATES_STRIDE32), out_channels=channels)
    for branch, rate in enumerate(ASPP_RATES_STRIDE32, start=1):
        aspp.convs[branch] = _conv3x3(in_channels, channels, rate, separable)
    return nn.Sequential(
        aspp, *_conv3x3(channels, channels, 1, separable), nn.Conv2d(channels, num_classes, 1)
    )


class DeepLabV3Segmenter(SegmentationHead):
    """DeepLabv3: ASPP (atrous 3/6/9 + image pooling) on the last, stride-32 feature map."""

    feature_taps = (TAP_STRIDE32,)
    option_names = ("aspp_channels", "aspp_separable")

    def __init__(
        self,
        tap_channels: Mapping[str, int],
        num_classes: int,
        *,
        aspp_channels: int = DEFAULT_ASPP_CHANNELS,
        aspp_separable: bool = DEFAULT_ASPP_SEPARABLE,
    ) -> None:
        """Build the head on the stride-32 tap.

        Args:
            tap_channels: Channels of each backbone tap.
            num_classes: Segmentation classes, including background.
            aspp_channels: Width of the ASPP branches and the conv after it (>= 8).
            aspp_separable: Depthwise-separable 3x3 convs in the head (see
                ``DEFAULT_ASPP_SEPARABLE``).

        Raises:
            UserError: ``aspp_channels`` or ``aspp_separable`` has an invalid value.
        """
        super().__init__(num_classes)
        if (
            isinstance(aspp_channels, bool)
            or not isinstance(aspp_channels, int)
            or aspp_channels < 8
        ):
            raise UserError(f"aspp_channels={aspp_channels!r} must be an integer >= 8")
        if not isinstance(aspp_separable, bool):
            raise UserError(f"aspp_separable={aspp_separable!r} must be true or false")
        self.options = {"aspp_channels": aspp_channels, "aspp_separable": aspp_separable}
        self.head = deeplabv3_head(
            tap_channels[TAP_STRIDE32], num_classes, aspp_channels, aspp_separable
        )

    def logits(self, features: Mapping[str, Tensor]) -> Tensor:
        """ASPP head on the stride-32 tap: ``[B, C, h/32, w/32]``."""
        return self.head(features[TAP_STRIDE32])


class LRASPPSegmenter(SegmentationHead):
    """LR-ASPP (MobileNetV3 paper): attention-gated stride-32 features plus a stride-8 skip."""

    feature_taps = (TAP_STRIDE8, TAP_STRIDE32)

    def __init__(
        self, tap_channels: Mapping[str, int], num_classes: int, inter_channels: int = 128
    ) -> None:
        super().__init__(num_classes)
        self.head = LRASPPHead(
            tap_channels[TAP_STRIDE8], tap_channels[TAP_STRIDE32], num_classes, inter_channels
        )

    def logits(self, features: Mapping[str, Tensor]) -> Tensor:
        """LR-ASPP head on the stride-8 and stride-32 taps: ``[B, C, h/8, w/8]``."""
        return self.head({"low": features[TAP_STRIDE8], "high": features[TAP_STRIDE32]})
