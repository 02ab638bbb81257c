# SPDX-License-Identifier: Apache-2.0
"""Loss weightings and gradient methods on a toy two-task model (independent of the nets)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtl_perception.balancing import (
    GRAD_METHODS,
    WEIGHTINGS,
    build_gradient_balancer,
    build_weighting,
)
from mtl_perception.balancing.weighting import DynamicWeightAverage
from mtl_perception.core.errors import UserError

TASKS = ("detection", "segmentation")


class ToyTwoTask(nn.Module):
    """Shared trunk, two regression heads with deliberately conflicting targets."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.heads = nn.ModuleDict({task: nn.Linear(8, 1) for task in TASKS})

    def forward_train(self, x: torch.Tensor, y: dict[str, torch.Tensor]):
        features = self.trunk(x)
        losses = {
            task: nn.functional.mse_loss(self.heads[task](features).squeeze(1), y[task])
            for task in TASKS
        }
        return losses, [features]


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=gen)
    return x, {"detection": x.sum(1), "segmentation": 3.0 * x[:, 0] - x.sum(1)}


def _train(weighting_name: str, method: str, steps: int = 30, options=None):
    torch.manual_seed(0)
    model = ToyTwoTask()
    weighting = build_weighting(weighting_name, TASKS, options)
    balancer = build_gradient_balancer(
        method,
        weighting,
        list(model.trunk.parameters()),
        {task: list(model.heads[task].parameters()) for task in TASKS},
        options=options,
        cosine_every=5,
    )
    optimizer = torch.optim.SGD([*model.parameters(), *weighting.parameters()], lr=0.05)
    x, y = _batch()
    history, stats = [], None
    for step in range(steps):
        optimizer.zero_grad()
        losses, features = model.forward_train(x, y)
        result = weighting.weigh(losses)
        stats = balancer.backward(result.weighted, features, step)
        optimizer.step()
        history.append(sum(float(v.detach()) for v in losses.values()))
    return model, weighting, history, stats


@pytest.mark.parametrize("weighting_name", sorted(WEIGHTINGS))
def test_every_weighting_reduces_the_loss(weighting_name: str) -> None:
    _, _, history, stats = _train(weighting_name, "none", steps=31)
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.8 * history[0]
    assert -1.0 <= stats.cosine["detection~segmentation"] <= 1.0  # last step (30) is a cosine step


@pytest.mark.parametrize("method", [m for m in GRAD_METHODS if m != "none"])
def test_every_gradient_method_trains_and_reports_cosine(method: str) -> None:
    model, _, history, stats = _train("equal", method, steps=8)
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < history[0]
    cosine = stats.cosine["detection~segmentation"]
    assert -1.0 <= cosine <= 1.0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert not any(hasattr(p, "jac") for p in model.trunk.parameters()), "jacobians must be freed"


def test_uncertainty_log_vars_are_learned_under_a_gradient_method() -> None:
    _, weighting, _, _ = _train("uncertainty", "upgrad", steps=10)
    log_vars = [float(weighting.log_vars[t].detach()) for t in TASKS]
    assert all(v != 0.0 for v in log_vars)
    assert weighting.weigh({t: torch.tensor(1.0) for t in TASKS}).weights[
        "detection"
    ] == pytest.approx(math.exp(-log_vars[0]))


def test_cosine_matches_direct_computation_for_plain_backward() -> None:
    torch.manual_seed(0)
    model = ToyTwoTask()
    weighting = build_weighting("equal", TASKS)
    shared = list(model.trunk.parameters())
    balancer = build_gradient_balancer(
        "none",
        weighting,
        shared,
        {t: list(model.heads[t].parameters()) for t in TASKS},
        cosine_every=1,
    )
    losses, features = model.forward_train(*_batch())
    grads = [
        torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], shared, retain_graph=True)])
        for t in TASKS
    ]
    expected = float(nn.functional.cosine_similarity(grads[0], grads[1], dim=0))
    stats = balancer.backward(weighting.weigh(losses).weighted, features, step=0)
    assert stats.cosine["detection~segmentation"] == pytest.approx(expected, abs=1e-5)
    jac_balancer = build_gradient_balancer(
        "mgda", weighting, shared, {t: list(model.heads[t].parameters()) for t in TASKS}
    )
    model.zero_grad()
    losses, features = model.forward_train(*_batch())
    assert jac_balancer.backward(weighting.weigh(losses).weighted, features, 0).cosine[
        "detection~segmentation"
    ] == pytest.approx(expected, abs=1e-5)


def test_dwa_uses_epoch_means_of_the_previous_two_epochs() -> None:
    dwa = DynamicWeightAverage(TASKS, temperature=2.0)
    batch_losses = {t: torch.tensor(5.0) for t in TASKS}
    assert dwa.weigh(batch_losses).weights == {"detection": 1.0, "segmentation": 1.0}
    dwa.epoch_end({"detection": 2.0, "segmentation": 1.0})
    assert dwa.weigh(batch_losses).weights == {"detection": 1.0, "segmentation": 1.0}
    dwa.epoch_end({"detection": 1.0, "segmentation": 1.0})  # detection halved, segmentation flat
    weights = dwa.weigh(
        {"detection": torch.tensor(100.0), "segmentation": torch.tensor(0.01)}
    ).weights
    ratios = torch.tensor([0.5, 1.0]) / 2.0
    expected = 2 * torch.softmax(ratios, 0)
    assert weights["detection"] == pytest.approx(float(expected[0]))
    assert weights["segmentation"] == pytest.approx(float(expected[1]))
    assert sum(weights.values()) == pytest.approx(2.0)
    restored = DynamicWeightAverage(TASKS, temperature=2.0)
    restored.load_state_dict(dwa.state_dict())
    assert restored.current_weights() == dwa.current_weights()


def test_bmtl_weights_follow_exp_of_current_losses_and_are_detached() -> None:
    bmtl = build_weighting("bmtl", TASKS, {"bmtl_temperature": 1.0})
    det = torch.tensor(2.0, requires_grad=True)
    seg = torch.tensor(1.0, requires_grad=True)
    result = bmtl.weigh({"detection": det, "segmentation": seg})
    assert result.weights["detection"] / result.weights["segmentation"] == pytest.approx(math.e)
    result.total.backward()
    assert float(det.grad) == pytest.approx(
        result.weights["detection"]
    )  # weight not differentiated


def test_constant_weighting_and_bad_names() -> None:
    weighting = build_weighting("constant", TASKS, {"task_weights": {"detection": 2.0}})
    result = weighting.weigh({t: torch.tensor(1.0) for t in TASKS})
    assert result.weights == {"detection": 2.0, "segmentation": 1.0}
    assert float(result.total) == pytest.approx(3.0)
    with pytest.raises(UserError, match="detecton"):
        build_weighting("constant", TASKS, {"task_weights": {"detecton": 2.0}})
    with pytest.raises(UserError, match="uncertainity"):
        build_weighting("uncertainity", TASKS)
    with pytest.raises(UserError, match="pcgard"):
        build_gradient_balancer(
            "pcgard", build_weighting("equal", TASKS), [], {t: [] for t in TASKS}
        )
