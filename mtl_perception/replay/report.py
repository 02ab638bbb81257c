# SPDX-License-Identifier: Apache-2.0
"""The replay report folder: ``report.json``, a latency histogram and example overlays.

Figures reuse ``mtl_perception.figures`` (matplotlib, Agg) and overlays are drawn with
``mtl_perception.visualize.draw_prediction``; every file is written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mtl_perception.core import atomic_io
from mtl_perception.core.images import write_image
from mtl_perception.core.json_io import json_ready
from mtl_perception.figures import example_strip, latency_histogram
from mtl_perception.replay.outputs import Answer
from mtl_perception.visualize import draw_prediction

__all__ = ["write_report"]

REPORT_NAME = "report.json"


def write_overlays(
    out_dir: Path,
    frames: Mapping[int, np.ndarray],
    answers: Mapping[int, Answer],
    palette: Sequence[Sequence[int]] | None,
) -> list[Path]:
    """One ``overlay_<stamp>.png`` per example frame, plus ``examples.png`` side by side."""
    drawn, captions, paths = [], [], []
    for stamp, rgb in sorted(frames.items()):
        answer = answers.get(stamp)
        if answer is None:
            continue
        mask = (
            answer.mask if answer.mask is not None and answer.mask.shape == rgb.shape[:2] else None
        )
        overlay = draw_prediction(
            rgb,
            Answer(answer.boxes, answer.scores, answer.labels, answer.label_names, mask),
            palette,
        )
        path = out_dir / f"overlay_{stamp}.png"
        write_image(path, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        drawn.append(overlay)
        captions.append(f"stamp {stamp}: {len(answer.label_names)} detections")
        paths.append(path)
    if drawn:
        paths.append(example_strip(drawn, captions, out_dir / "examples.png"))
    return paths


def write_report(
    out_dir: Path,
    report: dict[str, Any],
    latencies_ms: Sequence[float],
    frames: Mapping[int, np.ndarray],
    answers: Mapping[int, Answer],
    palette: Sequence[Sequence[int]] | None,
) -> Path:
    """Write the figures, then ``report.json`` listing them; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = [latency_histogram(latencies_ms, out_dir / "latency_histogram.png")]
    figures += write_overlays(out_dir, frames, answers, palette)
    report = {**report, "figures": [p.name for p in figures]}
    path = out_dir / REPORT_NAME
    atomic_io.write_json(path, json_ready(report))
    return path
