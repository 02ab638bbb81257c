# SPDX-License-Identifier: Apache-2.0
"""The model class shared by every architecture: one backbone pass feeding one head per task.

Single-task baselines are the same class with one head, so multi- and single-task models differ
only in the task set (same body, input size, normalisation and trainable layers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from mtl_perception.nets.backbone import MobileNetV3Body
from mtl_perception.nets.task_head import DEPTH, TASKS, Targets, TaskHead, is_labeled


class MultiTaskModel(nn.Module):
    """Shared MobileNetV3-Large body + task heads (see docs/CONTRACTS.md section 6).

    Train mode: ``model(images, targets)`` -> ``{task: loss}``. Eval mode: ``model(images)`` -> one
    dict per image with ``boxes``/``labels``/``scores``, ``mask`` and/or ``depth``. ``images`` is a
    list of ``[3, H, W]`` tensors in ``[0, 1]`` (or one ``[B, 3, H, W]`` tensor) at ``input_size``.

    Each task's loss counts only the samples labelled for it (``task_samples``): a target with
    ``"labeled": False`` (a depth-only frame) adds nothing to the detection and segmentation
    losses, and one without a ``"depth"`` map nothing to the depth loss. The heads still see the
    whole batch (their BatchNorm layers cannot train on a single sample) and mask those samples
    out of their losses. A task with no such sample in the batch gets a zero loss that is still
    connected to its head and the backbone, so every balancing method sees all tasks and gets
    zero gradients for that one.
    """

    _mean: Tensor  # buffers
    _std: Tensor

    def __init__(
        self,
        backbone: MobileNetV3Body,
        heads: Mapping[str, TaskHead],
        *,
        input_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        num_detection_classes: int,
        num_segmentation_classes: int,
        model_kwargs: Mapping[str, Any],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        # Fixed task order (detection first): loss dicts and parameter groups are ordered alike.
        self.heads = nn.ModuleDict(
            {task: _as_module(task, heads[task]) for task in TASKS if task in heads}
        )
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.num_detection_classes = num_detection_classes
        self.num_segmentation_classes = num_segmentation_classes
        self.arch = str(model_kwargs["arch"])
        # What ``build_model(**model_kwargs)`` needs to rebuild this structure (in checkpoints).
        self.model_kwargs = dict(model_kwargs)
        # Not persistent: the statistics travel in the checkpoint's mean/std and model_kwargs, not
        # in the state_dict.
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this model solves, in ``TASKS`` order (detection, segmentation, depth)."""
        return tuple(self.heads.keys())

    def forward(
        self, images: Sequence[Tensor] | Tensor, targets: Targets | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses per task in training mode, predictions per image in eval mode."""
        if self.training:
            losses, _ = self.forward_train(images, targets)
            return losses
        return self.predict(images)

    def forward_train(
        self, images: Sequence[Tensor] | Tensor, targets: Targets | None
    ) -> tuple[dict[str, Tensor], list[Tensor]]:
        """``({task: loss}, shared features)`` for a training batch.

        The features are the backbone taps that the heads consume, i.e. the last shared
        representation, as torchjd's ``mtl_backward`` wants it.

        Raises:
            RuntimeError: the model is not in training mode.
            ValueError: ``targets`` is missing or does not have one target per image.
        """
        if not self.training:
            raise RuntimeError(
                "forward_train needs training mode (model.train()): the only mode in which "
                "detectors give losses"
            )
        if targets is None or len(targets) != len(images):
            got = "no" if targets is None else len(targets)
            raise ValueError(
                f"training needs one target per image: {len(images)} images, {got} targets"
            )
        batch = self.preprocess(images)
        features = self.backbone(batch)
        losses = {
            task: head(features, batch, targets)
            if task_samples(task, targets)
            else _zero_loss(head, features)
            for task, head in self.heads.items()
        }
        return losses, list(features.values())

    def predict(self, images: Sequence[Tensor] | Tensor) -> list[dict[str, Tensor]]:
        """Per-image outputs of every head merged into one dict (call in ``inference_mode``)."""
        batch = self.preprocess(images)
        features = self.backbone(batch)
        outputs: list[dict[str, Tensor]] = [{} for _ in range(batch.shape[0])]
        for head in self.heads.values():
            for merged, output in zip(outputs, head(features, batch), strict=True):
                merged.update(output)
        return outputs

    def preprocess(self, images: Sequence[Tensor] | Tensor) -> Tensor:
        """The batch the body and heads see.

        Stacked, size-checked, normalised once with ``mean``/``std``, in the model's dtype and
        (if the model is channels_last) memory format.

        Raises:
            ValueError: the images are not ``[3, H, W]`` at ``input_size``.
        """
        batch = images if isinstance(images, Tensor) else torch.stack(list(images))
        if batch.ndim != 4 or batch.shape[1] != 3 or tuple(batch.shape[-2:]) != self.input_size:
            raise ValueError(
                f"images must be [3, H, W] with (H, W) = input_size {self.input_size}; "
                f"got batch {tuple(batch.shape)}"
            )
        batch = (batch.to(self._mean.dtype) - self._mean) / self._std
        stem_weight = self.backbone.features[0][0].weight
        if (
            stem_weight.is_contiguous(memory_format=torch.channels_last)
            and not stem_weight.is_contiguous()
        ):
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the shared backbone."""
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the backbone's last layer (GradNorm's ``W``; [] if frozen)."""
        return [p for p in self.backbone.features[-1].parameters() if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Trainable parameters of one task's head (for Faster R-CNN including its FPN).

        Raises:
            KeyError: the model has no head for ``task``.
        """
        if task not in self.heads:
            raise KeyError(f"task {task!r} is not one of this model's tasks {self.tasks}")
        return [p for p in self.heads[task].parameters() if p.requires_grad]


def task_samples(task: str, targets: Targets) -> list[int]:
    """Batch positions whose targets supervise ``task``.

    Depth: targets with a ``depth`` map. Detection and segmentation: targets not marked
    ``"labeled": False`` (depth-only frames have no boxes or masks worth learning from: an empty
    box list would teach "no object here").
    """
    if task == DEPTH:
        return [i for i, target in enumerate(targets) if target.get("depth") is not None]
    return [i for i, target in enumerate(targets) if is_labeled(target)]


def _as_module(task: str, head: TaskHead) -> nn.Module:
    """``head`` itself, checked to be an ``nn.Module`` (its parameters must train)."""
    if not isinstance(head, nn.Module):
        raise TypeError(f"the {task} head {type(head).__name__} is not an nn.Module")
    return head


def _zero_loss(head: nn.Module, features: Mapping[str, Tensor]) -> Tensor:
    """0, depending on the head's parameters and the taps it reads (gradients exist and are 0)."""
    # Every head is a TaskHead (``_as_module``); nn.ModuleDict types it as a plain module.
    taps = cast(TaskHead, head).feature_taps
    terms = [features[tap].sum() for tap in taps]
    terms += [p.sum() for p in head.parameters() if p.requires_grad]
    return torch.stack(terms).sum() * 0.0
