# SPDX-License-Identifier: Apache-2.0
"""Model cost figures reported next to the accuracy: latency, parameter count and GFLOPs.

Latency is measured on the model's forward pass at batch 1 (what the robot runs per frame),
after warm-up runs, and reported as the median so one scheduler hiccup on a shared machine
does not skew it. FLOPs come from PyTorch's own ``FlopCounterMode`` (a multiply-add counts
as 2 FLOPs; data-dependent post-processing such as NMS is not a FLOP and is not counted).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mtl_perception.device import autocast
from mtl_perception.nets import count_parameters

__all__ = ["LatencyStats", "count_gflops", "measure_latency", "profile_model", "sample_input"]


@dataclass(frozen=True)
class LatencyStats:
    """Forward-pass latency in milliseconds over ``runs`` timed runs."""

    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    runs: int


def sample_input(
    input_size: Sequence[int], device: torch.device | str = "cpu", seed: int = 0
) -> list[torch.Tensor]:
    """A reproducible batch-1 input ``[3, H, W]`` in [0, 1], as models take it (CONTRACTS §6)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, int(input_size[0]), int(input_size[1]), generator=generator).to(device)]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(
    model: torch.nn.Module,
    input_size: Sequence[int],
    device: torch.device | str = "cpu",
    warmup: int = 3,
    runs: int = 10,
    half: bool = False,
) -> LatencyStats:
    """Time ``model(images)`` at batch 1 in eval mode; the first ``warmup`` runs are discarded."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    device = torch.device(device)
    model = model.eval().to(device)
    images = sample_input(input_size, device)
    timings: list[float] = []
    for index in range(warmup + runs):
        _synchronize(device)
        start = time.perf_counter()
        with autocast(device, half):
            model(images)
        _synchronize(device)
        if index >= warmup:
            timings.append((time.perf_counter() - start) * 1000.0)
    return LatencyStats(
        statistics.median(timings), statistics.fmean(timings), min(timings), max(timings), runs
    )


@torch.inference_mode()
def count_gflops(model: torch.nn.Module, input_size: Sequence[int]) -> float:
    """GFLOPs of one eval-mode forward pass at batch 1 (on the CPU: counting is device-free)."""
    model = model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter:
        model(sample_input(input_size, device))
    return counter.get_total_flops() / 1e9


def profile_model(
    model: torch.nn.Module,
    input_size: Sequence[int],
    device: torch.device | str = "cpu",
    warmup: int = 3,
    runs: int = 10,
    half: bool = False,
) -> dict[str, Any]:
    """Latency (ms/frame, batch 1), parameter count and GFLOPs as one JSON-ready dict."""
    latency = measure_latency(model, input_size, device, warmup=warmup, runs=runs, half=half)
    return {
        "latency_ms": latency.median_ms,
        "latency": asdict(latency),
        "parameters": count_parameters(model),
        "gflops": count_gflops(model, input_size),
        "input_size": [int(input_size[0]), int(input_size[1])],
        "device": str(device),
    }
