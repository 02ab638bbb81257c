# SPDX-License-Identifier: Apache-2.0
"""``mtl-train``: train a multi-task model from a YAML config.

    mtl-train --config config/train/demo_cpu.yaml [key=value ...] [--resume]

Under torchrun (``torchrun --nproc_per_node=N -m mtl_perception.train --config ...``) every
process runs this; only rank 0 writes files. Exit status: 0 done, 2 user error.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mtl_perception.core.errors import UserError, run_cli
from mtl_perception.train.config import TrainConfig, load_config

PROG = "mtl-train"


def build_parser() -> argparse.ArgumentParser:
    """The ``mtl-train`` command line: ``--config``, ``key=value`` overrides and flags."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train a multi-task perception model from a YAML config."
    )
    parser.add_argument(
        "--config", help="YAML config (see config/train/default.yaml for every key)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=0.001"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue <output_dir>/<name>/last.pt exactly where it stopped",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    return parser


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """The config to run; on ``--resume`` the run's saved config plus any overrides."""
    config = load_config(args.config, args.overrides)
    if args.resume:
        saved = config.run_dir / "config.yaml"
        if not (config.run_dir / "last.pt").is_file():
            raise UserError(
                f"--resume: {config.run_dir / 'last.pt'} does not exist (no run named "
                f"{config.name!r} to continue)"
            )
        if saved.is_file():
            config = load_config(saved, args.overrides)
    return config


def run(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and train; returns the exit status (UserError propagates)."""
    args = build_parser().parse_intermixed_args(argv)  # overrides may stand on both sides of flags
    config = resolve_config(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    from mtl_perception.train.distributed import init_distributed, shutdown_distributed
    from mtl_perception.train.trainer import Trainer

    context = init_distributed()
    finished = False
    try:
        trainer = Trainer(config, context)
        if args.resume:
            trainer.resume()
        result = trainer.train()
        finished = True
    finally:
        shutdown_distributed(wait_for_peers=finished)
    if context.is_main:
        progress = result.progress
        print(
            f"{PROG}: {progress.global_step} steps, {progress.epoch} epochs; "
            f"best score {progress.best_score:.4f}; run in {result.run_dir}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: one-line errors, exit codes."""
    run_cli(lambda: run(argv), PROG)
