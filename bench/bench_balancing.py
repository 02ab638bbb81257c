"""Training-step time of every gradient method relative to plain backward (``none``).

Same run, same default multi-task model, same fixed batch at a small input: only the backward
differs. Target: at most 1.5x for two tasks. Prints a table and machine-readable lines
``RESULT step_time_ratio_<method>=<x>``.

    python bench/bench_balancing.py [--size 128] [--batch 4] [--steps 5] [--device auto]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_perception.balancing import GRAD_METHODS, build_gradient_balancer, build_weighting  # noqa: E402
from mtl_perception.device import resolve_device  # noqa: E402
from mtl_perception.nets import DEFAULT_ARCH, build_model  # noqa: E402
from mtl_perception.train.config import OptimConfig  # noqa: E402
from mtl_perception.train.engine import StepContext, train_step  # noqa: E402
from mtl_perception.train.optim import build_optimizer, build_scheduler  # noqa: E402


def fixed_batch(size: int, batch: int, device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Deterministic random images with two boxes and a mask each."""
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=gen) for _ in range(batch)]
    targets = [
        {
            "boxes": torch.tensor([[4.0, 4.0, size / 2, size / 2], [size / 3, size / 4, size - 2.0, size - 3.0]]),
            "labels": torch.tensor([1, 2]),
            "mask": torch.randint(0, 4, (size, size), generator=gen),
        }
        for _ in range(batch)
    ]
    return images, targets


def make_context(method: str, size: int, device: torch.device, total_steps: int) -> StepContext:
    """A fresh default model, equal weighting and ``method``, with the training settings."""
    torch.manual_seed(0)
    model = build_model(DEFAULT_ARCH, 2, 4, (size, size)).to(device)
    weighting = build_weighting("equal", model.tasks)
    balancer = build_gradient_balancer(
        method, weighting, model.shared_parameters(), {t: model.task_parameters(t) for t in model.tasks}, cosine_every=0
    )
    config = OptimConfig(warmup_steps=0)
    params = list(model.parameters())
    optimizer = build_optimizer(config, params)
    return StepContext(
        model, weighting, balancer, optimizer, build_scheduler(config, optimizer, total_steps),
        torch.amp.GradScaler(device.type, enabled=False), device, amp=False, grad_clip_norm=10.0, clip_params=params,
    )


def timed_step(ctx: StepContext, batch, step: int) -> float:
    """Wall-clock seconds of one training step (synchronised on CUDA)."""
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    start = time.perf_counter()
    train_step(ctx, batch, step)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    return time.perf_counter() - start


def measure(methods: list[str], size: int, batch, device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    """Fastest seconds per step of each method.

    Methods take turns step by step (round-robin) rather than one after the other, so a change
    in machine load during the run affects all of them alike; the minimum over steps (as
    ``timeit`` advises) is the figure least disturbed by other processes on a shared machine.
    """
    contexts = {method: make_context(method, size, device, warmup + steps) for method in methods}
    times: dict[str, list[float]] = {method: [] for method in methods}
    for step in range(warmup + steps):
        for method, ctx in contexts.items():
            seconds = timed_step(ctx, batch, step)
            if step >= warmup:
                times[method].append(seconds)
    return {method: min(values) for method, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", nargs="*", default=list(GRAD_METHODS))
    args = parser.parse_args()
    device = resolve_device(args.device)
    batch = fixed_batch(args.size, args.batch, device)
    methods = ["none", *[m for m in args.methods if m != "none"]]
    seconds = measure(methods, args.size, batch, device, args.steps, args.warmup)
    base = seconds["none"]
    print(f"device={device} arch={DEFAULT_ARCH} input={args.size}x{args.size} batch={args.batch} steps={args.steps}")
    print(f"{'method':<12} {'s/step':>8} {'ratio':>6}  target<=1.5")
    for method, value in seconds.items():
        ratio = value / base
        print(f"{method:<12} {value:8.3f} {ratio:6.2f}  {'ok' if ratio <= 1.5 else 'SLOW'}")
    for method, value in seconds.items():
        if method != "none":
            print(f"RESULT step_time_ratio_{method}={value / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
