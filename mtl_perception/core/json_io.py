"""Reading the JSON files users hand us (datasets, label exports, reports) with one clear error."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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
