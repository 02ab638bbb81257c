# SPDX-License-Identifier: Apache-2.0
"""``mtl-eval``: score a checkpoint on a labelled split at the frames' original resolution.

Runs the same ``Predictor`` as the robot (so pre/post-processing are what is measured) with a
low score threshold (mAP needs the whole precision/recall curve), compares against
``annotations.json``, the masks and the depth maps, and reports COCO mAP, mIoU (incl.
background), pixel accuracy, depth metrics (AbsRel, SqRel, RMSE, RMSE log, delta thresholds,
MAE over every valid pixel of the split, at the frames' resolution) and the model's cost
(latency at batch 1, parameters, GFLOPs). Depth-only frames (``"labeled": false``) are scored
for depth only. The report is written as JSON (atomically) and printed as a table; the exit
status is 1 if any item failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from mtl_perception.core.atomic_io import write_json
from mtl_perception.core.constants import DEVICE_CHOICES
from mtl_perception.core.errors import UserError, run_cli
from mtl_perception.core.json_io import format_number, json_ready
from mtl_perception.core.summary import JobSummary
from mtl_perception.evaluation.dataset import SPLITS, EvalDataset, EvalSample
from mtl_perception.evaluation.depth_metrics import DepthMetrics
from mtl_perception.evaluation.metrics import ConfusionMatrix, DetectionEvaluator, combined_score
from mtl_perception.evaluation.profiling import profile_model
from mtl_perception.predictor import Predictor

PROG = "mtl-eval"


def build_parser() -> argparse.ArgumentParser:
    """The ``mtl-eval`` command line (the module docstring is its description)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="checkpoint file, e.g. runs/x/best.pt"
    )
    parser.add_argument(
        "--data", required=True, type=Path, help="processed dataset folder (data/processed/<name>)"
    )
    parser.add_argument(
        "--split",
        default="val",
        choices=SPLITS,
        help="split from splits.json; 'all' = every image",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="metrics JSON (default: <checkpoint folder>/eval_<dataset>_<split>.json)",
    )
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES)
    parser.add_argument(
        "--half",
        choices=("auto", "on", "off"),
        default="auto",
        help="FP16 inference (auto = on for CUDA)",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.001,
        help="keep detections at least this confident",
    )
    parser.add_argument(
        "--max-detections", type=int, default=100, help="detections per image (COCO uses 100)"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="frames per forward pass")
    parser.add_argument(
        "--profile-runs",
        type=int,
        default=20,
        help="timed batch-1 runs for the latency figure (0 = skip)",
    )
    return parser


def _batches(samples: Iterator[EvalSample], size: int) -> Iterator[list[EvalSample]]:
    batch: list[EvalSample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate(predictor: Predictor, dataset: EvalDataset, batch_size: int = 1) -> dict[str, Any]:
    """Detection, segmentation and depth metrics of ``predictor`` over ``dataset`` (one pass)."""
    detection = (
        DetectionEvaluator(predictor.detection_classes, predictor.max_detections)
        if dataset.detection_scored
        else None
    )
    confusion = (
        ConfusionMatrix(len(predictor.segmentation_classes))
        if dataset.segmentation_available
        else None
    )
    depth = DepthMetrics() if dataset.depth_scored else None
    evaluated = masks_scored = 0
    progress = tqdm(total=len(dataset), desc=PROG, unit="img", disable=None)
    for batch in _batches(iter(dataset), batch_size):
        predictions = predictor.predict_batch([sample.rgb for sample in batch])
        for sample, prediction in zip(batch, predictions, strict=True):
            if depth is not None and sample.depth is not None and prediction.depth is not None:
                depth.update(prediction.depth, sample.depth)
            if not sample.labeled:
                continue
            if detection is not None:
                pred = {
                    "boxes": prediction.boxes,
                    "scores": prediction.scores,
                    "labels": prediction.labels,
                }
                detection.update([pred], [sample.target])
            if confusion is not None and sample.mask is not None and prediction.mask is not None:
                confusion.update(prediction.mask, sample.mask)
                masks_scored += 1
        evaluated += len(batch)
        progress.update(len(batch))
    progress.close()
    report: dict[str, Any] = {"num_images": evaluated}
    if detection is not None:
        report["detection"] = detection.compute()
    if confusion is not None and masks_scored:
        seg = confusion.compute()
        seg["per_class_iou"] = dict(
            zip(predictor.segmentation_classes, seg["per_class_iou"], strict=True)
        )
        report["segmentation"] = {
            **seg,
            "num_images": masks_scored,
            "classes": predictor.segmentation_classes,
        }
    if depth is not None and depth.frames:
        report["depth"] = depth.compute()
    return report


def _fmt(value: float | None) -> str:
    """An accuracy figure as a percentage with one decimal."""
    return format_number(value, digits=1, scale=100.0)


def print_table(report: dict[str, Any], stream: TextIO | None = None) -> None:
    """Human-readable summary of a report (percentages for accuracy figures) on ``stream``.

    ``stream`` defaults to the current ``sys.stdout``.
    """
    lines = [
        f"{report['checkpoint']} on {report['data']} [{report['split']}], "
        f"{report['num_images']} images"
    ]
    if "detection" in report:
        det = report["detection"]
        lines.append(
            f"  detection   mAP@[.5:.95] {_fmt(det['map'])}   mAP@.5 {_fmt(det['map_50'])}"
            f"   mAP@.75 {_fmt(det['map_75'])}"
        )
        for name, ap in det["per_class_ap"].items():
            note = "" if ap is not None else "   (no ground truth: not in the mean)"
            ap_50 = _fmt(det["per_class_ap_50"][name])
            lines.append(f"    {name:<20} AP {_fmt(ap):>6}   AP@.5 {ap_50:>6}{note}")
    if "segmentation" in report:
        seg = report["segmentation"]
        lines.append(
            f"  segmentation mIoU {_fmt(seg['miou'])} (incl. background)"
            f"   pixel accuracy {_fmt(seg['pixel_accuracy'])}   ({seg['num_images']} masks)"
        )
        for name, iou in seg["per_class_iou"].items():
            note = "" if iou is not None else "   (absent from GT and prediction: not in the mean)"
            lines.append(f"    {name:<20} IoU {_fmt(iou):>6}{note}")
    elif report.get("tasks") and "segmentation" in report["tasks"]:
        lines.append("  segmentation not scored (no masks or no classes.json)")
    if "depth" in report:
        d = report["depth"]
        lines.append(
            f"  depth       AbsRel {format_number(d['abs_rel'])}"
            f"   SqRel {format_number(d['sq_rel'])}   RMSE {format_number(d['rmse'])} m"
            f"   RMSE(log) {format_number(d['rmse_log'])}   MAE {format_number(d['mae'])} m"
        )
        lines.append(
            f"              d<1.25 {_fmt(d['delta1'])}   d<1.25^2 {_fmt(d['delta2'])}"
            f"   d<1.25^3 {_fmt(d['delta3'])}"
            f"   ({d['frames']} frames, {d['valid_pixels']} valid pixels)"
        )
    elif report.get("tasks") and "depth" in report["tasks"]:
        lines.append("  depth not scored (no depth maps in this split)")
    lines.append(f"  combined score {_fmt(report['score'])}")
    if "profile" in report:
        prof = report["profile"]
        lines.append(
            f"  model       {prof['latency_ms']:.1f} ms/frame"
            f" (batch 1, {prof['device']}, input {prof['input_size']})"
            f"   {prof['parameters'] / 1e6:.2f} M parameters   {prof['gflops']:.2f} GFLOPs"
        )
    print("\n".join(lines), file=stream or sys.stdout)


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the JSON report, print the table; 1 if any item failed."""
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be >= 1")
    half = {"auto": None, "on": True, "off": False}[args.half]
    predictor = Predictor.from_checkpoint(
        args.checkpoint,
        device=args.device,
        half=half,
        score_threshold=args.score_threshold,
        max_detections=args.max_detections,
    )
    summary = JobSummary(PROG)
    dataset = EvalDataset(
        args.data,
        args.split,
        predictor.detection_classes if "detection" in predictor.tasks else None,
        predictor.segmentation_classes if "segmentation" in predictor.tasks else None,
        summary,
        depth="depth" in predictor.tasks,
    )
    report: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "split": args.split,
        "tasks": list(predictor.tasks),
        "score_threshold": args.score_threshold,
    }
    report.update(evaluate(predictor, dataset, args.batch_size))
    report["score"] = combined_score(report)
    if args.profile_runs > 0:
        report["profile"] = profile_model(
            predictor.model,
            predictor.input_size,
            predictor.device,
            runs=args.profile_runs,
            half=predictor.half,
        )
    report["summary"] = {
        "counts": dict(summary.counts),
        "problems": dict(summary.problems),
        "first_example": summary.first_example,
    }
    out = args.out or args.checkpoint.parent / f"eval_{args.data.name}_{args.split}.json"
    write_json(out, json_ready(report))
    print_table(report)
    print(f"metrics written to {out}")
    summary.print(sys.stderr)  # explicit: the default is bound at import time
    return summary.exit_code()


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    run_cli(lambda: run(build_parser().parse_args(argv)), PROG)


if __name__ == "__main__":
    main()
