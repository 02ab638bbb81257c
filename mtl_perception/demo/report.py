# SPDX-License-Identifier: Apache-2.0
"""Assemble the demo report from what the pipeline wrote.

The sources are the TensorBoard scalars of the training run, ``mtl-eval``'s metrics JSON and
``mtl-replay``'s report folder.

Each source is optional: a missing one leaves a note on the page instead of breaking it, so
the report also explains a demo that stopped half-way.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mtl_perception import figures
from mtl_perception.core.json_io import format_number
from mtl_perception.demo.html import Figure, Table, write_page
from mtl_perception.demo.pipeline import DemoConfig, Step


def read_scalars(tb_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar series in a TensorBoard log folder: tag -> (steps, values)."""
    if not tb_dir.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, tuple[list[int], list[float]]] = {}
    for events_dir in sorted({p.parent for p in tb_dir.rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            points = sorted((e.step, e.value) for e in accumulator.Scalars(tag))
            steps, values = series.setdefault(tag, ([], []))
            steps.extend(p[0] for p in points)
            values.extend(p[1] for p in points)
    return series


def _with_prefix(
    series: Mapping[str, tuple[list[int], list[float]]], prefix: str
) -> dict[str, tuple[list[int], list[float]]]:
    return {
        tag[len(prefix) :]: data
        for tag, data in series.items()
        if tag.startswith(prefix) and tag != f"{prefix}total"
    }


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def headline(
    metrics: Mapping[str, Any] | None, replay: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The few figures the summary table and README quote."""
    metrics = metrics or {}
    detection = metrics.get("detection", {}) or {}
    segmentation = metrics.get("segmentation", {}) or {}
    depth = metrics.get("depth", {}) or {}
    model = metrics.get("profile", {}) or {}
    replay = replay or {}
    latency = replay.get("latency_ms", {}) or {}
    depth_figures = {}
    if depth:
        depth_figures = {
            "depth AbsRel": depth.get("abs_rel"),
            "depth RMSE m": depth.get("rmse"),
            "depth δ<1.25": depth.get("delta1"),
        }
    return {
        "mAP@[.5:.95]": detection.get("map"),
        "mAP@.5": detection.get("map_50"),
        "mIoU (incl. background)": segmentation.get("miou"),
        "pixel accuracy": segmentation.get("pixel_accuracy"),
        **depth_figures,
        "model latency ms/frame": model.get("latency_ms"),
        "replay p50 latency ms": latency.get("p50"),
        "replay frames sent/answered": (
            f"{replay.get('frames_sent', 'n/a')}/{replay.get('frames_answered', 'n/a')}"
        ),
    }


def _per_class_tables(
    metrics: Mapping[str, Any],
) -> tuple[list[Table], dict[str, dict[str, float | None]]]:
    tables: list[Table] = []
    bars: dict[str, dict[str, float | None]] = {}
    detection = metrics.get("detection") or {}
    if detection.get("per_class_ap"):
        ap, ap50 = detection["per_class_ap"], detection.get("per_class_ap_50", {})
        tables.append(
            Table(
                "Detection per class (val)",
                ["class", "AP@[.5:.95]", "AP@.5"],
                [[name, format_number(ap[name]), format_number(ap50.get(name))] for name in ap],
            )
        )
        bars["AP@.5 per class"] = {name: ap50.get(name) for name in ap}
    segmentation = metrics.get("segmentation") or {}
    if segmentation.get("per_class_iou"):
        iou = segmentation["per_class_iou"]
        tables.append(
            Table(
                "Segmentation per class (val)",
                ["class", "IoU"],
                [[name, format_number(v)] for name, v in iou.items()],
            )
        )
        bars["IoU per class"] = dict(iou)
    depth = metrics.get("depth") or {}
    if depth:
        names = [
            ("AbsRel", "abs_rel"),
            ("SqRel", "sq_rel"),
            ("RMSE (m)", "rmse"),
            ("RMSE(log)", "rmse_log"),
            ("MAE (m)", "mae"),
            ("δ<1.25", "delta1"),
            ("δ<1.25²", "delta2"),
            ("δ<1.25³", "delta3"),
            ("frames", "frames"),
            ("valid pixels", "valid_pixels"),
        ]
        tables.append(
            Table(
                "Depth (val, every valid pixel counts once)",
                ["metric", "value"],
                [[label, format_number(depth.get(key))] for label, key in names],
            )
        )
    return tables, bars


def build_report(config: DemoConfig, steps: Sequence[Step]) -> tuple[Path, dict[str, Any]]:
    """Write ``<report_dir>/index.html`` with every figure as PNG.

    Returns:
        The page's path and the headline figures (see :func:`headline`).
    """
    out = config.report_dir
    out.mkdir(parents=True, exist_ok=True)
    metrics = _load_json(config.metrics_json)
    replay = _load_json(config.replay_dir / "report.json")
    summary = headline(metrics, replay)
    tables = [
        Table(
            "Pipeline",
            ["step", "status", "seconds"],
            [[s.name, s.status, f"{s.seconds:.1f}"] for s in steps],
        ),
        Table("Summary", ["figure", "value"], [[k, format_number(v)] for k, v in summary.items()]),
    ]
    page_figures: list[Figure] = []
    notes: dict[str, str] = {}

    scalars = read_scalars(config.run_dir / "tb")
    if scalars:
        figures.training_curves(
            _with_prefix(scalars, "loss/"),
            _with_prefix(scalars, "weight/"),
            out / "training_curves.png",
        )
        page_figures.append(
            Figure(
                "training_curves.png",
                "Training curves",
                "Each task's raw loss (log scale) and the weight the balancing method gave it, "
                "per step.",
            )
        )
    else:
        notes["Training curves"] = f"no TensorBoard log found in {config.run_dir / 'tb'}"

    if metrics:
        class_tables, bars = _per_class_tables(metrics)
        tables += class_tables
        if bars:
            figures.per_class_bars(bars, out / "per_class.png")
            page_figures.append(
                Figure("per_class.png", "Metrics per class", "mtl-eval on the held-out val split.")
            )
    else:
        notes["Metrics"] = f"no metrics JSON at {config.metrics_json} (did mtl-eval run?)"

    if replay:
        for name in replay.get("figures", []):
            source = config.replay_dir / name
            if source.is_file() and name in ("latency_histogram.png", "examples.png"):
                shutil.copyfile(source, out / name)
        if (out / "latency_histogram.png").is_file():
            page_figures.append(
                Figure(
                    "latency_histogram.png",
                    "End-to-end latency",
                    "Bag frame published -> node output received, over DDS on loopback.",
                )
            )
        if (out / "examples.png").is_file():
            page_figures.append(
                Figure(
                    "examples.png",
                    "Example frames",
                    "Node outputs during the replay: boxes, labels and the segmentation mask.",
                )
            )
    else:
        notes["Replay"] = (
            f"no replay report at {config.replay_dir / 'report.json'} (did mtl-replay run?)"
        )

    page = write_page(
        out / "index.html",
        "mtl_perception demo",
        "Synthetic bag -> dataset -> multi-task training -> evaluation -> "
        "replay through the ROS 2 node",
        tables,
        page_figures,
        notes,
    )
    return page, summary
