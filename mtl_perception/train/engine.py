# SPDX-License-Identifier: Apache-2.0
"""The training and validation loops: one optimiser step, one epoch, one evaluation pass."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from mtl_perception.balancing import GradientBalancer, LossWeighting, WeightedLosses
from mtl_perception.core.errors import UserError
from mtl_perception.device import autocast
from mtl_perception.evaluation.metrics import ConfusionMatrix, DetectionEvaluator, combined_score
from mtl_perception.nets.multitask import MultiTaskModel, task_samples

Batch = tuple[list[Tensor], list[dict[str, Any]]]
# With ``nonfinite_loss: skip``, this many non-finite steps in a row mean the run has diverged
# (skipping cannot recover it): stop then as ``stop`` would.
MAX_CONSECUTIVE_SKIPS = 20


class NonFiniteLossError(UserError):
    """Training produced a NaN/inf loss or gradient; the weights were not updated with it."""


@dataclass
class StepContext:
    """Everything one optimiser step needs (identical for every balancing method)."""

    model: MultiTaskModel
    weighting: LossWeighting
    balancer: GradientBalancer
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: bool
    grad_clip_norm: float | None
    before_forward: Callable[[], None] = lambda: None  # e.g. broadcast BatchNorm buffers (DDP)
    clip_params: list[nn.Parameter] = field(default_factory=list)
    nonfinite_loss: str = "stop"  # "stop" | "skip", see ``OptimConfig.nonfinite_loss``
    ema: AveragedModel | None = None  # updated after every optimiser step
    skipped_steps: int = 0  # non-finite steps skipped in this process (all time)
    consecutive_skips: int = 0


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move images and the tensor fields of every target to ``device``."""
    images, targets = batch
    moved = [
        {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()}
        for t in targets
    ]
    return [image.to(device, non_blocking=True) for image in images], moved


def _nonfinite(
    ctx: StepContext,
    step: int,
    bad: list[str],
    losses: dict[str, Tensor],
    buffers: list[Tensor],
    saved: list[Tensor],
) -> dict[str, float]:
    """Stop or skip a step whose ``bad`` tasks' losses are not finite.

    The parameters are left untouched either way, and on a skip the forward pass's BatchNorm
    statistics are undone too (``saved``: the ``buffers`` before it). A skipped step still
    advances the schedule (as a step the AMP scaler skips), so the learning rate stays tied to
    the global step.

    Raises:
        NonFiniteLossError: the policy is ``stop``, or too many steps in a row were skipped.
    """
    values = ", ".join(f"{task} {float(loss.detach()):.4g}" for task, loss in losses.items())
    what = f"the {' and '.join(bad)} loss"
    if ctx.nonfinite_loss == "stop" or ctx.consecutive_skips + 1 >= MAX_CONSECUTIVE_SKIPS:
        why = (
            "optim.nonfinite_loss=stop"
            if ctx.nonfinite_loss == "stop"
            else f"{MAX_CONSECUTIVE_SKIPS} such steps in a row"
        )
        raise NonFiniteLossError(
            f"step {step + 1}: {what} is not finite (losses: {values}); stopped before it reached "
            f"the weights ({why}). Lower optim.lr, keep optim.grad_clip_norm, check the labels of "
            "this batch, or set optim.nonfinite_loss=skip to drop such steps"
        )
    ctx.optimizer.zero_grad(set_to_none=True)
    if saved:
        torch._foreach_copy_(buffers, saved)
    ctx.scheduler.step()
    ctx.skipped_steps += 1
    ctx.consecutive_skips += 1
    print(
        f"step {step + 1}: {what} is not finite (losses: {values}); step skipped "
        f"({ctx.skipped_steps} so far)",
        file=sys.stderr,
        flush=True,
    )
    scalars = {f"loss/{task}": float(loss.detach()) for task, loss in losses.items()}
    return scalars | {"skipped": 1.0, "nonfinite_skips": float(ctx.skipped_steps)}


def train_step(ctx: StepContext, batch: Batch, step: int) -> dict[str, float]:
    """Forward, balanced backward, clip, optimiser and scheduler step; returns scalars to log.

    A non-finite loss (named by task) never reaches the weights: the run stops or the step is
    skipped (``ctx.nonfinite_loss``; the returned scalars then hold ``skipped: 1``). A finite loss
    with a non-finite gradient is skipped by the balancer (``BackwardStats.finite``).
    """
    images, targets = to_device(batch, ctx.device)
    ctx.before_forward()
    # A skipped step must not keep what its forward pass did to the BatchNorm statistics (a
    # NaN input would poison them); the copy costs little next to the step.
    buffers = list(ctx.model.buffers()) if ctx.nonfinite_loss == "skip" else []
    saved = [b.detach().clone() for b in buffers]
    with autocast(ctx.device, ctx.amp):
        losses, features = ctx.model.forward_train(images, targets)
    # A task with no sample labelled for it in this batch gets a stand-in zero loss from the
    # model; it sits this step out, or it would still move uncertainty's log-variance, DWA's epoch
    # means and GradNorm's training rates.
    losses = {task: loss.float() for task, loss in losses.items() if task_samples(task, targets)}
    bad = [task for task, loss in losses.items() if not bool(torch.isfinite(loss.detach()))]
    if bad:
        return _nonfinite(ctx, step, bad, losses, buffers, saved)
    if losses:
        result = ctx.weighting.weigh(losses)
    else:  # nothing supervised in this batch: no gradient, but every rank takes part in the step
        result = WeightedLosses(torch.zeros((), device=ctx.device), {}, {})
    # Under AMP the losses are multiplied by the scaler's scale; the balancer aggregates the
    # unscaled Jacobian and leaves every .grad scaled, as the scaler expects. (scale() of a one
    # is the scale itself, and also initialises it on the first step; 1 without AMP.)
    loss_scale = float(ctx.scaler.scale(torch.ones((), device=ctx.device)))
    stats = ctx.balancer.backward(result.weighted, features, step, loss_scale=loss_scale)
    grad_norm = math.nan
    if stats.finite:
        ctx.scaler.unscale_(ctx.optimizer)
        if ctx.grad_clip_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(ctx.clip_params, ctx.grad_clip_norm))
        ctx.consecutive_skips = 0
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:  # finite loss, non-finite gradient (e.g. an fp16 overflow): skipped like a loss
        if ctx.scaler.is_enabled():  # back off the loss scale as the scaler does after an overflow
            ctx.scaler.update(ctx.scaler.get_scale() * ctx.scaler.get_backoff_factor())
        ctx.skipped_steps += 1
        culprits = (
            f"the {' and '.join(stats.nonfinite_tasks)}" if stats.nonfinite_tasks else "a task's"
        )
        print(
            f"step {step + 1}: the gradient of {culprits} loss is not finite; step skipped "
            f"({ctx.skipped_steps} so far)",
            file=sys.stderr,
            flush=True,
        )
    ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    if (
        ctx.ema is not None and stats.finite
    ):  # a skipped step leaves the EMA as it leaves the weights
        ctx.ema.update_parameters(ctx.model)
    scalars = {f"loss/{task}": float(loss.detach()) for task, loss in losses.items()}
    scalars |= {
        f"weighted_loss/{task}": float(loss.detach()) for task, loss in result.weighted.items()
    }
    scalars |= {f"weight/{task}": value for task, value in result.weights.items()}
    scalars |= {f"cosine/{pair}": value for pair, value in stats.cosine.items()}
    scalars |= {
        f"aggregator_weight/{task}": value for task, value in stats.aggregator_weights.items()
    }
    scalars["loss/total"] = float(result.total.detach())
    if not stats.finite:
        scalars |= {"skipped": 1.0, "nonfinite_skips": float(ctx.skipped_steps)}
    scalars["lr"] = max(float(group["lr"]) for group in ctx.optimizer.param_groups)
    if not math.isnan(grad_norm):
        scalars["grad_norm"] = grad_norm
    return scalars


def train_one_epoch(
    ctx: StepContext,
    batches: Iterable[Batch],
    first_step: int,
    on_step: Callable[[int, dict[str, float]], bool],
    total: int | None = None,
    progress: bool = True,
    description: str = "train",
) -> int:
    """Run the batches; ``on_step(global_step, scalars)`` after each returns False to stop early.

    Returns the number of steps run.
    """
    ctx.model.train()
    step = first_step
    bar = tqdm(batches, total=total, desc=description, disable=not progress, leave=False)
    for batch in bar:
        scalars = train_step(ctx, batch, step)
        step += 1
        bar.set_postfix(loss=f"{scalars['loss/total']:.3f}")
        if not on_step(step, scalars):
            break
    return step - first_step


@torch.no_grad()
def validation_metrics(
    model: MultiTaskModel,
    batches: Iterable[Batch],
    device: torch.device,
    detection_classes: Sequence[str],
    num_segmentation_classes: int,
    amp: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Validation metrics at input resolution: ``{"detection", "segmentation", "depth", "score"}``.

    Only the model's tasks; depth over the frames that have a depth map (see ``DepthMetrics``).
    """
    from mtl_perception.evaluation.depth_metrics import DepthMetrics

    model.eval()
    detector = DetectionEvaluator(detection_classes) if "detection" in model.tasks else None
    confusion = (
        ConfusionMatrix(num_segmentation_classes) if "segmentation" in model.tasks else None
    )
    depth = DepthMetrics() if "depth" in model.tasks else None
    for batch in tqdm(batches, desc="val", disable=not progress, leave=False):
        images, targets = to_device(batch, device)
        with autocast(device, amp):
            predictions = model(images)
        if detector is not None:  # depth-only frames have no boxes to score against
            labeled = [i for i, target in enumerate(targets) if target.get("labeled", True)]
            if labeled:
                detector.update([predictions[i] for i in labeled], [targets[i] for i in labeled])
        if confusion is not None:
            for prediction, target in zip(predictions, targets, strict=True):
                confusion.update(prediction["mask"], target["mask"])
        if depth is not None:
            for prediction, target in zip(predictions, targets, strict=True):
                if target.get("depth") is not None:
                    depth.update(prediction["depth"][0].float(), target["depth"])
    metrics: dict[str, Any] = {}
    if detector is not None:
        metrics["detection"] = detector.compute()
    if confusion is not None:
        metrics["segmentation"] = confusion.compute()
    if depth is not None:
        metrics["depth"] = depth.compute()
    metrics["score"] = combined_score(metrics)
    return metrics
