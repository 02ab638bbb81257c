# SPDX-License-Identifier: Apache-2.0
"""Latency of each multi-task model relative to running its two single-task models.

The point of the shared backbone is that one multi-task forward pass costs much less than a
detector plus a segmenter. For every multi-task architecture this measures, in the same run
on the same input (CPU, batch 1, random weights, no download), the median forward latency of
the multi-task model and of its two single-task counterparts, and prints

    RESULT latency_ratio_<arch>=<multi-task ms / (detector ms + segmenter ms)>
    RESULT gflops_ratio_<arch>=<the same ratio of FLOPs, independent of machine load>

(target for the latency ratio: at most 0.55). Models are timed round-robin (one run of each
per round) so that load from other processes on a shared machine hits all of them alike.

Like for like: random weights make the work after the network (SSD's score filtering and NMS,
Faster R-CNN's proposals) depend on whatever scores the random heads happen to produce. So each
multi-task model gets the detector's backbone and detection head weights and the segmenter's
segmentation head weights: its detection output is then the detector's own (checked), and both
sides post-process the same boxes. A pair whose detector leaves no box for post-processing is
marked degenerate (its ratio then says nothing about that part).

    .venv/bin/python bench/bench_latency.py [--size 240x320|480x640] [--runs 30] [--warmup 5]
        [--aspp-separable true|false] [--aspp-channels N]

The DeepLabv3 head options go to both the multi-task and the single-task ``deeplabv3`` model, so
the comparison stays like for like; without them every model has ``build_model``'s defaults.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # run from a checkout without installing

from mtl_perception.core.constants import MIN_INPUT_SIDE, format_hw, parse_hw
from mtl_perception.core.errors import UserError, run_cli
from mtl_perception.evaluation.profiling import (
    count_gflops,
    measure_latency,
    sample_input,
)
from mtl_perception.nets import DETECTION, SEGMENTATION, build_model, count_parameters

# multi-task architecture -> (its detection-only model, its segmentation-only model)
PAIRS: dict[str, tuple[str, str]] = {
    "ssdlite_deeplabv3": ("ssdlite", "deeplabv3"),
    "ssdlite_lraspp": ("ssdlite", "lraspp"),
    "frcnn_deeplabv3": ("frcnn", "deeplabv3"),
}
TARGET_RATIO = 0.55
NUM_DETECTION_CLASSES = 3
NUM_SEGMENTATION_CLASSES = 3


def _size(text: str) -> tuple[int, int]:
    """``HEIGHTxWIDTH`` -> ``(height, width)``."""
    try:
        return parse_hw(text, "--size", MIN_INPUT_SIDE)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", type=_size, default=(240, 320), help="input HEIGHTxWIDTH (default 240x320)"
    )
    parser.add_argument("--runs", type=int, default=30, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 = stable on shared machines)"
    )
    parser.add_argument(
        "--arch",
        nargs="+",
        choices=sorted(PAIRS),
        default=list(PAIRS),
        help="multi-task models to measure",
    )
    parser.add_argument(
        "--aspp-separable",
        type=_bool,
        default=None,
        help="DeepLabv3 ASPP option (default: the model's)",
    )
    parser.add_argument(
        "--aspp-channels",
        type=int,
        default=None,
        help="DeepLabv3 ASPP width (default: the model's)",
    )
    return parser


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return text.lower() == "true"


def _build(name: str, size: tuple[int, int], args: argparse.Namespace) -> torch.nn.Module:
    """An eval-mode model of architecture ``name``; DeepLabv3 gets the ASPP options asked for."""
    options = (
        {"aspp_separable": args.aspp_separable, "aspp_channels": args.aspp_channels}
        if "deeplabv3" in name
        else {}
    )
    return build_model(
        name, NUM_DETECTION_CLASSES, NUM_SEGMENTATION_CLASSES, size, **options
    ).eval()


def _share_weights(
    multi: torch.nn.Module, detector: torch.nn.Module, segmenter: torch.nn.Module
) -> None:
    """Give ``multi`` the detector's backbone and detection head and the segmenter's head."""
    multi.backbone.load_state_dict(detector.backbone.state_dict())
    multi.heads[DETECTION].load_state_dict(detector.heads[DETECTION].state_dict())
    multi.heads[SEGMENTATION].load_state_dict(segmenter.heads[SEGMENTATION].state_dict())


@torch.inference_mode()
def _boxes_after_postprocessing(
    multi: torch.nn.Module, detector: torch.nn.Module, size: tuple[int, int]
) -> int:
    """Boxes the detector outputs on the timed input; raises if the multi-task model differs."""
    images = sample_input(size, torch.device("cpu"))
    mine, theirs = multi(images)[0], detector(images)[0]
    if not torch.equal(mine["boxes"], theirs["boxes"]):
        raise RuntimeError("multi-task and single-task detections differ after sharing weights")
    return int(theirs["boxes"].shape[0])


def _median_latencies(
    models: dict[str, torch.nn.Module], size: tuple[int, int], runs: int, warmup: int
) -> dict[str, float]:
    """Median ms per model over ``runs`` round-robin rounds after ``warmup`` rounds."""
    samples: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(warmup + runs):
        for name, model in models.items():
            latency = measure_latency(model, size, "cpu", warmup=0, runs=1).median_ms
            if round_index >= warmup:
                samples[name].append(latency)
    return {name: statistics.median(values) for name, values in samples.items()}


def run(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.warmup < 0 or args.threads < 1:
        raise UserError("--runs and --threads must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = args.size
    names = sorted({name for arch in args.arch for name in (arch, *PAIRS[arch])})
    models = {name: _build(name, size, args) for name in names}
    boxes = {}
    for arch in args.arch:
        _share_weights(models[arch], models[PAIRS[arch][0]], models[PAIRS[arch][1]])
        boxes[arch] = _boxes_after_postprocessing(models[arch], models[PAIRS[arch][0]], size)
    latency = _median_latencies(models, size, args.runs, args.warmup)

    print(
        f"CPU, batch 1, input {format_hw(size)} (HxW), {args.threads} thread(s), median of "
        f"{args.runs} after {args.warmup} warm-up rounds"
    )
    if "deeplabv3" in models:
        print(f"DeepLabv3 head options: {models['deeplabv3'].heads['segmentation'].options}")
    gflops = {name: count_gflops(model, size) for name, model in models.items()}
    print(f"{'model':<20}{'ms/frame':>10}{'params (M)':>12}{'GFLOPs':>9}")
    for name in names:
        millions = count_parameters(models[name]) / 1e6
        print(f"{name:<20}{latency[name]:>10.1f}{millions:>12.2f}{gflops[name]:>9.2f}")
    print()
    results = []
    for arch in args.arch:
        detector, segmenter = PAIRS[arch]
        ratio = latency[arch] / (latency[detector] + latency[segmenter])
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        degenerate = "" if boxes[arch] else "; DEGENERATE: no box reaches post-processing"
        print(
            f"{arch}: {latency[arch]:.1f} ms vs {detector} + {segmenter} = "
            f"{latency[detector] + latency[segmenter]:.1f} ms -> ratio {ratio:.3f} ({verdict} the "
            f"{TARGET_RATIO} target; {boxes[arch]} boxes on both sides{degenerate})"
        )
        if not boxes[arch]:
            continue  # a ratio without the detection post-processing is not the figure asked for
        results.append(f"RESULT latency_ratio_{arch}={ratio:.3f}")
        # FLOPs do not depend on machine load: the noise-free view of the same saving.
        gflops_ratio = gflops[arch] / (gflops[detector] + gflops[segmenter])
        results.append(f"RESULT gflops_ratio_{arch}={gflops_ratio:.3f}")
    print("\n".join(results))
    return 0


def main() -> None:
    run_cli(lambda: run(build_parser().parse_args()), "bench_latency")


if __name__ == "__main__":
    main()
