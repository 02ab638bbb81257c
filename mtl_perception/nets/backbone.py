# SPDX-License-Identifier: Apache-2.0
"""The shared MobileNetV3-Large body: one construction recipe for every architecture.

The body is torchvision's ``mobilenet_v3_large(...).features`` (state_dict keys
``features.N...``, so ImageNet classification weights load unchanged; see ``pretrained``). It runs
once per forward and returns the "taps" (intermediate feature maps) that the model's heads asked
for:

- ``stride8``: output of the first stride-8 block (40 ch), LR-ASPP's low-level input;
- ``stride16_expand``: the expansion layer of the last strided block (672 ch, stride 16),
  SSDLite's first feature map (MobileNetV3 paper, section 6.3);
- ``stride32_block``: output of that strided block (160 ch, stride 32), Faster R-CNN FPN's first
  input;
- ``stride32``: the final 1x1 conv (960 ch, stride 32), consumed by every head.
"""

from __future__ import annotations

from collections.abc import Collection

from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large

from mtl_perception.core.errors import UserError

TAP_STRIDE8 = "stride8"
TAP_STRIDE16_EXPAND = "stride16_expand"
TAP_STRIDE32_BLOCK = "stride32_block"
TAP_STRIDE32 = "stride32"
TAPS = (TAP_STRIDE8, TAP_STRIDE16_EXPAND, TAP_STRIDE32_BLOCK, TAP_STRIDE32)


class MobileNetV3Body(nn.Module):
    """MobileNetV3-Large feature extractor returning the requested taps in ``TAPS`` order."""

    def __init__(self, taps: Collection[str], trainable_layers: int | None = None) -> None:
        """Build the body with random weights.

        Args:
            taps: Which feature maps ``forward`` returns (a non-empty subset of ``TAPS``).
            trainable_layers: Stages (0-6) left trainable counting from the output end, as in
                torchvision; ``None`` = all.

        Raises:
            ValueError: ``taps`` is empty or names an unknown tap.
            UserError: ``trainable_layers`` is not an integer in 0..6.
        """
        super().__init__()
        unknown = sorted(set(taps) - set(TAPS))
        if unknown or not taps:
            raise ValueError(f"backbone taps {sorted(taps)} must be a non-empty subset of {TAPS}")
        self.features = mobilenet_v3_large(weights=None).features
        # Strided blocks start the stages C1..C4; C0 is the stem, the last conv closes C5.
        stages = [0] + [
            i for i, block in enumerate(self.features) if getattr(block, "_is_cn", False)
        ]
        stages.append(len(self.features) - 1)
        self._stage_starts = stages
        self._stride8_index = stages[-4]
        self._expand_index = stages[-2]
        if self.features[self._expand_index].use_res_connect:  # the tap would skip the residual
            raise RuntimeError(
                "torchvision MobileNetV3 layout changed: last strided block has a residual"
            )
        self.taps = tuple(tap for tap in TAPS if tap in taps)
        expand_block = self.features[self._expand_index]
        self.channels = {
            TAP_STRIDE8: self.features[self._stride8_index].out_channels,
            TAP_STRIDE16_EXPAND: expand_block.block[0].out_channels,
            TAP_STRIDE32_BLOCK: expand_block.out_channels,
            TAP_STRIDE32: self.features[-1].out_channels,
        }
        self.trainable_layers = len(stages) if trainable_layers is None else trainable_layers
        self._frozen_blocks = self._freeze(self.trainable_layers)

    @property
    def expand_index(self) -> int:
        """Index in ``features`` of the last strided block (whose expansion layer is a tap)."""
        return self._expand_index

    def _freeze(self, trainable_layers: int) -> int:
        """Freeze every block before the last ``trainable_layers`` stages; return their count."""
        num_stages = len(self._stage_starts)
        is_int = isinstance(trainable_layers, int) and not isinstance(trainable_layers, bool)
        if not is_int or not 0 <= trainable_layers <= num_stages:
            raise UserError(
                f"trainable_backbone_layers={trainable_layers!r} must be an integer in "
                f"0..{num_stages}"
            )
        frozen = (
            len(self.features)
            if trainable_layers == 0
            else self._stage_starts[num_stages - trainable_layers]
        )
        for block in self.features[:frozen]:
            block.requires_grad_(False)
        return frozen

    def train(self, mode: bool = True) -> MobileNetV3Body:
        """Like ``nn.Module.train``, but frozen blocks stay in eval mode (fixed BN statistics)."""
        super().train(mode)
        for block in self.features[: self._frozen_blocks]:
            block.eval()
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Run the body once on a normalised batch ``[B, 3, H, W]``; return the taps by name.

        Intermediate taps are returned as aliases (``view_as``): the trunk continues from the
        original tensor, so no returned tap lies on the autograd path to another one. The taps
        thus cut the graph between body and heads cleanly, which torchjd's ``mtl_backward`` relies
        on (the gradient w.r.t. a tap is then the heads' direct use of it only, nothing counted
        twice).
        """
        out: dict[str, Tensor] = {}
        for index, block in enumerate(self.features):
            if index == self._expand_index:
                # Step through the block's layers to catch the expansion output on the way.
                for layer_index, layer in enumerate(block.block):
                    x = layer(x)
                    if layer_index == 0:
                        out[TAP_STRIDE16_EXPAND] = x.view_as(x)
                out[TAP_STRIDE32_BLOCK] = x.view_as(x)
            else:
                x = block(x)
            if index == self._stride8_index:
                out[TAP_STRIDE8] = x.view_as(x)
        out[TAP_STRIDE32] = x
        return {tap: out[tap] for tap in self.taps}
