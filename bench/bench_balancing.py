# SPDX-License-Identifier: Apache-2.0
"""Training-step time of every gradient method relative to plain backward (``none``).

Same run, same default multi-task model, same fixed batch at a small input, same threads: only
the backward differs. On CPU a step is timed by the CPU time it used (per-core work: other
processes on a shared machine do not inflate it), on CUDA by synchronised wall time.

Each method runs in both Jacobian modes: ``exact`` (per-task gradients of the shared
parameters; target as close to 1.5x as batched Jacobians allow) and ``rep`` (of the shared
features, one backward through the backbone; target <= 1.2x). Prints a table and
machine-readable lines ``RESULT step_time_ratio_<method>=<x>`` (exact) and
``RESULT rep_step_time_ratio_<method>=<x>``.

    python bench/bench_balancing.py [--size 128] [--batch 4] [--steps 8] [--device auto]
                                    [--tasks detection segmentation depth]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_perception.balancing import (
    GRAD_METHODS,
    JACOBIANS,
    build_gradient_balancer,
    build_weighting,
)
from mtl_perception.device import resolve_device
from mtl_perception.nets import DEFAULT_ARCH, build_model
from mtl_perception.train.config import OptimConfig
from mtl_perception.train.engine import Batch, StepContext, train_step
from mtl_perception.train.optim import build_optimizer, build_scheduler


def fixed_batch(
    size: int, batch: int, device: torch.device
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Deterministic random images with two boxes, a mask and a depth map (metres) each."""
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=gen) for _ in range(batch)]
    targets = [
        {
            "boxes": torch.tensor(
                [[4.0, 4.0, size / 2, size / 2], [size / 3, size / 4, size - 2.0, size - 3.0]]
            ),
            "labels": torch.tensor([1, 2]),
            "mask": torch.randint(0, 4, (size, size), generator=gen),
            "depth": 0.5 + 4.0 * torch.rand(size, size, generator=gen),
        }
        for _ in range(batch)
    ]
    return images, targets


def make_context(
    method: str,
    jacobian: str,
    size: int,
    device: torch.device,
    total_steps: int,
    tasks: list[str] | None,
) -> StepContext:
    """A fresh default model, equal weighting and ``method``, with the training settings."""
    torch.manual_seed(0)
    model = build_model(DEFAULT_ARCH, 2, 4, (size, size), tasks=tasks).to(device)
    weighting = build_weighting("equal", model.tasks)
    balancer = build_gradient_balancer(
        method,
        weighting,
        model.shared_parameters(),
        {t: model.task_parameters(t) for t in model.tasks},
        options={"jacobian": jacobian},
        cosine_every=0,
        last_shared_params=model.last_shared_parameters(),
    )
    config = OptimConfig(warmup_steps=0)
    params = list(model.parameters())
    optimizer = build_optimizer(config, params)
    return StepContext(
        model,
        weighting,
        balancer,
        optimizer,
        build_scheduler(config, optimizer, total_steps),
        torch.amp.GradScaler(device.type, enabled=False),
        device,
        amp=False,
        grad_clip_norm=10.0,
        clip_params=params,
    )


def timed_step(ctx: StepContext, batch: Batch, step: int) -> float:
    """Seconds of one training step.

    On CPU the CPU time this process used (summed over its threads), which other processes on a
    shared machine do not inflate as they do wall time; on CUDA wall time, synchronised.
    """
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
        start = time.perf_counter()
        train_step(ctx, batch, step)
        torch.cuda.synchronize(ctx.device)
        return time.perf_counter() - start
    start = time.process_time()
    train_step(ctx, batch, step)
    return time.process_time() - start


Variant = tuple[str, str]  # (grad method, jacobian mode)


def measure(
    variants: list[Variant],
    size: int,
    batch: Batch,
    device: torch.device,
    steps: int,
    warmup: int,
    tasks: list[str] | None,
) -> dict[Variant, float]:
    """Fastest seconds per step of each (method, jacobian) variant.

    Variants take turns step by step (round-robin) rather than one after the other, so a change
    in machine load during the run affects all of them alike; the minimum over steps (as
    ``timeit`` advises) is the figure least disturbed by other processes on a shared machine.
    """
    contexts = {v: make_context(*v, size, device, warmup + steps, tasks) for v in variants}
    times: dict[Variant, list[float]] = {v: [] for v in variants}
    for step in range(warmup + steps):
        for variant, ctx in contexts.items():
            seconds = timed_step(ctx, batch, step)
            if step >= warmup:
                times[variant].append(seconds)
    return {variant: min(values) for variant, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", nargs="*", default=list(GRAD_METHODS))
    parser.add_argument("--jacobians", nargs="*", default=list(JACOBIANS), choices=JACOBIANS)
    parser.add_argument(
        "--tasks", nargs="*", default=None, help="model tasks (default: the architecture's)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 timed steps at 96 px (smoke check)"
    )
    args = parser.parse_args()
    if args.quick:
        args.size, args.steps, args.warmup = 96, 3, 1
    device = resolve_device(args.device)
    batch = fixed_batch(args.size, args.batch, device)
    variants = [("none", "exact")] + [
        (m, j) for j in args.jacobians for m in args.methods if m != "none"
    ]
    seconds = measure(variants, args.size, batch, device, args.steps, args.warmup, args.tasks)
    base = seconds[("none", "exact")]
    tasks = ",".join(args.tasks) if args.tasks else "default"
    print(
        f"device={device} threads={torch.get_num_threads()} arch={DEFAULT_ARCH} tasks={tasks} "
        f"input={args.size}x{args.size} batch={args.batch} steps={args.steps} "
        f"({'CPU' if device.type == 'cpu' else 'wall'} seconds, min over steps, round-robin)"
    )
    print(f"{'method':<12} {'jacobian':<8} {'s/step':>8} {'ratio':>6}  target")
    for (method, jacobian), value in seconds.items():
        ratio = value / base
        target = 1.2 if jacobian == "rep" else 1.5
        verdict = "" if method == "none" else ("ok" if ratio <= target else "SLOW")
        print(f"{method:<12} {jacobian:<8} {value:8.3f} {ratio:6.2f}  <={target} {verdict}")
    for (method, jacobian), value in seconds.items():
        if method != "none":
            prefix = "rep_" if jacobian == "rep" else ""
            print(f"RESULT {prefix}step_time_ratio_{method}={value / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
