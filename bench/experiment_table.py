"""Pure helpers of ``experiment_mtl.py``: run names, baseline matching, ranking and the table.

No torch, no files: every function takes the per-run result dicts the experiment caches
(keys ``arch``, ``balancing``, ``map``, ``map_50``, ``miou``, ``latency_ms``, ``gflops``,
``train_s``, ``score``) and returns plain values, so the arithmetic of the table is easy to
check on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

Result = Mapping[str, Any]

# The single-task model each half of a multi-task architecture is compared with: the same
# detection / segmentation head on the same backbone, trained alone.
DETECTION_BASELINE = {"ssdlite": "ssdlite", "frcnn": "frcnn"}
SEGMENTATION_BASELINE = {"deeplabv3": "deeplabv3", "lraspp": "lraspp"}
SINGLE_TASK_LABEL = "single-task"


def balancing_label(weighting: str, grad_method: str) -> str:
    """One word per balancing setting: the gradient method if any, else the loss weighting."""
    return grad_method if grad_method != "none" else weighting


def run_name(arch: str, label: str) -> str:
    """Folder / cache name of one run, e.g. ``ssdlite_deeplabv3__upgrad``."""
    return f"{arch}__{label}"


def baselines_of(arch: str) -> tuple[str, str] | None:
    """``(detection baseline, segmentation baseline)`` of a multi-task arch; None for single-task."""
    detection, sep, segmentation = arch.partition("_")
    if not sep or detection not in DETECTION_BASELINE or segmentation not in SEGMENTATION_BASELINE:
        return None
    return DETECTION_BASELINE[detection], SEGMENTATION_BASELINE[segmentation]


def best_methods(screening: Mapping[str, Result], exclude: str = "equal", count: int = 2) -> list[str]:
    """The ``count`` balancing labels with the highest combined val score (NaN ranks last)."""

    def key(item: tuple[str, Result]) -> float:
        score = item[1].get("score")
        return -math.inf if score is None or math.isnan(score) else float(score)

    ranked = sorted(((label, r) for label, r in screening.items() if label != exclude), key=key, reverse=True)
    return [label for label, _ in ranked[:count]]


def _num(value: Any, scale: float = 1.0, digits: int = 1, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * scale:{'+' if signed else ''}.{digits}f}"


def fastest_latency(results: Sequence[Result]) -> dict[str, float]:
    """Per architecture, the fastest batch-1 latency over its runs.

    Latency is a property of the architecture (the runs differ only in weights), and on a
    shared machine other jobs can only make a measurement slower, so the minimum over the runs
    of one architecture is its least disturbed figure (as ``timeit`` advises).
    """
    fastest: dict[str, float] = {}
    for r in results:
        value = r.get("latency_ms")
        if value is not None and not math.isnan(value):
            arch = str(r["arch"])
            fastest[arch] = min(fastest.get(arch, math.inf), float(value))
    return fastest


def comparison(result: Result, singles: Mapping[str, Result]) -> dict[str, float | None]:
    """Accuracy deltas (points) and cost ratios of a multi-task run vs its two baselines."""
    pair = baselines_of(str(result["arch"]))
    empty: dict[str, float | None] = {"d_map": None, "d_map_50": None, "d_miou": None, "latency_ratio": None, "gflops_ratio": None}
    if pair is None or pair[0] not in singles or pair[1] not in singles:
        return empty
    det, seg = singles[pair[0]], singles[pair[1]]

    def delta(key: str, base: Result) -> float | None:
        a, b = result.get(key), base.get(key)
        return None if a is None or b is None else float(a) - float(b)

    def ratio(key: str) -> float | None:
        total = (det.get(key) or 0.0) + (seg.get(key) or 0.0)
        return float(result[key]) / total if result.get(key) is not None and total > 0 else None

    return {
        "d_map": delta("map", det), "d_map_50": delta("map_50", det), "d_miou": delta("miou", seg),
        "latency_ratio": ratio("latency_ms"), "gflops_ratio": ratio("gflops"),
    }


def markdown_table(results: Sequence[Result]) -> str:
    """The experiment's table: one row per run, multi-task rows compared with their baselines.

    Latency is the architecture's fastest measurement (``fastest_latency``). Accuracy in
    percent; deltas in percentage points (detection vs the detection baseline's
    mAP, segmentation vs the segmentation baseline's mIoU); cost ratios vs the sum of the two
    baselines (the cost of running both single-task models).
    """
    latency = fastest_latency(results)
    results = [{**r, "latency_ms": latency.get(str(r["arch"]))} for r in results]
    singles = {str(r["arch"]): r for r in results if r["balancing"] == SINGLE_TASK_LABEL}
    header = (
        "| model | balancing | mAP@.5 | mAP@[.5:.95] | mIoU | latency ms | GFLOPs | train s "
        "| Δ mAP@.5 | Δ mAP | Δ mIoU | latency / sum | GFLOPs / sum |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        c = comparison(r, singles)
        lines.append(
            f"| {r['arch']} | {r['balancing']} | {_num(r.get('map_50'), 100)} | {_num(r.get('map'), 100)} "
            f"| {_num(r.get('miou'), 100)} | {_num(r.get('latency_ms'))} | {_num(r.get('gflops'), digits=2)} "
            f"| {_num(r.get('train_s'), digits=0)} | {_num(c['d_map_50'], 100, signed=True)} "
            f"| {_num(c['d_map'], 100, signed=True)} | {_num(c['d_miou'], 100, signed=True)} "
            f"| {_num(c['latency_ratio'], digits=2)} | {_num(c['gflops_ratio'], digits=2)} |"
        )
    return "\n".join(lines)
