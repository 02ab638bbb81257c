# SPDX-License-Identifier: Apache-2.0
"""The demo report's figures, drawn with matplotlib (Agg backend: no display needed).

Each function takes plain data and writes one PNG atomically, so the figures can be reused
by other reports (replay, benchmarks) and tested without running the pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mtl_perception.core.atomic_io import atomic_path

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]  # name -> (steps, values)


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def training_curves(losses: Series, weights: Series, path: Path) -> Path:
    """Each task's loss and each task's weight against the training step, side by side."""
    fig, (ax_loss, ax_weight) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, (steps, values) in sorted(losses.items()):
        ax_loss.plot(steps, values, label=name, linewidth=1.2)
    ax_loss.set(title="Task losses (raw)", xlabel="step", ylabel="loss")
    ax_loss.set_yscale("log")
    for name, (steps, values) in sorted(weights.items()):
        ax_weight.plot(steps, values, label=name, linewidth=1.2)
    ax_weight.set(title="Task weights", xlabel="step", ylabel="weight")
    for ax in (ax_loss, ax_weight):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def per_class_bars(scores: Mapping[str, Mapping[str, float | None]], path: Path) -> Path:
    """Grouped bars: for each metric (e.g. AP@.5, IoU) its value per class name."""
    metrics = list(scores)
    fig, axes = plt.subplots(
        1, max(1, len(metrics)), figsize=(5.5 * max(1, len(metrics)), 3.8), squeeze=False
    )
    for ax, metric in zip(axes[0], metrics, strict=False):  # one axis even without metrics
        names = list(scores[metric])
        values = [np.nan if v is None else float(v) for v in scores[metric].values()]
        ax.bar(names, np.nan_to_num(values, nan=0.0), color="#4c72b0")
        for i, value in enumerate(values):
            ax.text(
                i,
                (0 if np.isnan(value) else value) + 0.02,
                "n/a" if np.isnan(value) else f"{value:.2f}",
                ha="center",
                fontsize=8,
            )
        ax.set(title=metric, ylim=(0, 1.1))
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def latency_histogram(
    latencies_ms: Sequence[float], path: Path, title: str = "End-to-end latency"
) -> Path:
    """Histogram of per-frame latencies with p50/p95 marked."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    data = np.asarray(latencies_ms, dtype=float)
    if data.size:
        ax.hist(data, bins=min(40, max(5, data.size // 3)), color="#55a868")
        for q, style in ((50, "--"), (95, ":")):
            value = float(np.percentile(data, q))
            ax.axvline(value, color="k", linestyle=style, label=f"p{q} = {value:.1f} ms")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no frames answered", ha="center", va="center", transform=ax.transAxes)
    ax.set(title=title, xlabel="ms", ylabel="frames")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def example_strip(frames: Sequence[np.ndarray], captions: Sequence[str], path: Path) -> Path:
    """A row of example frames (RGB uint8, e.g. overlays with boxes and masks drawn)."""
    n = max(1, len(frames))
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.0), squeeze=False)
    for ax, frame, caption in zip(axes[0][: len(frames)], frames, captions, strict=True):
        ax.imshow(frame)
        ax.set_title(caption, fontsize=8)
    for ax in axes[0]:
        ax.axis("off")
    return _save(fig, path)
