# SPDX-License-Identifier: Apache-2.0
"""``mtl-demo`` (``make demo``): every part of the package on the built-in synthetic bag.

synth bag -> unpack -> prune -> build dataset -> train -> eval -> replay through the live
ROS 2 node -> HTML report. Runs on a CPU in minutes and downloads nothing. A second run
reuses what exists (data, checkpoint); ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from mtl_perception.core.errors import UserError, run_cli
from mtl_perception.core.json_io import format_number
from mtl_perception.demo.pipeline import (
    DemoConfig,
    Step,
    is_up_to_date,
    load_demo_config,
    plan,
    run_step,
)
from mtl_perception.demo.report import build_report

STEP_NAMES = ("synth", "unpack", "prune", "build", "train", "eval", "replay")


def build_parser() -> argparse.ArgumentParser:
    """The ``mtl-demo`` command line."""
    parser = argparse.ArgumentParser(prog="mtl-demo", description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "--config", type=Path, default=Path("config/demo.yaml"), help="demo settings (YAML)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="delete the demo's earlier outputs and start over"
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=STEP_NAMES,
        metavar="STEP",
        help=f"steps to leave out (of {', '.join(STEP_NAMES)})",
    )
    return parser


def _remove_outputs(config: DemoConfig) -> None:
    """``--fresh``: remove only what the demo itself writes (never anything else)."""
    for path in (config.workdir, config.run_dir, config.report_dir):
        if path.exists():
            print(f"removing {path}")
            shutil.rmtree(path)


def _train_step(step: Step, config: DemoConfig) -> Step:
    """Continue (or confirm) an earlier training run instead of starting it again."""
    if (config.run_dir / "last.pt").is_file():
        step.argv.append("--resume")
    return step


def _print_summary(
    steps: list[Step], summary: dict[str, object], page: Path, total_s: float
) -> None:
    width = max(len(k) for k in summary)
    print("\n" + "=" * 60)
    print("mtl_perception demo summary")
    print("-" * 60)
    for step in steps:
        print(f"  {step.name:<8} {step.status:<22} {step.seconds:7.1f} s")
    print("-" * 60)
    for key, value in summary.items():
        print(f"  {key:<{width}}  {format_number(value)}")
    print("-" * 60)
    print(f"  total {total_s / 60:.1f} min; report: {page.resolve()}")
    print("=" * 60)


def _main() -> int:
    args = build_parser().parse_args()
    config = load_demo_config(args.config)
    if not config.train_config.is_file():
        raise UserError(
            f"demo config {args.config}: train_config {config.train_config} does not exist"
        )
    if args.fresh:
        _remove_outputs(config)
    start = time.monotonic()
    steps = [s for s in plan(config) if s.name not in args.skip]
    for step in steps:
        if step.name == "train":
            _train_step(step, config)
        if is_up_to_date(step):
            print(f"\n[{step.name}] reusing {step.result} (newer than {step.source})")
            step.status = "reused"
            continue
        if not run_step(step, config.report_dir / "logs"):
            print(
                f"\n[{step.name}] failed; see {config.report_dir / 'logs' / (step.name + '.log')}",
                file=sys.stderr,
            )
            break
    for step in steps:
        if step.status == "pending":
            step.status = "not run"
    page, summary = build_report(config, steps)
    _print_summary(steps, summary, page, time.monotonic() - start)
    return 0 if all(s.status in ("ok", "reused") for s in steps) else 1


def main() -> None:
    """Console-script entry point."""
    run_cli(_main, "mtl-demo")


if __name__ == "__main__":
    main()
