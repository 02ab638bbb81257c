# SPDX-License-Identifier: Apache-2.0
"""Training hygiene: non-finite losses never reach the weights, no weight decay where it does
harm, and an EMA of the weights that is validated, written to best.pt and resumed exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from datasets import make_processed_dataset, tiny_run_overrides
from torch import nn

from mtl_perception.balancing import build_gradient_balancer, build_weighting
from mtl_perception.checkpoint import load_checkpoint
from mtl_perception.nets import build_model
from mtl_perception.train import cli
from mtl_perception.train.config import OptimConfig
from mtl_perception.train.dataset import ProcessedDataset, collate
from mtl_perception.train.engine import NonFiniteLossError, StepContext, train_step
from mtl_perception.train.optim import (
    build_ema,
    build_optimizer,
    build_scheduler,
    parameter_groups,
)
from mtl_perception.train.transforms import build_eval_transform

SIZE = (48, 64)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_processed_dataset(tmp_path_factory.mktemp("ds"))


@pytest.fixture(scope="module")
def batch(dataset_root: Path):
    data = ProcessedDataset(dataset_root, "train", build_eval_transform(SIZE))
    return collate([data[0], data[4]])


def _context(
    policy: str = "stop", weighting_name: str = "uncertainty", ema_decay: float | None = None
) -> StepContext:
    torch.manual_seed(0)
    model = build_model(
        "ssdlite_lraspp", num_detection_classes=2, num_segmentation_classes=4, input_size=SIZE
    )
    weighting = build_weighting(weighting_name, model.tasks)
    balancer = build_gradient_balancer(
        "none",
        weighting,
        model.shared_parameters(),
        {t: model.task_parameters(t) for t in model.tasks},
    )
    config = OptimConfig(lr=1e-3, warmup_steps=0, epochs=1, nonfinite_loss=policy)
    optimizer = build_optimizer(config, parameter_groups(config, model, weighting.parameters()))
    params = [*model.parameters(), *weighting.parameters()]
    return StepContext(
        model,
        weighting,
        balancer,
        optimizer,
        build_scheduler(config, optimizer, 10),
        torch.amp.GradScaler("cpu", enabled=False),
        torch.device("cpu"),
        amp=False,
        grad_clip_norm=10.0,
        clip_params=params,
        nonfinite_loss=policy,
        ema=build_ema(model, ema_decay) if ema_decay else None,
    )


def _weights(ctx: StepContext, buffers: bool = True) -> dict[str, torch.Tensor]:
    """Parameters (and buffers: BatchNorm statistics) of model and weighting, copied."""
    state = {f"model.{k}": v.detach().clone() for k, v in ctx.model.named_parameters()}
    if buffers:
        state |= {f"model.{k}": v.clone() for k, v in ctx.model.named_buffers()}
    return state | {
        f"weighting.{k}": v.detach().clone() for k, v in ctx.weighting.named_parameters()
    }


def _poison_segmentation_loss(ctx: StepContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """The segmentation loss becomes NaN (as after a fp overflow); detection stays finite."""
    head = ctx.model.heads["segmentation"]
    real_loss = head.loss
    monkeypatch.setattr(head, "loss", lambda *args: real_loss(*args) * math.nan)


def test_nan_loss_stops_naming_the_task_and_writes_no_nan_weights(
    batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = _context("stop")
    train_step(ctx, batch, 0)  # one real step first: optimiser moments exist, as mid-run
    before = _weights(ctx)
    _poison_segmentation_loss(ctx, monkeypatch)
    with pytest.raises(
        NonFiniteLossError, match=r"step 2: the segmentation loss is not finite.*nonfinite_loss"
    ):
        train_step(ctx, batch, 1)
    after = _weights(ctx)
    for key, value in _weights(ctx, buffers=False).items():
        assert torch.equal(value, before[key]), key
    assert all(
        bool(torch.isfinite(value).all()) for value in after.values()
    )  # the batch's statistics are finite


def test_nan_loss_with_skip_leaves_weights_and_counts_the_step(
    batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = _context("skip")
    before = _weights(ctx)
    lr_before = ctx.optimizer.param_groups[0]["lr"]
    _poison_segmentation_loss(ctx, monkeypatch)
    scalars = train_step(ctx, batch, 0)
    assert (
        scalars["skipped"] == 1.0
        and ctx.skipped_steps == 1
        and math.isnan(scalars["loss/segmentation"])
    )
    for key, value in _weights(ctx).items():
        assert torch.equal(value, before[key]), key
    assert (
        ctx.optimizer.param_groups[0]["lr"] != lr_before
    )  # the schedule moved on with the step count
    monkeypatch.undo()
    scalars = train_step(ctx, batch, 1)  # a finite step trains again
    assert "skipped" not in scalars
    assert any(not torch.equal(value, before[key]) for key, value in _weights(ctx).items())


def test_skipping_gives_up_after_many_non_finite_steps_in_a_row(
    batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtl_perception.train import engine

    monkeypatch.setattr(engine, "MAX_CONSECUTIVE_SKIPS", 2)
    ctx = _context("skip")
    _poison_segmentation_loss(ctx, monkeypatch)
    train_step(ctx, batch, 0)
    with pytest.raises(NonFiniteLossError, match="2 such steps in a row"):
        train_step(ctx, batch, 1)


def test_nan_gradient_from_a_finite_loss_never_reaches_the_weights(batch) -> None:
    """Without an AMP scaler nothing else would catch it; the balancer skips such a step."""
    ctx = _context("stop")
    before = _weights(ctx, buffers=False)
    stem = ctx.model.backbone.features[0][0].weight
    handle = stem.register_hook(lambda grad: grad * math.inf)
    scalars = train_step(ctx, batch, 0)
    handle.remove()
    assert scalars["skipped"] == 1.0
    assert scalars["nonfinite_skips"] == 1.0
    for key, value in _weights(ctx, buffers=False).items():
        assert torch.equal(value, before[key]), key


def test_no_weight_decay_on_norm_layers_biases_and_balancing_parameters() -> None:
    model = build_model("frcnn_deeplabv3", 2, 4, SIZE, trainable_backbone_layers=3)
    weighting = build_weighting("uncertainty", model.tasks)
    config = OptimConfig(lr=0.01, weight_decay=0.05, backbone_lr_scale=0.1)
    groups = parameter_groups(config, model, weighting.parameters())
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    trainable = [p for p in [*model.parameters(), *weighting.parameters()] if p.requires_grad]
    assert (
        sum(len(g["params"]) for g in groups) == len(decay_of) == len(trainable)
    )  # each exactly once
    norm_params = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
        for p in m.parameters(recurse=False)
    }
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert id(param) not in decay_of, name
            continue
        no_decay = id(param) in norm_params or name.endswith(".bias")
        assert decay_of[id(param)] == (0.0 if no_decay else 0.05), name
        assert lr_of[id(param)] == pytest.approx(
            0.001 if name.startswith("backbone.") else 0.01
        ), name
    for param in weighting.parameters():
        assert decay_of[id(param)] == 0.0 and lr_of[id(param)] == 0.01
    # AdamW would otherwise pull uncertainty's log-variances to 0 even without any loss gradient.
    optimizer = build_optimizer(config, groups)
    for param in weighting.parameters():
        param.data.fill_(2.0)
        param.grad = torch.zeros_like(param)
    optimizer.step()
    assert all(float(p.detach()) == 2.0 for p in weighting.parameters())


def test_schedule_follows_each_group_peak() -> None:
    model = build_model("ssdlite", 2, 0, SIZE)
    config = OptimConfig(lr=0.01, backbone_lr_scale=0.1, warmup_steps=2)
    optimizer = build_optimizer(config, parameter_groups(config, model))
    scheduler = build_scheduler(config, optimizer, 10)
    lrs = []
    for _ in range(10):
        lrs.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    assert lrs[0]["heads/decay"] == pytest.approx(1e-4) and lrs[2]["heads/decay"] == pytest.approx(
        0.01
    )
    for step_lrs in lrs:
        assert step_lrs["backbone/decay"] == pytest.approx(0.1 * step_lrs["heads/decay"])
    assert lrs[-1]["heads/decay"] < 0.002


def test_ema_tracks_the_weights_with_warm_up() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = build_ema(model, decay=0.9)
    ema.update_parameters(model)  # first update copies
    weight = model[0].weight
    start = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    ema.update_parameters(model)  # second: decay min(0.9, 2/11)
    torch.testing.assert_close(ema.module[0].weight, start + (1 - 2 / 11))
    assert int(ema.module[1].num_batches_tracked) == int(model[1].num_batches_tracked)


def _args(root: Path, out: Path, name: str, *extra: str) -> list[str]:
    return tiny_run_overrides(
        root,
        out,
        name,
        "logging.preview_images=0",
        "logging.tensorboard=false",
        "optim.ema_decay=0.5",
        "model.arch=ssdlite_lraspp",
        *extra,
    )


def test_ema_weights_are_validated_saved_and_resumed_exactly(
    dataset_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ("optim.epochs=2", "checkpoint_every_steps=1")
    cli.run(_args(dataset_root, tmp_path, "straight", *common))
    out = capsys.readouterr().out
    assert "epoch 1/2 | loss detection" in out and "| val score" in out  # progress line per epoch
    cli.run(_args(dataset_root, tmp_path, "resumed", *common, "max_steps=4"))
    cli.run(_args(dataset_root, tmp_path, "resumed", "max_steps=0", "--resume"))
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert straight["ema"]["updates"] == resumed["ema"]["updates"] == 6
    for field in ("model", "online_model"):
        source = straight if field == "model" else straight["ema"]
        target = resumed if field == "model" else resumed["ema"]
        for key, value in source[field].items():
            assert torch.equal(value, target[field][key]), (field, key)
    # The deployed weights are the average, not the last trained ones.
    differs = [
        k
        for k, v in straight["model"].items()
        if v.is_floating_point() and not torch.equal(v, straight["ema"]["online_model"][k])
    ]
    assert differs
    best = load_checkpoint(tmp_path / "straight" / "best.pt")
    assert "ema" in best and best["best_score"] == pytest.approx(
        max(best["best_score"], straight["best_score"])
    )
