# SPDX-License-Identifier: Apache-2.0
"""Model API around training: parameter groups, torchjd features, frozen layers, build options."""

from __future__ import annotations

import pytest
import torch
from torchjd.autojac import mtl_backward

from mtl_perception.core.errors import UserError
from mtl_perception.nets import (
    ARCHITECTURES,
    DETECTION,
    SEGMENTATION,
    build_model,
    count_parameters,
    parameter_breakdown,
)

SIZE = (64, 64)


def tiny_batch(boxes: bool = True) -> tuple[list, list]:
    images = [torch.rand(3, *SIZE) for _ in range(2)]
    targets = [
        {
            "boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]) if boxes else torch.zeros(0, 4),
            "labels": torch.tensor([1]) if boxes else torch.zeros(0, dtype=torch.int64),
            "mask": torch.randint(0, 2, SIZE),
        }
        for _ in images
    ]
    return images, targets


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_parameter_groups_are_disjoint_and_cover_the_model(arch: str) -> None:
    model = build_model(arch, 2, 2, SIZE)
    groups = [model.shared_parameters()] + [model.task_parameters(task) for task in model.tasks]
    ids = [id(p) for group in groups for p in group]
    assert all(groups) and len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in model.shared_parameters()} == {
        id(p) for p in model.backbone.parameters()
    }


def test_faster_rcnn_fpn_belongs_to_the_detection_task() -> None:
    model = build_model("frcnn_deeplabv3", 2, 2, SIZE)
    fpn = {id(p) for p in model.heads[DETECTION].fpn.parameters()}
    assert fpn and fpn <= {id(p) for p in model.task_parameters(DETECTION)}
    assert not fpn & {id(p) for p in model.shared_parameters()}
    with pytest.raises(KeyError, match="not one of"):
        build_model("frcnn", 2, 0, SIZE).task_parameters(SEGMENTATION)


@pytest.mark.parametrize("arch", ["ssdlite_deeplabv3", "frcnn_deeplabv3", "ssdlite_lraspp"])
def test_forward_train_features_work_with_torchjd(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 2, 2, SIZE).train()
    images, targets = tiny_batch()
    losses, features = model.forward_train(images, targets)
    assert list(losses) == [DETECTION, SEGMENTATION]
    assert features and all(f.shape[0] == len(images) for f in features)
    shared = model.shared_parameters()
    per_task = [
        torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        for loss in losses.values()
    ]
    mtl_backward(
        list(losses.values()),
        features,
        tasks_params=[model.task_parameters(task) for task in model.tasks],
        shared_params=shared,
    )
    # One Jacobian row per task on every shared parameter, plain gradients on the heads.
    assert all(p.jac.shape == (2, *p.shape) for p in shared)
    assert all(p.grad is not None for task in model.tasks for p in model.task_parameters(task))
    # Each row is that task's gradient: the features cut the graph without double counting.
    # (Tolerance relative to the task's largest gradient: BatchNorm biases that feed another
    # BatchNorm have a true gradient of ~0, where float32 rounding differs between the two paths.)
    for row, grads in enumerate(per_task):
        scale = max(grad.abs().max().item() for grad in grads if grad is not None)
        for parameter, grad in zip(shared, grads, strict=True):
            expected = torch.zeros_like(parameter) if grad is None else grad
            assert torch.allclose(parameter.jac[row], expected, rtol=1e-4, atol=1e-5 * scale)


def test_features_are_exactly_what_the_heads_read() -> None:
    model = build_model("ssdlite_lraspp", 2, 2, SIZE).train()
    _, features = model.forward_train(*tiny_batch())
    channels = sorted(f.shape[1] for f in features)
    assert channels == sorted(model.backbone.channels[tap] for tap in model.backbone.taps)
    assert set(model.backbone.taps) == {
        tap for head in model.heads.values() for tap in head.feature_taps
    }


def test_frozen_backbone_layers_keep_weights_and_statistics() -> None:
    model = build_model("ssdlite_deeplabv3", 2, 2, SIZE, trainable_backbone_layers=2)
    stem = model.backbone.features[0]
    assert not any(p.requires_grad for p in stem.parameters())
    assert model.backbone.features[-1][0].weight.requires_grad
    stats_before = stem[1].running_mean.clone()
    weight_before = stem[0].weight.clone()
    model.train()
    assert not stem.training and model.backbone.features[-1].training
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = model(*tiny_batch())
    torch.stack(list(losses.values())).sum().backward()
    optimizer.step()
    assert torch.equal(stem[1].running_mean, stats_before) and torch.equal(
        stem[0].weight, weight_before
    )
    frozen = count_parameters(model) - count_parameters(model, trainable_only=True)
    assert frozen == sum(p.numel() for p in model.parameters() if not p.requires_grad) > 0


def test_fully_frozen_backbone_has_no_shared_parameters() -> None:
    model = build_model("ssdlite_deeplabv3", 2, 2, SIZE, trainable_backbone_layers=0)
    assert model.shared_parameters() == []
    assert model.task_parameters(DETECTION) and model.task_parameters(SEGMENTATION)


def test_parameter_breakdown_adds_up_and_heads_are_shared_alike() -> None:
    multi = parameter_breakdown(build_model("ssdlite_deeplabv3", 3, 5, SIZE))
    single_det = parameter_breakdown(build_model("ssdlite", 3, 0, SIZE))
    single_seg = parameter_breakdown(build_model("deeplabv3", 0, 5, SIZE))
    assert multi["total"] == multi["backbone"] + multi[DETECTION] + multi[SEGMENTATION]
    # Same recipe: the baselines' backbones and heads are exactly the multi-task model's parts.
    assert multi["backbone"] == single_det["backbone"] == single_seg["backbone"]
    assert (
        multi[DETECTION] == single_det[DETECTION]
        and multi[SEGMENTATION] == single_seg[SEGMENTATION]
    )


def test_model_exposes_contract_attributes_as_plain_values() -> None:
    model = build_model("ssdlite_lraspp", 3, 2, [120, 160])
    assert model.tasks == (DETECTION, SEGMENTATION)
    assert model.input_size == (120, 160)
    assert model.num_detection_classes == 3 and model.num_segmentation_classes == 2
    assert (
        isinstance(model.mean, list)
        and len(model.mean) == 3
        and all(isinstance(v, float) for v in model.std)
    )
    assert (
        model.model_kwargs["arch"] == "ssdlite_lraspp"
        and "backbone_weights" not in model.model_kwargs
    )
    assert build_model("deeplabv3", 0, 2, SIZE).tasks == (SEGMENTATION,)


def test_custom_normalisation_is_applied_inside_the_model() -> None:
    model = build_model("deeplabv3", 0, 2, SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    batch = model.preprocess([torch.full((3, *SIZE), 0.75)])
    assert torch.allclose(batch, torch.ones_like(batch))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "yolo"}, "arch 'yolo' is unknown"),
        ({"input_size": (16, 64)}, "input_size"),
        ({"input_size": (64,)}, "input_size"),
        ({"input_size": (64.5, 64)}, "input_size"),
        ({"num_detection_classes": 0}, "num_detection_classes=0"),
        ({"num_segmentation_classes": 1}, "num_segmentation_classes=1"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.5, 0.0, 0.5)}, "std"),
        ({"trainable_backbone_layers": 9}, "trainable_backbone_layers=9"),
        ({"trainable_backbone_layers": "3"}, "trainable_backbone_layers='3'"),
    ],
)
def test_bad_build_options_are_user_errors(kwargs: dict, message: str) -> None:
    options = {
        "arch": "ssdlite_deeplabv3",
        "num_detection_classes": 2,
        "num_segmentation_classes": 2,
    }
    options["input_size"] = SIZE
    with pytest.raises(UserError, match=message):
        build_model(**{**options, **kwargs})


def test_deeplab_atrous_rates_suit_the_undilated_stride32_map() -> None:
    aspp = build_model("deeplabv3", 0, 2, SIZE).heads[SEGMENTATION].head[0]
    branches = aspp.convs[1:-1]  # skip the 1x1 and pooling branches
    # The first conv of each branch is the atrous one (full or depthwise: aspp_separable).
    dilations = [
        next(m for m in branch.modules() if isinstance(m, torch.nn.Conv2d)).dilation[0]
        for branch in branches
    ]
    assert dilations == [3, 6, 9]
