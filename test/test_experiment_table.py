"""The pure table/ranking helpers of bench/experiment_mtl.py (no training)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from experiment_table import (  # noqa: E402
    SINGLE_TASK_LABEL,
    balancing_label,
    baselines_of,
    best_methods,
    comparison,
    fastest_latency,
    markdown_table,
    run_name,
)


def _row(arch: str, balancing: str, **figures: float | None) -> dict:
    return {"arch": arch, "balancing": balancing, "name": run_name(arch, balancing), **figures}


def test_labels_and_names() -> None:
    assert balancing_label("equal", "upgrad") == "upgrad"
    assert balancing_label("dwa", "none") == "dwa"
    assert run_name("ssdlite_lraspp", "dwa") == "ssdlite_lraspp__dwa"


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("ssdlite_deeplabv3", ("ssdlite", "deeplabv3")),
        ("frcnn_deeplabv3", ("frcnn", "deeplabv3")),
        ("ssdlite_lraspp", ("ssdlite", "lraspp")),
        ("ssdlite", None),
        ("deeplabv3", None),
        ("yolo_deeplabv3", None),  # an architecture without a known baseline is not compared
    ],
)
def test_baselines_of(arch: str, expected: tuple[str, str] | None) -> None:
    assert baselines_of(arch) == expected


def test_best_methods_ranks_by_score_excludes_equal_and_sinks_nan() -> None:
    screening = {
        "equal": {"score": 0.9},
        "dwa": {"score": 0.2},
        "upgrad": {"score": 0.5},
        "pcgrad": {"score": math.nan},
        "bmtl": {"score": None},
        "uncertainty": {"score": 0.3},
    }
    assert best_methods(screening, count=2) == ["upgrad", "uncertainty"]
    assert best_methods({"equal": {"score": 1.0}}) == []


def test_comparison_deltas_and_cost_ratios() -> None:
    singles = {
        "ssdlite": _row("ssdlite", SINGLE_TASK_LABEL, map=0.30, map_50=0.50, latency_ms=10.0, gflops=1.0),
        "deeplabv3": _row("deeplabv3", SINGLE_TASK_LABEL, miou=0.60, latency_ms=30.0, gflops=3.0),
    }
    multi = _row("ssdlite_deeplabv3", "equal", map=0.35, map_50=0.45, miou=0.55, latency_ms=20.0, gflops=2.0)
    c = comparison(multi, singles)
    assert c["d_map"] == pytest.approx(0.05)
    assert c["d_map_50"] == pytest.approx(-0.05)
    assert c["d_miou"] == pytest.approx(-0.05)
    assert c["latency_ratio"] == pytest.approx(0.5)
    assert c["gflops_ratio"] == pytest.approx(0.5)
    # A missing baseline (its run failed) leaves the comparison empty rather than wrong.
    assert set(comparison(multi, {"ssdlite": singles["ssdlite"]}).values()) == {None}
    assert set(comparison(singles["ssdlite"], singles).values()) == {None}


def test_markdown_table_rows_and_missing_values() -> None:
    rows = [
        _row("ssdlite_deeplabv3", "equal", map=0.35, map_50=0.45, miou=None, latency_ms=20.0, gflops=2.0, train_s=12.3),
        _row("ssdlite", SINGLE_TASK_LABEL, map=0.30, map_50=0.50, latency_ms=10.0, gflops=1.0, train_s=9.0),
        _row("deeplabv3", SINGLE_TASK_LABEL, miou=0.60, latency_ms=30.0, gflops=3.0, train_s=8.0),
    ]
    lines = markdown_table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    multi = [cell.strip() for cell in lines[2].split("|")[1:-1]]
    assert multi[:6] == ["ssdlite_deeplabv3", "equal", "45.0", "35.0", "–", "20.0"]
    assert multi[8:] == ["-5.0", "+5.0", "–", "0.50", "0.50"]  # mIoU undefined: no delta
    baseline = [cell.strip() for cell in lines[3].split("|")[1:-1]]
    assert baseline[8:] == ["–"] * 5


def test_latency_is_the_fastest_measurement_of_each_architecture() -> None:
    rows = [
        _row("ssdlite_deeplabv3", "equal", latency_ms=12.0),
        _row("ssdlite_deeplabv3", "dwa", latency_ms=365.0),  # disturbed by another job
        _row("ssdlite", SINGLE_TASK_LABEL, latency_ms=None),
    ]
    assert fastest_latency(rows) == {"ssdlite_deeplabv3": 12.0}
    table = markdown_table(rows).splitlines()
    assert [line.split("|")[6].strip() for line in table[2:]] == ["12.0", "12.0", "–"]
