# SPDX-License-Identifier: Apache-2.0
"""Checkpoint files: what they contain, saving them atomically, loading them safely.

A checkpoint is self-describing: ``model_kwargs`` (architecture, tasks, input size,
normalisation, head options: exactly what ``build_model`` takes), class names and palette
travel inside it, so inference needs only the file (docs/CONTRACTS.md section 5). Each fact is
stored once: the rebuilt model is the only source of its input size and statistics.
Files are loaded with ``weights_only=True``: plain containers and tensors only, no pickled code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mtl_perception.core.atomic_io import atomic_path
from mtl_perception.core.errors import UserError
from mtl_perception.core.palette import default_palette

FORMAT = "mtl_perception.checkpoint"
VERSION = 2

# Keys every checkpoint must carry so a model can be rebuilt from the file alone.
REQUIRED_KEYS = (
    "format",
    "version",
    "model_kwargs",
    "detection_classes",
    "segmentation_classes",
    "palette",
    "model",
)


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Atomically save ``payload`` (must hold REQUIRED_KEYS except format/version)."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_failure_reason(err: Exception) -> str:
    """A short reason for a failed ``torch.load`` (torch's own messages run over many lines)."""
    text = str(err).strip()
    if "Weights only load failed" in text:
        # Either not a torch file at all, or one holding pickled Python objects, which
        # weights_only loading refuses on purpose (they could run code).
        return "not a torch checkpoint, or it holds Python objects that are not loaded for safety"
    return text.splitlines()[0][:200] if text else type(err).__name__


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load and validate a checkpoint; every problem is one clear ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for corrupt/foreign files
        raise UserError(
            f"checkpoint {path} cannot be read ({_load_failure_reason(err)})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(
            f"checkpoint {path} is not an mtl_perception checkpoint (no format={FORMAT!r} field)"
        )
    version = payload.get("version")
    if isinstance(version, int) and version < VERSION:
        raise UserError(
            f"checkpoint {path} has format version {version}, older than the version {VERSION} "
            "this mtl_perception reads; train it again (or load it with the release that wrote it)"
        )
    if version != VERSION:
        raise UserError(
            f"checkpoint {path} has format version {version}; this mtl_perception reads "
            f"version {VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise UserError(f"checkpoint {path} lacks field(s) {', '.join(missing)}")
    return payload


def inference_fields(
    model: Any,
    detection_classes: Sequence[str],
    segmentation_classes: Sequence[str],
    palette: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """The self-describing part of a checkpoint: all ``Predictor`` needs to rebuild ``model``.

    ``model`` is a ``mtl_perception.nets`` model (its ``model_kwargs`` rebuild it);
    classes of a task the model lacks are stored as an empty list. Without a palette, the
    default one (``core.palette.default_palette``) is stored so the node can colour masks.
    """
    tasks = set(model.tasks)
    segmentation = list(segmentation_classes) if "segmentation" in tasks else []
    return {
        "model_kwargs": dict(model.model_kwargs),
        "detection_classes": list(detection_classes) if "detection" in tasks else [],
        "segmentation_classes": segmentation,
        "palette": [
            list(c)
            for c in (palette if palette is not None else default_palette(len(segmentation)))
        ],
        "model": model.state_dict(),
    }
