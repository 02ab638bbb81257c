# SPDX-License-Identifier: Apache-2.0
"""Every loss weighting, every gradient method and every architecture on the real nets."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import make_processed_dataset

from mtl_perception.balancing import (
    GRAD_METHODS,
    WEIGHTINGS,
    build_gradient_balancer,
    build_weighting,
)
from mtl_perception.nets import ARCHITECTURES, build_model
from mtl_perception.train.config import OptimConfig
from mtl_perception.train.dataset import ProcessedDataset, collate
from mtl_perception.train.engine import StepContext, train_step
from mtl_perception.train.optim import build_optimizer, build_scheduler
from mtl_perception.train.transforms import build_eval_transform

SIZE = (48, 64)


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory):
    root = make_processed_dataset(tmp_path_factory.mktemp("ds"))
    data = ProcessedDataset(root, "train", build_eval_transform(SIZE))
    return collate([data[0], data[4]])  # one image with a box, one with two


def _steps(
    arch: str,
    weighting_name: str,
    method: str,
    batch,
    steps: int = 2,
    jacobian: str = "exact",
    **model_kwargs,
) -> list[dict[str, float]]:
    torch.manual_seed(0)
    model = build_model(
        arch, num_detection_classes=2, num_segmentation_classes=4, input_size=SIZE, **model_kwargs
    )
    options = {"task_weights": {"detection": 0.5}, "jacobian": jacobian}
    weighting = build_weighting(weighting_name, model.tasks, options)
    balancer = build_gradient_balancer(
        method,
        weighting,
        model.shared_parameters(),
        {t: model.task_parameters(t) for t in model.tasks},
        options=options,
        cosine_every=1,
        last_shared_params=model.last_shared_parameters(),
    )
    params = [*model.parameters(), *weighting.parameters()]
    optim_config = OptimConfig(lr=1e-3, warmup_steps=0, epochs=1)
    optimizer = build_optimizer(optim_config, params)
    ctx = StepContext(
        model,
        weighting,
        balancer,
        optimizer,
        build_scheduler(optim_config, optimizer, steps),
        torch.amp.GradScaler("cpu", enabled=False),
        torch.device("cpu"),
        amp=False,
        grad_clip_norm=10.0,
        clip_params=params,
    )
    return [train_step(ctx, batch, step) for step in range(steps)]


def _assert_sane(logs: list[dict[str, float]], tasks: tuple[str, ...]) -> None:
    for scalars in logs:
        for task in tasks:
            assert math.isfinite(scalars[f"loss/{task}"]) and math.isfinite(
                scalars[f"weighted_loss/{task}"]
            )
            assert scalars[f"weight/{task}"] > 0
        assert math.isfinite(scalars["grad_norm"])


@pytest.mark.parametrize("weighting_name", sorted(WEIGHTINGS))
def test_every_weighting_trains_the_default_model(weighting_name: str, batch) -> None:
    logs = _steps("ssdlite_deeplabv3", weighting_name, "none", batch)
    _assert_sane(logs, ("detection", "segmentation"))
    assert -1 <= logs[0]["cosine/detection~segmentation"] <= 1


@pytest.mark.parametrize("method", [m for m in GRAD_METHODS if m != "none"])
def test_every_gradient_method_trains_the_default_model(method: str, batch) -> None:
    logs = _steps(
        "ssdlite_deeplabv3", "uncertainty" if method == "upgrad" else "equal", method, batch
    )
    _assert_sane(logs, ("detection", "segmentation"))
    assert all(-1 <= s["cosine/detection~segmentation"] <= 1 for s in logs)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_trains_with_equal_weighting(arch: str, batch) -> None:
    logs = _steps(arch, "equal", "none", batch, steps=1)
    tasks = build_model(arch, 2, 4, SIZE).tasks
    _assert_sane(logs, tasks)


@pytest.mark.parametrize("method", GRAD_METHODS)
def test_frozen_backbone_taps_work_with_every_method(method: str, batch) -> None:
    """ssdlite_lraspp's stride-8 tap comes from frozen layers with trainable_backbone_layers <= 3
    (3 is torchvision's fine-tuning default); with 0 no tap carries a backbone gradient."""
    for layers in (0, 3):
        logs = _steps(
            "ssdlite_lraspp", "equal", method, batch, steps=1, trainable_backbone_layers=layers
        )
        _assert_sane(logs, ("detection", "segmentation"))
    logs = _steps(
        "ssdlite_lraspp",
        "gradnorm",
        method,
        batch,
        steps=1,
        jacobian="rep",
        trainable_backbone_layers=3,
    )
    _assert_sane(logs, ("detection", "segmentation"))


@pytest.mark.parametrize("jacobian", ["exact", "rep"])
def test_nash_mtl_backbone_gradient_is_the_same_with_and_without_grad_scaler(
    jacobian: str, batch
) -> None:
    """Nash-MTL's weights and max-norm clip depend on the Jacobian's scale: it must see the
    unscaled Jacobian (before: 1/65536 of the gradient reached the backbone under AMP)."""
    images, targets = batch
    grads = []
    for scaler in (
        torch.amp.GradScaler("cpu", enabled=False),
        torch.amp.GradScaler("cpu", init_scale=2.0**16),
    ):
        torch.manual_seed(0)
        model = build_model(
            "ssdlite_deeplabv3",
            num_detection_classes=2,
            num_segmentation_classes=4,
            input_size=SIZE,
        )
        weighting = build_weighting("equal", model.tasks)
        balancer = build_gradient_balancer(
            "nash_mtl",
            weighting,
            model.shared_parameters(),
            {t: model.task_parameters(t) for t in model.tasks},
            options={"jacobian": jacobian},
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        losses, features = model.forward_train(images, targets)
        loss_scale = float(scaler.scale(torch.ones(())))
        assert balancer.backward(
            weighting.weigh(losses).weighted, features, 0, loss_scale=loss_scale
        ).finite
        scaler.unscale_(optimizer)
        grads.append(torch.cat([p.grad.flatten() for p in model.shared_parameters()]))
    plain, amp = grads
    assert float(plain.norm()) > 1e-3
    torch.testing.assert_close(amp, plain, rtol=1e-3, atol=1e-5 * float(plain.norm()))
