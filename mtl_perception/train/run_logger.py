# SPDX-License-Identifier: Apache-2.0
"""Run logging: TensorBoard scalars and preview images, optional Weights & Biases.

Only the main process logs (``enabled=False`` elsewhere turns every call into a no-op).
W&B is used only when installed AND ``logging.wandb: true``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from mtl_perception.train.config import TrainConfig


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "val") -> dict[str, float]:
    """Scalar entries of a nested metrics dict as ``prefix/task/key`` (lists/None skipped)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            flat |= flatten_metrics(value, name)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


# Validation figures shown in the epoch line: (label, metrics section, key).
_EPOCH_METRICS = (
    ("mAP", "detection", "map"),
    ("mIoU", "segmentation", "miou"),
    ("delta1", "depth", "delta1"),
)


class RunLogger:
    """TensorBoard (``<run_dir>/tb``) and optional W&B for one run."""

    def __init__(self, config: TrainConfig, enabled: bool = True) -> None:
        self.writer = None
        self.wandb = None
        self.enabled = enabled
        self.preview_count = config.logging.preview_images
        if not enabled:
            return
        if config.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(config.run_dir / "tb"))
        if config.logging.wandb and importlib.util.find_spec("wandb") is not None:
            import wandb

            self.wandb = wandb.init(
                project=config.logging.wandb_project,
                name=config.name,
                config=config.to_dict(),
                resume="allow",
            )

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Log per-step scalars (losses, weights, cosine, lr)."""
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(dict(values), step=step)

    def epoch_line(
        self,
        epoch: int,
        epochs: int,
        losses: Mapping[str, float],
        weights: Mapping[str, float],
        metrics: Mapping[str, Any],
        seconds: float,
        skipped_steps: int = 0,
    ) -> None:
        """One line per finished epoch on stdout.

        The line holds the mean raw loss and last weight per task, the validation score with its
        parts, the wall time (and the non-finite steps skipped so far, if any).
        """
        if not self.enabled:
            return
        parts = [f"epoch {epoch}/{epochs}"]
        parts.append("loss " + " ".join(f"{task} {value:.4f}" for task, value in losses.items()))
        parts.append(
            "weight " + " ".join(f"{task} {value:.3f}" for task, value in weights.items())
        )
        if metrics:
            found = [
                (label, metrics.get(task, {}).get(key)) for label, task, key in _EPOCH_METRICS
            ]
            detail = " ".join(
                f"{label} {value:.3f}" for label, value in found if isinstance(value, (int, float))
            )
            parts.append(f"val score {metrics['score']:.4f}" + (f" ({detail})" if detail else ""))
        parts.append(f"{seconds:.0f} s")
        if skipped_steps:
            parts.append(f"{skipped_steps} non-finite steps skipped")
        print(" | ".join(parts), flush=True)

    def metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log validation metrics (nested dict from ``engine.validation_metrics``)."""
        self.scalars(flatten_metrics(metrics), step)

    @torch.no_grad()
    def previews(
        self, model: nn.Module, dataset: Any, info: Any, device: torch.device, step: int
    ) -> None:
        """Draw predictions on the first val images (always the same ones) into TensorBoard."""
        if self.writer is None or self.preview_count == 0 or len(dataset) == 0:
            return
        from mtl_perception.visualize import draw_prediction

        model.eval()
        tiles = []
        for index in range(min(self.preview_count, len(dataset))):
            image, _ = dataset[index]
            output = model([image.to(device)])[0]
            rgb = (image.permute(1, 2, 0).clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
            labels = (
                output["labels"].cpu().numpy() if "labels" in output else np.zeros(0, np.int64)
            )
            prediction = SimpleNamespace(
                boxes=output["boxes"].cpu().numpy()
                if "boxes" in output
                else np.zeros((0, 4), np.float32),
                scores=output["scores"].cpu().numpy()
                if "scores" in output
                else np.zeros(0, np.float32),
                labels=labels,
                label_names=[info.detection_classes[int(k) - 1] for k in labels],
                mask=output["mask"].cpu().numpy().astype(np.uint8) if "mask" in output else None,
            )
            tiles.append(
                torch.from_numpy(draw_prediction(rgb, prediction, info.palette)).permute(2, 0, 1)
            )
        self.writer.add_images("val/predictions", torch.stack(tiles), step)

    def close(self) -> None:
        """Flush and close TensorBoard and Weights & Biases (whichever are open)."""
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
