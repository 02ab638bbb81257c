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
    aux_comparison,
    aux_table,
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
        "| ssdlite_lraspp | det+seg | equal | 3 | 33.0 ± 11.0 | 50.0 ± 10.0 | +5.0 ± 0.0 "
        "| det 1.00–1.00, seg 1.00–1.00 |" in table
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


def test_aux_comparison_is_paired_by_seed_over_the_main_tasks_only() -> None:
    with_depth = (*TASKS, "depth")
    results = [
        _run("equal", 0, TASKS, detection=0.10, segmentation=0.50),
        _run("equal", 0, with_depth, detection=0.12, segmentation=0.45, depth=0.2),  # +20%, -10%
        _run("equal", 1, TASKS, detection=0.20, segmentation=0.40),
        _run("equal", 1, with_depth, detection=0.18, segmentation=0.44, depth=0.3),  # -10%, +10%
        _run("equal", 2, with_depth, detection=0.30, segmentation=0.30, depth=0.1),  # no pair
        _run("dwa", 2, TASKS, detection=0.30, segmentation=0.30),  # not the equal-weights base
    ]
    rows = aux_comparison(results, TASKS, ["depth"])
    assert [row["seed"] for row in rows] == [0, 1, 2]
    assert [row["delta_m"] for row in rows[:2]] == pytest.approx([5.0, 0.0])
    assert rows[2]["delta_m"] is None and rows[2]["base"] is None
    table = aux_table(rows, TASKS, ["depth"]).splitlines()
    assert table[2] == "| 0 | 10.0 → 12.0 | 50.0 → 45.0 | 0.200 | 5.00 |"
    assert table[4] == "| 2 | – → 30.0 | – → 30.0 | 0.100 | – |"

    def pm(values: list[float], digits: int) -> str:  # independent reference: statistics
        return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"

    assert table[5] == (
        f"| mean ± std (n=3) | {pm([10.0, 20.0], 1)} → {pm([12.0, 18.0, 30.0], 1)} "
        f"| {pm([50.0, 40.0], 1)} → {pm([45.0, 44.0, 30.0], 1)} "
        f"| {pm([0.2, 0.3, 0.1], 3)} | {pm([5.0, 0.0], 2)} |"
    )
