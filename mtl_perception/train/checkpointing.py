# SPDX-License-Identifier: Apache-2.0
"""Training-state checkpoints on top of ``mtl_perception.checkpoint`` (CONTRACTS section 5).

``training_payload`` collects everything needed to continue a run exactly (model, optimiser,
scheduler, AMP scaler, balancer, position in the epoch, RNG state, best score) next to the
self-describing model fields that inference needs; ``restore_training_state`` puts it back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from mtl_perception.checkpoint import inference_fields
from mtl_perception.core.errors import UserError


@dataclass
class Progress:
    """Where training stands. ``step_in_epoch`` batches of ``epoch`` are done."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float = float("-inf")
    metrics: dict[str, Any] = field(default_factory=dict)
    epoch_loss_sums: dict[str, float] = field(
        default_factory=dict
    )  # raw loss per task, this epoch
    # Steps that had a loss for the task this epoch (a task masked out of a batch has none).
    epoch_loss_counts: dict[str, int] = field(default_factory=dict)
    # Per finished epoch: mean raw losses, task weights and val score (the run's curves; kept in
    # the checkpoint so a resumed run still reports them from its first epoch).
    history: list[dict[str, Any]] = field(default_factory=list)

    def add_losses(self, losses: dict[str, float]) -> None:
        """Add one step's raw loss per task present to the epoch sums."""
        for task, value in losses.items():
            self.epoch_loss_sums[task] = self.epoch_loss_sums.get(task, 0.0) + value
            self.epoch_loss_counts[task] = self.epoch_loss_counts.get(task, 0) + 1

    def epoch_mean_losses(self, tasks: Sequence[str]) -> dict[str, float]:
        """Mean raw loss per task over the steps of the current epoch that had one (for DWA).

        NaN for a task without any.
        """
        return {
            task: self.epoch_loss_sums[task] / self.epoch_loss_counts[task]
            if self.epoch_loss_counts.get(task)
            else math.nan
            for task in tasks
        }

    def next_epoch(self) -> None:
        """Advance to the start of the next epoch."""
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_loss_sums = {}
        self.epoch_loss_counts = {}


def rng_state() -> dict[str, Any]:
    """Torch RNG state (CPU and every CUDA device) as tensors, loadable with weights_only."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured (CUDA states only when CUDA is present)."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def training_payload(
    model: nn.Module,
    info: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    weighting: nn.Module,
    progress: Progress,
    config: dict[str, Any],
    ema: AveragedModel | None = None,
    pretrained: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Full checkpoint dict for ``save_checkpoint``.

    With an ``ema``, ``model`` holds the averaged weights (what is validated and deployed) and
    ``ema`` the trained ("online") weights and the update count, to resume both. ``pretrained``:
    what the run started from (``nets.pretrained.load_pretrained``'s record).
    """
    deployed = model if ema is None else ema.module
    extra = (
        {}
        if ema is None
        else {"ema": {"updates": int(ema.n_averaged), "online_model": model.state_dict()}}
    )
    return {
        **inference_fields(
            deployed, info.detection_classes, info.segmentation_classes, info.palette
        ),
        **extra,
        "epoch": progress.epoch,
        "step_in_epoch": progress.step_in_epoch,
        "epoch_loss_sums": dict(progress.epoch_loss_sums),
        "epoch_loss_counts": dict(progress.epoch_loss_counts),
        "global_step": progress.global_step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "balancer": weighting.state_dict(),
        "config": config,
        "metrics": progress.metrics,
        "best_score": progress.best_score,
        "history": [dict(entry) for entry in progress.history],
        "rng": rng_state(),
        "pretrained": dict(pretrained or {}),
    }


# What a training checkpoint must hold to continue exactly where it stopped.
RESUME_KEYS = (
    "optimizer",
    "scheduler",
    "balancer",
    "epoch",
    "step_in_epoch",
    "epoch_loss_sums",
    "epoch_loss_counts",
    "global_step",
    "rng",
)


def restore_training_state(
    checkpoint: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    weighting: nn.Module,
    source: str,
    ema: AveragedModel | None = None,
) -> Progress:
    """Load every training component from ``checkpoint``; UserError if it is not a training one.

    A run that now averages weights (``ema``) but did not before starts its average afresh.
    """
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    if missing:
        raise UserError(
            f"{source}: cannot resume, checkpoint lacks training field(s) {', '.join(missing)}"
        )
    saved_ema = checkpoint.get("ema")
    try:
        model.load_state_dict(saved_ema["online_model"] if saved_ema else checkpoint["model"])
        if ema is not None and saved_ema:
            ema.module.load_state_dict(checkpoint["model"])
            ema.n_averaged.fill_(int(saved_ema["updates"]))
        weighting.load_state_dict(checkpoint["balancer"])
    except RuntimeError as err:
        raise UserError(
            f"{source}: weights do not fit this configuration ({str(err).splitlines()[0]})"
        ) from None
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    set_rng_state(checkpoint["rng"])
    return Progress(
        epoch=int(checkpoint["epoch"]),
        step_in_epoch=int(checkpoint["step_in_epoch"]),
        global_step=int(checkpoint["global_step"]),
        best_score=float(checkpoint.get("best_score", float("-inf"))),
        metrics=dict(checkpoint.get("metrics") or {}),
        epoch_loss_sums={k: float(v) for k, v in checkpoint["epoch_loss_sums"].items()},
        epoch_loss_counts={k: int(v) for k, v in checkpoint["epoch_loss_counts"].items()},
        # Version-2 training checkpoints written before the history was kept have none.
        history=[dict(entry) for entry in checkpoint.get("history") or []],
    )
