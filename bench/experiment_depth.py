#!/usr/bin/env python3
"""Does free depth supervision help detection and segmentation? An equal-budget, multi-seed test.

Two arms on one architecture, the same recipe (``config/train/experiment.yaml``: optimiser steps,
batch, input size, schedule, augmentation, trainable layers, equal loss weights) and the same
seeds; they differ only in the task set:

- ``det+seg``: ``model.tasks=[detection, segmentation]``;
- ``det+seg+depth``: ``model.tasks=[detection, segmentation, depth]``, depth targets on every
  frame that has one (the synthetic bag's aligned depth topic, paired by ``mtl-data build``).

Each final checkpoint (``last.pt``: the same number of steps for every run) is scored on val
with mtl-eval's own code (COCO mAP, mIoU incl. background, depth metrics) at the frames'
resolution. The table gives every seed, mean ± sample std per arm, and Δm (Maninis et al.
2019): the mean relative change of mAP@[.5:.95] and mIoU of the depth arm against det+seg,
in %, both per seed (paired: same seed = same sampler order and augmentation) and of the
means. Dataset building, training and caching are ``experiment_mtl.py``'s (resumable and
idempotent: ``<out>/<run>/result.json``).

    python bench/experiment_depth.py                       # ~20 min on a shared 2-core CPU
    python bench/experiment_depth.py --quick               # tiny budget, smoke check
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

from experiment_mtl import QUICK_OVERRIDES, RunSpec, build_dataset, train  # noqa: E402

from mtl_perception.core.summary import JobSummary  # noqa: E402
from mtl_perception.core.atomic_io import write_json, write_text  # noqa: E402
from mtl_perception.core.errors import UserError, run_cli  # noqa: E402
from mtl_perception.evaluation.cli import evaluate  # noqa: E402
from mtl_perception.evaluation.dataset import EvalDataset  # noqa: E402
from mtl_perception.predictor import Predictor  # noqa: E402
from mtl_perception.train.config import load_config  # noqa: E402

PROG = "experiment_depth"
ARMS = {
    "det+seg": ("detection", "segmentation"),
    "det+seg+depth": ("detection", "segmentation", "depth"),
}
BASE, DEPTH_ARM = "det+seg", "det+seg+depth"
# Figures of the table: (result key, header, scale, higher is better).
TASK_METRICS = (
    ("map", "mAP@[.5:.95]", 100.0),
    ("map_50", "mAP@.5", 100.0),
    ("miou", "mIoU", 100.0),
)
DEPTH_METRICS = (("abs_rel", "AbsRel", 1.0), ("rmse", "RMSE m", 1.0), ("delta1", "δ<1.25", 100.0))


def run_name(arm: str, seed: int) -> str:
    """Folder / cache name of one run, e.g. ``det_seg_depth__s1``."""
    return f"{arm.replace('+', '_')}__s{seed}"


def score(checkpoint: Path, data: Path) -> dict[str, Any]:
    """Val metrics exactly as ``mtl-eval`` computes them (incl. depth when the model has it)."""
    predictor = Predictor.from_checkpoint(
        checkpoint, device="cpu", half=False, score_threshold=0.001
    )
    summary = JobSummary(PROG)
    dataset = EvalDataset(
        data,
        "val",
        predictor.detection_classes,
        predictor.segmentation_classes,
        summary,
        depth="depth" in predictor.tasks,
    )
    report = evaluate(predictor, dataset, batch_size=8)
    if summary.failed:
        raise UserError(
            f"{data}: {summary.failed} val item(s) could not be scored: {summary.first_example}"
        )
    depth = report.get("depth", {})
    return {
        "map": report["detection"]["map"],
        "map_50": report["detection"]["map_50"],
        "miou": report["segmentation"]["miou"],
        "val_images": report["num_images"],
        **{key: depth.get(key) for key, _, _ in DEPTH_METRICS},
        "depth_frames": depth.get("frames"),
    }


def run_one(arm: str, seed: int, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """Train + score one run, or return its cached result."""
    name = run_name(arm, seed)
    run_dir = args.out / name
    cache = run_dir / "result.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    overrides = [
        f"data.root={data}",
        f"output_dir={args.out}",
        f"name={name}",
        f"seed={seed}",
        f"model.arch={args.arch}",
        f"model.tasks=[{','.join(ARMS[arm])}]",
        *([f"optim.epochs={args.epochs}"] if args.epochs else []),
        *(QUICK_OVERRIDES if args.quick else []),
    ]
    config = load_config(args.config, overrides)
    print(f"[{PROG}] {name}: training", flush=True)
    timing = train(RunSpec(args.arch), config)
    result = {"name": name, "arm": arm, "seed": seed, **timing, **score(run_dir / "last.pt", data)}
    write_json(cache, result)
    return result


def delta_m(run: Mapping[str, Any], base: Mapping[str, Any]) -> float | None:
    """Δm in %: mean relative change of mAP@[.5:.95] and mIoU (both higher-better) vs ``base``."""
    changes = []
    for key in ("map", "miou"):
        value, reference = run.get(key), base.get(key)
        if value is None or reference is None or not reference > 0:
            return None
        changes.append((value - reference) / reference)
    return 100.0 * sum(changes) / len(changes)


def mean_std(values: Sequence[float | None], scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± sample std`` of the values present (``–`` if none; no ± for a single value)."""
    present = [v * scale for v in values if v is not None and not math.isnan(v)]
    if not present:
        return "–"
    if len(present) == 1:
        return f"{present[0]:.{digits}f}"
    return f"{statistics.mean(present):.{digits}f} ± {statistics.stdev(present):.{digits}f}"


def _cell(value: Any, scale: float, digits: int = 1) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value * scale:.{digits}f}"
    )


def table(results: Sequence[Mapping[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The Markdown table (per seed, then mean ± std per arm) and the headline figures."""
    metrics = (*TASK_METRICS, *DEPTH_METRICS)
    header = [
        "arm",
        "seed",
        *(label for _, label, _ in metrics),
        "steps",
        "train s",
        "Δm % vs det+seg",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_arm = {
        arm: sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
        for arm in ARMS
    }
    base_by_seed = {r["seed"]: r for r in by_arm[BASE]}
    paired = []
    for arm, runs in by_arm.items():
        for r in runs:
            d = (
                delta_m(r, base_by_seed[r["seed"]])
                if arm != BASE and r["seed"] in base_by_seed
                else None
            )
            if d is not None:
                paired.append(d)
            cells = [
                arm,
                str(r["seed"]),
                *(_cell(r.get(k), s, 3 if s == 1.0 else 1) for k, _, s in metrics),
                str(r.get("steps")),
                f"{r.get('train_s', math.nan):.0f}",
                _cell(d, 1.0, 2) if d is not None else "–",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    means: dict[str, dict[str, float | None]] = {}
    for arm, runs in by_arm.items():
        if not runs:
            continue
        cells = [f"**{arm}**", f"mean ± std (n={len(runs)})"]
        cells += [
            mean_std([r.get(k) for r in runs], s, 3 if s == 1.0 else 1) for k, _, s in metrics
        ]
        cells += ["", "", mean_std(paired, 1.0, 2) if arm != BASE else ""]
        lines.append("| " + " | ".join(cells) + " |")
        means[arm] = {
            k: statistics.mean(v) if (v := [r[k] for r in runs if r.get(k) is not None]) else None
            for k, _, _ in metrics
        }
    headline: dict[str, Any] = {"paired_delta_m": paired}
    if BASE in means and DEPTH_ARM in means:
        headline["delta_m_of_means"] = delta_m(means[DEPTH_ARM], means[BASE])
        for key in ("map", "miou"):
            if means[DEPTH_ARM][key] is not None and means[BASE][key] is not None:
                headline[f"d_{key}"] = 100.0 * (means[DEPTH_ARM][key] - means[BASE][key])
    return "\n".join(lines), headline


def report(
    results: Sequence[Mapping[str, Any]], args: argparse.Namespace, data: Path, config: Any
) -> str:
    """The results file: setup, table, and the figures the write-up quotes."""
    text, headline = table(results)
    paired = headline["paired_delta_m"]
    budget = (
        f"{config.optim.epochs} epochs of the train split, batch {config.data.batch_size}, input "
        f"{list(config.model.input_size)}, {config.optim.optimizer} lr {config.optim.lr} "
        f"{config.optim.schedule} (warm-up {config.optim.warmup_steps}), equal loss weights, "
        f"model kwargs {config.model.kwargs}, from random initialisation"
        + (" — QUICK smoke budget, figures meaningless" if args.quick else "")
    )
    dm = headline.get("delta_m_of_means")
    lines = [
        "# Depth as a free auxiliary task: det+seg vs det+seg+depth at an equal budget",
        "",
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; shared with other jobs "
        f"(load average at start {args.load_at_start})",
        f"- dataset: {data} (val split, scored at the frames' resolution with mtl-eval's code)",
        f"- architecture: {args.arch}; budget: {budget}; seeds: {list(args.seeds)}",
        "- accuracy in %, depth errors in metres (AbsRel unitless); "
        "mean ± sample standard deviation over seeds;",
        "  Δm = mean relative change of mAP@[.5:.95] and mIoU vs det+seg of the same seed, in %",
        "",
        text,
        "",
        f"Δm of the means: {_cell(dm, 1.0, 2)} %; "
        f"paired Δm over seeds: {mean_std(paired, 1.0, 2)} %"
        + (
            f"; Δ mAP@[.5:.95] {headline['d_map']:+.1f} points, "
            f"Δ mIoU {headline['d_miou']:+.1f} points (means)"
            if "d_map" in headline and "d_miou" in headline
            else ""
        ),
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, help="existing processed dataset with depth (default: build one)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where the synthetic dataset is built (default data/experiment_depth[_quick])",
    )
    parser.add_argument("--frames", type=int, default=600, help="synthetic frames before pruning")
    parser.add_argument(
        "--out",
        type=Path,
        help="run folders and cached results (default runs/experiment_depth[_quick])",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=ROOT / "config/train/experiment.yaml",
        help="the shared recipe",
    )
    parser.add_argument("--arch", default="ssdlite_lraspp", help="the architecture of both arms")
    parser.add_argument(
        "--epochs", type=int, default=0, help="override the recipe's epochs (0 = keep)"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (>= 3 for a spread)"
    )
    parser.add_argument(
        "--results", type=Path, help="results file (default bench/experiment_depth_results.md)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny budget and dataset: smoke check of every path"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """The whole experiment; exit status 1 if any run failed."""
    torch.set_num_threads(2)
    suffix = "_quick" if args.quick else ""
    args.out = args.out or ROOT / f"runs/experiment_depth{suffix}"
    args.load_at_start = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    if args.data is not None:
        if not (args.data / "splits.json").is_file():
            raise UserError(f"--data {args.data}: not a processed dataset (no splits.json)")
        data = args.data
    else:
        data = build_dataset(
            args.workdir or ROOT / f"data/experiment_depth{suffix}",
            60 if args.quick else args.frames,
            args.out / "logs",
        )
    images = json.loads((data / "annotations.json").read_text(encoding="utf-8"))["images"]
    if not any(image.get("depth_file") for image in images):
        raise UserError(f"{data}: no frame has a depth_file; build the dataset with --depth-topic")
    config = load_config(
        args.config,
        [
            f"data.root={data}",
            *([f"optim.epochs={args.epochs}"] if args.epochs else []),
            *(QUICK_OVERRIDES if args.quick else []),
        ],
    )
    results_file = args.results or (
        args.out / "results.md" if args.quick else ROOT / "bench/experiment_depth_results.md"
    )
    summary = JobSummary(PROG)
    results: list[dict[str, Any]] = []
    # Seed by seed, both arms: a stopped experiment still leaves complete pairs.
    for seed in args.seeds:
        for arm in ARMS:
            try:
                results.append(run_one(arm, seed, args, data))
                summary.add("done")
            except Exception as err:  # noqa: BLE001 - one broken run must not lose the others
                traceback.print_exc()
                summary.fail("run failed", f"{run_name(arm, seed)}: {err}")
            write_text(results_file, report(results, args, data, config))
    text = report(results, args, data, config)
    write_text(results_file, text)
    print(text)
    print(f"results written to {results_file}")
    _, headline = table(results)
    if headline.get("delta_m_of_means") is not None:
        print(f"RESULT experiment_depth_delta_m={headline['delta_m_of_means']:.4f}")
    summary.print(sys.stderr)
    return summary.exit_code()


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: one-line errors, exit codes."""
    run_cli(lambda: run(build_parser().parse_args(argv)), PROG)


if __name__ == "__main__":
    main()
