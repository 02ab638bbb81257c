# SPDX-License-Identifier: Apache-2.0
"""Depth as a task: the head on every architecture, task sets, losses, per-sample task masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torchjd.autojac import mtl_backward

from mtl_perception.checkpoint import inference_fields
from mtl_perception.core.errors import UserError
from mtl_perception.nets import ARCHITECTURES, build_model, model_from_checkpoint
from mtl_perception.nets.depth import berhu_loss, l1_loss, silog_loss, valid_depth

SIZE = (64, 64)
ALL = ["detection", "segmentation", "depth"]


def _batch(n: int = 2, seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    gen = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, *SIZE, generator=gen) for _ in range(n)]
    targets = [
        {
            "boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]),
            "labels": torch.tensor([1]),
            "mask": torch.randint(0, 2, SIZE, generator=gen),
            "depth": 0.5 + 4 * torch.rand(SIZE, generator=gen),
        }
        for _ in images
    ]
    return images, targets


def _frozen_statistics(model: nn.Module) -> nn.Module:
    """Training mode, but BatchNorm uses running statistics: samples do not affect each other."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_takes_a_depth_head(arch: str) -> None:
    spec = ARCHITECTURES[arch]
    model = build_model(arch, 2, 3, SIZE, tasks=[*spec.tasks, "depth"])
    assert model.tasks == (*spec.tasks, "depth") and model.model_kwargs["tasks"] == list(
        model.tasks
    )
    model.eval()
    with torch.no_grad():
        outputs = model([torch.rand(3, *SIZE)])
    depth = outputs[0]["depth"]
    assert depth.shape == (1, *SIZE) and depth.dtype == torch.float32 and bool((depth > 0).all())
    # The checkpoint's model_kwargs rebuild the same structure with the task set.
    rebuilt = model_from_checkpoint(inference_fields(model, ["a", "b"], ["x", "y", "z"]), "mem")
    assert rebuilt.tasks == model.tasks


def test_single_task_depth_baseline_shares_body_and_head_with_the_multitask_model() -> None:
    solo = build_model("ssdlite_deeplabv3", 2, 3, SIZE, tasks=["depth"])
    multi = build_model("ssdlite_deeplabv3", 2, 3, SIZE, tasks=ALL)
    assert (
        solo.tasks == ("depth",)
        and solo.num_detection_classes == solo.num_segmentation_classes == 0
    )
    shapes = {k: v.shape for k, v in solo.state_dict().items()}
    assert all(multi.state_dict()[k].shape == shape for k, shape in shapes.items())
    images, targets = _batch()
    solo.train()
    assert set(solo(images, targets)) == {"depth"}


def test_model_kwargs_without_a_task_set_build_the_architecture_tasks() -> None:
    model = build_model("ssdlite_lraspp", 2, 3, SIZE)
    assert model.tasks == ("detection", "segmentation")
    payload = inference_fields(model, ["a", "b"], ["x", "y", "z"])
    payload["model_kwargs"].pop("tasks")
    assert model_from_checkpoint(payload, "old").tasks == ("detection", "segmentation")


@pytest.mark.parametrize(
    ("arch", "kwargs", "message"),
    [
        ("ssdlite_deeplabv3", {"tasks": []}, "non-empty"),
        ("ssdlite_deeplabv3", {"tasks": ["depth", "depth"]}, "distinct"),
        ("ssdlite_deeplabv3", {"tasks": ["normals"]}, "normals"),
        ("ssdlite_deeplabv3", {"tasks": "depth"}, "list"),
        ("ssdlite", {"tasks": ["segmentation", "depth"]}, "no head for \\['segmentation'\\]"),
        ("ssdlite_deeplabv3", {"depth_loss": "huber"}, "does not apply"),
        ("ssdlite_deeplabv3", {"tasks": ["depth"], "depth_loss": "huber"}, "depth_loss='huber'"),
        ("ssdlite_deeplabv3", {"tasks": ["depth"], "depth_channels": 4}, "depth_channels"),
        ("ssdlite_deeplabv3", {"tasks": ["depth"], "aspp_channels": 64}, "aspp_channels"),
    ],
)
def test_bad_task_sets_and_depth_options_are_user_errors(
    arch: str, kwargs: dict, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        build_model(arch, 2, 3, SIZE, **kwargs)


# ----------------------------------------------------------------------------- losses
def _maps(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    pred = 0.2 + 5 * torch.rand(2, 1, 8, 8, generator=gen)
    target = 0.2 + 5 * torch.rand(2, 1, 8, 8, generator=gen)
    target[0, 0, :2] = 0.0
    target[1, 0, 3, 3] = float("nan")
    target[1, 0, 4, 4] = float("inf")
    return pred, target, valid_depth(target)


def test_silog_matches_a_per_image_numpy_reference() -> None:
    pred, target, valid = _maps()
    expected = []
    for p, t in zip(pred.numpy(), target.numpy(), strict=True):
        ok = np.isfinite(t) & (t > 0)
        d = np.log(p[ok]) - np.log(t[ok])
        expected.append(math.sqrt(np.mean(d**2) - 0.85 * np.mean(d) ** 2))
    assert float(silog_loss(pred, target, valid)) == pytest.approx(np.mean(expected), rel=1e-4)


def test_silog_is_invariant_to_a_global_scale_only_when_lambda_is_one() -> None:
    pred, target, valid = _maps()
    # Scaling the prediction shifts d by a constant: the (1 - lambda) share of mean(d)^2 moves.
    assert float(silog_loss(pred * 3, target, valid)) != pytest.approx(
        float(silog_loss(pred, target, valid))
    )
    assert float(
        silog_loss(target.nan_to_num(1.0).clamp(min=0.1), target, valid)
    ) == pytest.approx(0.0, abs=1e-3)


def test_berhu_and_l1_match_numpy_references() -> None:
    pred, target, valid = _maps(1)
    ok = valid.numpy()
    error = np.abs(pred.numpy()[ok] - target.numpy()[ok])
    c = 0.2 * error.max()
    berhu = np.where(error <= c, error, (error**2 + c**2) / (2 * c)).mean()
    assert float(berhu_loss(pred, target, valid)) == pytest.approx(berhu, rel=1e-5)
    assert float(l1_loss(pred, target, valid)) == pytest.approx(error.mean(), rel=1e-5)


@pytest.mark.parametrize("loss", [silog_loss, berhu_loss, l1_loss])
def test_losses_ignore_invalid_pixels_and_survive_an_all_invalid_batch(loss) -> None:
    pred, target, valid = _maps(2)
    pred.requires_grad_(True)
    changed = torch.where(valid, target, torch.full_like(target, -1.0))  # other invalid values
    with torch.no_grad():
        assert float(loss(pred, target, valid)) == pytest.approx(
            float(loss(pred, changed, valid_depth(changed)))
        )
    value = loss(pred, target, valid)
    value.backward()
    assert float(pred.grad[~valid].abs().sum()) == 0.0 and float(pred.grad[valid].abs().sum()) > 0
    empty = torch.zeros_like(target)
    zero = loss(pred, empty, valid_depth(empty))
    assert float(zero.detach()) == 0.0 and zero.requires_grad


# ----------------------------------------------------------------------------- task masking
@pytest.mark.parametrize("arch", ["ssdlite_deeplabv3", "frcnn_deeplabv3"])
def test_a_depth_only_frame_adds_nothing_to_detection_and_segmentation(arch: str) -> None:
    torch.manual_seed(0)
    model = _frozen_statistics(build_model(arch, 2, 3, SIZE, tasks=ALL))
    images, targets = _batch(2)
    unlabeled = {**targets[1], "labeled": False, "boxes": torch.tensor([[0.0, 0.0, 60.0, 20.0]])}
    torch.manual_seed(1)  # Faster R-CNN samples proposals randomly: same draws for both calls
    alone, _ = model.forward_train(images[:1], targets[:1])
    torch.manual_seed(1)
    mixed, _ = model.forward_train(images, [targets[0], unlabeled])
    for task in ("detection", "segmentation"):
        assert float(mixed[task].detach()) == pytest.approx(
            float(alone[task].detach()), rel=1e-4
        ), task
    # ... but it does add to the depth loss.
    assert float(mixed["depth"]) != pytest.approx(float(alone["depth"]), rel=1e-4)


def test_a_frame_without_depth_adds_nothing_to_the_depth_loss() -> None:
    model = _frozen_statistics(build_model("ssdlite_lraspp", 2, 3, SIZE, tasks=ALL))
    images, targets = _batch(2)
    no_depth = {k: v for k, v in targets[1].items() if k != "depth"}
    alone, _ = model.forward_train(images[:1], targets[:1])
    mixed, _ = model.forward_train(images, [targets[0], no_depth])
    assert float(mixed["depth"]) == pytest.approx(float(alone["depth"]), rel=1e-5)


def test_a_task_absent_from_the_batch_gets_a_zero_loss_with_zero_gradients() -> None:
    model = build_model("ssdlite_deeplabv3", 2, 3, SIZE, tasks=ALL).train()
    images, targets = _batch(2)
    targets = [{**t, "labeled": False} for t in targets]
    losses, features = model.forward_train(images, targets)
    assert float(losses["detection"]) == float(losses["segmentation"]) == 0.0
    assert float(losses["depth"]) > 0
    # torchjd's multi-task backward accepts the zero losses (they reach features and heads).
    mtl_backward(
        list(losses.values()),
        features=features,
        tasks_params=[model.task_parameters(task) for task in model.tasks],
        shared_params=model.shared_parameters(),
    )
    assert all(
        float(p.grad.abs().sum()) == 0.0
        for p in model.task_parameters("detection")
        if p.grad is not None
    )
    assert any(float(p.grad.abs().sum()) > 0 for p in model.task_parameters("depth"))


def test_depth_target_of_the_wrong_size_names_the_batch_position() -> None:
    model = build_model("lraspp", 0, 3, SIZE, tasks=["segmentation", "depth"]).train()
    images, targets = _batch(2)
    targets[1]["depth"] = torch.ones(32, 32)
    with pytest.raises(ValueError, match="target 1: depth shape"):
        model.forward_train(images, targets)
