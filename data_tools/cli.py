# SPDX-License-Identifier: Apache-2.0
"""``mtl-data``: one command with a subcommand per data-pipeline step.

Each step lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
this file only wires them together so ``mtl-data --help`` lists every step.
"""

from __future__ import annotations

import argparse
import importlib

from mtl_perception.core.errors import run_cli


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep each module docstring's layout (tables, lists) in ``--help``."""


# subcommand -> (module, one-line help). Modules are imported lazily so `--help` is fast.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("data_tools.synth", "write a deterministic labeled demo bag (+ COCO ground truth)"),
    "unpack": (
        "data_tools.unpack",
        "extract every image message of ROS 1/ROS 2 bags to files + manifest",
    ),
    "prune": (
        "data_tools.prune",
        "drop near-duplicate frames by SSIM against the last kept frame",
    ),
    "build": (
        "data_tools.build",
        "pruned frames + COCO/CVAT labels -> training dataset with splits",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``mtl-data`` parser: one sub-command per entry of ``SUBCOMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="mtl-data",
        description=(
            "Build a multi-task dataset from robot bags: synth -> unpack -> prune -> build."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(
            name,
            help=help_text,
            description=(module.__doc__ or help_text).strip(),
            formatter_class=HelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def _main() -> int:
    args = build_parser().parse_args()
    return args._run(args)


def main() -> None:
    """Console-script entry point."""
    run_cli(_main, "mtl-data")


if __name__ == "__main__":
    main()
