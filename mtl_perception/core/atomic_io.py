# SPDX-License-Identifier: Apache-2.0
"""Atomic file writes: write to a temporary file in the same folder, then rename.

A reader (or a resumed job) never sees a half-written file: either the old content or the
new one. Every output of this package goes through these helpers.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary name keeps the final suffix so libraries that pick a format by extension
    (OpenCV, numpy, torch) still work. On error the temporary file is removed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Atomically write ``obj`` as JSON to ``path``."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_csv(
    path: str | os.PathLike[str], columns: Sequence[str], rows: Iterable[Mapping[str, Any]]
) -> None:
    """Atomically write ``rows`` to ``path`` as CSV with a header of ``columns``, LF line ends.

    Raises:
        ValueError: A row has a key that is not one of ``columns``.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], Any]) -> None:
    """Atomically produce ``path`` by calling ``writer(tmp_path)`` (e.g. ``cv2.imwrite``)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Atomically place ``source`` at ``target`` as a hard link, or a copy if linking fails.

    A hard link costs no space and never moves or changes ``source`` (inputs stay untouched).
    """
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:  # other filesystem, no link support, ...
            shutil.copyfile(source, tmp)
