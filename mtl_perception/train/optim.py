"""Optimiser and per-step learning-rate schedule (linear warm-up, then cosine or one-cycle)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, OneCycleLR, SequentialLR

from mtl_perception.train.config import OptimConfig


def build_optimizer(config: OptimConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum) over ``params``."""
    params = [p for p in params if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(config: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> LRScheduler:
    """Per-step schedule over ``total_steps``; warm-up is capped at the schedule's length."""
    total_steps = max(total_steps, 1)
    warmup = min(config.warmup_steps, total_steps - 1)
    if config.schedule == "onecycle":
        # OneCycleLR has its own warm-up phase: the first ``pct_start`` of the steps.
        return OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=max(warmup, 1) / total_steps)
    cosine = CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup, 1), eta_min=config.lr * 0.01)
    if warmup == 0:
        return cosine
    ramp = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
