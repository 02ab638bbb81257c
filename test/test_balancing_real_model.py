"""Every loss weighting, every gradient method and every architecture on the real nets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from datasets import make_processed_dataset
from mtl_perception.balancing import GRAD_METHODS, WEIGHTINGS, build_gradient_balancer, build_weighting
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


def _steps(arch: str, weighting_name: str, method: str, batch, steps: int = 2) -> list[dict[str, float]]:
    torch.manual_seed(0)
    model = build_model(arch, num_detection_classes=2, num_segmentation_classes=4, input_size=SIZE)
    weighting = build_weighting(weighting_name, model.tasks, {"task_weights": {"detection": 0.5}})
    balancer = build_gradient_balancer(
        method, weighting, model.shared_parameters(), {t: model.task_parameters(t) for t in model.tasks}, cosine_every=1
    )
    params = [*model.parameters(), *weighting.parameters()]
    optim_config = OptimConfig(lr=1e-3, warmup_steps=0, epochs=1)
    optimizer = build_optimizer(optim_config, params)
    ctx = StepContext(
        model, weighting, balancer, optimizer, build_scheduler(optim_config, optimizer, steps),
        torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"), amp=False, grad_clip_norm=10.0, clip_params=params,
    )
    return [train_step(ctx, batch, step) for step in range(steps)]


def _assert_sane(logs: list[dict[str, float]], tasks: tuple[str, ...]) -> None:
    for scalars in logs:
        for task in tasks:
            assert math.isfinite(scalars[f"loss/{task}"]) and math.isfinite(scalars[f"weighted_loss/{task}"])
            assert scalars[f"weight/{task}"] > 0
        assert math.isfinite(scalars["grad_norm"])


@pytest.mark.parametrize("weighting_name", sorted(WEIGHTINGS))
def test_every_weighting_trains_the_default_model(weighting_name: str, batch) -> None:
    logs = _steps("ssdlite_deeplabv3", weighting_name, "none", batch)
    _assert_sane(logs, ("detection", "segmentation"))
    assert -1 <= logs[0]["cosine/detection~segmentation"] <= 1


@pytest.mark.parametrize("method", [m for m in GRAD_METHODS if m != "none"])
def test_every_gradient_method_trains_the_default_model(method: str, batch) -> None:
    logs = _steps("ssdlite_deeplabv3", "uncertainty" if method == "upgrad" else "equal", method, batch)
    _assert_sane(logs, ("detection", "segmentation"))
    assert all(-1 <= s["cosine/detection~segmentation"] <= 1 for s in logs)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_trains_with_equal_weighting(arch: str, batch) -> None:
    logs = _steps(arch, "equal", "none", batch, steps=1)
    tasks = build_model(arch, 2, 4, SIZE).tasks
    _assert_sane(logs, tasks)
