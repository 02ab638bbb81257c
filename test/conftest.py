"""Shared test set-up: small thread counts, an isolated DDS domain, tiny data folders."""

from __future__ import annotations

import os
import random

# DDS isolation for every test that touches ROS: one domain per test run, loopback only.
# Set at import time, before any test can initialise rclpy, so subprocesses inherit it too.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_PYTHON_CHECK_FIELDS", None)  # field checks make Image.data assignment ~1000x slower
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


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
