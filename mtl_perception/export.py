# SPDX-License-Identifier: Apache-2.0
"""``mtl-export``: turn a training run into a deployable model folder, ``models/<name>/``.

A run folder (``runs/<name>/``) holds what training needs to resume: optimiser, scheduler,
RNG and balancer state next to the weights. The robot needs the weights and what describes
them. ``mtl-export`` writes::

    models/<name>/
        model.pt         the checkpoint without training state (docs/CONTRACTS.md section 5)
        config.yaml      the resolved training config the model was trained with
        model_card.json  classes, input size, normalisation, metrics, training data, source
        MODEL_CARD.md    the same for people

The folder is written next to its final place and renamed into it, so a half-written model
never appears; an existing model is replaced only with ``--force``. Point the node at it:
``ros2 launch mtl_perception perception.launch.py model:=models/<name>/model.pt``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from mtl_perception.checkpoint import load_checkpoint, save_checkpoint
from mtl_perception.core import atomic_io
from mtl_perception.core.constants import format_hw
from mtl_perception.core.errors import UserError, run_cli
from mtl_perception.core.json_io import read_json

PROG = "mtl-export"
MODEL_FILE = "model.pt"
# Training state only resuming needs (with EMA, `model` holds the averaged weights; `ema` the
# online ones); everything else in a checkpoint is kept.
TRAINING_STATE = frozenset({
    "optimizer", "scheduler", "scaler", "balancer", "rng", "ema",
    "step_in_epoch", "epoch_loss_sums", "epoch_loss_counts",
})  # fmt: skip


def deployable(payload: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint ``payload`` without training state (format and version are re-added)."""
    return {
        key: value
        for key, value in payload.items()
        if key not in TRAINING_STATE and key not in ("format", "version")
    }


def _dataset_summary(config: dict[str, Any]) -> dict[str, Any]:
    """Where the training data came from and how many images each split had (if still there)."""
    root = (config.get("data") or {}).get("root")
    summary: dict[str, Any] = {"root": root}
    splits_file = Path(root) / "splits.json" if root else None
    if splits_file is not None and splits_file.is_file():
        splits = read_json(splits_file)
        summary["images"] = {
            name: len(ids) for name, ids in splits.items() if isinstance(ids, list)
        }
        summary["group_by"] = splits.get("group_by")
    return summary


def model_card(
    name: str, payload: dict[str, Any], source: Path, eval_metrics: dict[str, Any] | None
) -> dict[str, Any]:
    """What a user of the model needs to know, from the checkpoint (and an ``mtl-eval`` report)."""
    kwargs = payload["model_kwargs"]
    config = payload.get("config") or {}
    balancing = config.get("balancing") or {}
    return {
        "name": name,
        "exported": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": str(source),
        "arch": kwargs.get("arch"),
        "tasks": kwargs.get("tasks"),
        "input_size_hw": list(kwargs.get("input_size") or []),
        "mean": kwargs.get("mean"),
        "std": kwargs.get("std"),
        "detection_classes": list(payload["detection_classes"]),
        "segmentation_classes": list(payload["segmentation_classes"]),
        "training": {
            "epochs": payload.get("epoch"),
            "steps": payload.get("global_step"),
            "weighting": balancing.get("weighting"),
            "grad_method": balancing.get("grad_method"),
            "data": _dataset_summary(config),
            "pretrained": payload.get("pretrained"),
        },
        "validation_metrics": payload.get("metrics"),
        "evaluation": eval_metrics,
    }


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "n/a" if value is None else str(value)


def card_markdown(card: dict[str, Any]) -> str:
    """``MODEL_CARD.md``: the model card for people."""
    size = card["input_size_hw"]
    training = card["training"]
    lines = [
        f"# Model `{card['name']}`",
        "",
        f"- Architecture: `{card['arch']}`, tasks: {', '.join(card['tasks'] or [])}",
        f"- Input size (HxW): {format_hw(size) if len(size) == 2 else 'n/a'}; "
        f"normalisation mean {card['mean']}, std {card['std']}",
        f"- Detection classes: {', '.join(card['detection_classes']) or '(none)'}",
        f"- Segmentation classes: {', '.join(card['segmentation_classes']) or '(none)'}",
        f"- Trained: {_number(training['epochs'])} epochs, {_number(training['steps'])} steps, "
        f"weighting `{training['weighting']}`, gradient method `{training['grad_method']}`",
        f"- Training data: `{training['data'].get('root')}`"
        + (
            f", images per split {training['data']['images']}"
            if training["data"].get("images")
            else ""
        ),
        f"- Exported {card['exported']} from `{card['source']}`",
        "",
    ]
    for title, metrics in (
        ("Validation (best epoch)", card["validation_metrics"]),
        ("Evaluation (mtl-eval)", card["evaluation"]),
    ):
        if not metrics:
            continue
        lines += [f"## {title}", "", "| figure | value |", "| --- | --- |"]
        for task, values in metrics.items():
            if isinstance(values, dict):
                lines += [
                    f"| {task} {key} | {_number(v)} |"
                    for key, v in values.items()
                    if isinstance(v, int | float) or v is None
                ]
            elif isinstance(values, int | float):
                lines.append(f"| {task} | {_number(values)} |")
        lines.append("")
    return "\n".join(lines)


def export(
    run_checkpoint: Path,
    out_dir: Path,
    name: str,
    eval_report: Path | None = None,
    force: bool = False,
) -> Path:
    """Write ``out_dir/name/`` from a run's checkpoint; returns the folder.

    Raises:
        UserError: The checkpoint or report is missing or invalid, or the model folder
            exists and ``force`` is not set.
    """
    payload = load_checkpoint(run_checkpoint)
    eval_metrics = read_json(eval_report) if eval_report is not None else None
    target = out_dir / name
    if target.exists() and not force:
        raise UserError(f"{target} exists; pass --force to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    try:
        save_checkpoint(staging / MODEL_FILE, deployable(payload))
        config = payload.get("config")
        if config:
            atomic_io.write_text(staging / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        card = model_card(name, payload, run_checkpoint, eval_metrics)
        atomic_io.write_json(staging / "model_card.json", card)
        atomic_io.write_text(staging / "MODEL_CARD.md", card_markdown(card))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``mtl-export``."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "run", type=Path, help="run folder of mtl-train (runs/<name>) or a checkpoint file"
    )
    parser.add_argument("--name", help="model name (default: the run folder's name)")
    parser.add_argument("--checkpoint", default="best.pt", help="checkpoint inside the run folder")
    parser.add_argument(
        "--eval", type=Path, help="mtl-eval metrics JSON to put into the model card"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("models"), help="folder of deployed models"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing model folder")
    return parser


def main() -> None:
    """Console entry point of ``mtl-export``."""

    def run() -> int:
        args = build_parser().parse_args()
        checkpoint = args.run / args.checkpoint if args.run.is_dir() else args.run
        name = args.name or (args.run.name if args.run.is_dir() else args.run.parent.name)
        torch.set_num_threads(1)  # loading and saving only
        target = export(checkpoint, args.out, name, args.eval, args.force)
        print(f"{PROG}: {target} ({MODEL_FILE}, config.yaml, model_card.json, MODEL_CARD.md)")
        return 0

    run_cli(run, PROG)


if __name__ == "__main__":
    main()
