# SPDX-License-Identifier: Apache-2.0
"""Pretrained starts per model part through torchvision's weights API.

Each part of a model can start from its own source:

- ``backbone``: ``"imagenet"`` (torchvision's MobileNetV3-Large ImageNet classifier),
  ``"coco"`` (the body of the COCO model chosen for the detection head, or for the segmentation
  head of a segmentation-only model) or a local state_dict file (a MobileNetV3-Large
  classifier, its ``features`` or this package's body);
- ``detection``: ``"coco"``: torchvision's COCO detector with this head (SSDLite320 or
  Faster R-CNN MobileNetV3-Large 320 FPN);
- ``segmentation``: ``"coco"``: torchvision's segmenter with this head (DeepLabv3 or LR-ASPP
  MobileNetV3-Large), trained on the COCO subset with the 20 Pascal VOC classes
  (``COCO_WITH_VOC_LABELS_V1``).

Every tensor whose (renamed) name and shape fit is loaded; the rest of the part keeps its
initialisation: the class-count-dependent layers (COCO's 91 / VOC's 21 classes are not the
dataset's) and layers this package builds differently (e.g. DeepLabv3's depthwise-separable
ASPP, see ``segmentation.DEFAULT_ASPP_SEPARABLE``: only ``aspp_separable: false`` has
torchvision's layout). ``load_pretrained`` returns a record of what was loaded and what was not,
which training prints and stores in the checkpoint.

Files come from torchvision's cache (``$TORCH_HOME/hub/checkpoints``); when missing, torchvision
downloads them. Offline, one ``UserError`` line names the file, its URL and the cache folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.models import MobileNet_V3_Large_Weights, WeightsEnum
from torchvision.models.detection import (
    FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
    SSDLite320_MobileNet_V3_Large_Weights,
)
from torchvision.models.segmentation import (
    DeepLabV3_MobileNet_V3_Large_Weights,
    LRASPP_MobileNet_V3_Large_Weights,
)

from mtl_perception.core.errors import UserError
from mtl_perception.nets.detection import FasterRCNNDetector, SSDLiteDetector
from mtl_perception.nets.multitask import MultiTaskModel
from mtl_perception.nets.segmentation import DeepLabV3Segmenter, LRASPPSegmenter
from mtl_perception.nets.task_head import DETECTION, SEGMENTATION
from mtl_perception.nets.weights import read_weights_file

BACKBONE = "backbone"
PARTS = (BACKBONE, DETECTION, SEGMENTATION)
IMAGENET = "imagenet"
COCO = "coco"
# How many names of tensors left at their initialisation the log line lists (the record has all).
_EXAMPLES = 3

Rename = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Source:
    """One torchvision weights entry and how its state_dict keys map onto this package's model."""

    weights: WeightsEnum
    rename: Rename  # torchvision key -> key in ``MultiTaskModel.state_dict()``; None = not used

    @property
    def file_name(self) -> str:
        """The file torchvision keeps in its cache (the last part of the weights URL)."""
        return os.path.basename(self.weights.url)


def _prefix(rules: Mapping[str, str]) -> Rename:
    """Rename by the first matching prefix in ``rules``; keys matching none are not used."""

    def rename(key: str) -> str | None:
        for old, new in rules.items():
            if key.startswith(old):
                return new + key[len(old) :]
        return None

    return rename


def _ssdlite_rename(expand_index: int) -> Rename:
    """Rename torchvision SSDLite keys to this package's whole-block body and detection head.

    SSDLite's feature extractor splits the body inside its last strided block (index
    ``expand_index``): ``features.0`` = blocks before it + that block's expansion layer,
    ``features.1`` = ``(block[1:], *later blocks)``. Map back to whole blocks.
    """
    heads = _prefix(
        {"backbone.extra.": "heads.detection.extra.", "head.": "heads.detection.head."}
    )
    first = re.compile(r"backbone\.features\.0\.(\d+)\.(.*)")
    second = re.compile(r"backbone\.features\.1\.(\d+)\.(.*)")

    def rename(key: str) -> str | None:
        if match := first.fullmatch(key):
            index, rest = int(match[1]), match[2]
            return (
                f"backbone.features.{index}.{rest}"
                if index < expand_index
                else f"backbone.features.{index}.block.0.{rest}"
            )
        if match := second.fullmatch(key):
            index, rest = int(match[1]), match[2]
            if index > 0:
                return f"backbone.features.{expand_index + index}.{rest}"
            # block[1:] is a slice of the block, so its layers keep their indices.
            return f"backbone.features.{expand_index}.block.{rest}"
        return heads(key)

    return rename


# The body of every torchvision model below is ``mobilenet_v3_large().features`` under another
# prefix (dilated in the segmenters, which changes no shape).
_IMAGENET = Source(
    MobileNet_V3_Large_Weights.IMAGENET1K_V1, _prefix({"features.": "backbone.features."})
)
_FASTER_RCNN = Source(
    # The 320 model: trained at this package's input sizes, with its test-time proposal counts
    # (``detection.DEFAULT_RPN_*``); same layers as the 800-px model.
    FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1,
    _prefix(
        {
            "backbone.body.": "backbone.features.",
            "backbone.fpn.": "heads.detection.fpn.fpn.",
            "rpn.": "heads.detection.rpn.",
            "roi_heads.": "heads.detection.roi_heads.",
        }
    ),
)
_SEGMENTER_RULES = {"backbone.": "backbone.features.", "classifier.": "heads.segmentation.head."}
COCO_SOURCES: dict[type, Callable[[MultiTaskModel], Source]] = {
    SSDLiteDetector: lambda model: Source(
        SSDLite320_MobileNet_V3_Large_Weights.COCO_V1, _ssdlite_rename(model.backbone.expand_index)
    ),
    FasterRCNNDetector: lambda model: _FASTER_RCNN,
    # aux_classifier (DeepLabv3's auxiliary head on an earlier stage) has no counterpart here.
    DeepLabV3Segmenter: lambda model: Source(
        DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1, _prefix(_SEGMENTER_RULES)
    ),
    LRASPPSegmenter: lambda model: Source(
        LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1, _prefix(_SEGMENTER_RULES)
    ),
}


def coco_source(model: MultiTaskModel, task: str) -> Source:
    """Torchvision's COCO weights for the head ``model`` has for ``task``."""
    return COCO_SOURCES[type(model.heads[task])](model)


def _part_prefix(part: str) -> str:
    return "backbone." if part == BACKBONE else f"heads.{part}."


def _fetch(source: Source, part: str) -> dict[str, Tensor]:
    """The state_dict of ``source`` from torchvision's cache, downloading it if missing."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        state = source.weights.get_state_dict(progress=True, map_location="cpu", weights_only=True)
    except OSError as err:  # urllib's URLError / HTTPError are OSErrors: offline or no access
        reason = getattr(err, "reason", None) or err.strerror or type(err).__name__
        raise UserError(
            f"pretrained {part} weights {source.weights}: {source.file_name} is not in {cache} "
            f"and cannot be downloaded ({reason}); download {source.weights.url} and place it "
            f"in {cache}"
        ) from None
    except Exception as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(
            f"pretrained {part} weights: {cache / source.file_name} cannot be read ({first_line})"
        ) from None
    return dict(state)


def _local_backbone(path: Path) -> tuple[dict[str, Tensor], Rename]:
    """A MobileNetV3-Large state_dict file: a classifier, its ``features`` or this body."""
    state = read_weights_file(path)
    if any(key.startswith("backbone.features.") for key in state):  # a whole MultiTaskModel's
        return state, _prefix({"backbone.features.": "backbone.features."})
    if not any(key.startswith("features.") for key in state):  # saved from ``model.features``
        return state, lambda key: f"backbone.features.{key}"
    return state, _IMAGENET.rename


def _resolve(
    model: MultiTaskModel, part: str, choice: str
) -> tuple[str, str, dict[str, Tensor], Rename]:
    """(source name, file, state_dict, rename) for ``part`` = ``choice``.

    Raises:
        UserError: ``choice`` is not valid for ``part``, or its weights cannot be read.
    """
    if part == BACKBONE and choice.lower() not in (IMAGENET, COCO):
        path = Path(choice)
        state, rename = _local_backbone(path)
        return str(path), str(path), state, rename
    if part != BACKBONE and part not in model.tasks:
        raise UserError(
            f"model.pretrained.{part}={choice!r}: arch {model.arch!r} has no {part} head"
        )
    allowed = (
        f"null, {IMAGENET!r}, {COCO!r} or a weights file"
        if part == BACKBONE
        else f"null or {COCO!r}"
    )
    if choice.lower() == IMAGENET and part == BACKBONE:
        source = _IMAGENET
    elif choice.lower() == COCO:
        task = (
            part
            if part != BACKBONE
            else next((t for t in (DETECTION, SEGMENTATION) if t in model.tasks), None)
        )
        if task is None:
            raise UserError(
                f"model.pretrained.backbone={choice!r} takes the body of a COCO detector or "
                f"segmenter; this model has neither head (tasks {list(model.tasks)}): use "
                f"{IMAGENET!r}"
            )
        source = coco_source(model, task)
    else:
        raise UserError(f"model.pretrained.{part}={choice!r} must be {allowed}")
    return str(source.weights), source.file_name, _fetch(source, part), source.rename


def load_pretrained(
    model: MultiTaskModel, spec: Mapping[str, str | None]
) -> dict[str, dict[str, Any]]:
    """Load the pretrained weights ``spec`` names (``{part: choice or None}``) into ``model``.

    Returns ``{part: record}`` for each part loaded, with ``source`` (torchvision weights name or
    file), ``file``, ``loaded`` / ``total`` (tensors of the part, BatchNorm batch counters not
    counted), ``not_loaded`` (names left at their initialisation) and ``shape_mismatch``
    (``"name source-shape vs model-shape"``: mostly the class-count-dependent layers).

    Raises:
        UserError: an unknown part or choice, a part the architecture lacks, a file that cannot
            be fetched or read, or a source of which no tensor fits the part.
    """
    unknown = sorted(set(spec) - set(PARTS))
    if unknown:
        raise UserError(
            f"model.pretrained: unknown part(s) {unknown}; parts are {', '.join(PARTS)}"
        )
    own = model.state_dict()
    records: dict[str, dict[str, Any]] = {}
    for part in PARTS:
        choice = spec.get(part)
        if choice is None:
            continue
        name, file, state, rename = _resolve(model, part, str(choice))
        prefix = _part_prefix(part)
        assign: dict[str, Tensor] = {}
        mismatched: list[str] = []
        for key, tensor in state.items():
            target = rename(key)
            if target is None or not target.startswith(prefix) or target not in own:
                continue
            if tuple(tensor.shape) != tuple(own[target].shape):
                mismatched.append(f"{target} {list(tensor.shape)} vs {list(own[target].shape)}")
                continue
            assign[target] = tensor
        counted = [
            key
            for key in own
            if key.startswith(prefix) and not key.endswith("num_batches_tracked")
        ]
        loaded = [key for key in counted if key in assign]
        if not loaded:
            raise UserError(
                f"model.pretrained.{part}: no tensor of {name} fits the {part} of arch "
                f"{model.arch!r}"
            )
        model.load_state_dict(assign, strict=False)
        records[part] = {
            "source": name,
            "file": file,
            "loaded": len(loaded),
            "total": len(counted),
            "not_loaded": [key for key in counted if key not in assign],
            "shape_mismatch": mismatched,
        }
    return records


def describe(records: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One log line per loaded part: source, counts, and the first names left at initialisation."""
    lines = []
    for part, record in records.items():
        counts = f"{record['loaded']}/{record['total']}"
        line = f"pretrained {part}: {record['source']} ({record['file']}): loaded {counts} tensors"
        rest = record["not_loaded"]
        if rest:
            more = f" (+{len(rest) - _EXAMPLES} more)" if len(rest) > _EXAMPLES else ""
            line += f"; initialised anew: {', '.join(rest[:_EXAMPLES])}{more}"
        lines.append(line)
    return lines
