# SPDX-License-Identifier: Apache-2.0
"""The pure helpers of bench/experiment_mtl.py: Δm, seed statistics, the table (no training)."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from experiment_table import (
    SINGLE_TASK_LABEL,
    balancing_label,
    curve_flatness,
    delta_m,
    markdown_table,
    mean_std,
    run_name,
    summarise,
    weight_range,
)

TASKS = ("detection", "segmentation")


def _run(
    label: str, seed: int, tasks: tuple[str, ...], history: list | None = None, **metrics: float
) -> dict:
    return {
        "label": label,
        "arch": "ssdlite_lraspp",
        "tasks": list(tasks),
        "seed": seed,
        "metrics": metrics,
        "gflops": 0.1,
        "latency_ms": 10.0 + seed,
        "train_s": 60.0,
        "history": history or [],
    }


def test_labels_and_names() -> None:
    assert balancing_label("equal", "upgrad") == "upgrad"
    assert balancing_label("dwa", "none") == "dwa"
    assert (
        run_name("ssdlite_lraspp", "dwa", 2, TASKS)
        == "ssdlite_lraspp__detection+segmentation__dwa__s2"
    )
    assert run_name("ssdlite_lraspp", SINGLE_TASK_LABEL, 0, ("detection",)) != run_name(
        "ssdlite_lraspp", SINGLE_TASK_LABEL, 0, ("segmentation",)
    )


def test_delta_m_follows_maninis_with_sign_flip_for_lower_is_better() -> None:
    # +10% on detection, -5% on segmentation: mean +2.5%.
    assert delta_m(
        {"detection": 0.33, "segmentation": 0.57}, {"detection": 0.30, "segmentation": 0.60}, TASKS
    ) == pytest.approx(2.5)
    # Depth abs_rel is lower-is-better: 0.09 vs 0.10 is a 10% improvement.
    assert delta_m({"depth": 0.09}, {"depth": 0.10}, ("depth",)) == pytest.approx(10.0)
    assert (
        delta_m({"detection": 0.3}, {"detection": 0.0}, ("detection",)) is None
    )  # no relative change from 0
    assert delta_m({"detection": 0.3}, {}, ("detection",)) is None


def test_mean_std_is_the_sample_statistic_over_finite_values() -> None:
    mean, std, count = mean_std([0.1, 0.2, 0.4, None, math.nan])
    assert (mean, count) == (pytest.approx(statistics.fmean([0.1, 0.2, 0.4])), 3)
    assert std == pytest.approx(statistics.stdev([0.1, 0.2, 0.4]))
    assert mean_std([0.5]) == (0.5, 0.0, 1)
    assert mean_std([None]) is None


def test_summary_pairs_each_seed_with_its_own_baselines() -> None:
    results = []
    for seed, (det, seg) in enumerate([(0.30, 0.60), (0.20, 0.50), (0.40, 0.40)]):
        results += [
            _run(SINGLE_TASK_LABEL, seed, ("detection",), detection=det),
            _run(SINGLE_TASK_LABEL, seed, ("segmentation",), segmentation=seg),
            # multi-task: exactly +10% detection, +0% segmentation in every seed
            _run(
                "equal",
                seed,
                TASKS,
                [{"weights": {"detection": 1.0, "segmentation": 1.0}}],
                detection=det * 1.1,
                segmentation=seg,
            ),
        ]
    rows = {(r["label"], tuple(r["tasks"])): r for r in summarise(results, TASKS)}
    assert set(rows) == {
        (SINGLE_TASK_LABEL, ("detection",)),
        (SINGLE_TASK_LABEL, ("segmentation",)),
        ("equal", TASKS),
    }
    equal = rows[("equal", TASKS)]
    mean, std, count = equal["delta_m"]
    assert (mean, std, count) == (
        pytest.approx(5.0),
        pytest.approx(0.0, abs=1e-9),
        3,
    )  # unpaired, it would vary
    assert equal["detection"][0] == pytest.approx(statistics.fmean([0.33, 0.22, 0.44]))
    assert equal["latency_ms"] == 10.0  # the fastest run of the row
    table = markdown_table(list(rows.values()), TASKS)
    assert (
        "| ssdlite_lraspp | det+seg | equal | 3 | 33.0 ± 11.0 | 50.0 ± 10.0 | +5.0 ± 0.0 | det 1.00–1.00, seg 1.00–1.00 |"
        in table
    )


def test_weight_range_and_curve_flatness_read_the_history() -> None:
    history = [
        {"weights": {"detection": w, "segmentation": 2 - w}, "score": s}
        for w, s in [(1.0, 0.1), (1.0, 0.3), (1.3, 0.38), (0.8, 0.4)]
    ]
    runs = [_run("dwa", 0, TASKS, history)]
    assert weight_range(runs) == {"detection": (0.8, 1.3), "segmentation": (0.7, 1.2)}
    assert curve_flatness(runs) == {"at_fraction": 0.38, "final": 0.4}
    assert curve_flatness([_run("dwa", 0, TASKS)]) is None
