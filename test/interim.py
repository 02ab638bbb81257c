# SPDX-License-Identifier: Apache-2.0
"""Hand-made inputs of `mtl-data build`: topic folders as unpack and prune write them, its args."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np

from data_tools import build
from data_tools.prune import SCORE_COLUMNS
from mtl_perception.core.constants import MANIFEST_COLUMNS, MANIFEST_NAME


def write_topic_folder(
    folder: Path,
    bag: str,
    frames: dict[int, np.ndarray],
    *,
    encoding: str = "rgb8",
    pruned: bool = True,
) -> Path:
    """A topic folder (CONTRACTS §1-2): a file per frame, named by its stamp, and manifest.csv.

    Float32 frames are saved as ``.npy`` (depth in metres), others as PNG through OpenCV.
    ``pruned``: the manifest has the (empty) score columns `mtl-data prune` adds.
    """
    folder.mkdir(parents=True)
    columns = [*MANIFEST_COLUMNS, *SCORE_COLUMNS] if pruned else list(MANIFEST_COLUMNS)
    rows = []
    for i, (stamp, array) in enumerate(sorted(frames.items())):
        name = f"{stamp}.npy" if array.dtype == np.float32 else f"{stamp}.png"
        if name.endswith(".npy"):
            np.save(folder / name, array)
        else:
            assert cv2.imwrite(str(folder / name), array)
        row = [i, stamp, stamp, "camera", encoding, array.shape[1], array.shape[0], bag, name]
        rows.append(row + [""] * (len(columns) - len(row)))
    with (folder / MANIFEST_NAME).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return folder


def build_args(frames: Path, labels: list[Path], out: Path, *extra: str) -> argparse.Namespace:
    """`mtl-data build` arguments: dataset ``ds`` from ``frames`` and ``labels`` under ``out``."""
    parser = argparse.ArgumentParser()
    build.add_arguments(parser)
    return parser.parse_args(
        [
            "--frames",
            str(frames),
            "--labels",
            *map(str, labels),
            "--name",
            "ds",
            "--out",
            str(out),
            *extra,
        ]
    )
