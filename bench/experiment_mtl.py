#!/usr/bin/env python3
"""Multi-task vs single-task at an equal training budget on the synthetic dataset.

1. Screening: the default multi-task model with every balancing method in ``--methods``;
   the best ``--top`` (by the combined val score, ``equal`` excluded) are kept.
2. Every multi-task architecture with ``equal`` and with the kept methods.
3. The single-task baselines (ssdlite, frcnn, deeplabv3, lraspp).

Every run trains with the same recipe (``config/train/experiment.yaml``: optimiser steps,
batch, input size, schedule, augmentation, seed, trainable layers); only the architecture and
the balancing change. Each final checkpoint (``last.pt``: the same number of steps for every
run, not the best epoch) is scored on val with mtl-eval's own code (COCO mAP, mIoU incl.
background, at the frames' resolution) and profiled (CPU batch-1 latency, GFLOPs).

Resumable and idempotent: a run's figures are cached in ``<out>/<run>/result.json`` and a
re-run only does what is missing (an interrupted training continues from its ``last.pt``).
The table goes to ``bench/experiment_results.md`` (``--quick``: to ``<out>/results.md``).

    python bench/experiment_mtl.py                 # full experiment (~30 min on a shared 2-core CPU)
    python bench/experiment_mtl.py --quick         # tiny budget, smoke check
    python bench/experiment_mtl.py --data data/processed/synth   # reuse a processed dataset
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

from experiment_table import (  # noqa: E402
    SINGLE_TASK_LABEL,
    balancing_label,
    baselines_of,
    best_methods,
    comparison,
    markdown_table,
    run_name,
)

from mtl_perception.core.summary import JobSummary  # noqa: E402
from mtl_perception.core.atomic_io import write_json, write_text  # noqa: E402
from mtl_perception.demo.pipeline import DEFAULT_CONFIG, load_demo_config, plan, run_step  # noqa: E402
from mtl_perception.core.errors import UserError, run_cli  # noqa: E402
from mtl_perception.evaluation.cli import evaluate  # noqa: E402
from mtl_perception.evaluation.dataset import EvalDataset  # noqa: E402
from mtl_perception.evaluation.metrics import combined_score  # noqa: E402
from mtl_perception.evaluation.profiling import profile_model  # noqa: E402
from mtl_perception.predictor import Predictor  # noqa: E402
from mtl_perception.train.config import TrainConfig, load_config  # noqa: E402

PROG = "experiment_mtl"
MULTI_TASK_ARCHS = ("ssdlite_deeplabv3", "ssdlite_lraspp", "frcnn_deeplabv3")
SINGLE_TASK_ARCHS = ("ssdlite", "frcnn", "deeplabv3", "lraspp")
# Screening methods: (weighting, gradient method). Gradient methods run on equal weights.
SCREENING = {
    "equal": ("equal", "none"),
    "uncertainty": ("uncertainty", "none"),
    "dwa": ("dwa", "none"),
    "bmtl": ("bmtl", "none"),
    "pcgrad": ("equal", "pcgrad"),
    "upgrad": ("equal", "upgrad"),
    "cagrad": ("equal", "cagrad"),
    "nash_mtl": ("equal", "nash_mtl"),
}
DEFAULT_SCREENING = ["equal", "uncertainty", "dwa", "bmtl", "pcgrad", "upgrad"]
# The tiny budget of --quick: a couple of steps on a few frames, just to exercise every path.
QUICK_OVERRIDES = ["optim.epochs=1", "max_steps=2", "optim.warmup_steps=0", "model.input_size=[64,80]"]


@dataclass(frozen=True)
class RunSpec:
    """One training run of the experiment."""

    arch: str
    weighting: str = "equal"
    grad_method: str = "none"
    single_task: bool = False

    @property
    def label(self) -> str:
        return SINGLE_TASK_LABEL if self.single_task else balancing_label(self.weighting, self.grad_method)

    @property
    def name(self) -> str:
        return run_name(self.arch, self.label)

    def overrides(self) -> list[str]:
        return [f"name={self.name}", f"model.arch={self.arch}",
                f"balancing.weighting={self.weighting}", f"balancing.grad_method={self.grad_method}"]


def build_dataset(workdir: Path, frames: int, log_dir: Path) -> Path:
    """The synthetic dataset, made with the package's own commands (synth/unpack/prune/build).

    Reuses the demo's command plan (same steps a user types); skipped once ``splits.json``
    exists, and every tool is idempotent itself.
    """
    demo = load_demo_config(DEFAULT_CONFIG)
    config = demo.model_copy(update={
        "workdir": workdir,
        "synth": demo.synth.model_copy(update={"frames": frames, "seed": 1}),
        "build": demo.build.model_copy(update={"name": f"synth{frames}", "split": [0.8, 0.2, 0.0]}),
    })
    if (config.dataset / "splits.json").is_file():
        return config.dataset
    for step in plan(config)[:4]:  # synth, unpack, prune, build (not the demo's train/eval/replay)
        if not run_step(step, log_dir):
            raise UserError(f"dataset step {step.name!r} failed; see {log_dir / (step.name + '.log')}")
    if not (config.dataset / "splits.json").is_file():
        raise UserError(f"dataset build failed; see {log_dir / 'build.log'}")
    return config.dataset


def train(spec: RunSpec, config: TrainConfig) -> dict[str, Any]:
    """Train one run (continuing an interrupted one); its wall-clock time and steps."""
    from mtl_perception.train.trainer import Trainer  # heavy import, only when training

    trainer = Trainer(config)
    resumed = (config.run_dir / "last.pt").is_file()
    if resumed:
        trainer.resume()
    start = time.monotonic()
    result = trainer.train()
    return {"train_s": time.monotonic() - start, "steps": result.progress.global_step,
            "epochs": result.progress.epoch, "resumed": resumed}


def score(checkpoint: Path, data: Path, profile_runs: int) -> dict[str, Any]:
    """Val metrics exactly as ``mtl-eval`` computes them, plus CPU batch-1 cost."""
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", half=False, score_threshold=0.001, max_detections=100)
    summary = JobSummary(PROG)
    dataset = EvalDataset(
        data, "val",
        predictor.detection_classes if "detection" in predictor.tasks else None,
        predictor.segmentation_classes if "segmentation" in predictor.tasks else None,
        summary,
    )
    report = evaluate(predictor, dataset, batch_size=8)
    if summary.failed:
        raise UserError(f"{data}: {summary.failed} val item(s) could not be scored: {summary.first_example}")
    profile = profile_model(predictor.model, predictor.input_size, predictor.device, runs=profile_runs)
    detection, segmentation = report.get("detection", {}), report.get("segmentation", {})
    return {
        "map": detection.get("map"), "map_50": detection.get("map_50"), "miou": segmentation.get("miou"),
        "score": combined_score(report), "val_images": report["num_images"],
        "latency_ms": profile["latency_ms"], "gflops": profile["gflops"], "parameters": profile["parameters"],
    }


def run_one(spec: RunSpec, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """Train + score one run, or return its cached result."""
    run_dir = args.out / spec.name
    cache = run_dir / "result.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    overrides = [f"data.root={data}", f"output_dir={args.out}", *spec.overrides(), *(QUICK_OVERRIDES if args.quick else [])]
    config = load_config(args.config, overrides)
    timing_file = run_dir / "train_time.json"
    if timing_file.is_file():  # trained earlier, scoring was interrupted
        timing = json.loads(timing_file.read_text(encoding="utf-8"))
    else:
        print(f"[{PROG}] {spec.name}: training", flush=True)
        timing = train(spec, config)
        write_json(timing_file, timing)
    print(f"[{PROG}] {spec.name}: {timing['steps']} steps in {timing['train_s']:.0f} s; scoring", flush=True)
    result = {"name": spec.name, "arch": spec.arch, "balancing": spec.label, "weighting": spec.weighting,
              "grad_method": spec.grad_method, **timing, **score(run_dir / "last.pt", data, args.profile_runs)}
    write_json(cache, result)
    return result


def run_all(
    specs: Sequence[RunSpec], args: argparse.Namespace, data: Path, summary: JobSummary,
    results: dict[str, dict[str, Any]], on_result: Callable[[], None],
) -> None:
    """Run each spec into ``results``; a failing run is counted (first error shown) and the
    rest goes on. ``on_result`` after every run keeps the results file current, so an
    experiment stopped part-way still leaves a table of what finished."""
    for spec in specs:
        if spec.name in results:
            continue
        try:
            results[spec.name] = run_one(spec, args, data)
            summary.add("done")
        except Exception as err:  # noqa: BLE001 - one broken run must not lose the others
            traceback.print_exc()
            summary.fail("run failed", f"{spec.name}: {err}")
        on_result()


def report(results: Sequence[dict[str, Any]], chosen: Sequence[str], args: argparse.Namespace, data: Path, config: TrainConfig) -> str:
    """The results file: budget, machine, the table and the headline figures."""
    budget = (
        f"{config.optim.epochs} epochs of the train split (same optimiser steps for every run, see 'steps'), "
        f"batch {config.data.batch_size}, input {list(config.model.input_size)}, {config.optim.optimizer} "
        f"lr {config.optim.lr} {config.optim.schedule} (warm-up {config.optim.warmup_steps}), seed {config.seed}, "
        f"model kwargs {config.model.kwargs}, from random initialisation"
        + (" — QUICK smoke budget, figures meaningless" if args.quick else "")
    )
    steps = sorted({r.get("steps") for r in results})
    lines = [
        "# Multi-task vs single-task at an equal training budget",
        "",
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; shared with other jobs (load average at start {args.load_at_start})",
        f"- dataset: {data} (val split, scored at the frames' resolution with mtl-eval's code)",
        f"- budget: {budget}; optimiser steps per run: {steps}",
        f"- screening on ssdlite_deeplabv3 picked: {', '.join(chosen) or 'nothing'} (combined val score, equal excluded)",
        "- accuracy in %, Δ in points vs the matching single-task model (detection vs ssdlite/frcnn, "
        "segmentation vs deeplabv3/lraspp); cost ratios vs the sum of those two; latency = CPU batch-1 median of 20 runs, "
        "shown per architecture as the fastest over its runs (the machine is shared); train s is wall-clock, informative only",
        "",
        markdown_table(results),
        "",
        goal_check(results),
        "",
    ]
    return "\n".join(lines)


def goal_check(results: Sequence[dict[str, Any]]) -> str:
    """The package's goal, stated per result: which multi-task runs match or beat both of their
    single-task models (mAP@[.5:.95] and mIoU), and at what share of their combined GFLOPs."""
    singles = {r["arch"]: r for r in results if r["balancing"] == SINGLE_TASK_LABEL}
    winners = []
    for r in results:
        c = comparison(r, singles)
        if c["d_map"] is not None and c["d_miou"] is not None and c["d_map"] >= 0 and c["d_miou"] >= 0:
            winners.append(f"{r['name']} (GFLOPs {c['gflops_ratio']:.2f}x the sum)")
    found = ", ".join(winners) if winners else "none"
    return f"Goal (match or beat both single-task models at about half their combined cost): runs matching both: {found}."


def print_headline(results: Sequence[dict[str, Any]]) -> None:
    """RESULT lines for the best multi-task run (by combined score) against its baselines."""
    singles = {r["arch"]: r for r in results if r["balancing"] == SINGLE_TASK_LABEL}
    multi = [r for r in results if baselines_of(r["arch"]) and r.get("score") is not None]
    if not multi:
        return
    best = max(multi, key=lambda r: r["score"])
    c = comparison(best, singles)
    print(f"best multi-task run: {best['name']} (score {best['score']:.4f})")
    for key in ("d_map", "d_miou", "latency_ratio", "gflops_ratio"):
        if c[key] is not None:
            print(f"RESULT experiment_best_mtl_{key}={c[key]:.4f}")


def _row_order(result: dict[str, Any]) -> tuple[int, int, str]:
    """Table order: multi-task architectures (screening model first, ``equal`` first within
    one), then the baselines."""
    arch = result["arch"]
    archs = [*MULTI_TASK_ARCHS, *SINGLE_TASK_ARCHS]
    return (archs.index(arch) if arch in archs else len(archs), int(result["balancing"] != "equal"), result["name"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="existing processed dataset (default: build one under --workdir)")
    parser.add_argument("--workdir", type=Path, help="where the synthetic dataset is built (default data/experiment[_quick])")
    parser.add_argument("--frames", type=int, default=600, help="synthetic frames before pruning")
    parser.add_argument("--out", type=Path, help="run folders and cached results (default runs/experiment[_quick])")
    parser.add_argument("--config", type=Path, default=ROOT / "config/train/experiment.yaml", help="the shared recipe")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_SCREENING, choices=sorted(SCREENING), help="screening methods")
    parser.add_argument("--top", type=int, default=2, help="best screening methods carried to every architecture")
    parser.add_argument("--profile-runs", type=int, default=20, help="timed batch-1 runs per model")
    parser.add_argument("--results", type=Path, help="results file (default bench/experiment_results.md; --quick: <out>/results.md)")
    parser.add_argument("--quick", action="store_true", help="tiny budget and dataset: smoke check of every path")
    return parser


def run(args: argparse.Namespace) -> int:
    """The whole experiment; exit status 1 if any run failed."""
    torch.set_num_threads(2)
    suffix = "_quick" if args.quick else ""
    args.out = args.out or ROOT / f"runs/experiment{suffix}"
    args.load_at_start = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    if args.quick:
        args.profile_runs = min(args.profile_runs, 2)
    if args.data is not None:
        if not (args.data / "splits.json").is_file():
            raise UserError(f"--data {args.data}: not a processed dataset (no splits.json)")
        data = args.data
    else:
        workdir = args.workdir or ROOT / f"data/experiment{suffix}"
        data = build_dataset(workdir, 60 if args.quick else args.frames, args.out / "logs")
    config = load_config(args.config, [f"data.root={data}", *(QUICK_OVERRIDES if args.quick else [])])
    summary = JobSummary(PROG)
    results_file = args.results or (args.out / "results.md" if args.quick else ROOT / "bench/experiment_results.md")
    results: dict[str, dict[str, Any]] = {}
    chosen: list[str] = []

    def write_report() -> None:
        write_text(results_file, report(list(results.values()), chosen, args, data, config))

    run_all([RunSpec(MULTI_TASK_ARCHS[0], *SCREENING[m]) for m in args.methods], args, data, summary, results, write_report)
    chosen = best_methods({r["balancing"]: r for r in results.values()}, count=args.top)
    # Baselines before the other multi-task models, so every finished row has its comparison;
    # then method by method over the architectures, so a stopped experiment still covers each.
    singles = [RunSpec(arch, single_task=True) for arch in SINGLE_TASK_ARCHS]
    finals = [RunSpec(arch, *SCREENING[m]) for m in ["equal", *chosen] for arch in MULTI_TASK_ARCHS[1:]]
    run_all([*singles, *finals], args, data, summary, results, write_report)

    ordered = sorted(results.values(), key=_row_order)
    text = report(ordered, chosen, args, data, config)
    write_text(results_file, text)
    print(text)
    print(f"results written to {results_file}")
    print_headline(ordered)
    summary.print(sys.stderr)
    return summary.exit_code()


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: one-line errors, exit codes."""
    run_cli(lambda: run(build_parser().parse_args(argv)), PROG)


if __name__ == "__main__":
    main()
