# SPDX-License-Identifier: Apache-2.0
"""JSON in and out, and the one way numbers are shown in tables and summaries.

Reading the files users hand us fails with one clear error; writing gives strict JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mtl_perception.core.errors import UserError


def read_json(path: str | os.PathLike[str], hint: str = "") -> Any:
    """Parse ``path``; a missing, unreadable or invalid file is a one-line ``UserError``.

    ``hint`` is appended to the "does not exist" message (e.g. which command makes the file).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path} does not exist{f' ({hint})' if hint else ''}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot be read ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def json_ready(value: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, recursively (strict JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_number(value: Any, digits: int = 3, scale: float = 1.0) -> str:
    """A figure for a table or a summary line: ``value * scale`` rounded, "n/a" when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value * scale:.{digits}f}"
    return str(value)
