# SPDX-License-Identifier: Apache-2.0
"""Benchmark: fast prune vs the straightforward skimage reference, same frames, same run.

The reference is what one would write first: for every frame, decode it, convert to gray and
call ``skimage.metrics.structural_similarity`` at full resolution against the last kept frame,
sequentially. The fast path is ``data_tools.prune.select_frames`` (clear near-duplicates settled
on a sampled estimate, exact SSIM from cached window statistics for the rest).

Both run on a realistic camera sequence (``bench.sequence``: pans, zooms, still stretches
with sensor noise, 540x960 (HxW) JPEG) in a temporary folder. Measured in one run:

* per core: CPU time per frame of the reference and of the fast path with ``--jobs 1`` (one
  worker thread), i.e. the same work on one core each; their ratio is the per-core speed-up;
* N cores: wall-clock time per frame of the fast path with one worker per core, against the
  reference's wall-clock time (which uses one core);
* the share of identical keep/drop decisions, and the largest SSIM difference on frames that
  both compared exactly with the same kept frame.

The last line is machine-readable::

    RESULT prune_speedup_per_core=<x> prune_speedup_wall_<N>cores=<y> prune_agreement=<z>

Run: ``python -m bench.bench_prune [--frames 300] [--quick]`` (with ``nice`` on a shared machine:
contention slows both sides of each ratio alike).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

if __package__ in (None, ""):  # run as `python bench/bench_prune.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skimage.metrics import structural_similarity

from bench.sequence import write_sequence
from data_tools.prune import DEFAULT_THRESHOLD, FrameDecision, read_gray, select_frames
from data_tools.ssim import dtype_data_range
from mtl_perception.core.constants import parse_hw

T = TypeVar("T")


def reference_prune(paths: list[Path], threshold: float) -> list[FrameDecision]:
    """The straightforward implementation: sequential, decode + full skimage SSIM per frame."""
    decisions: list[FrameDecision] = []
    last, last_index = None, None
    for index, path in enumerate(paths):
        gray = read_gray(path)
        if last is None or last.shape != gray.shape or last.dtype != gray.dtype:
            decision = FrameDecision(index, keep=True)
        else:
            score = float(
                structural_similarity(last, gray, data_range=dtype_data_range(gray.dtype))
            )
            decision = FrameDecision(
                index, keep=score < threshold, ssim=score, compared_to=last_index
            )
        if decision.keep:
            last, last_index = gray, index
        decisions.append(decision)
    return decisions


def timed(fn: Callable[[], T], repeat: int) -> tuple[float, float, T]:
    """Best wall time and CPU time (all threads) of ``repeat`` runs, and the last result.

    The best of several runs because the machine may be shared; CPU time is printed too as
    a load-independent cross-check.
    """
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, result


def compare(fast: list[FrameDecision], reference: list[FrameDecision]) -> tuple[float, float, int]:
    """Share of identical keep/drop decisions, max |dSSIM| on shared comparisons, their count."""
    same = sum(f.keep == r.keep for f, r in zip(fast, reference, strict=True))
    diffs = [
        abs(f.ssim - r.ssim)
        for f, r in zip(fast, reference, strict=True)
        if f.exact and f.ssim is not None and r.ssim is not None and f.compared_to == r.compared_to
    ]
    return same / len(reference), max(diffs, default=0.0), len(diffs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="sequence length")
    parser.add_argument(
        "--quick", action="store_true", help="short run (60 frames, one repetition) for CI"
    )
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--size", default="540x960", help="frame size HEIGHTxWIDTH")
    parser.add_argument(
        "--jobs",
        type=int,
        default=len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count() or 1,
        help="worker threads of the N-core run",
    )
    parser.add_argument(
        "--repeat", type=int, default=2, help="timing repetitions per method (best is kept)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    frames, repeat = (60, 1) if args.quick else (args.frames, args.repeat)
    height, width = parse_hw(args.size, "--size")

    with tempfile.TemporaryDirectory(prefix="bench_prune_") as tmp:
        folder = write_sequence(Path(tmp), frames, args.seed, width=width, height=height)
        paths = sorted(folder.glob("*.jpg"))
        for path in paths:  # warm the page cache so neither method pays for the first disk read
            path.read_bytes()
        ref_wall, ref_cpu, reference = timed(
            lambda: reference_prune(paths, args.threshold), repeat
        )
        one_wall, one_cpu, fast = timed(
            lambda: select_frames(paths, args.threshold, jobs=1), repeat
        )
        n_wall, n_cpu, fast_n = timed(
            lambda: select_frames(paths, args.threshold, jobs=args.jobs), repeat
        )
    if [d.keep for d in fast] != [d.keep for d in fast_n]:
        raise SystemExit("fast path: decisions depend on the number of workers (bug)")

    agreement, max_dssim, shared = compare(fast, reference)
    settled = sum(not d.exact for d in fast)
    per_core = ref_cpu / one_cpu
    wall = ref_wall / n_wall
    print(
        f"sequence: {frames} JPEG frames {width}x{height}, threshold {args.threshold}, best of "
        f"{repeat}"
    )
    print(f"{'':34} {'CPU ms/frame':>12} {'wall ms/frame':>13}  kept")
    for name, w, c, decisions in (
        ("reference (skimage, 1 thread)", ref_wall, ref_cpu, reference),
        ("fast, --jobs 1", one_wall, one_cpu, fast),
        (f"fast, --jobs {args.jobs}", n_wall, n_cpu, fast_n),
    ):
        print(
            f"{name:34} {1000 * c / frames:12.2f} {1000 * w / frames:13.2f}  "
            f"{sum(d.keep for d in decisions)}"
        )
    print(
        f"per core (CPU time, 1 thread each): {per_core:.1f}x; wall-clock with {args.jobs} "
        f"workers vs reference: {wall:.1f}x"
    )
    print(
        f"identical decisions {100 * agreement:.2f}%; {settled} of {frames} frames dropped on the "
        f"sampled estimate; max |dSSIM| {max_dssim:.2e} over {shared} shared exact comparisons"
    )
    print(
        f"RESULT prune_speedup_per_core={per_core:.2f} "
        f"prune_speedup_wall_{args.jobs}cores={wall:.2f} prune_agreement={agreement:.4f}"
    )


if __name__ == "__main__":
    main()
