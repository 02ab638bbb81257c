# SPDX-License-Identifier: Apache-2.0
"""What the perception node adds on top of its model: end-to-end latency minus bare model latency.

Same run, same frames (480x640 (HxW) rgb8 camera-like sequence, bench/sequence.py), same
checkpoint, CPU, same torch thread count (default 1), alternating rounds so that load from other
processes hits both sides alike:

- node: the node runs as a subprocess (``mtl_perception.ros.replay_launch.NodeProcess``, the
  large-image DDS profile); frames are sent in lockstep (the next frame only after every output of
  the previous one arrived), and the latency is publish -> last output (~/detections and
  ~/segmentation) received here, so it includes DDS delivery both ways;
- bare model: the same checkpoint's network forward pass on a frame already resized to its input
  (``Predictor`` inference time), in this process.

    RESULT node_overhead_ms=<node p50 - model p50>        (target <= 10 ms on CPU)
    RESULT node_latency_ratio=<node p50 / model p50>
    RESULT node_overhead_cpu_ms=<node CPU ms per frame (all threads) - model CPU ms per forward>

The CPU-time figure is what load from other processes on a shared machine does not distort: on
an idle machine the wall-clock overhead approaches it (plus DDS delivery); on a loaded one the
wall-clock figures wander with the load.

It also prints the node's own per-stage medians from /diagnostics (wait, deserialise, decode,
preprocess, model, postprocess, messages, publish), which say where the overhead goes.
Random weights (no download) unless ``--checkpoint`` is given.

    .venv/bin/python bench/bench_node_latency.py [--quick] [--input-size 120x160] \
        [--rounds 4 --frames 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Run from a checkout without installing: the package, and the bench's own modules.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import node_bench
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from sequence import camera_frames
from vision_msgs.msg import Detection2DArray

from mtl_perception.core.errors import run_cli

TOPIC = "/bench_latency/image_raw"
TARGET_MS = 10.0


def build_parser() -> argparse.ArgumentParser:
    parser = node_bench.base_parser(__doc__, input_size=(120, 160))
    parser.add_argument("--rounds", type=int, default=4, help="alternating node/model rounds")
    parser.add_argument("--frames", type=int, default=15, help="frames per round")
    parser.add_argument(
        "--quick", action="store_true", help="short smoke run (2 rounds of 5 frames)"
    )
    return parser


class Lockstep:
    """Publishes a frame, waits until every output with its stamp arrived, returns the latency."""

    def __init__(self, context: Context, namespace: str) -> None:
        self.node = rclpy.create_node("bench_node_latency", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.publisher = self.node.create_publisher(Image, TOPIC, qos_profile_sensor_data)
        self.arrived: dict[str, dict[int, float]] = {"detections": {}, "segmentation": {}}
        for name, msg_type in (("detections", Detection2DArray), ("segmentation", Image)):
            self.node.create_subscription(
                msg_type, f"{namespace}/{name}", lambda msg, n=name: self._arrive(n, msg), 10
            )
        self.stages: dict[str, str] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._diagnostics, 10)
        self.count = 0

    def _arrive(self, name: str, msg: object) -> None:
        stamp = msg.header.stamp  # type: ignore[attr-defined]
        self.arrived[name][stamp.sec * 1_000_000_000 + stamp.nanosec] = time.perf_counter()

    def _diagnostics(self, array: DiagnosticArray) -> None:
        for status in array.status:
            if status.name.startswith("perception_node"):
                self.stages = {
                    kv.key.split(": ", 1)[1]: kv.value
                    for kv in status.values
                    if kv.key.startswith("stage p50")
                }

    def send(self, msg: Image, timeout: float = 60.0) -> float | None:
        """Latency (ms) of one frame, or None if an output did not arrive within ``timeout``."""
        self.count += 1
        stamp = 1_000_000_000 + self.count
        node_bench.set_stamp(msg, stamp)
        sent = time.perf_counter()
        self.publisher.publish(msg)
        deadline = sent + timeout
        while not all(stamp in times for times in self.arrived.values()):
            if time.perf_counter() > deadline:
                return None
            self.executor.spin_once(timeout_sec=0.01)
        return (max(times[stamp] for times in self.arrived.values()) - sent) * 1000.0

    def wait_ready(self, msg: Image, timeout: float = 300.0) -> None:
        """Send frames until one is answered (node started, model loaded, DDS matched)."""
        deadline = time.monotonic() + timeout
        while self.send(msg, timeout=2.0) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the node never answered")

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)


def _main() -> int:
    args = build_parser().parse_args()
    if args.quick:
        args.rounds, args.frames = 2, 5
    torch.set_num_threads(args.threads)
    rgb_frames = [rgb for _, rgb in camera_frames(args.frames, seed=2)]
    messages = node_bench.image_messages(rgb_frames)

    with tempfile.TemporaryDirectory(prefix="bench_node_latency_") as tmp:
        checkpoint, predictor = node_bench.warm_predictor(args, Path(tmp))
        for rgb in rgb_frames:  # warm caches on the bench frames
            predictor.predict(rgb)
        with node_bench.running_node(
            checkpoint, TOPIC, Path(tmp), args.threads, ["diagnostics_period:=0.5"]
        ) as (context, node):
            lockstep = Lockstep(context, node.namespace)
            lockstep.wait_ready(messages[0])
            for msg in messages:  # node warm-up on the bench frames
                lockstep.send(msg)
            node_ms: list[float] = []
            model_ms: list[float] = []
            node_cpu = model_cpu = 0.0
            for _ in range(args.rounds):
                cpu_start = node_bench.cpu_seconds(node.pid)
                for msg in messages:
                    latency = lockstep.send(msg)
                    if latency is None:
                        raise RuntimeError(f"a frame got no answer; node log: {node.log_tail()}")
                    node_ms.append(latency)
                node_cpu += node_bench.cpu_seconds(node.pid) - cpu_start
                # The forward pass alone (resize and post-processing timed apart).
                for rgb in rgb_frames:
                    with torch.inference_mode():
                        tensor = predictor._preprocess(rgb)
                        cpu_start, wall_start = time.thread_time(), time.perf_counter()
                        predictor.model([tensor])
                        model_cpu += time.thread_time() - cpu_start
                        model_ms.append((time.perf_counter() - wall_start) * 1000.0)
            lockstep.spin_for(1.5)  # the node's latest per-stage medians

    node_p50, model_p50 = statistics.median(node_ms), statistics.median(model_ms)
    overhead = node_p50 - model_p50
    print(
        f"480x640 (HxW) rgb8 frames, network input {args.input_size[0]}x{args.input_size[1]} "
        f"(HxW), CPU, {args.threads} torch thread(s), {args.rounds} alternating rounds of "
        f"{args.frames} frames, lockstep"
    )
    print(
        f"end-to-end p50 {node_p50:.1f} ms (p90 {np.percentile(node_ms, 90):.1f}), "
        f"bare model p50 {model_p50:.1f} ms -> overhead {overhead:.1f} ms "
        f"({'meets' if overhead <= TARGET_MS else 'misses'} the {TARGET_MS:g} ms target)"
    )
    if lockstep.stages:
        print(
            "node stages, p50 ms: "
            + ", ".join(f"{stage} {value}" for stage, value in lockstep.stages.items())
        )
    frames = len(node_ms)
    cpu_overhead = (node_cpu - model_cpu) / frames * 1000.0
    print(
        f"CPU time per frame: node {node_cpu / frames * 1000.0:.1f} ms (all threads), "
        f"model {model_cpu / frames * 1000.0:.1f} ms -> {cpu_overhead:.1f} ms"
    )
    print(
        f"RESULT node_overhead_ms={overhead:.2f} node_latency_ratio={node_p50 / model_p50:.3f} "
        f"node_overhead_cpu_ms={cpu_overhead:.2f}",
        flush=True,
    )
    return 0


def main() -> None:
    run_cli(_main, "bench_node_latency")


if __name__ == "__main__":
    main()
