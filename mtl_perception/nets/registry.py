# SPDX-License-Identifier: Apache-2.0
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

from mtl_perception.core.constants import MIN_INPUT_SIDE
from mtl_perception.core.errors import UserError
from mtl_perception.nets.backbone import MobileNetV3Body
from mtl_perception.nets.depth import DepthHead
from mtl_perception.nets.detection import FasterRCNNDetector, SSDLiteDetector
from mtl_perception.nets.multitask import MultiTaskModel
from mtl_perception.nets.segmentation import DeepLabV3Segmenter, LRASPPSegmenter, SegmentationHead
from mtl_perception.nets.task_head import DEPTH, DETECTION, SEGMENTATION, TASKS, TaskHead
from mtl_perception.nets.weights import state_dict_problems

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_ARCH = "ssdlite_deeplabv3"


@dataclass(frozen=True)
class Architecture:
    """Which head (class) each task uses; ``None`` = the task is absent (single-task baseline).

    Every architecture can also carry the depth head (``DepthHead``): it is chosen with the
    ``tasks`` argument of ``build_model``, not by the architecture's name.
    """

    detection: type[SSDLiteDetector | FasterRCNNDetector] | None
    segmentation: type[SegmentationHead] | None
    description: str

    @property
    def tasks(self) -> tuple[str, ...]:
        """The default task set: the detection and/or segmentation heads the name promises."""
        return tuple(task for task, head in self.heads.items() if head and task != DEPTH)

    @property
    def heads(self) -> dict[str, type[Any] | None]:
        """Head class per task (``None`` = this architecture has no head for it)."""
        return {DETECTION: self.detection, SEGMENTATION: self.segmentation, DEPTH: DepthHead}

    def available(self) -> tuple[str, ...]:
        """Every task this architecture can be built with."""
        return tuple(task for task, head in self.heads.items() if head)


ARCHITECTURES: dict[str, Architecture] = {
    "ssdlite_deeplabv3": Architecture(
        SSDLiteDetector, DeepLabV3Segmenter, "SSDLite + DeepLabv3 (default)"
    ),
    "frcnn_deeplabv3": Architecture(
        FasterRCNNDetector, DeepLabV3Segmenter, "Faster R-CNN FPN + DeepLabv3"
    ),
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
    *,
    trainable_backbone_layers: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    bn_momentum: float | None = None,
    aspp_channels: int | None = None,
    aspp_separable: bool | None = None,
    rpn_pre_nms_top_n_test: int | None = None,
    rpn_post_nms_top_n_test: int | None = None,
    tasks: Sequence[str] | None = None,
    depth_loss: str | None = None,
    depth_channels: int | None = None,
) -> MultiTaskModel:
    """Build ``arch`` for the dataset's classes and the input size ``(H, W)``.

    ``tasks``: which heads to build, any non-empty subset of ``TASKS`` that the architecture
    has heads for (``"depth"``: every architecture); ``None`` = the architecture's own
    detection/segmentation heads. ``["depth"]`` is the single-task depth baseline on the same
    body. Class counts of tasks left out are ignored (stored as 0).

    ``num_detection_classes`` counts real classes (background is added inside);
    ``num_segmentation_classes`` includes background. Weights are random (torchvision's
    initialisation); ``pretrained.load_pretrained`` starts parts from pretrained ones.

    ``bn_momentum``: momentum of every BatchNorm in the model; ``None`` keeps torchvision's (0.01
    in the body, 0.03 in SSDLite, 0.1 elsewhere), tuned for long runs from ImageNet weights. Short
    from-scratch runs want 0.1: with 0.01 the running statistics lag the weights and eval-mode
    outputs look washed out. Head options (``None`` = the head's default; an option the
    architecture has no head for is a ``UserError``): ``aspp_channels`` / ``aspp_separable``
    (DeepLabv3, see ``segmentation.DEFAULT_ASPP_SEPARABLE``), ``rpn_pre_nms_top_n_test`` /
    ``rpn_post_nms_top_n_test`` (Faster R-CNN test-time proposals, see ``detection``),
    ``depth_loss`` / ``depth_channels`` (depth head, see ``nets.depth``).
    """
    spec = ARCHITECTURES.get(arch)
    if spec is None:
        raise UserError(f"arch {arch!r} is unknown; choose one of {', '.join(ARCHITECTURES)}")
    chosen = _check_tasks(arch, spec, tasks)
    size = _check_input_size(input_size)
    mean, std = _check_stats("mean", mean), _check_stats("std", std)
    if any(value <= 0 for value in std):
        raise UserError(f"std {list(std)} must be positive")
    if DETECTION in chosen and num_detection_classes < 1:
        raise UserError(
            f"arch {arch!r} detects objects: num_detection_classes={num_detection_classes} "
            "must be >= 1"
        )
    if SEGMENTATION in chosen and num_segmentation_classes < 2:
        raise UserError(
            f"arch {arch!r} segments: num_segmentation_classes={num_segmentation_classes} "
            "must be >= 2 (incl. background)"
        )
    bn_momentum = _check_bn_momentum(bn_momentum)
    given = {
        "aspp_channels": aspp_channels,
        "aspp_separable": aspp_separable,
        "rpn_pre_nms_top_n_test": rpn_pre_nms_top_n_test,
        "rpn_post_nms_top_n_test": rpn_post_nms_top_n_test,
        "depth_loss": depth_loss,
        "depth_channels": depth_channels,
    }
    # _check_tasks admits only tasks with a head; ``heads`` is in TASKS order, as ``chosen`` is.
    head_classes = {
        task: head for task, head in spec.heads.items() if task in chosen and head is not None
    }
    options = _route_head_options(arch, head_classes, given)
    taps = {tap for head in head_classes.values() for tap in head.feature_taps}
    backbone = MobileNetV3Body(taps, trainable_backbone_layers)
    heads: dict[str, TaskHead] = {}
    if DETECTION in chosen:
        heads[DETECTION] = head_classes[DETECTION](
            backbone.channels, num_detection_classes, size, **options[DETECTION]
        )
    if SEGMENTATION in chosen:
        heads[SEGMENTATION] = head_classes[SEGMENTATION](
            backbone.channels, num_segmentation_classes, **options[SEGMENTATION]
        )
    if DEPTH in chosen:
        heads[DEPTH] = DepthHead(backbone.channels, **options[DEPTH])
    # Class counts of tasks left out are stored as 0.
    num_detection = int(num_detection_classes) if DETECTION in chosen else 0
    num_segmentation = int(num_segmentation_classes) if SEGMENTATION in chosen else 0
    model_kwargs: dict[str, Any] = {
        "arch": arch,
        "tasks": list(chosen),
        "num_detection_classes": num_detection,
        "num_segmentation_classes": num_segmentation,
        "input_size": list(size),
        "trainable_backbone_layers": trainable_backbone_layers,
        "mean": mean,
        "std": std,
        "bn_momentum": bn_momentum,
    }
    for head in heads.values():
        model_kwargs.update(
            head.options
        )  # resolved values, so a checkpoint rebuilds the same head
    model = MultiTaskModel(
        backbone,
        heads,
        input_size=size,
        mean=mean,
        std=std,
        num_detection_classes=num_detection,
        num_segmentation_classes=num_segmentation,
        model_kwargs=model_kwargs,
    )
    if bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum
    return model


def _check_bn_momentum(value: float | None) -> float | None:
    """``None`` or a number in (0, 1], as a float; else a ``UserError`` naming the value."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise UserError(
            f"bn_momentum={value!r} must be a number in (0, 1] (or null for torchvision's)"
        )
    return float(value)


def _check_tasks(arch: str, spec: Architecture, tasks: Sequence[str] | None) -> tuple[str, ...]:
    """The task set to build, in ``TASKS`` order, or a ``UserError`` naming the bad value."""
    if tasks is None:
        return spec.tasks
    if isinstance(tasks, str) or not all(isinstance(task, str) for task in tasks):
        raise UserError(f"tasks {tasks!r} must be a list of task names from {list(TASKS)}")
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise UserError(
            f"tasks {list(tasks)} must be a non-empty list of distinct names from {list(TASKS)}"
        )
    missing = [task for task in tasks if task not in spec.available()]
    if missing:
        raise UserError(
            f"arch {arch!r} has no head for {missing}; it can do {list(spec.available())} "
            f"(choose an arch with that head, e.g. {DEFAULT_ARCH!r})"
        )
    return tuple(task for task in TASKS if task in tasks)


def _route_head_options(
    arch: str, heads: Mapping[str, type[Any]], given: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Split the head options that were given (not ``None``) into keyword arguments per task."""
    routed: dict[str, dict[str, Any]] = {task: {} for task in heads}
    for name, value in given.items():
        if value is None:
            continue
        owners = [task for task, head in heads.items() if name in head.option_names]
        if not owners:
            raise UserError(
                f"{name}={value!r} does not apply to arch {arch!r} with tasks {list(heads)} "
                "(no head with that option)"
            )
        routed[owners[0]][name] = value
    return routed


def _check_input_size(input_size: Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` as two ints >= MIN_INPUT_SIDE, or a ``UserError`` naming the value."""
    try:
        height, width = (int(side) for side in input_size)
        valid = (
            height >= MIN_INPUT_SIDE
            and width >= MIN_INPUT_SIDE
            and list(input_size) == [height, width]
        )
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise UserError(
            f"input_size {input_size!r} must be [H, W], two integers >= {MIN_INPUT_SIDE}"
        )
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
    model: MultiTaskModel,
    state_dict: Mapping[str, Tensor],
    source: str,
    source_arch: str | None = None,
) -> None:
    """Load a full-model state_dict into ``model``.

    Raises:
        UserError: the state_dict does not fit (one line naming ``source`` and both
            architectures).
    """
    problems = state_dict_problems(model, state_dict)
    if problems:
        origin = f" (arch {source_arch!r})" if source_arch else ""
        raise UserError(
            f"{source}{origin} does not fit a {model.arch!r} model with "
            f"{model.num_detection_classes} detection / {model.num_segmentation_classes} "
            f"segmentation classes and input {list(model.input_size)}: {'; '.join(problems)}"
        )
    model.load_state_dict(state_dict, strict=True)


def model_from_checkpoint(
    payload: Mapping[str, Any], source: str | os.PathLike[str]
) -> MultiTaskModel:
    """Rebuild the model of a checkpoint payload, with its weights.

    ``payload`` comes from ``mtl_perception.checkpoint.load_checkpoint``.

    Raises:
        UserError: the checkpoint's ``model_kwargs`` or weights do not fit this version.
    """
    kwargs = payload["model_kwargs"]
    if not isinstance(kwargs, Mapping):
        raise UserError(f"checkpoint {source}: model_kwargs is not a mapping")
    try:
        model = build_model(**kwargs)
    except TypeError as err:  # unknown/missing keyword: a checkpoint from another version
        raise UserError(
            f"checkpoint {source}: model_kwargs {sorted(kwargs)} do not fit build_model ({err})"
        ) from None
    load_weights(model, payload["model"], f"checkpoint {source}", kwargs.get("arch"))
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
