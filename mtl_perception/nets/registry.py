"""Architecture names -> model construction, rebuilding models from checkpoints, parameter counts.

Every architecture goes through the same ``build_model`` path: one body recipe, one input size,
one normalisation; an architecture only chooses which heads sit on the body.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from mtl_perception.errors import UserError
from mtl_perception.nets.backbone import MobileNetV3Body
from mtl_perception.nets.detection import FasterRCNNDetector, SSDLiteDetector
from mtl_perception.nets.multitask import MultiTaskModel
from mtl_perception.nets.segmentation import DeepLabV3Segmenter, LRASPPSegmenter, SegmentationHead
from mtl_perception.nets.task_head import DETECTION, SEGMENTATION, TaskHead
from mtl_perception.nets.weights import state_dict_problems

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_ARCH = "ssdlite_deeplabv3"
# Below this the stride-32 feature map would be empty.
MIN_INPUT_SIDE = 32


@dataclass(frozen=True)
class Architecture:
    """Which head (class) each task uses; ``None`` = the task is absent (single-task baseline)."""

    detection: type[SSDLiteDetector | FasterRCNNDetector] | None
    segmentation: type[SegmentationHead] | None
    description: str

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(task for task, head in ((DETECTION, self.detection), (SEGMENTATION, self.segmentation)) if head)


ARCHITECTURES: dict[str, Architecture] = {
    "ssdlite_deeplabv3": Architecture(SSDLiteDetector, DeepLabV3Segmenter, "SSDLite + DeepLabv3 (default)"),
    "frcnn_deeplabv3": Architecture(FasterRCNNDetector, DeepLabV3Segmenter, "Faster R-CNN FPN + DeepLabv3"),
    "ssdlite_lraspp": Architecture(SSDLiteDetector, LRASPPSegmenter, "SSDLite + LR-ASPP"),
    "ssdlite": Architecture(SSDLiteDetector, None, "SSDLite only (baseline)"),
    "frcnn": Architecture(FasterRCNNDetector, None, "Faster R-CNN FPN only (baseline)"),
    "deeplabv3": Architecture(None, DeepLabV3Segmenter, "DeepLabv3 only (baseline)"),
    "lraspp": Architecture(None, LRASPPSegmenter, "LR-ASPP only (baseline)"),
}


def build_model(
    arch: str = DEFAULT_ARCH,
    num_detection_classes: int = 0,
    num_segmentation_classes: int = 0,
    input_size: Sequence[int] = (320, 320),
    backbone_weights: str | os.PathLike[str] | None = None,
    *,
    trainable_backbone_layers: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> MultiTaskModel:
    """Build ``arch`` for the dataset's classes and the input size ``(H, W)``.

    ``num_detection_classes`` counts real classes (background is added inside);
    ``num_segmentation_classes`` includes background. ``backbone_weights``: ``None`` (random),
    ``"imagenet"`` (torchvision's, only from the local cache) or a local state_dict file; it only
    initialises, so ``model.model_kwargs`` (what checkpoints store) leaves it out.
    """
    spec = ARCHITECTURES.get(arch)
    if spec is None:
        raise UserError(f"arch {arch!r} is unknown; choose one of {', '.join(ARCHITECTURES)}")
    size = _check_input_size(input_size)
    mean, std = _check_stats("mean", mean), _check_stats("std", std)
    if any(value <= 0 for value in std):
        raise UserError(f"std {list(std)} must be positive")
    if spec.detection and num_detection_classes < 1:
        raise UserError(f"arch {arch!r} detects objects: num_detection_classes={num_detection_classes} must be >= 1")
    if spec.segmentation and num_segmentation_classes < 2:
        raise UserError(
            f"arch {arch!r} segments: num_segmentation_classes={num_segmentation_classes} "
            "must be >= 2 (incl. background)"
        )
    taps = {tap for head in (spec.detection, spec.segmentation) if head for tap in head.feature_taps}
    backbone = MobileNetV3Body(taps, trainable_backbone_layers)
    if backbone_weights is not None:
        backbone.load_weights(backbone_weights)
    heads: dict[str, TaskHead] = {}
    if spec.detection:
        heads[DETECTION] = spec.detection(backbone.channels, num_detection_classes, size)
    if spec.segmentation:
        heads[SEGMENTATION] = spec.segmentation(backbone.channels, num_segmentation_classes)
    model_kwargs = {
        "arch": arch,
        "num_detection_classes": int(num_detection_classes) if spec.detection else 0,
        "num_segmentation_classes": int(num_segmentation_classes) if spec.segmentation else 0,
        "input_size": list(size),
        "trainable_backbone_layers": trainable_backbone_layers,
        "mean": mean,
        "std": std,
    }
    return MultiTaskModel(
        backbone,
        heads,
        input_size=size,
        mean=mean,
        std=std,
        num_detection_classes=model_kwargs["num_detection_classes"],
        num_segmentation_classes=model_kwargs["num_segmentation_classes"],
        model_kwargs=model_kwargs,
    )


def _check_input_size(input_size: Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` as two ints >= MIN_INPUT_SIDE, or a ``UserError`` naming the value."""
    try:
        height, width = (int(side) for side in input_size)
        valid = height >= MIN_INPUT_SIDE and width >= MIN_INPUT_SIDE and list(input_size) == [height, width]
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise UserError(f"input_size {input_size!r} must be [H, W], two integers >= {MIN_INPUT_SIDE}")
    return height, width


def _check_stats(name: str, values: Sequence[float]) -> list[float]:
    """Three floats (one per RGB channel), or a ``UserError`` naming the field."""
    try:
        stats = [float(v) for v in values]
    except (TypeError, ValueError):
        stats = []
    if len(stats) != 3:
        raise UserError(f"{name} {values!r} must be three numbers (R, G, B)")
    return stats


def load_weights(
    model: MultiTaskModel, state_dict: Mapping[str, Tensor], source: str, source_arch: str | None = None
) -> None:
    """Load a full-model state_dict; any mismatch is one ``UserError`` naming ``source`` and both architectures."""
    problems = state_dict_problems(model, state_dict)
    if problems:
        origin = f" (arch {source_arch!r})" if source_arch else ""
        raise UserError(
            f"{source}{origin} does not fit a {model.arch!r} model with "
            f"{model.num_detection_classes} detection / {model.num_segmentation_classes} segmentation classes "
            f"and input {list(model.input_size)}: {'; '.join(problems)}"
        )
    model.load_state_dict(state_dict, strict=True)


def model_from_checkpoint(payload: Mapping[str, Any], source: str | os.PathLike[str]) -> MultiTaskModel:
    """Rebuild the model of a checkpoint (from ``mtl_perception.checkpoint.load_checkpoint``) with its weights."""
    kwargs = payload["model_kwargs"]
    if not isinstance(kwargs, Mapping):
        raise UserError(f"checkpoint {source}: model_kwargs is not a mapping")
    try:
        model = build_model(**kwargs)
    except TypeError as err:  # unknown/missing keyword: a checkpoint from another version
        raise UserError(f"checkpoint {source}: model_kwargs {sorted(kwargs)} do not fit build_model ({err})") from None
    load_weights(model, payload["model"], f"checkpoint {source}", payload.get("arch"))
    return model


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements in ``module`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_breakdown(model: MultiTaskModel) -> dict[str, int]:
    """Parameter counts of the backbone, each task head, and the whole model (for reports)."""
    counts = {"backbone": count_parameters(model.backbone)}
    counts.update({task: count_parameters(head) for task, head in model.heads.items()})
    counts["total"] = count_parameters(model)
    return counts
