# SPDX-License-Identifier: Apache-2.0
"""Latency, parameter and FLOP figures of the profiler on models with known cost."""

from __future__ import annotations

import pytest
import torch

from mtl_perception.evaluation.profiling import (
    count_gflops,
    measure_latency,
    profile_model,
    sample_input,
)


class PointwiseConv(torch.nn.Module):
    """Takes a list of [3, H, W] images like the real models; cost 2*3*4 FLOPs per pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=1, bias=False)
        self.calls = 0

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        self.calls += 1
        return self.conv(torch.stack(images))


def test_gflops_of_a_known_convolution() -> None:
    assert count_gflops(PointwiseConv(), (30, 40)) == pytest.approx(2 * 3 * 4 * 30 * 40 / 1e9)


def test_latency_counts_warmup_and_runs() -> None:
    model = PointwiseConv()
    stats = measure_latency(model, (16, 16), warmup=2, runs=5)
    assert model.calls == 7 and stats.runs == 5
    assert 0 < stats.min_ms <= stats.median_ms <= stats.max_ms
    with pytest.raises(ValueError, match="runs"):
        measure_latency(model, (16, 16), runs=0)


def test_profile_model_report() -> None:
    report = profile_model(PointwiseConv(), (8, 12), runs=2)
    assert report["parameters"] == 12 and report["input_size"] == [8, 12]
    assert report["latency_ms"] == report["latency"]["median_ms"] > 0


def test_sample_input_is_reproducible_and_in_range() -> None:
    first, second = sample_input((5, 6))[0], sample_input((5, 6))[0]
    assert torch.equal(first, second) and first.shape == (3, 5, 6)
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
