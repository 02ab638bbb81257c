#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Does free depth supervision help detection and segmentation? An equal-budget, multi-seed test.

Two arms on one architecture, trained with ``experiment_mtl.py``'s recipe, runs and scoring
(``config/train/experiment.yaml``, equal loss weights, ``last.pt`` at the fixed budget scored
once on the test split with mtl-eval's code); they differ only in the task set:

- ``det+seg``: ``model.tasks=[detection, segmentation]``;
- ``det+seg+depth``: the same plus depth, supervised on every frame by the synthetic bag's
  aligned depth topic (paired by ``mtl-data build``; no extra labelling).

The table gives each seed, mean ± sample std per arm, and Δm (Maninis et al. 2019, as in
``experiment_table.delta_m``) of the depth arm against det+seg over detection mAP@[.5:.95] and
segmentation mIoU, paired by seed (same seed = same initialisation of the shared parts, data
order and augmentation). Resumable: results are cached per run like ``experiment_mtl.py``'s.

    nice -n 10 python bench/experiment_depth.py     # 3 seeds x 2 arms
    python bench/experiment_depth.py --quick        # tiny budget, smoke check
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import platform
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

from experiment_mtl import QUICK_OVERRIDES, RunSpec, build_dataset, run_one  # noqa: E402
from experiment_table import delta_m, mean_std  # noqa: E402

from mtl_perception.core.atomic_io import write_text  # noqa: E402
from mtl_perception.core.errors import UserError, run_cli  # noqa: E402
from mtl_perception.core.summary import JobSummary  # noqa: E402
from mtl_perception.train.config import load_config  # noqa: E402

PROG = "experiment_depth"
ARMS = {
    "det+seg": ("detection", "segmentation"),
    "det+seg+depth": ("detection", "segmentation", "depth"),
}
BASE = "det+seg"
COMPARED = ("detection", "segmentation")  # the question is about these two tasks
COLUMNS = (
    ("detection", "det mAP@[.5:.95] %", 100.0),
    ("segmentation", "seg mIoU %", 100.0),
    ("depth", "depth AbsRel", 1.0),
)


def arm_of(result: Mapping[str, Any]) -> str:
    return next(arm for arm, tasks in ARMS.items() if tuple(result["tasks"]) == tasks)


def _pm(stat: tuple[float, float, int] | None, scale: float, digits: int) -> str:
    if stat is None:
        return "–"
    mean, std, _ = stat
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _num(value: float | None, scale: float, digits: int) -> str:
    return "–" if value is None else f"{value * scale:.{digits}f}"


def table(results: Sequence[Mapping[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Markdown rows (each run, then mean ± std per arm) and the paired Δm values."""
    base = {int(r["seed"]): r["metrics"] for r in results if arm_of(r) == BASE}
    digits = {1.0: 3, 100.0: 1}
    header = [
        "arm",
        "seed",
        *(label for _, label, _ in COLUMNS),
        "Δm % vs det+seg",
        "steps",
        "train s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    paired: list[float] = []
    for r in sorted(results, key=lambda r: (list(ARMS).index(arm_of(r)), r["seed"])):
        d = None
        if arm_of(r) != BASE and int(r["seed"]) in base:
            d = delta_m(r["metrics"], base[int(r["seed"])], COMPARED)
            if d is not None:
                paired.append(d)
        cells = [arm_of(r), str(r["seed"])]
        cells += [_num(r["metrics"].get(task), s, digits[s]) for task, _, s in COLUMNS]
        cells += [_num(d, 1.0, 2), str(r.get("steps")), f"{r.get('train_s', 0):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for arm in ARMS:
        runs = [r for r in results if arm_of(r) == arm]
        if not runs:
            continue
        cells = [f"**{arm}**", f"mean ± std (n={len(runs)})"]
        cells += [
            _pm(mean_std([r["metrics"].get(task) for r in runs]), s, digits[s])
            for task, _, s in COLUMNS
        ]
        cells += [_pm(mean_std(paired), 1.0, 2) if arm != BASE else "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines, {"paired_delta_m": paired}


def report(
    results: Sequence[Mapping[str, Any]],
    args: argparse.Namespace,
    data: Path,
    config: Any,
    wall_s: float,
) -> str:
    """The results section: setup, the table and the paired Δm."""
    rows, headline = table(results)
    splits = json.loads((data / "splits.json").read_text(encoding="utf-8"))
    images = json.loads((data / "annotations.json").read_text(encoding="utf-8"))["images"]
    with_depth = sum(1 for image in images if image.get("depth_file"))
    steps = sorted({r.get("steps") for r in results})
    paired = mean_std(headline["paired_delta_m"])
    lines = [
        f"## Depth as a free auxiliary task: det+seg vs det+seg+depth on {args.arch}"
        + (" (QUICK smoke budget: figures meaningless)" if args.quick else ""),
        "",
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}; `bench/experiment_depth.py "
        f"--seeds {' '.join(map(str, args.seeds))} --config {args.config}`, "
        f"{wall_s / 60:.0f} min wall",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs (load "
        f"average at start {args.load_at_start}), torch {torch.__version__}, {args.jobs} run(s) "
        "at a time with 1 thread each",
        f"- data: synthetic bag, {len(splits['train'])} train / {len(splits['val'])} val / "
        f"{len(splits['test'])} test frames (split by time), {with_depth} of {len(images)} with "
        "depth; scored on **test**",
        f"- budget per run: {config.optim.epochs} epochs, optimiser steps {steps}, batch "
        f"{config.data.batch_size}, input {list(config.model.input_size)}, "
        f"{config.optim.optimizer} lr {config.optim.lr} {config.optim.schedule}, equal loss "
        "weights, from random "
        "initialisation, scored at the fixed budget (last.pt)",
        "- mean ± sample std over seeds; Δm in % over detection mAP@[.5:.95] and segmentation "
        "mIoU vs det+seg of the same seed (positive = depth helped)",
        "",
        *rows,
        "",
        f"Paired Δm over seeds: {_pm(paired, 1.0, 2)} %" + (f" (n={paired[2]})" if paired else ""),
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        help="processed dataset with depth and a test split (default: build one)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where the synthetic dataset is built (default data/experiment_depth[_quick])",
    )
    parser.add_argument("--frames", type=int, default=240, help="synthetic frames before pruning")
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
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    parser.add_argument("--profile-runs", type=int, default=5, help="timed batch-1 runs per model")
    parser.add_argument(
        "--results",
        type=Path,
        help="results file (default bench/experiment_depth_results.md; --quick: <out>/results.md)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny budget: smoke check")
    return parser


def run(args: argparse.Namespace) -> int:
    """The whole experiment; exit status 1 if any run failed."""
    started = time.monotonic()
    suffix = "_quick" if args.quick else ""
    args.out = args.out or ROOT / f"runs/experiment_depth{suffix}"
    args.load_at_start = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    if args.data is None:
        args.data = build_dataset(
            args.workdir or ROOT / f"data/experiment_depth{suffix}",
            80 if args.quick else args.frames,
            args.out / "logs",
        )
    data = args.data
    if not (data / "splits.json").is_file():
        raise UserError(f"--data {data}: not a processed dataset (no splits.json)")
    if not json.loads((data / "splits.json").read_text(encoding="utf-8")).get("test"):
        raise UserError(f"{data}: the test split is empty (the experiment scores on test)")
    images = json.loads((data / "annotations.json").read_text(encoding="utf-8"))["images"]
    if not any(image.get("depth_file") for image in images):
        raise UserError(f"{data}: no frame has a depth_file; build it with --depth-topic")
    config = load_config(
        args.config, [f"data.root={data}", *(QUICK_OVERRIDES if args.quick else [])]
    )
    results_file = args.results or (
        args.out / "results.md" if args.quick else ROOT / "bench/experiment_depth_results.md"
    )
    summary = JobSummary(PROG)
    specs = [RunSpec(args.arch, tasks, seed) for seed in args.seeds for tasks in ARMS.values()]
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(
        max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        futures = {pool.submit(run_one, spec, args, data): spec for spec in specs}
        for future in as_completed(futures):
            try:
                results.append(future.result())
                summary.add("done")
            except Exception as err:
                traceback.print_exception(err)
                summary.fail("run failed", f"{futures[future].name}: {err}")
            write_text(
                results_file, report(results, args, data, config, time.monotonic() - started)
            )
    text = report(results, args, data, config, time.monotonic() - started)
    write_text(results_file, text)
    print(text)
    print(f"results written to {results_file}")
    summary.print(sys.stderr)
    return summary.exit_code()


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: one-line errors, exit codes."""
    run_cli(lambda: run(build_parser().parse_args(argv)), PROG)


if __name__ == "__main__":
    main()
