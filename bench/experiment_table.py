# SPDX-License-Identifier: Apache-2.0
"""Pure helpers of ``experiment_mtl.py``: run names, the Δm metric, seed statistics, the tables.

No torch, no files: every function takes the per-run result dicts the experiment caches and
returns plain values, so the arithmetic of the table is easy to check on its own
(``test/test_experiment_table.py``). A result holds ``label`` (balancing method, or
``single-task``), ``tasks``, ``seed``, ``metrics`` (``{task: primary metric on the test split}``)
and cost figures (``gflops``, ``latency_ms``, ``train_s``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

Result = Mapping[str, Any]

SINGLE_TASK_LABEL = "single-task"
# The one figure per task that Δm and the table use: (metric key, higher is better).
PRIMARY_METRICS: dict[str, tuple[str, bool]] = {
    "detection": ("map", True),  # COCO mAP@[.5:.95]
    "segmentation": ("miou", True),  # mean IoU incl. background
    "depth": ("abs_rel", False),  # mean |d - d*| / d*
}


def balancing_label(weighting: str, grad_method: str) -> str:
    """One word per balancing setting: the gradient method if any, else the loss weighting."""
    return grad_method if grad_method != "none" else weighting


def run_name(arch: str, label: str, seed: int, tasks: Sequence[str] = ()) -> str:
    """Folder / cache name of one run, e.g. ``ssdlite_lraspp__dwa__s1``.

    The task set is part of the name when given, so different task sets on one architecture
    never share a run.
    """
    task_part = "+".join(tasks)
    return "__".join(part for part in (arch, task_part, label, f"s{seed}") if part)


def delta_m(
    multi: Mapping[str, float], single: Mapping[str, float], tasks: Sequence[str]
) -> float | None:
    """Δm (Maninis et al., CVPR 2019) in percent; None if a figure is missing or a baseline is 0.

    The mean over ``tasks`` of the relative change of the multi-task model's primary metric
    against the single-task model's, with the sign flipped for lower-is-better metrics.
    Positive = multi-task better on average.
    """
    changes = []
    for task in tasks:
        m, b = multi.get(task), single.get(task)
        if m is None or b is None or b == 0 or math.isnan(m) or math.isnan(b):
            return None
        higher_is_better = PRIMARY_METRICS[task][1]
        changes.append((1.0 if higher_is_better else -1.0) * (m - b) / b)
    return 100.0 * sum(changes) / len(changes) if changes else None


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int] | None:
    """Mean, sample standard deviation (n-1; 0 for one value) and count of the finite values."""
    finite = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return None
    return (
        statistics.fmean(finite),
        statistics.stdev(finite) if len(finite) > 1 else 0.0,
        len(finite),
    )


def baselines_by_seed(results: Sequence[Result]) -> dict[int, dict[str, float]]:
    """``{seed: {task: metric}}`` of the single-task runs (each solves one task)."""
    baselines: dict[int, dict[str, float]] = {}
    for r in results:
        if r["label"] == SINGLE_TASK_LABEL:
            baselines.setdefault(int(r["seed"]), {}).update(r["metrics"])
    return baselines


def summarise(results: Sequence[Result], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """One row per balancing method (and one per single-task model) over its seeds.

    Δm is paired: each seed's multi-task run against the single-task runs of the same seed (same
    initialisation and data order), then averaged over seeds.
    """
    baselines = baselines_by_seed(results)
    groups: dict[tuple[str, str, tuple[str, ...]], list[Result]] = {}
    for r in results:
        groups.setdefault((str(r["label"]), str(r["arch"]), tuple(r["tasks"])), []).append(r)
    rows = []
    for (label, arch, run_tasks), runs in groups.items():
        row: dict[str, Any] = {
            "label": label,
            "arch": arch,
            "tasks": list(run_tasks),
            "seeds": sorted(int(r["seed"]) for r in runs),
        }
        for task in tasks:
            row[task] = mean_std([r["metrics"].get(task) for r in runs])
        if label != SINGLE_TASK_LABEL:
            row["delta_m"] = mean_std(
                [delta_m(r["metrics"], baselines.get(int(r["seed"]), {}), tasks) for r in runs]
            )
            row["weight_range"] = weight_range(runs)
        for key in ("gflops", "latency_ms", "train_s"):
            row[key] = mean_std([r.get(key) for r in runs])
        row["latency_ms"] = min(
            (r["latency_ms"] for r in runs if r.get("latency_ms") is not None), default=None
        )
        rows.append(row)
    return rows


def weight_range(runs: Sequence[Result]) -> dict[str, tuple[float, float]]:
    """Per task, the smallest and largest task weight any epoch of these runs trained with."""
    ranges: dict[str, tuple[float, float]] = {}
    for r in runs:
        for epoch in r.get("history", []):
            for task, value in epoch.get("weights", {}).items():
                if value is None or math.isnan(value):
                    continue
                low, high = ranges.get(task, (math.inf, -math.inf))
                ranges[task] = (min(low, value), max(high, value))
    return ranges


def curve_flatness(results: Sequence[Result], fraction: float = 0.75) -> dict[str, float] | None:
    """Mean over runs of the val score after ``fraction`` of the epochs and at the end.

    A budget where the curves have flattened shows both close together.
    """
    pairs = []
    for r in results:
        scores = [e.get("score") for e in r.get("history", [])]
        if len(scores) >= 2 and all(s is not None and not math.isnan(s) for s in scores):
            pairs.append((scores[max(0, math.ceil(len(scores) * fraction) - 1)], scores[-1]))
    if not pairs:
        return None
    return {
        "at_fraction": statistics.fmean(p[0] for p in pairs),
        "final": statistics.fmean(p[1] for p in pairs),
    }


def _pm(
    stat: tuple[float, float, int] | None,
    scale: float = 100.0,
    digits: int = 1,
    signed: bool = False,
) -> str:
    if stat is None:
        return "–"
    mean, std, _ = stat
    sign = "+" if signed else ""
    return f"{mean * scale:{sign}.{digits}f} ± {std * scale:.{digits}f}"


def _num(value: float | None, digits: int = 1) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def markdown_table(rows: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> str:
    """The main table: one row per method (and single-task model) over its seeds.

    Mean ± std over seeds of each task's primary metric (in %, test split), Δm (in %, vs the
    single-task models), the range of task weights used, and cost.
    """
    metric_heads = " | ".join(f"{task} {PRIMARY_METRICS[task][0]} %" for task in tasks)
    header = (
        f"| model | tasks | balancing | seeds | {metric_heads} | Δm % | task weights (min–max) "
        "| GFLOPs | latency ms | train s |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        metrics = " | ".join(_pm(row.get(task)) for task in tasks)
        weights = ", ".join(
            f"{task[:3]} {low:.2f}–{high:.2f}"
            for task, (low, high) in sorted(row.get("weight_range", {}).items())
        )
        gflops = row.get("gflops")
        lines.append(
            f"| {row['arch']} | {'+'.join(t[:3] for t in row['tasks'])} | {row['label']} "
            f"| {len(row['seeds'])} | {metrics} "
            f"| {_pm(row.get('delta_m'), scale=1.0, signed=True)} | {weights or '–'} "
            f"| {_num(gflops[0] if gflops else None, 2)} | {_num(row.get('latency_ms'))} "
            f"| {_num(row['train_s'][0] if row.get('train_s') else None, 0)} |"
        )
    return "\n".join(lines)


def aux_comparison(
    results: Sequence[Result], tasks: Sequence[str], aux_tasks: Sequence[str]
) -> list[dict[str, Any]]:
    """Per seed, the run trained with ``aux_tasks`` added against the ``equal`` run without them.

    Both use equal loss weights, so the only difference is the extra supervision. Δm is taken over
    ``tasks`` only (the question is whether the auxiliary tasks help *them*), paired by seed (same
    initialisation of the shared parts, data order and augmentation). A seed whose run without
    the auxiliary tasks is missing gets ``delta_m`` None.
    """
    with_aux = (*tasks, *aux_tasks)
    base = {
        int(r["seed"]): r["metrics"]
        for r in results
        if r["label"] == "equal" and tuple(r["tasks"]) == tuple(tasks)
    }
    rows = []
    for r in sorted(results, key=lambda r: int(r["seed"])):
        if r["label"] != "equal" or tuple(r["tasks"]) != with_aux:
            continue
        seed = int(r["seed"])
        rows.append(
            {
                "seed": seed,
                "base": base.get(seed),
                "aux": r["metrics"],
                "delta_m": delta_m(r["metrics"], base[seed], tasks) if seed in base else None,
            }
        )
    return rows


def _cell(value: tuple[float, float, int] | float | None, scale: float, digits: int) -> str:
    """A mean ± std statistic, or a single value, scaled."""
    if isinstance(value, tuple):
        return _pm(value, scale, digits)
    return _num(None if value is None else value * scale, digits)


def aux_table(
    rows: Sequence[Mapping[str, Any]], tasks: Sequence[str], aux_tasks: Sequence[str]
) -> str:
    """The auxiliary-task table: each seed, then mean ± std over seeds.

    Per seed the primary metrics without and with the auxiliary tasks (of ``tasks`` in %, of
    ``aux_tasks`` as they are) and the paired Δm.
    """
    heads = [f"{t} {PRIMARY_METRICS[t][0]} % without → with" for t in tasks]
    heads += [f"{t} {PRIMARY_METRICS[t][0]}" for t in aux_tasks]
    header = "| seed | " + " | ".join(heads) + " | Δm % |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    summary = {
        "seed": f"mean ± std (n={len(rows)})",
        "base": {t: mean_std([(row["base"] or {}).get(t) for row in rows]) for t in tasks},
        "aux": {t: mean_std([row["aux"].get(t) for row in rows]) for t in (*tasks, *aux_tasks)},
        "delta_m": mean_std([row["delta_m"] for row in rows]),
    }
    for row in [*rows, summary] if rows else []:
        base = row["base"] or {}
        cells = [str(row["seed"])]
        cells += [
            f"{_cell(base.get(t), 100.0, 1)} → {_cell(row['aux'].get(t), 100.0, 1)}" for t in tasks
        ]
        cells += [_cell(row["aux"].get(t), 1.0, 3) for t in aux_tasks]
        cells.append(_cell(row["delta_m"], 1.0, 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
