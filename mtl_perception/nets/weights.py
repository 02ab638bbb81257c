# SPDX-License-Identifier: Apache-2.0
"""Fitting stored weights into modules, with one-line ``UserError`` messages when they do not fit.

``torch.nn.Module.load_state_dict`` reports mismatches as a multi-line ``RuntimeError`` (and shape
mismatches only after partially copying). Here every mismatch is found first and summarised in
one line naming the source file, so a wrong checkpoint or weights file is a user error, not a
crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from mtl_perception.core.errors import UserError

# How many offending key names a message lists before summarising the rest as a count.
_EXAMPLES = 2


def state_dict_problems(module: nn.Module, state_dict: Mapping[str, Tensor]) -> list[str]:
    """Why ``state_dict`` does not fit ``module``: missing, unexpected, misshapen keys.

    Returns:
        One description per kind of problem; empty if the state_dict fits.
    """
    own = module.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    mismatched = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in state_dict
        and isinstance(state_dict[key], Tensor)
        and state_dict[key].shape != own[key].shape
    ]
    problems = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", mismatched),
    ):
        if keys:
            more = f" (+{len(keys) - _EXAMPLES} more)" if len(keys) > _EXAMPLES else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:_EXAMPLES])}{more}")
    return problems


def read_weights_file(path: str | Path) -> dict[str, Tensor]:
    """Read a ``torch.save``-d state_dict safely (``weights_only=True``).

    A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper (training checkpoints) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt/foreign files
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"weights file {path} cannot be read ({first_line})") from None
    if isinstance(payload, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(payload.get(wrapper), dict):
                payload = payload[wrapper]
                break
    if not isinstance(payload, dict) or not all(
        isinstance(value, Tensor) for value in payload.values()
    ):
        raise UserError(f"weights file {path} does not hold a state_dict (name -> tensor)")
    return payload
