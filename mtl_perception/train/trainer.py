# SPDX-License-Identifier: Apache-2.0
"""One training run end to end: data, model, balancing, loop, validation, checkpoints, logs.

The run folder ``<output_dir>/<name>/`` holds ``config.yaml`` (the resolved config),
``last.pt`` (every epoch, and every ``checkpoint_every_steps`` steps), ``best.pt`` (highest
validation combined score: mean of detection mAP@[.5:.95], segmentation mIoU and depth delta1
over the model's tasks, see ``evaluation.metrics.combined_score``) and ``tb/`` (TensorBoard).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader

from mtl_perception.balancing import build_gradient_balancer, build_weighting
from mtl_perception.checkpoint import load_checkpoint, save_checkpoint
from mtl_perception.core.errors import UserError
from mtl_perception.device import configure_backend, resolve_device
from mtl_perception.nets import MultiTaskModel, build_model, load_pretrained
from mtl_perception.nets.pretrained import describe as describe_pretrained
from mtl_perception.train.checkpointing import Progress, restore_training_state, training_payload
from mtl_perception.train.config import TrainConfig, save_config
from mtl_perception.train.dataset import ProcessedDataset, ResumableSampler, collate
from mtl_perception.train.distributed import (
    DistributedContext,
    TorchDistSync,
    device_spec_for_rank,
)
from mtl_perception.train.engine import StepContext, train_one_epoch, validation_metrics
from mtl_perception.train.optim import (
    build_ema,
    build_optimizer,
    build_scheduler,
    parameter_groups,
)
from mtl_perception.train.run_logger import RunLogger
from mtl_perception.train.transforms import build_eval_transform, build_train_transform


@dataclass
class RunResult:
    """What a finished (or stopped) run reports."""

    run_dir: Path
    progress: Progress


def seed_everything(seed: int) -> None:
    """Seed every RNG a run touches (model init, PCGrad's task order, dropout)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Builds all parts of a run from a ``TrainConfig`` and trains (optionally resuming)."""

    def __init__(self, config: TrainConfig, context: DistributedContext | None = None) -> None:
        self.config = config
        self.context = context or DistributedContext()
        self.device = resolve_device(device_spec_for_rank(config.device, self.context))
        configure_backend(self.device)
        self.sync = TorchDistSync(self.context, self.device)
        self.amp = config.optim.amp and self.device.type == "cuda"
        seed_everything(config.seed)

        root = Path(config.data.root)
        size = config.model.input_size
        self.train_set = ProcessedDataset(
            root, "train", build_train_transform(size, config.augment), seed=config.seed
        )
        if len(self.train_set) == 0:
            raise UserError(f"{root}: the train split has no images; nothing to train on")
        self.val_set = ProcessedDataset(root, "val", build_eval_transform(size), seed=config.seed)
        self.info = self.train_set.info

        try:
            model = build_model(
                config.model.arch,
                num_detection_classes=len(self.info.detection_classes),
                num_segmentation_classes=len(self.info.segmentation_classes),
                input_size=size,
                tasks=config.model.tasks,
                **config.model.kwargs,
            )
        except TypeError as err:  # an unknown name in model.kwargs
            raise UserError(f"model.kwargs {config.model.kwargs}: {err}") from None
        if "depth" in model.tasks and not self.train_set.has_depth:
            raise UserError(
                f"{root}: model.tasks includes depth but no train image has a depth_file "
                "(build the dataset from bags with an aligned depth topic)"
            )
        # What was loaded from where is printed and stored in every checkpoint of the run.
        self.pretrained = load_pretrained(model, config.model.pretrained.model_dump())
        if self.context.is_main:
            for line in describe_pretrained(self.pretrained):
                print(line, flush=True)
        self.model = model.to(self.device)
        self.sync.broadcast_module_(self.model)  # every rank starts from rank 0's weights
        options = config.balancing.model_dump()
        self.weighting = build_weighting(config.balancing.weighting, self.model.tasks, options).to(
            self.device
        )
        self.balancer = build_gradient_balancer(
            config.balancing.grad_method,
            self.weighting,
            self.model.shared_parameters(),
            {task: self.model.task_parameters(task) for task in self.model.tasks},
            options=options,
            cosine_every=config.balancing.cosine_every,
            sync=self.sync,
            last_shared_params=self.model.last_shared_parameters(),
        )
        params = [*self.model.parameters(), *self.weighting.parameters()]
        self.optimizer = build_optimizer(
            config.optim, parameter_groups(config.optim, self.model, self.weighting.parameters())
        )
        # The weights validated and written to best.pt: an average of the trained ones if enabled.
        self.ema = (
            build_ema(self.model, config.optim.ema_decay) if config.optim.ema_decay else None
        )
        self.sampler = ResumableSampler(
            self.train_set, self.context.world_size, self.context.rank, seed=config.seed
        )
        # BatchNorm cannot train on a single sample (the ASPP pooling branch has 1x1 features), so
        # a last batch of one image is dropped, and a split of one image per process is an error.
        if self.sampler.num_samples < 2:
            raise UserError(
                f"{root}: the train split has {len(self.train_set)} image(s); need at least 2 "
                "per process"
            )
        full_batches, rest = divmod(self.sampler.num_samples, config.data.batch_size)
        self.drop_last = rest == 1
        self.steps_per_epoch = full_batches + int(rest > 1)
        self.scheduler = build_scheduler(
            config.optim, self.optimizer, self.steps_per_epoch * config.optim.epochs
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.step_context = StepContext(
            model=self.model,
            weighting=self.weighting,
            balancer=self.balancer,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            device=self.device,
            amp=self.amp,
            grad_clip_norm=config.optim.grad_clip_norm,
            before_forward=lambda: self.sync.broadcast_module_(self.model, buffers_only=True),
            clip_params=params,
            nonfinite_loss=config.optim.nonfinite_loss,
            ema=self.ema,
        )
        self.progress = Progress()
        self.logger = RunLogger(config, enabled=self.context.is_main)

    @property
    def evaluated_model(self) -> MultiTaskModel:
        """The weights that are validated and written to best.pt: the EMA when enabled."""
        # The EMA's module is a deep copy of self.model (AveragedModel types it as nn.Module).
        return self.model if self.ema is None else cast(MultiTaskModel, self.ema.module)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Per finished epoch, resumed ones included: mean raw losses, task weights, val score."""
        return self.progress.history

    @property
    def run_dir(self) -> Path:
        """``<output_dir>/<name>``: config, checkpoints and logs of this run."""
        return self.config.run_dir

    def resume(self, path: Path | None = None) -> None:
        """Continue from ``path`` (default ``<run_dir>/last.pt``) exactly where it stopped."""
        path = path or self.run_dir / "last.pt"
        checkpoint = load_checkpoint(path, map_location=self.device)
        self.progress = restore_training_state(
            checkpoint,
            self.model,
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.weighting,
            str(path),
            self.ema,
        )

    def _loader(
        self,
        dataset: ProcessedDataset,
        batch_size: int,
        sampler: Any = None,
        drop_last: bool = False,
    ) -> DataLoader:
        # A private generator: creating the iterator must not consume the global RNG, or a
        # resumed run (iterator created after the RNG restore) would drift from the straight run.
        return DataLoader(
            dataset,
            generator=torch.Generator().manual_seed(self.config.seed),
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.config.data.num_workers,
            collate_fn=collate,
            drop_last=drop_last,
            pin_memory=self.device.type == "cuda",
        )

    def save(self, name: str) -> None:
        """Write ``<run_dir>/<name>`` atomically (main process only)."""
        if not self.context.is_main:
            return
        payload = training_payload(
            self.model,
            self.info,
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.weighting,
            self.progress,
            self.config.to_dict(),
            self.ema,
            self.pretrained,
        )
        save_checkpoint(self.run_dir / name, payload)

    def validate(self) -> dict[str, Any]:
        """Metrics on the whole val split, computed identically on every rank.

        torchmetrics gathers detection states across ranks by itself once a process group
        exists, so every rank must take part. Each rank evaluates the full split with rank 0's
        BatchNorm statistics: the gathered copies are identical, and duplicating every image
        with its predictions changes neither AP nor IoU, so all ranks get rank 0's metrics in the
        wall-clock time of one evaluation.
        """
        if len(self.val_set) == 0:
            return {}
        self.sync.broadcast_module_(self.evaluated_model, buffers_only=True)
        return validation_metrics(
            self.evaluated_model,
            self._loader(self.val_set, self.config.data.val_batch_size),
            self.device,
            self.info.detection_classes,
            len(self.info.segmentation_classes),
            self.amp,
            self.config.logging.progress and self.context.is_main,
        )

    def train(self) -> RunResult:
        """Train until the configured epochs (or ``max_steps``) are done."""
        config = self.config
        if self.context.is_main:
            save_config(config, self.run_dir / "config.yaml")
        # A run resumed after it reached max_steps has nothing left to do.
        stopped = bool(config.max_steps) and self.progress.global_step >= config.max_steps
        last_scalars: dict[str, float] = {}

        def on_step(step: int, scalars: dict[str, float]) -> bool:
            nonlocal stopped
            self.progress.global_step = step
            self.progress.step_in_epoch += 1
            last_scalars.update(scalars)
            # Running epoch sums (checkpointed) for DWA and the epoch line, over the tasks that
            # had a loss this step; a skipped step's non-finite losses stay out.
            if not scalars.get("skipped"):
                self.progress.add_losses(
                    {
                        task: scalars[f"loss/{task}"]
                        for task in self.weighting.tasks
                        if f"loss/{task}" in scalars
                    }
                )
            if step % config.logging.log_every == 0 or any(
                key.startswith("cosine/") for key in scalars
            ):
                self.logger.scalars(scalars, step)
            if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
                self.save("last.pt")
            if config.max_steps and step >= config.max_steps:
                stopped = True
                self.save("last.pt")
                return False
            return True

        while self.progress.epoch < config.optim.epochs and not stopped:
            epoch = self.progress.epoch
            started = time.monotonic()
            self.train_set.set_epoch(epoch)
            self.sampler.set_position(epoch, self.progress.step_in_epoch * config.data.batch_size)
            train_one_epoch(
                self.step_context,
                self._loader(self.train_set, config.data.batch_size, self.sampler, self.drop_last),
                self.progress.global_step,
                on_step,
                total=self.steps_per_epoch - self.progress.step_in_epoch,
                progress=config.logging.progress and self.context.is_main,
                description=f"epoch {epoch + 1}/{config.optim.epochs}",
            )
            if stopped and self.progress.step_in_epoch < self.steps_per_epoch:
                break  # mid-epoch stop: last.pt already holds the position
            mean_losses = self.sync.all_reduce_scalars(
                self.progress.epoch_mean_losses(self.weighting.tasks)
            )
            self.weighting.epoch_end(mean_losses)
            self.progress.next_epoch()
            metrics = self.validate()
            weights = {
                task: last_scalars.get(f"weight/{task}", math.nan) for task in self.weighting.tasks
            }
            self.progress.history.append(
                {
                    "epoch": epoch + 1,
                    "losses": dict(mean_losses),
                    "weights": weights,
                    "score": metrics.get("score", math.nan),
                }
            )
            self.logger.epoch_line(
                epoch + 1,
                config.optim.epochs,
                mean_losses,
                weights,
                metrics,
                time.monotonic() - started,
                self.step_context.skipped_steps,
            )
            if metrics:
                self.progress.metrics = metrics
                self.logger.metrics(metrics, self.progress.global_step)
                self.logger.previews(
                    self.evaluated_model,
                    self.val_set,
                    self.info,
                    self.device,
                    self.progress.global_step,
                )
                if metrics["score"] > self.progress.best_score:  # NaN never wins
                    self.progress.best_score = float(metrics["score"])
                    self.save("best.pt")
            self.save("last.pt")
        self.logger.close()
        return RunResult(self.run_dir, self.progress)
