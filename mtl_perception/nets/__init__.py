# SPDX-License-Identifier: Apache-2.0
"""The networks: one shared MobileNetV3-Large body with detection, segmentation and/or depth heads.

Public API (docs/CONTRACTS.md section 6): ``build_model``, ``ARCHITECTURES``, ``MultiTaskModel``,
``load_weights``, ``load_pretrained``, ``model_from_checkpoint``, ``count_parameters``.
"""

from mtl_perception.nets.backbone import MobileNetV3Body
from mtl_perception.nets.depth import DEPTH_LOSSES, DepthHead
from mtl_perception.nets.multitask import MultiTaskModel
from mtl_perception.nets.pretrained import COCO, IMAGENET, load_pretrained
from mtl_perception.nets.registry import (
    ARCHITECTURES,
    DEFAULT_ARCH,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Architecture,
    build_model,
    count_parameters,
    load_weights,
    model_from_checkpoint,
    parameter_breakdown,
)
from mtl_perception.nets.task_head import DEPTH, DETECTION, SEGMENTATION, TASKS

__all__ = [
    "ARCHITECTURES",
    "COCO",
    "DEFAULT_ARCH",
    "DEPTH",
    "DEPTH_LOSSES",
    "DETECTION",
    "IMAGENET",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SEGMENTATION",
    "TASKS",
    "Architecture",
    "DepthHead",
    "MobileNetV3Body",
    "MultiTaskModel",
    "build_model",
    "count_parameters",
    "load_pretrained",
    "load_weights",
    "model_from_checkpoint",
    "parameter_breakdown",
]
