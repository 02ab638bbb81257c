# SPDX-License-Identifier: Apache-2.0
"""The interface every task head implements, so the multi-task model treats all heads alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from torch import Tensor

DETECTION = "detection"
SEGMENTATION = "segmentation"
DEPTH = "depth"
# The order of tasks everywhere (loss dicts, parameter groups, reports).
TASKS = (DETECTION, SEGMENTATION, DEPTH)

Targets = Sequence[Mapping[str, Tensor]]


def is_labeled(target: Mapping[str, object]) -> bool:
    """Whether a target has detection/segmentation labels (``"labeled": False`` = depth only)."""
    return bool(target.get("labeled", True))


class TaskHead(Protocol):
    """A task-specific head on the shared backbone taps.

    ``images`` is the normalised input batch ``[B, 3, H, W]``: heads read its size (anchors, the
    resolution masks are produced at) but never run a backbone on it.
    """

    task: str
    feature_taps: tuple[str, ...]
    # Keyword options the head's constructor takes (``build_model`` routes them by name) and the
    # values this instance was built with (stored in ``model_kwargs`` so checkpoints rebuild it).
    option_names: tuple[str, ...]
    options: dict[str, object]

    def __call__(
        self, features: Mapping[str, Tensor], images: Tensor, targets: Targets | None = None
    ) -> Tensor | list[dict[str, Tensor]]:
        """``loss`` when ``targets`` are given, else ``predict`` (through ``nn.Module`` hooks)."""
        ...

    def loss(self, features: Mapping[str, Tensor], images: Tensor, targets: Targets) -> Tensor:
        """The task's scalar training loss."""
        ...

    def predict(self, features: Mapping[str, Tensor], images: Tensor) -> list[dict[str, Tensor]]:
        """Per-image outputs in input pixels.

        Detection: ``boxes``/``labels``/``scores``; segmentation: ``mask``; depth: ``depth``.
        """
        ...
