# SPDX-License-Identifier: Apache-2.0
"""bench/experiment_depth.py's table: paired Δm of det+seg+depth against det+seg (no training)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from experiment_depth import table


def _run(tasks: tuple[str, ...], seed: int, **metrics: float) -> dict:
    return {"tasks": list(tasks), "seed": seed, "metrics": metrics, "steps": 54, "train_s": 60.0}


def test_delta_m_is_paired_by_seed_over_detection_and_segmentation_only() -> None:
    base, depth = ("detection", "segmentation"), ("detection", "segmentation", "depth")
    results = [
        _run(base, 0, detection=0.10, segmentation=0.50),
        _run(depth, 0, detection=0.12, segmentation=0.45, depth=0.2),  # +20 %, -10 % -> +5 %
        _run(base, 1, detection=0.20, segmentation=0.40),
        _run(depth, 1, detection=0.18, segmentation=0.44, depth=0.3),  # -10 %, +10 % -> 0 %
        _run(depth, 2, detection=0.30, segmentation=0.30, depth=0.1),  # no det+seg run of seed 2
    ]
    rows, headline = table(results)
    assert headline["paired_delta_m"] == pytest.approx([5.0, 0.0])
    summary = next(row for row in rows if row.startswith("| **det+seg+depth**"))
    mean, std = statistics.mean([5.0, 0.0]), statistics.stdev([5.0, 0.0])
    assert f"{mean:.2f} ± {std:.2f}" in summary and "(n=3)" in summary
    assert "0.200 ± 0.100" in summary  # depth AbsRel over the three seeds
    seed2 = next(row for row in rows if row.startswith("| det+seg+depth | 2 "))
    assert "| – |" in seed2  # no pair, no Δm
