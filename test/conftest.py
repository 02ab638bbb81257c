# SPDX-License-Identifier: Apache-2.0
"""Shared test set-up: small thread counts, an isolated DDS domain, tiny data folders."""

from __future__ import annotations

import os
import random
from pathlib import Path

# DDS isolation for every test that touches ROS: one domain per test run, loopback only.
# Set at import time, before any test can initialise rclpy, so subprocesses inherit it too.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop(
    "ROS_PYTHON_CHECK_FIELDS", None
)  # field checks make Image.data assignment ~1000x slower
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest


@pytest.fixture(scope="session")
def ros_domain() -> dict[str, str]:
    """The DDS environment of this test run (for tests that start ROS subprocesses)."""
    return {
        "ROS_DOMAIN_ID": os.environ["ROS_DOMAIN_ID"],
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
    }


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    """Tests use tiny tensors; one intra-op thread avoids oversubscribing 2-core CI machines."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """Factory: write a random-weights checkpoint (no download) and return its path.

    ``make_checkpoint(arch="ssdlite_deeplabv3", detection_classes=("box", "cone"),
    segmentation_classes=("background", "floor"), input_size=(64, 64), tasks=None)``.
    """
    from mtl_perception.checkpoint import inference_fields, save_checkpoint
    from mtl_perception.nets import build_model

    def _make(
        arch: str = "ssdlite_deeplabv3",
        detection_classes: tuple[str, ...] = ("box", "cone", "ball"),
        segmentation_classes: tuple[str, ...] = ("background", "floor", "wall"),
        input_size: tuple[int, int] = (64, 64),
        seed: int = 0,
        tasks: tuple[str, ...] | None = None,
    ):
        import torch

        torch.manual_seed(seed)
        model = build_model(
            arch, len(detection_classes), len(segmentation_classes), input_size, tasks=tasks
        )
        path = tmp_path_factory.mktemp("ckpt") / f"{arch}.pt"
        save_checkpoint(path, inference_fields(model, detection_classes, segmentation_classes))
        return path

    return _make


def shared_dir() -> Path | None:
    """The team's ``shared/`` folder beside the checkout (CI's layout), or beside the folder
    holding it (git worktrees in a subfolder); ``None`` when there is none."""
    repo = Path(__file__).resolve().parents[1]
    for candidate in (repo.parent / "shared", repo.parent.parent / "shared"):
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared() -> Path:
    """``shared/`` (rosdistro snapshot, vendored ROS 2 tools). CI always has it: fail there."""
    folder = shared_dir()
    if folder is None:
        message = "no shared/ folder beside the checkout (rosdistro snapshot)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder
