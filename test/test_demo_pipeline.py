# SPDX-License-Identifier: Apache-2.0
"""`make demo` in miniature: every step on a tiny synthetic bag, then a second run reusing it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtl_perception.core.errors import UserError
from mtl_perception.demo.pipeline import load_demo_config, plan

ROOT = Path(__file__).resolve().parents[1]


def _tiny_config(tmp_path: Path) -> Path:
    train = tmp_path / "train_tiny.yaml"
    train.write_text(
        yaml.safe_dump(
            {
                "device": "cpu",
                "data": {"batch_size": 2, "val_batch_size": 2, "num_workers": 0},
                "model": {"input_size": [48, 64], "tasks": ["detection", "segmentation", "depth"]},
                "optim": {"epochs": 1, "warmup_steps": 1},
                "logging": {"log_every": 1, "preview_images": 1, "progress": False},
            }
        )
    )
    config = tmp_path / "demo.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "workdir": str(tmp_path / "data"),
                "run_dir": str(tmp_path / "runs" / "demo"),
                "report_dir": str(tmp_path / "report"),
                "train_config": str(train),
                "synth": {"frames": 40, "size": "72x96"},
                "prune": {"threshold": 0.999},
                "build": {"window_s": 0.2, "split": [0.6, 0.4, 0.0]},
                "replay": {"lockstep": True, "max_frames": 6},
            }
        )
    )
    return config


def _demo(config: Path, ros_domain: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "mtl_perception.demo.cli", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **ros_domain},
        timeout=600,
        check=False,
    )


def test_demo_config_rejects_unknown_keys(tmp_path: Path) -> None:
    bad = tmp_path / "demo.yaml"
    bad.write_text("synth:\n  frams: 10\n")
    with pytest.raises(UserError, match=r"synth\.frams"):
        load_demo_config(bad)


def test_demo_plan_is_the_documented_command_sequence(tmp_path: Path) -> None:
    config = load_demo_config(_tiny_config(tmp_path))
    steps = {s.name: s.argv for s in plan(config)}
    assert list(steps) == ["synth", "unpack", "prune", "build", "train", "eval", "replay"]
    # The synth bag carries colour and aligned depth: build pairs them, replay names its topic.
    assert "/camera/aligned_depth_to_color/image_raw" in steps["build"]
    assert steps["replay"][steps["replay"].index("--topic") + 1] == "/camera/image_raw"
    assert (
        steps["replay"][steps["replay"].index("--depth-topic") + 1]
        == "/camera/aligned_depth_to_color/image_raw"
    )


def test_tiny_demo_runs_every_step_and_reuses_outputs(
    tmp_path: Path, ros_domain: dict[str, str]
) -> None:
    config_path = _tiny_config(tmp_path)
    first = _demo(config_path, ros_domain)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    for step in ("synth", "unpack", "prune", "build", "train", "eval", "replay"):
        assert f"[{step}] $ " in first.stdout  # the command is shown as a user would type it
    assert "mtl-data unpack" in first.stdout and "mtl-train --config" in first.stdout
    assert (
        "epoch 1/1 | loss detection" in first.stdout and "| val score" in first.stdout
    )  # training progress
    report = tmp_path / "report"
    page = (report / "index.html").read_text()
    for figure in (
        "training_curves.png",
        "per_class.png",
        "latency_histogram.png",
        "examples.png",
    ):
        assert (report / figure).is_file(), figure
        assert f'src="{figure}"' in page
    metrics = json.loads((report / "metrics.json").read_text())
    assert 0.0 <= metrics["segmentation"]["miou"] <= 1.0
    assert (
        metrics["depth"]["valid_pixels"] > 0 and 0.0 <= metrics["depth"]["delta1"] <= 1.0
    )  # synth bag's depth
    assert "depth AbsRel" in page
    replay = json.loads((report / "replay" / "report.json").read_text())
    assert replay["frames_answered"] == replay["frames_sent"] == 6
    assert (
        replay["accuracy"]["depth"]["frames"] == 6
    )  # ~/depth scored against the bag's depth topic
    assert "mIoU (incl. background)" in first.stdout  # the summary table

    checkpoint = tmp_path / "runs" / "demo" / "best.pt"
    before = checkpoint.stat().st_mtime_ns
    second = _demo(config_path, ros_domain)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
    assert checkpoint.stat().st_mtime_ns == before  # training was not redone
    assert "--resume" in second.stdout
    assert "[eval] reusing" in second.stdout and "[replay] reusing" in second.stdout
    assert "skipped" in second.stdout  # unpack found its output
