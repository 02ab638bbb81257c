# SPDX-License-Identifier: Apache-2.0
"""Optimiser, its parameter groups, the per-step learning-rate schedule, and the weight EMA."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR
from torch.optim.swa_utils import AveragedModel
from torchvision.ops.misc import FrozenBatchNorm2d

from mtl_perception.train.config import OptimConfig

# Layers whose parameters are a scale and a shift of normalised activations: decaying them
# towards 0 does not regularise (the next layer can undo any scale) but shrinks the signal.
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, FrozenBatchNorm2d)
# The schedule's floor, as a fraction of each group's peak learning rate.
FINAL_LR_FRACTION = 0.01
# EMA warm-up (as TensorFlow's ExponentialMovingAverage with num_updates): the decay used after
# n updates is min(decay, (1 + n) / (10 + n)), so early averages are not dominated by the
# random initial weights.
_EMA_WARMUP = 10
# What AveragedModel passes to its ``multi_avg_fn``.
TensorList = tuple[Tensor, ...] | list[Tensor]


def parameter_groups(
    config: OptimConfig, model: nn.Module, balancing: Iterable[nn.Parameter] = ()
) -> list[dict[str, Any]]:
    """Trainable parameters split into optimiser groups by weight decay and learning rate.

    No weight decay on norm-layer parameters, biases and the balancing parameters (e.g.
    uncertainty weighting's log-variances, which decay would pull towards weight 1 instead of
    letting them learn it); the backbone's learning rate is ``lr * backbone_lr_scale``
    (pretrained features move slower than new heads). Empty groups are left out; each group
    carries a ``name`` for logs.
    """
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, NORM_LAYERS):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    groups: dict[str, dict[str, Any]] = {}

    def add(name: str, param: nn.Parameter, lr: float, weight_decay: float) -> None:
        group = groups.setdefault(
            name, {"name": name, "params": [], "lr": lr, "weight_decay": weight_decay}
        )
        group["params"].append(param)

    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") else "heads"
        lr = config.lr * (config.backbone_lr_scale if part == "backbone" else 1.0)
        if id(param) in no_decay or name.endswith("bias"):
            add(f"{part}/no_decay", param, lr, 0.0)
        else:
            add(f"{part}/decay", param, lr, config.weight_decay)
    for param in balancing:
        if param.requires_grad:
            add("balancing", param, config.lr, 0.0)
    return list(groups.values())


def build_optimizer(
    config: OptimConfig, params: Iterable[nn.Parameter] | Sequence[dict[str, Any]]
) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum) over ``params``.

    ``params`` are parameters (the trainable ones are optimised, all with
    ``config.weight_decay``) or groups from ``parameter_groups``.
    """
    items = list(params)
    groups = [item for item in items if isinstance(item, dict)]
    trainable = [item for item in items if isinstance(item, Tensor) and item.requires_grad]
    chosen = groups or trainable
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            chosen,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=True,
        )
    return torch.optim.AdamW(chosen, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(
    config: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> LRScheduler:
    """Per-step schedule over ``total_steps``, relative to each group's own learning rate.

    ``cosine``: linear warm-up from 1% to the peak, then cosine down to ``FINAL_LR_FRACTION``
    of it; ``onecycle``: torchvision-style one-cycle with the warm-up as its rising phase.
    The warm-up is capped at the schedule's length.
    """
    total_steps = max(total_steps, 1)
    warmup = min(config.warmup_steps, total_steps - 1)
    if config.schedule == "onecycle":
        peaks = [group["lr"] for group in optimizer.param_groups]
        return OneCycleLR(
            optimizer,
            max_lr=peaks,
            total_steps=total_steps,
            pct_start=max(warmup, 1) / total_steps,
        )

    def factor(step: int) -> float:
        if step < warmup:
            return FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * step / warmup
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )

    return LambdaLR(optimizer, factor)


def _ema_update(decay: float) -> Callable[[TensorList, TensorList, Tensor | int], None]:
    """``multi_avg_fn`` for ``AveragedModel``: exponential moving average with warm-up.

    Integer buffers (BatchNorm's batch counters) are copied, not averaged.
    """

    def update(averaged: TensorList, current: TensorList, num_averaged: Tensor | int) -> None:
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        updates = float(num_averaged)
        step_decay = min(decay, (1.0 + updates) / (_EMA_WARMUP + updates))
        torch._foreach_lerp_(averaged, current, 1.0 - step_decay)

    return update


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s weights and buffers.

    BatchNorm statistics are included, so the averaged model evaluates consistently. Call
    ``update_parameters(model)`` after each optimiser step; ``.module`` is the averaged model.
    """
    return AveragedModel(model, multi_avg_fn=_ema_update(decay), use_buffers=True)
