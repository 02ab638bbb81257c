#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Multi-task vs single-task, balancing methods, and auxiliary tasks, over several seeds.

For each seed: the single-task model of every task in ``--tasks`` (the same architecture with
``model.tasks=[task]``), then the multi-task model with every balancing method in ``--methods``,
then, with ``--aux-tasks`` (e.g. ``depth``), the multi-task model trained on the auxiliary tasks
as well, with equal loss weights like the ``equal`` run it is compared with (paired by seed, Δm
over ``--tasks`` only: does the extra, label-free supervision help the tasks that matter?).
Every run trains with the same recipe (``config/train/experiment.yaml``: input size, batch,
epochs, schedule, augmentation); only the task set, the balancing and the seed change. The seed
sets initialisation, data order and augmentation.

Nothing is chosen on the test split: every run is scored once, at its fixed budget (``last.pt``,
the same number of steps for every run, no best-epoch selection), on ``test`` with mtl-eval's
code (frames at their own resolution). ``val`` only gives the learning curves (to show the
budget is where they flatten). The table gives mean ± std over seeds of each task's primary
metric, Δm (Maninis et al. 2019: mean relative change vs the single-task models of the same
seed, sign-flipped for lower-is-better metrics), the task weights each method trained with,
GFLOPs and CPU batch-1 latency.

Resumable and idempotent: each run's figures are cached in ``<out>/<run>/result.json``; the
results section (``<out>/results.md``) is rewritten after every run, ``--report-only`` rewrites it
from the cache without training.

    python bench/experiment_mtl.py --aux-tasks depth      # det+seg, 3 methods, +depth: 18 runs
    python bench/experiment_mtl.py --tasks detection segmentation depth --out runs/exp_depth
    python bench/experiment_mtl.py --quick --aux-tasks depth   # tiny budget, smoke check
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

from experiment_table import (  # noqa: E402
    PRIMARY_METRICS,
    SINGLE_TASK_LABEL,
    aux_comparison,
    aux_table,
    balancing_label,
    curve_flatness,
    markdown_table,
    run_name,
    summarise,
)

from mtl_perception.core.atomic_io import write_json, write_text  # noqa: E402
from mtl_perception.core.errors import UserError, run_cli  # noqa: E402
from mtl_perception.core.summary import JobSummary  # noqa: E402
from mtl_perception.demo.pipeline import DEFAULT_CONFIG, load_demo_config, plan, run_step  # noqa: E402
from mtl_perception.evaluation.cli import evaluate  # noqa: E402
from mtl_perception.evaluation.dataset import EvalDataset  # noqa: E402
from mtl_perception.evaluation.profiling import profile_model  # noqa: E402
from mtl_perception.predictor import Predictor  # noqa: E402
from mtl_perception.train.config import TrainConfig, load_config  # noqa: E402

PROG = "experiment_mtl"
# Balancing methods: (weighting, gradient method).
METHODS = {
    "equal": ("equal", "none"),
    "uncertainty": ("uncertainty", "none"),
    "dwa": ("dwa", "none"),
    "bmtl": ("bmtl", "none"),
    "pcgrad": ("equal", "pcgrad"),
    "upgrad": ("equal", "upgrad"),
    "cagrad": ("equal", "cagrad"),
    "nash_mtl": ("equal", "nash_mtl"),
}
DEFAULT_METHODS = ["equal", "uncertainty", "dwa"]
# The tiny budget of --quick: a couple of steps, just to exercise every path.
QUICK_OVERRIDES = ["optim.epochs=2", "optim.warmup_steps=0", "model.input_size=[64,80]"]


@dataclass(frozen=True)
class RunSpec:
    """One training run: an architecture on a task set with a balancing method and a seed."""

    arch: str
    tasks: tuple[str, ...]
    seed: int
    weighting: str = "equal"
    grad_method: str = "none"
    single_task: bool = False

    @property
    def label(self) -> str:
        return (
            SINGLE_TASK_LABEL
            if self.single_task
            else balancing_label(self.weighting, self.grad_method)
        )

    @property
    def name(self) -> str:
        return run_name(self.arch, self.label, self.seed, self.tasks)

    def overrides(self) -> list[str]:
        return [
            f"name={self.name}",
            f"model.arch={self.arch}",
            f"model.tasks=[{','.join(self.tasks)}]",
            f"seed={self.seed}",
            f"balancing.weighting={self.weighting}",
            f"balancing.grad_method={self.grad_method}",
        ]


def build_dataset(workdir: Path, frames: int, log_dir: Path) -> Path:
    """The synthetic dataset (train / val / test), made with the package's own commands."""
    demo = load_demo_config(DEFAULT_CONFIG)
    config = demo.model_copy(
        update={
            "workdir": workdir,
            "synth": demo.synth.model_copy(update={"frames": frames, "seed": 1}),
            "build": demo.build.model_copy(
                update={"name": f"synth{frames}", "split": [0.6, 0.2, 0.2]}
            ),
        }
    )
    if (config.dataset / "splits.json").is_file():
        return config.dataset
    for step in plan(config)[:4]:  # synth, unpack, prune, build (not the demo's train/eval/replay)
        if not run_step(step, log_dir):
            raise UserError(
                f"dataset step {step.name!r} failed; see {log_dir / (step.name + '.log')}"
            )
    return config.dataset


def train(config: TrainConfig) -> dict[str, Any]:
    """Train one run (continuing an interrupted one); wall time, steps and per-epoch history."""
    from mtl_perception.train.trainer import Trainer  # heavy import, only when training

    trainer = Trainer(config)
    if (config.run_dir / "last.pt").is_file():
        trainer.resume()
    start = time.monotonic()
    result = trainer.train()
    return {
        "train_s": time.monotonic() - start,
        "steps": result.progress.global_step,
        "history": trainer.history,
    }


def score(checkpoint: Path, data: Path, tasks: Sequence[str], profile_runs: int) -> dict[str, Any]:
    """Test-split metrics exactly as ``mtl-eval`` computes them, plus CPU batch-1 cost."""
    predictor = Predictor.from_checkpoint(
        checkpoint, device="cpu", half=False, score_threshold=0.001, max_detections=100
    )
    summary = JobSummary(PROG)
    dataset = EvalDataset(
        data,
        "test",
        predictor.detection_classes if "detection" in predictor.tasks else None,
        predictor.segmentation_classes if "segmentation" in predictor.tasks else None,
        summary,
        depth="depth" in predictor.tasks,
    )
    report = evaluate(predictor, dataset, batch_size=8)
    if summary.failed:
        raise UserError(
            f"{data}: {summary.failed} test item(s) could not be scored: {summary.first_example}"
        )
    metrics = {}
    for task in tasks:
        key = PRIMARY_METRICS[task][0]
        value = report.get(task, {}).get(key)
        metrics[task] = (
            None
            if value is None or (isinstance(value, float) and math.isnan(value))
            else float(value)
        )
    profile = profile_model(
        predictor.model, predictor.input_size, predictor.device, runs=profile_runs
    )
    return {
        "metrics": metrics,
        "test_images": report["num_images"],
        "latency_ms": profile["latency_ms"],
        "gflops": profile["gflops"],
        "parameters": profile["parameters"],
    }


def run_one(spec: RunSpec, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """Train + score one run, or return its cached result."""
    torch.set_num_threads(1)  # on shared, oversubscribed cores one thread per process is fastest
    run_dir = args.out / spec.name
    cache = run_dir / "result.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    overrides = [
        f"data.root={data}",
        f"output_dir={args.out}",
        *spec.overrides(),
        *(QUICK_OVERRIDES if args.quick else []),
    ]
    config = load_config(args.config, overrides)
    print(f"[{PROG}] {spec.name}: training", flush=True)
    timing = train(config)
    print(
        f"[{PROG}] {spec.name}: {timing['steps']} steps in {timing['train_s']:.0f} s; "
        "scoring on test",
        flush=True,
    )
    result = {
        "name": spec.name,
        "arch": spec.arch,
        "tasks": list(spec.tasks),
        "seed": spec.seed,
        "label": spec.label,
        "weighting": spec.weighting,
        "grad_method": spec.grad_method,
        **timing,
        **score(run_dir / "last.pt", data, spec.tasks, args.profile_runs),
    }
    write_json(cache, result)
    return result


def plan_runs(args: argparse.Namespace) -> list[RunSpec]:
    """Seed by seed: the single-task models, every method, then the auxiliary-task run.

    Seed by seed, so that a stopped experiment still has complete, paired seeds.
    """
    tasks = tuple(args.tasks)
    runs = []
    for seed in args.seeds:
        runs += [RunSpec(args.arch, (task,), seed, single_task=True) for task in tasks]
        runs += [RunSpec(args.arch, tasks, seed, *METHODS[m]) for m in args.methods]
        if args.aux_tasks:
            equal = RunSpec(args.arch, tasks, seed, *METHODS["equal"])  # the paired baseline
            runs += [equal] if equal not in runs else []
            runs.append(RunSpec(args.arch, (*tasks, *args.aux_tasks), seed, *METHODS["equal"]))
    return runs


def report(
    results: Sequence[dict[str, Any]],
    args: argparse.Namespace,
    data: Path,
    config: TrainConfig,
    wall_s: float,
) -> str:
    """The results section: setup, the table and the curve check."""
    tasks = list(args.tasks)
    steps = sorted({r.get("steps") for r in results})
    multi = [r for r in results if r["label"] != SINGLE_TASK_LABEL]
    flat = curve_flatness(multi)
    splits = json.loads((data / "splits.json").read_text(encoding="utf-8"))
    primary = ", ".join(f"{t}: {PRIMARY_METRICS[t][0]}" for t in tasks)
    command = " ".join(
        [
            f"--tasks {' '.join(tasks)}",
            f"--methods {' '.join(args.methods)}",
            f"--seeds {' '.join(map(str, args.seeds))}",
            *([f"--aux-tasks {' '.join(args.aux_tasks)}"] if args.aux_tasks else []),
        ]
    )
    optim = config.optim
    lines = [
        f"## Multi-task experiment: {' + '.join(tasks)} on {args.arch}"
        + (" (QUICK smoke budget: figures meaningless)" if args.quick else ""),
        "",
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}; "
        f"`bench/experiment_mtl.py {command}`, {wall_s / 60:.0f} min wall",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs (load average at start "
        f"{args.load_at_start}), torch {torch.__version__}, {args.jobs} run(s) at a time "
        "with 1 thread each",
        f"- data: synthetic bag, {len(splits['train'])} train / {len(splits['val'])} val / "
        f"{len(splits['test'])} test frames (split by time); scored on **test** (never used "
        "for any choice; val only for the curves)",
        f"- budget per run: {optim.epochs} epochs, optimiser steps {steps}, batch "
        f"{config.data.batch_size}, input {list(config.model.input_size)}, {optim.optimizer} "
        f"lr {optim.lr} {optim.schedule}, from random initialisation; scored at the fixed "
        "budget (last.pt)",
        f"- primary metrics ({primary}) in %, mean ± sample std over seeds; Δm in % vs the "
        "single-task models of the same seed (positive = multi-task better); task weights: "
        "min–max over epochs and seeds; latency: CPU batch-1 median, fastest run of the row",
        "",
        markdown_table(summarise(results, tasks), tasks),
        "",
    ]
    if flat:
        lines.append(
            "Curves: mean val score of the multi-task runs "
            f"{100 * flat['at_fraction']:.1f} at 75% of the epochs, "
            f"{100 * flat['final']:.1f} at the end."
        )
        lines.append("")
    if args.aux_tasks:
        aux = list(args.aux_tasks)
        lines += [
            f"### Auxiliary {' + '.join(aux)}: {' + '.join(tasks)} with and without it",
            "",
            "Both runs of a seed use equal loss weights and the same budget; Δm in % over "
            f"{', '.join(tasks)} of the run with {' + '.join(aux)} against the run without "
            "(positive = the auxiliary supervision helped).",
            "",
            aux_table(aux_comparison(results, tasks, aux), tasks, aux),
            "",
        ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        help="existing processed dataset with a test split (default: build one)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where the synthetic dataset is built (default data/experiment[_quick])",
    )
    parser.add_argument("--frames", type=int, default=450, help="synthetic frames before pruning")
    parser.add_argument(
        "--out", type=Path, help="run folders and cached results (default runs/experiment[_quick])"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=ROOT / "config/train/experiment.yaml",
        help="the shared recipe",
    )
    parser.add_argument(
        "--arch",
        default="ssdlite_lraspp",
        help="architecture of every run (single-task runs use a subset of its heads)",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["detection", "segmentation"],
        choices=sorted(PRIMARY_METRICS),
    )
    parser.add_argument(
        "--aux-tasks",
        nargs="+",
        default=[],
        choices=sorted(PRIMARY_METRICS),
        help="also train the multi-task model with these tasks added (equal weights) and compare "
        "it, seed by seed, with the equal run without them",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=DEFAULT_METHODS,
        choices=sorted(METHODS),
        help="balancing methods",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--jobs", type=int, default=2, help="runs trained at the same time (one thread each)"
    )
    parser.add_argument("--profile-runs", type=int, default=5, help="timed batch-1 runs per model")
    parser.add_argument(
        "--results",
        type=Path,
        help="where the results section is written (default <out>/results.md; dated figures "
        "worth keeping go to docs/RESULTS.md)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="only write the table of the runs already cached in --out",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny budget and dataset: smoke check of every path"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """The whole experiment; exit status 1 if any run failed."""
    started = time.monotonic()
    suffix = "_quick" if args.quick else ""
    args.out = args.out or ROOT / f"runs/experiment{suffix}"
    args.load_at_start = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    if args.quick:
        args.profile_runs = min(args.profile_runs, 2)
    if len(set(args.seeds)) < 3 and not args.quick:
        print(
            f"[{PROG}] warning: {len(set(args.seeds))} seed(s); mean ± std needs at least 3",
            file=sys.stderr,
        )
    if args.data is not None:
        if not (args.data / "splits.json").is_file():
            raise UserError(f"--data {args.data}: not a processed dataset (no splits.json)")
        data = args.data
    else:
        data = build_dataset(
            args.workdir or ROOT / f"data/experiment{suffix}",
            80 if args.quick else args.frames,
            args.out / "logs",
        )
    if not json.loads((data / "splits.json").read_text(encoding="utf-8")).get("test"):
        raise UserError(
            f"{data}: the test split is empty; the experiment scores on a split nothing was "
            "chosen on"
        )
    overlap = set(args.aux_tasks) & set(args.tasks)
    if overlap:
        raise UserError(f"--aux-tasks {' '.join(sorted(overlap))}: already in --tasks")
    images = json.loads((data / "annotations.json").read_text(encoding="utf-8"))["images"]
    if "depth" in [*args.tasks, *args.aux_tasks] and not any(i.get("depth_file") for i in images):
        raise UserError(f"{data}: no frame has a depth_file; build it with --depth-topic")
    config = load_config(
        args.config, [f"data.root={data}", *(QUICK_OVERRIDES if args.quick else [])]
    )
    summary = JobSummary(PROG)
    results_file = args.results or args.out / "results.md"
    results: list[dict[str, Any]] = []
    if args.report_only:  # the table of the runs already cached, nothing trained
        caches = [args.out / spec.name / "result.json" for spec in plan_runs(args)]
        results = [
            json.loads(path.read_text(encoding="utf-8")) for path in caches if path.is_file()
        ]
    # Runs are independent: ``--jobs`` of them at a time, each in its own process with one thread.
    with ProcessPoolExecutor(
        max_workers=max(args.jobs, 1), mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        futures = {
            pool.submit(run_one, spec, args, data): spec
            for spec in plan_runs(args)
            if not args.report_only
        }
        for future in as_completed(futures):
            spec = futures[future]
            try:
                results.append(future.result())
                summary.add("done")
            except Exception as err:
                traceback.print_exception(err)
                summary.fail("run failed", f"{spec.name}: {err}")
            write_text(
                results_file, report(results, args, data, config, time.monotonic() - started)
            )
    order = {spec.name: index for index, spec in enumerate(plan_runs(args))}
    results.sort(key=lambda r: order.get(r["name"], len(order)))  # seed by seed, as planned
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
