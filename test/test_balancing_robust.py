# SPDX-License-Identifier: Apache-2.0
"""Balancing under AMP, non-finite Jacobians, frozen taps, three tasks and missing tasks.

A toy three-task model (detection, segmentation, depth) drives the real training step
(``engine.train_step``) with a CPU ``GradScaler``: the AMP logic runs as on CUDA, only in fp32.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torchjd import aggregation

from mtl_perception.balancing import (
    GRAD_METHODS,
    WEIGHTINGS,
    build_gradient_balancer,
    build_weighting,
)
from mtl_perception.balancing.weighting import GradNorm
from mtl_perception.train.engine import StepContext, train_step

TASKS = ("detection", "segmentation", "depth")
METHODS = [m for m in GRAD_METHODS if m != "none"]


class _InfGrad(torch.autograd.Function):
    """Identity whose backward puts an inf into the gradient (an fp16 overflow stand-in)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        grad.view(-1)[0] = math.inf
        return grad


class ToyModel(nn.Module):
    """Stem -> trunk -> last layer; taps after the stem and the last layer; a head per task.

    Mirrors the real body: taps are aliases (``view_as``) so no tap lies on another's path.
    ``inf_task``'s head injects an inf into the gradient w.r.t. the features.
    """

    def __init__(self, tasks=TASKS, freeze_stem: bool = False, freeze_all: bool = False) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.stem = nn.Linear(4, 8)
        self.trunk = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.last = nn.Linear(8, 8)
        self.heads = nn.ModuleDict(
            {t: nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1)) for t in self.tasks}
        )
        if freeze_stem or freeze_all:
            self.stem.requires_grad_(False)
        if freeze_all:
            self.trunk.requires_grad_(False)
            self.last.requires_grad_(False)
        self.inf_task: str | None = None
        self.masked_as_zero = False  # a task without labels in the batch: zero loss, not absent

    def shared_parameters(self) -> list[nn.Parameter]:
        return [
            p
            for m in (self.stem, self.trunk, self.last)
            for p in m.parameters()
            if p.requires_grad
        ]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.last.parameters() if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.heads[task].parameters())

    def forward_train(self, images, targets):
        x = torch.stack(list(images))
        low = self.stem(x)
        out = self.last(self.trunk(low))
        taps = [low.view_as(low), out]
        features = torch.cat(taps, dim=1)
        losses = {}
        for task in self.tasks:
            inputs = _InfGrad.apply(features) if task == self.inf_task else features
            pred = self.heads[task](inputs).squeeze(1)
            mask = torch.tensor([task in t for t in targets])
            if not mask.any():  # every sample masked out for this task
                if self.masked_as_zero:
                    losses[task] = (pred * 0).sum()
                continue
            target = torch.stack([t[task] for t, m in zip(targets, mask, strict=True) if m])
            losses[task] = nn.functional.mse_loss(pred[mask], target)
        return losses, taps


def make_batch(seed: int = 0, size: int = 16, drop: str | None = None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 4, generator=gen)
    goals = {
        "detection": x.sum(1),
        "segmentation": 3.0 * x[:, 0] - x.sum(1),
        "depth": 2.0 * x[:, 1] ** 2,
    }
    targets = [{t: goals[t][i] for t in TASKS if t != drop} for i in range(size)]
    return list(x), targets


def make_context(
    model,
    weighting_name="equal",
    method="none",
    scaler=None,
    options=None,
    cosine_every=0,
    lr=0.05,
):
    options = {"task_weights": {}, **(options or {})}
    weighting = build_weighting(weighting_name, model.tasks, options)
    balancer = build_gradient_balancer(
        method,
        weighting,
        model.shared_parameters(),
        {t: model.task_parameters(t) for t in model.tasks},
        options=options,
        cosine_every=cosine_every,
        last_shared_params=model.last_shared_parameters(),
    )
    params = [p for p in [*model.parameters(), *weighting.parameters()] if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr)
    return StepContext(
        model,
        weighting,
        balancer,
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        scaler or torch.amp.GradScaler("cpu", enabled=False),
        torch.device("cpu"),
        amp=False,
        grad_clip_norm=None,
        clip_params=params,
    )


def shared_grads(ctx: StepContext, batch) -> list[Tensor]:
    """Backbone gradient of one balanced backward, unscaled by a GradScaler as train_step does."""
    ctx.optimizer.zero_grad(set_to_none=True)
    loss_scale = float(ctx.scaler.scale(torch.ones(())))
    losses, features = ctx.model.forward_train(*batch)
    stats = ctx.balancer.backward(
        ctx.weighting.weigh(losses).weighted, features, 0, loss_scale=loss_scale
    )
    assert stats.finite
    if ctx.scaler.is_enabled():
        ctx.scaler.unscale_(ctx.optimizer)
    grads = [p.grad.clone() for p in ctx.model.shared_parameters()]
    return grads


@pytest.mark.parametrize("jacobian", ["exact", "rep"])
@pytest.mark.parametrize("method", GRAD_METHODS)
def test_backbone_gradient_is_the_same_with_and_without_grad_scaler(
    method: str, jacobian: str
) -> None:
    if method == "graddrop":
        pytest.skip("GradDrop draws a random mask each call; see the seeded comparison below")
    batch = make_batch()
    grads = {}
    for name, scaler in (
        ("plain", None),
        ("amp", torch.amp.GradScaler("cpu", init_scale=2.0**16)),
    ):
        torch.manual_seed(0)
        model = ToyModel()
        ctx = make_context(model, method=method, scaler=scaler, options={"jacobian": jacobian})
        grads[name] = shared_grads(ctx, batch)
    norm = torch.cat([g.flatten() for g in grads["plain"]]).norm()
    assert norm > 0
    for plain, amp in zip(grads["plain"], grads["amp"], strict=True):
        torch.testing.assert_close(amp, plain, rtol=1e-4, atol=1e-6 * float(norm))


def test_graddrop_gradient_is_the_same_with_and_without_grad_scaler() -> None:
    batch = make_batch()
    grads = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**16)):
        torch.manual_seed(0)
        ctx = make_context(ToyModel(), method="graddrop", scaler=scaler)
        torch.manual_seed(1)  # the same mask
        grads.append(shared_grads(ctx, batch))
    for plain, amp in zip(*grads, strict=True):
        torch.testing.assert_close(amp, plain, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("jacobian", ["exact", "rep"])
@pytest.mark.parametrize("method", GRAD_METHODS)
def test_inf_in_jacobian_skips_the_step_under_grad_scaler(
    method: str, jacobian: str, capsys
) -> None:
    torch.manual_seed(0)
    model = ToyModel()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    ctx = make_context(model, method=method, scaler=scaler, options={"jacobian": jacobian})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.inf_task = "segmentation"
    scalars = train_step(ctx, make_batch(), 0)
    assert scalars["skipped"] == 1
    assert scalars["nonfinite_skips"] == 1
    err = capsys.readouterr().err
    assert "step 1: the gradient of" in err
    assert "skipped" in err
    if method != "none":  # plain backward cannot tell which task overflowed
        assert "segmentation" in err
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed on a skipped step"
    assert scaler.get_scale() == 2.0**15, "the scale backs off as after an fp16 overflow"
    assert all(p.grad is None for p in model.parameters())
    model.inf_task = None  # training goes on
    scalars = train_step(ctx, make_batch(), 1)
    assert "skipped" not in scalars
    assert ctx.skipped_steps == 1
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_inf_in_jacobian_skips_the_step_without_grad_scaler() -> None:
    torch.manual_seed(0)
    model = ToyModel()
    ctx = make_context(model, method="cagrad")
    model.inf_task = "depth"
    before = [p.clone() for p in model.parameters()]
    assert train_step(ctx, make_batch(), 0)["skipped"] == 1
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("jacobian", ["exact", "rep"])
@pytest.mark.parametrize("method", GRAD_METHODS)
@pytest.mark.parametrize("frozen", ["stem", "all"])
def test_frozen_taps_work_with_every_method(method: str, jacobian: str, frozen: str) -> None:
    torch.manual_seed(0)
    model = ToyModel(freeze_stem=frozen == "stem", freeze_all=frozen == "all")
    ctx = make_context(model, method=method, options={"jacobian": jacobian}, cosine_every=1)
    history = [train_step(ctx, make_batch(), step)["loss/total"] for step in range(6)]
    assert history[-1] < history[0]
    assert model.stem.weight.grad is None
    assert not model.stem.weight.requires_grad


def _losses(ctx: StepContext, batch) -> float:
    with torch.no_grad():
        losses, _ = ctx.model.forward_train(*batch)
    return sum(float(v) for v in losses.values())


@pytest.mark.parametrize("jacobian", ["exact", "rep"])
@pytest.mark.parametrize("method", GRAD_METHODS)
def test_every_gradient_method_trains_three_tasks(method: str, jacobian: str) -> None:
    torch.manual_seed(0)
    model = ToyModel()
    ctx = make_context(
        model, method=method, options={"jacobian": jacobian}, cosine_every=1, lr=0.02
    )
    batch = make_batch()
    start = _losses(ctx, batch)
    logs = [train_step(ctx, batch, step) for step in range(15)]
    assert _losses(ctx, batch) < start
    assert set(logs[-1]) >= {f"loss/{t}" for t in TASKS}
    assert {k for k in logs[-1] if k.startswith("cosine/")} == {
        "cosine/detection~segmentation",
        "cosine/detection~depth",
        "cosine/segmentation~depth",
    }


@pytest.mark.parametrize("weighting_name", sorted(WEIGHTINGS))
@pytest.mark.parametrize("method", ["none", "upgrad"])
def test_every_weighting_trains_three_tasks(weighting_name: str, method: str) -> None:
    torch.manual_seed(0)
    model = ToyModel()
    ctx = make_context(model, weighting_name, method, lr=0.02)
    batch = make_batch()
    start = _losses(ctx, batch)
    for step in range(15):
        scalars = train_step(ctx, batch, step)
        if step % 5 == 4:
            ctx.weighting.epoch_end({t: scalars[f"loss/{t}"] for t in TASKS})
    assert _losses(ctx, batch) < start
    assert all(scalars[f"weight/{t}"] > 0 for t in TASKS)


@pytest.mark.parametrize("masked_as_zero", [False, True], ids=["absent", "zero"])
@pytest.mark.parametrize("jacobian", ["exact", "rep"])
@pytest.mark.parametrize("method", GRAD_METHODS)
def test_a_task_missing_from_a_batch_breaks_no_method(
    method: str, jacobian: str, masked_as_zero: bool
) -> None:
    torch.manual_seed(0)
    model = ToyModel()
    model.masked_as_zero = masked_as_zero
    ctx = make_context(
        model, "uncertainty", method, options={"jacobian": jacobian}, cosine_every=1
    )
    train_step(ctx, make_batch(0), 0)  # all three tasks (Nash-MTL keeps state per task set)
    head_before = [p.clone() for p in model.heads["depth"].parameters()]
    stem_before = model.stem.weight.clone()
    scalars = train_step(ctx, make_batch(1, drop="depth"), 1)
    assert math.isfinite(scalars["loss/total"])
    assert "skipped" not in scalars
    assert "weight/depth" not in scalars or masked_as_zero
    assert "cosine/detection~segmentation" in scalars
    assert "cosine/detection~depth" not in scalars
    assert not torch.equal(model.stem.weight, stem_before), (
        "the backbone still learns from the others"
    )
    # A zero row must not drag the aggregate to zero (MGDA) or make Nash-MTL singular.
    if method != "none":
        assert {k for k in scalars if k.startswith("aggregator_weight/")} <= {
            "aggregator_weight/detection",
            "aggregator_weight/segmentation",
        }
    for p, b in zip(model.heads["depth"].parameters(), head_before, strict=True):
        assert torch.equal(p, b), "the missing task's head must not move"
    train_step(ctx, make_batch(2), 2)  # and back to three tasks


@pytest.mark.parametrize("jacobian", ["exact", "rep"])
@pytest.mark.parametrize("method", METHODS)
def test_a_zero_gradient_row_sits_out_of_the_aggregation(method: str, jacobian: str) -> None:
    """The model's stand-in zero loss for a task without labels reaches the balancer as a row of
    zeros: it must not count (MGDA's min-norm point of a hull containing 0 is 0)."""
    torch.manual_seed(0)
    model = ToyModel()
    model.masked_as_zero = True
    ctx = make_context(model, method=method, options={"jacobian": jacobian})
    losses, features = model.forward_train(*make_batch(drop="depth"))
    assert float(losses["depth"]) == 0.0
    assert losses["depth"].requires_grad
    stats = ctx.balancer.backward(ctx.weighting.weigh(losses).weighted, features, 0)
    assert stats.finite
    assert stats.tasks == ("detection", "segmentation")
    assert set(stats.cosine) == {"detection~segmentation"}
    assert float(torch.cat([p.grad.flatten() for p in model.shared_parameters()]).norm()) > 1e-4


def test_uncertainty_uses_the_regression_form_for_depth() -> None:
    weighting = build_weighting("uncertainty", TASKS, {"init_log_var": 0.3})
    assert weighting.regression_tasks == ("depth",)
    losses = {t: torch.tensor(v) for t, v in zip(TASKS, (2.0, 3.0, 5.0), strict=True)}
    result = weighting.weigh(losses)
    sigma2 = math.exp(0.3)
    log_sigma = 0.5 * math.log(sigma2)
    # Kendall et al.: 1/sigma^2 L + log sigma (classification),
    # 1/(2 sigma^2) L + log sigma (regression)
    assert float(result.weighted["detection"]) == pytest.approx(2.0 / sigma2 + log_sigma)
    assert float(result.weighted["segmentation"]) == pytest.approx(3.0 / sigma2 + log_sigma)
    assert float(result.weighted["depth"]) == pytest.approx(5.0 / (2 * sigma2) + log_sigma)
    assert result.weights["depth"] == pytest.approx(0.5 / sigma2)
    custom = build_weighting("uncertainty", TASKS, {"regression_tasks": ["depth", "detection"]})
    assert custom.regression_tasks == ("detection", "depth")


def test_gradnorm_feedback_matches_the_gradient_of_the_gradnorm_loss() -> None:
    """Reference: Chen et al.'s L_grad differentiated by autograd (second order) w.r.t. w."""
    torch.manual_seed(0)
    model = ToyModel()
    weighting = GradNorm(TASKS, alpha=1.5)
    with torch.no_grad():
        weighting.loss_weights.copy_(torch.tensor([0.5, 1.0, 1.5]))
    x, targets = make_batch()
    losses, _ = model.forward_train(x, targets)
    weighting.weigh({t: 2 * v for t, v in losses.items()})  # L(0): twice today's losses
    weighting.weigh(losses)
    last = model.last_shared_parameters()
    w = weighting.loss_weights.detach().clone().requires_grad_(True)
    norms = []
    for i, t in enumerate(TASKS):
        grads = torch.autograd.grad(w[i] * losses[t], last, create_graph=True, retain_graph=True)
        norms.append(torch.cat([g.flatten() for g in grads]).norm())
    norms_t = torch.stack(norms)
    rate = torch.stack([losses[t].detach() for t in TASKS]) / (
        2 * torch.stack([losses[t].detach() for t in TASKS])
    )
    target = (norms_t.mean() * (rate / rate.mean()) ** 1.5).detach()
    (norms_t - target).abs().sum().backward()
    weighting.gradient_norm_feedback({t: norms[i].detach() for i, t in enumerate(TASKS)})
    torch.testing.assert_close(weighting.loss_weights.grad, w.grad)


@pytest.mark.parametrize(
    ("method", "jacobian"), [("none", "exact"), ("upgrad", "exact"), ("upgrad", "rep")]
)
def test_gradnorm_balances_gradient_norms_and_keeps_weights_summing_to_n(
    method: str, jacobian: str
) -> None:
    torch.manual_seed(0)
    model = ToyModel()
    ctx = make_context(
        model, "gradnorm", method, options={"jacobian": jacobian, "gradnorm_alpha": 0.0}, lr=0.01
    )
    batch = make_batch()
    for step in range(40):
        scalars = train_step(ctx, batch, step)
    weights = {t: scalars[f"weight/{t}"] for t in TASKS}
    assert sum(weights.values()) == pytest.approx(3.0, abs=1e-4)
    # depth's loss (2 x^2 targets) has the largest gradient: alpha=0 equalises norms,
    # so its weight must fall below the others'.
    assert weights["depth"] < 1.0 < max(weights["detection"], weights["segmentation"])
    state = ctx.weighting.state_dict()
    restored = build_weighting("gradnorm", TASKS)
    restored.load_state_dict(state)
    assert torch.equal(restored.initial_losses, ctx.weighting.initial_losses)


def test_rep_mode_aggregates_the_feature_jacobian() -> None:
    """Reference: LibMTL's rep_grad by hand -- per-task gradients w.r.t. the features, UPGrad on
    them, one backward of the aggregate through the trunk."""
    batch = make_batch()
    torch.manual_seed(0)
    reference = ToyModel()
    torch.manual_seed(0)
    model = ToyModel()
    losses, taps = reference.forward_train(*batch)
    rows = [
        torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], taps, retain_graph=True)])
        for t in TASKS
    ]
    aggregate = aggregation.UPGrad()(torch.stack(rows))
    sizes = [tap.numel() for tap in taps]
    torch.autograd.backward(
        taps, [c.view_as(tap) for c, tap in zip(aggregate.split(sizes), taps, strict=True)]
    )
    ctx = make_context(model, method="upgrad", options={"jacobian": "rep"})
    grads = shared_grads(ctx, batch)
    for got, want in zip(grads, reference.shared_parameters(), strict=True):
        torch.testing.assert_close(got, want.grad, rtol=1e-4, atol=1e-6)
