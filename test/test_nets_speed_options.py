# SPDX-License-Identifier: Apache-2.0
"""Inference-speed options of the networks: fast mask argmax, FRCNN test-time proposals, light
DeepLabv3 ASPP and BatchNorm momentum, and their round trip through checkpoints."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead

from mtl_perception.core.errors import UserError
from mtl_perception.nets import (
    DETECTION,
    SEGMENTATION,
    build_model,
    count_parameters,
    model_from_checkpoint,
)
from mtl_perception.nets.segmentation import ASPP_RATES_STRIDE32, SegmentationHead

SIZE = (64, 96)


class FixedLogits(SegmentationHead):
    """A head whose low-resolution logits are given, to test the shared prediction step alone."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__(logits.shape[1])
        self.fixed = logits

    def logits(self, features: Mapping[str, Tensor]) -> Tensor:
        return self.fixed


def test_mask_prediction_equals_argmax_of_upsampled_logits_including_ties() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, 6)
    logits[0, 1:4] = 2.0  # three-way tie over a whole image: the first class (1) must win
    logits[1, :, 0, 0] = float("nan")  # NaN: both reductions treat it as the maximum
    logits[1, 3, 2, 2] = logits[1, 4, 2, 2] = 9.0
    images = torch.zeros(2, 3, 32, 48)
    masks = torch.stack([out["mask"] for out in FixedLogits(logits).predict({}, images)])
    expected = nn.functional.interpolate(
        logits, size=(32, 48), mode="bilinear", align_corners=False
    ).argmax(dim=1)
    assert masks.dtype == torch.int64 and masks.shape == (2, 32, 48)
    assert torch.equal(masks, expected)
    assert bool((masks[0] == 1).all())


def test_frcnn_test_time_proposals_are_honoured_and_training_keeps_torchvision_settings() -> None:
    torch.manual_seed(0)
    model = build_model(
        "frcnn", 2, 0, SIZE, rpn_pre_nms_top_n_test=40, rpn_post_nms_top_n_test=7
    ).eval()
    head = model.heads[DETECTION]
    assert (
        model.model_kwargs["rpn_pre_nms_top_n_test"] == 40
        and model.model_kwargs["rpn_post_nms_top_n_test"] == 7
    )
    assert head.rpn.pre_nms_top_n() == 40 and head.rpn.post_nms_top_n() == 7
    seen: list[int] = []
    head.roi_heads.register_forward_pre_hook(
        lambda module, args: seen.extend(len(p) for p in args[1])
    )
    with torch.inference_mode():
        model([torch.rand(3, *SIZE)])
    assert seen and max(seen) <= 7
    head.train()
    assert head.rpn.pre_nms_top_n() == 2000 and head.rpn.post_nms_top_n() == 2000
    default = build_model("frcnn_deeplabv3", 2, 2, SIZE)
    assert default.heads[DETECTION].rpn._post_nms_top_n["testing"] == 150
    with pytest.raises(UserError, match="rpn_post_nms_top_n_test=0"):
        build_model("frcnn", 2, 0, SIZE, rpn_post_nms_top_n_test=0)


def test_options_of_absent_heads_are_user_errors() -> None:
    with pytest.raises(
        UserError, match="rpn_pre_nms_top_n_test=50 does not apply to arch 'ssdlite_lraspp'"
    ):
        build_model("ssdlite_lraspp", 2, 2, SIZE, rpn_pre_nms_top_n_test=50)
    with pytest.raises(UserError, match="aspp_separable"):
        build_model("frcnn", 2, 0, SIZE, aspp_separable=False)
    assert "aspp_separable" not in build_model("ssdlite", 2, 0, SIZE).model_kwargs


def test_full_aspp_has_exactly_torchvision_deeplabhead_layout() -> None:
    model = build_model("deeplabv3", 0, 3, SIZE, aspp_separable=False)
    reference = DeepLabHead(960, 3)
    reference[0] = ASPP(960, list(ASPP_RATES_STRIDE32))
    ours = {key: value.shape for key, value in model.heads[SEGMENTATION].head.state_dict().items()}
    assert ours == {key: value.shape for key, value in reference.state_dict().items()}


def test_separable_aspp_is_lighter_trains_and_evaluates() -> None:
    torch.manual_seed(0)
    full = build_model("ssdlite_deeplabv3", 2, 3, SIZE, aspp_separable=False)
    model = build_model(
        "ssdlite_deeplabv3", 2, 3, SIZE, aspp_separable=True, aspp_channels=64, bn_momentum=0.1
    )
    depthwise = [
        m for m in model.heads[SEGMENTATION].modules() if isinstance(m, nn.Conv2d) and m.groups > 1
    ]
    assert len(depthwise) == 4 and all(
        m.groups == m.in_channels for m in depthwise
    )  # 3 atrous + the conv after ASPP
    assert (
        count_parameters(model.heads[SEGMENTATION])
        < count_parameters(full.heads[SEGMENTATION]) / 4
    )
    images = [torch.rand(3, *SIZE) for _ in range(2)]
    mask = torch.zeros(SIZE, dtype=torch.int64)
    mask[:, SIZE[1] // 3 :] = 1
    mask[:, 2 * SIZE[1] // 3 :] = 2  # a learnable layout: three vertical bands
    targets = [
        {
            "boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]),
            "labels": torch.tensor([1]),
            "mask": mask,
        }
        for _ in images
    ]
    optimizer = torch.optim.Adam(model.task_parameters(SEGMENTATION), lr=1e-2)
    model.train()
    first = None
    for _ in range(6):
        loss = model(images, targets)[SEGMENTATION]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = float(loss.detach()) if first is None else first
    assert torch.isfinite(loss) and float(loss) < first
    with torch.inference_mode():
        outputs = model.eval()(images)
    assert outputs[0]["mask"].shape == SIZE and int(outputs[0]["mask"].max()) < 3


def test_bn_momentum_reaches_every_batchnorm_and_travels_in_model_kwargs() -> None:
    def momenta(model: nn.Module) -> set[float]:
        return {
            m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        }

    model = build_model("frcnn_deeplabv3", 2, 2, SIZE, bn_momentum=0.1)
    assert momenta(model) == {0.1} and model.model_kwargs["bn_momentum"] == 0.1
    default = build_model("ssdlite_lraspp", 2, 2, SIZE)
    assert default.model_kwargs["bn_momentum"] is None
    assert {m.momentum for m in default.backbone.modules() if isinstance(m, nn.BatchNorm2d)} == {
        0.01
    }
    for bad in (0, 1.5, "0.1", True):
        with pytest.raises(UserError, match="bn_momentum"):
            build_model("ssdlite", 2, 0, SIZE, bn_momentum=bad)


def test_options_round_trip_through_checkpoints() -> None:
    model = build_model(
        "frcnn_deeplabv3",
        2,
        2,
        SIZE,
        aspp_channels=32,
        rpn_post_nms_top_n_test=20,
        bn_momentum=0.1,
    )
    payload = {"model_kwargs": model.model_kwargs, "model": model.state_dict()}
    rebuilt = model_from_checkpoint(payload, "new.pt").eval()
    assert rebuilt.model_kwargs == model.model_kwargs
    assert rebuilt.heads[DETECTION].rpn.post_nms_top_n() == 20
