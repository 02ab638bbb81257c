# SPDX-License-Identifier: Apache-2.0
"""``mtl-replay``: evaluate the live perception node by replaying a bag into it over DDS.

The bag's image topic (``sensor_msgs/Image`` or ``CompressedImage``, ROS 1 or 2, any storage)
is published at the recorded rate, at a rate factor (``--rate 2``), or in lockstep
(``--lockstep``: the next frame only after the node answered the previous one, for a
deterministic accuracy evaluation). The node is started as a subprocess from ``--model``, or
an already running one is used (``--attach --node-ns /perception_node``).

Every output of the node is recorded into ``<out>/outputs`` (a rosbag2 folder with an .mcap
that Foxglove, rviz and rosbags read) and frames are matched to answers by header stamp
(the node copies the input header). ``<out>/report.json`` gives frames in/out, dropped frames,
end-to-end latency (publish -> answer received: p50/p95/p99/max) and throughput; with
``--ground-truth`` (a ``mtl-data build`` folder or a COCO file with ``stamp_ns``, such as
``synth_coco.json``) also mAP and mIoU; with ``--depth-topic`` (an RGB-D bag's aligned depth,
e.g. ``/camera/aligned_depth_to_color/image_raw``) the node's ``~/depth`` answers are scored
against the bag's own depth matched by stamp (AbsRel, RMSE, δ<1.25, ...). Plots: a latency
histogram and example overlays.

A damaged bag (cut short by a power loss, or with a damaged chunk) is salvaged as by
``mtl-data unpack``: every complete frame before the damage is replayed, and a warning (also
``"salvaged"`` in report.json) says what was recovered (docs/SALVAGE.md).

Exit status: 0 when every frame was replayed (and, in lockstep, answered), 1 when frames
failed or went unanswered, 2 for a usage error (bag/topic/model missing, node not up).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_system_default
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from tqdm import tqdm
from vision_msgs.msg import Detection2DArray

from mtl_perception.checkpoint import load_checkpoint
from mtl_perception.core.depth import DEFAULT_DEPTH_TOLERANCE_MS, DEFAULT_DEPTH_UNIT_M
from mtl_perception.core.errors import UserError, run_cli
from mtl_perception.core.json_io import format_number
from mtl_perception.core.labels import BACKGROUND, ClassConfig, load_class_config
from mtl_perception.core.stamps import ns_to_sec_nanosec
from mtl_perception.core.summary import JobSummary
from mtl_perception.replay.depth_scoring import DepthScorer
from mtl_perception.replay.ground_truth import GroundTruth, load_ground_truth
from mtl_perception.replay.outputs import DETECTIONS_TYPE, IMAGE_TYPE, OutputSink, header_stamp_ns
from mtl_perception.replay.recorder import OutputRecorder
from mtl_perception.replay.report import write_report
from mtl_perception.replay.scoring import StampScorer
from mtl_perception.replay.source import BagFrame, ImageBag, open_depth_reference, open_image_bag
from mtl_perception.replay.stats import ReplayStats
from mtl_perception.ros.replay_launch import NodeProcess, dds_environment

__all__ = ["build_parser", "main", "run", "to_ros_message"]

PROG = "mtl-replay"
DIAGNOSTICS_TYPE = "diagnostic_msgs/msg/DiagnosticArray"
# Publisher QoS: reliable matches best-effort and reliable subscribers; keep-last never blocks.
PUBLISH_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
# The node publishes its outputs with the default (reliable, depth 10) QoS.
OUTPUT_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
# After the last answer: how long the outputs must stay silent before the replay ends.
QUIET_SEC = 0.5


@dataclass(frozen=True)
class OutputTopic:
    """One topic of the node to subscribe to (raw CDR) and record."""

    name: str
    msg_class: Any
    msgtype: str
    answers: bool  # an output here means the frame was answered


def output_topics(namespace: str, record_color: bool, record_overlay: bool) -> list[OutputTopic]:
    """The node's outputs under ``namespace`` (docs: ``~/detections``, ``~/segmentation``, ...)."""
    ns = "/" + namespace.strip("/")
    topics = [
        OutputTopic(f"{ns}/detections", Detection2DArray, DETECTIONS_TYPE, True),
        OutputTopic(f"{ns}/segmentation", Image, IMAGE_TYPE, True),
        OutputTopic(f"{ns}/depth", Image, IMAGE_TYPE, True),  # 32FC1 metres (models with depth)
        OutputTopic("/diagnostics", DiagnosticArray, DIAGNOSTICS_TYPE, False),
    ]
    if record_color:  # subscribing makes the node colourise mask and depth (~1-2 ms per frame)
        topics.append(OutputTopic(f"{ns}/segmentation/color", Image, IMAGE_TYPE, False))
        topics.append(OutputTopic(f"{ns}/depth/color", Image, IMAGE_TYPE, False))
    if record_overlay:  # subscribing makes the node draw overlays: costs it a few ms per frame
        topics.append(OutputTopic(f"{ns}/overlay", Image, IMAGE_TYPE, False))
    return topics


def to_ros_message(frame: BagFrame) -> Image | CompressedImage:
    """The rclpy message for a bag frame (header, encoding and bytes unchanged)."""
    src = frame.msg
    sec, nanosec = ns_to_sec_nanosec(frame.stamp_ns)
    stamp = Time(sec=sec, nanosec=nanosec)
    header = Header(stamp=stamp, frame_id=str(src.header.frame_id))
    data = np.asarray(
        src.data, dtype=np.uint8
    ).tobytes()  # bytes: the fast path (never an ndarray)
    if frame.compressed:
        return CompressedImage(header=header, format=str(src.format), data=data)
    return Image(
        header=header,
        height=int(src.height),
        width=int(src.width),
        encoding=str(src.encoding),
        is_bigendian=int(src.is_bigendian),
        step=int(src.step),
        data=data,
    )


class ReplaySession:
    """The replay's own ROS node: publishes frames, receives the answers on a spin thread.

    Receive times are taken first thing in the callback; recording and scoring happen on a
    separate worker thread (``sink``), so they never delay the next answer's timestamp.
    """

    def __init__(
        self,
        context: Context,
        publish_topic: str,
        msg_class: Any,
        outputs: Sequence[OutputTopic],
        sink: OutputSink,
        stats: ReplayStats,
    ) -> None:
        self.stats = stats
        self.sink = sink
        self.publish_topic = publish_topic
        self.outputs = list(outputs)
        self._cond = threading.Condition()
        self._queue: queue.Queue[tuple[str, str, bytes, int] | None] = queue.Queue()
        self._last_output = time.monotonic()
        self.node = rclpy.create_node(f"mtl_replay_{os.getpid()}", context=context)
        self.publisher = self.node.create_publisher(msg_class, publish_topic, PUBLISH_QOS)
        self.subscriptions = [
            self.node.create_subscription(
                topic.msg_class,
                topic.name,
                functools.partial(self._on_output, topic),
                qos_profile_system_default if topic.msgtype == DIAGNOSTICS_TYPE else OUTPUT_QOS,
                raw=True,
            )
            for topic in self.outputs
        ]
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._spin_thread = threading.Thread(target=self._spin, name="replay-spin", daemon=True)
        self._sink_thread = threading.Thread(target=self._drain, name="replay-sink", daemon=True)
        self._spin_thread.start()
        self._sink_thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(ExternalShutdownException):
            self.executor.spin()

    def _on_output(self, topic: OutputTopic, data: bytes) -> None:
        received, wall_ns = time.monotonic(), time.time_ns()
        if topic.msgtype != DIAGNOSTICS_TYPE:  # diagnostics tick on their own timer
            self._last_output = received
        stamp = header_stamp_ns(data)
        if stamp is not None:
            with self._cond:
                self.stats.output(topic.name, stamp, received, topic.answers)
                self._cond.notify_all()
        self._queue.put((topic.name, topic.msgtype, bytes(data), wall_ns))

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            self.sink.consume(*item)

    def wait_ready(self, node: NodeProcess | None, timeout: float) -> None:
        """Block until the node listens on the input and publishes its detections.

        Raises:
            UserError: Not ready within ``timeout`` seconds (the message says what is missing),
                or the started ``node`` exited.
        """
        detections = self.outputs[0]
        deadline = time.monotonic() + timeout
        while True:
            if node is not None and node.exit_code() is not None:
                raise UserError(
                    f"perception node exited with status {node.exit_code()} during start-up "
                    f"(log {node.log_path}): {node.log_tail()}"
                )
            listeners = self.publisher.get_subscription_count()
            outputs = self.subscriptions[0].get_publisher_count()
            if listeners > 0 and outputs > 0:
                time.sleep(0.3)  # let the remaining endpoints (segmentation, colour) match too
                return
            if time.monotonic() > deadline:
                check = (
                    f"no subscriber on {self.publish_topic} "
                    "(is the node active and listening on it?)"
                    if listeners == 0
                    else f"nobody publishes {detections.name} (wrong --node-ns?)"
                )
                where = (
                    f"; node log {node.log_path}: {node.log_tail(3)}" if node is not None else ""
                )
                raise UserError(
                    f"perception node did not come up within {timeout:g} s: {check}{where}"
                )
            time.sleep(0.05)

    def publish(self, stamp_ns: int, msg: Any) -> bool:
        """Publish one frame; False if its stamp was already replayed (ambiguous answers)."""
        with self._cond:
            if not self.stats.sent(stamp_ns, time.monotonic()):
                return False
        self.publisher.publish(msg)
        return True

    def wait_answered(self, stamps: Sequence[int], timeout: float) -> bool:
        """Wait until every stamp in ``stamps`` was answered, or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        with self._cond:
            return self._cond.wait_for(
                lambda: all(self.stats.is_answered(s) for s in stamps),
                timeout=max(0.0, deadline - time.monotonic()),
            )

    def wait_quiet(self, quiet: float, limit: float) -> None:
        """Wait until no output arrived for ``quiet`` seconds (at most ``limit`` seconds).

        A frame counts as answered at its first output; the node's other outputs for the
        last frames are still on their way and should be recorded too.
        """
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and time.monotonic() - self._last_output < quiet:
            time.sleep(quiet / 5)

    def close(self) -> None:
        """Stop spinning and let the worker finish every received message."""
        self.executor.shutdown(timeout_sec=2.0)
        self._spin_thread.join(timeout=5.0)
        self._queue.put(None)
        self._sink_thread.join()
        self.node.destroy_node()


def _example_indices(count: int, wanted: int) -> set[int]:
    """``wanted`` frame indices spread evenly over ``count`` frames."""
    return (
        set(np.linspace(0, count - 1, num=min(wanted, count)).round().astype(int).tolist())
        if count and wanted
        else set()
    )


def _replay_frames(
    args: argparse.Namespace,
    bag: ImageBag,
    session: ReplaySession,
    node: NodeProcess | None,
    summary: JobSummary,
) -> dict[int, np.ndarray]:
    """Publish the frames (lockstep or timed); returns the decoded example frames by stamp."""
    total = min(len(bag), args.max_frames) if args.max_frames else len(bag)
    examples = _example_indices(total, args.examples)
    example_rgb: dict[int, np.ndarray] = {}
    start, first_bag_time, last_stamp = time.monotonic(), None, None
    for item in tqdm(bag.frames(), total=total, desc=PROG, unit="frame", disable=None):
        if isinstance(item, ValueError):
            summary.fail("frame cannot be deserialised", str(item))
            continue
        if args.max_frames and item.index >= args.max_frames:
            break
        session.stats.bag_frames += 1
        if args.restamp:
            item = dataclasses.replace(item, stamp_ns=item.bag_time_ns)
        if node is not None and node.exit_code() is not None:
            raise UserError(
                f"perception node exited with status {node.exit_code()} during the replay "
                f"(log {node.log_path}): {node.log_tail()}"
            )
        if item.index in examples:
            try:
                example_rgb[item.stamp_ns] = item.rgb()
                session.sink.want_example(item.stamp_ns)
            except ValueError as err:
                summary.fail("example frame cannot be decoded", f"frame {item.index}: {err}")
        if not args.lockstep:  # timed: keep the recorded spacing, scaled by --rate
            if first_bag_time is None:
                start, first_bag_time = time.monotonic(), item.bag_time_ns
            due = start + (item.bag_time_ns - first_bag_time) / 1e9 / args.rate
            time.sleep(max(0.0, due - time.monotonic()))
        if not session.publish(item.stamp_ns, to_ros_message(item)):
            summary.fail(
                "duplicate header stamp, frame skipped (see --restamp)",
                f"frame {item.index} stamp {item.stamp_ns}",
            )
            continue
        summary.add("published")
        last_stamp = item.stamp_ns
        if args.lockstep and not session.wait_answered([item.stamp_ns], args.frame_timeout):
            summary.fail(
                "no answer within --frame-timeout", f"frame {item.index} stamp {item.stamp_ns}"
            )
    # Timed mode: the node always gets to the newest frame; wait for it before counting drops.
    if last_stamp is not None and not args.lockstep:
        session.wait_answered([last_stamp], args.frame_timeout)
    session.wait_quiet(QUIET_SEC, args.frame_timeout)
    return example_rgb


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``mtl-replay`` command line."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "bag",
        type=Path,
        help="bag to replay: ROS 1 .bag (.bag.active), rosbag2 folder, .db3 or "
        ".mcap; a cut-off or damaged bag is salvaged: its complete frames before the damage are "
        "replayed, with a warning (docs/SALVAGE.md)",
    )
    parser.add_argument("--topic", help="image topic in the bag (default: the only image topic)")
    parser.add_argument(
        "--publish-topic", help="topic to publish on (default: the bag's topic name)"
    )
    node = parser.add_argument_group("node")
    node.add_argument(
        "--model",
        type=Path,
        help="checkpoint to start the node with (required unless --attach; "
        "with --attach it only supplies class names and palette)",
    )
    node.add_argument("--params-file", type=Path, help="ROS parameters YAML for the started node")
    node.add_argument("--attach", action="store_true", help="use a node that is already running")
    node.add_argument(
        "--node-ns",
        default="/perception_node",
        help="the node's private namespace (its outputs live under it)",
    )
    node.add_argument(
        "--startup-timeout", type=_positive, default=120.0, help="seconds for the node to come up"
    )
    timing = parser.add_argument_group("timing")
    timing.add_argument(
        "--rate", type=_positive, default=1.0, help="speed factor over the recorded rate"
    )
    timing.add_argument(
        "--lockstep", action="store_true", help="send the next frame only after the node answered"
    )
    timing.add_argument(
        "--frame-timeout",
        type=_positive,
        default=10.0,
        help="seconds to wait for an answer (lockstep, and at the end)",
    )
    timing.add_argument(
        "--restamp",
        action="store_true",
        help="use the bag's record time as header stamp "
        "(cameras that leave stamps 0 or repeat them)",
    )
    timing.add_argument(
        "--max-frames", type=int, default=0, help="replay at most this many frames (0 = all)"
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--ground-truth",
        type=Path,
        help="mtl-data build folder, or COCO .json / CVAT .xml with stamp_ns: adds mAP/mIoU",
    )
    output.add_argument(
        "--classes-file",
        type=Path,
        help="classes YAML of mtl-data build, to rasterise a label file's ground truth "
        "(default: the classes of --model's dataset)",
    )
    depth = parser.add_argument_group("depth (RGB-D bags)")
    depth.add_argument(
        "--depth-topic",
        help="the bag's aligned depth topic to score ~/depth against, "
        "e.g. /camera/aligned_depth_to_color/image_raw",
    )
    depth.add_argument(
        "--depth-tolerance-ms",
        type=float,
        default=DEFAULT_DEPTH_TOLERANCE_MS,
        help="largest stamp difference between an answer and the bag's depth frame",
    )
    depth.add_argument(
        "--depth-unit-m",
        type=_positive,
        default=DEFAULT_DEPTH_UNIT_M,
        help="metres per unit of 16-bit depth (16UC1 is millimetres)",
    )
    depth.add_argument(
        "--max-depth", type=_positive, help="depth beyond this many metres is not scored"
    )
    output.add_argument("--out", type=Path, default=Path("reports/replay"), help="report folder")
    output.add_argument(
        "--examples", type=int, default=4, help="number of example overlays in the report"
    )
    output.add_argument("--no-record", action="store_true", help="do not write the outputs bag")
    output.add_argument(
        "--no-record-color",
        action="store_true",
        help="do not record ~/segmentation/color and ~/depth/color",
    )
    output.add_argument(
        "--record-overlay",
        action="store_true",
        help="also record ~/overlay (the node then draws it)",
    )
    return parser


@dataclass(frozen=True)
class ModelInfo:
    """Class names and palette for scoring and drawing (from checkpoint or ground truth)."""

    detection_classes: list[str]
    segmentation_classes: list[str] | None
    palette: list[list[int]] | None


def _model_info(args: argparse.Namespace) -> ModelInfo | None:
    """The checkpoint's classes and palette; ``None`` with ``--attach`` and no ``--model``."""
    if args.model is None:
        return None
    payload = load_checkpoint(args.model)  # UserError when missing/foreign
    return ModelInfo(
        list(payload["detection_classes"]),
        list(payload["segmentation_classes"]) or None,
        [list(c) for c in payload["palette"]] or None,
    )


def _ground_truth(args: argparse.Namespace, model: ModelInfo | None) -> GroundTruth | None:
    """``--ground-truth``: a label file rasterised with ``--classes-file`` or model classes."""
    if args.ground_truth is None:
        return None
    classes = None
    if args.classes_file is not None:
        classes = load_class_config(None, None, args.classes_file)
    elif model is not None:
        segmentation = [name for name in model.segmentation_classes or [] if name != BACKGROUND]
        classes = ClassConfig(
            detection_classes=model.detection_classes, segmentation_classes=segmentation
        )
    return load_ground_truth(args.ground_truth, classes)


def _check_args(args: argparse.Namespace) -> None:
    if not args.attach and args.model is None:
        raise UserError(
            "--model is required to start the node (or use --attach for a running node)"
        )
    if args.params_file is not None and not args.params_file.is_file():
        raise UserError(f"--params-file {args.params_file}: no such file")
    if args.max_frames < 0 or args.examples < 0:
        raise UserError("--max-frames and --examples must be >= 0")
    if args.depth_tolerance_ms < 0:
        raise UserError(f"--depth-tolerance-ms {args.depth_tolerance_ms}: must not be negative")


def _replay(args: argparse.Namespace) -> int:
    _check_args(args)
    model = _model_info(args)
    truth = _ground_truth(args, model)
    info = model or (
        ModelInfo(list(truth.detection_classes), truth.segmentation_classes, None)
        if truth is not None
        else ModelInfo([], None, None)
    )
    summary = JobSummary(PROG)
    stats = ReplayStats()
    out: Path = args.out
    os.environ.update(dds_environment())  # before rclpy.init: Fast DDS reads the profile once
    with open_image_bag(args.bag, args.topic) as bag, contextlib.ExitStack() as depth_stack:
        depth_scorer = None
        if args.depth_topic is not None:
            reference = depth_stack.enter_context(open_depth_reference(args.bag, args.depth_topic))
            depth_scorer = DepthScorer(
                reference, round(args.depth_tolerance_ms * 1e6), args.depth_unit_m, args.max_depth
            )
        publish_topic = args.publish_topic or bag.topic
        node = None
        if not args.attach:
            parameters = (
                ["reliability:=reliable"] if args.lockstep else []
            )  # lockstep: no frame may be lost
            node = NodeProcess(
                args.model.resolve(),
                publish_topic,
                out / "node.log",
                compressed=bag.compressed,
                parameters=parameters,
                params_file=args.params_file,
            )
        namespace = node.namespace if node is not None else args.node_ns
        topics = output_topics(namespace, not args.no_record_color, args.record_overlay)
        recorder = None if args.no_record else OutputRecorder(out / "outputs")
        scorer = StampScorer(truth, info.segmentation_classes) if truth is not None else None
        sink = OutputSink(
            recorder,
            scorer,
            topics[0].name,
            topics[1].name,
            info.detection_classes,
            depth_topic=topics[2].name,
            depth_scorer=depth_scorer,
        )
        context = Context()
        rclpy.init(args=[], context=context)  # our argv is argparse's, not ROS's
        session = None
        started = time.monotonic()
        completed = False
        try:
            if node is not None:
                node.start()
            session = ReplaySession(
                context,
                publish_topic,
                CompressedImage if bag.compressed else Image,
                topics,
                sink,
                stats,
            )
            session.wait_ready(node, args.startup_timeout)
            started = time.monotonic()
            example_rgb = _replay_frames(args, bag, session, node, summary)
            completed = True
        finally:
            if session is not None:
                session.close()  # drains the sink: nothing writes to the recorder after this
            if node is not None:
                node.stop()
            rclpy.try_shutdown(context=context)
            if recorder is not None and not completed:
                recorder.discard()
        wall_time = time.monotonic() - started
        if recorder is not None:
            recorder.close()
    summary.merge(sink.summary)
    if truth is not None:
        summary.merge(truth.summary)
    if bag.salvaged:
        summary.warn("damaged bag, salvaged", bag.salvaged)
    report = {
        "bag": str(args.bag),
        "salvaged": bag.salvaged or None,
        "topic": bag.topic,
        "published_on": publish_topic,
        "mode": "lockstep" if args.lockstep else "timed",
        "rate": None if args.lockstep else args.rate,
        "node": {
            "started": node is not None,
            "namespace": namespace,
            "model": str(args.model) if args.model else None,
        },
        **stats.summary(wall_time),
        "accuracy": _accuracy(scorer, depth_scorer),
        "ground_truth": str(args.ground_truth) if args.ground_truth else None,
        "ground_truth_frames_matched": sum(
            1 for s in stats.answered_at if truth is not None and s in truth
        ),
        "output_bag": "outputs" if recorder is not None else None,
        "problems": {
            kind: {"count": n, "first": summary.first_example[kind]}
            for kind, n in summary.problems.items()
        },
    }
    answered_examples = {
        stamp: rgb for stamp, rgb in example_rgb.items() if stats.is_answered(stamp)
    }
    path = write_report(
        out, report, stats.latencies_ms(), answered_examples, sink.examples, info.palette
    )
    _print_summary(report, path)
    summary.print()
    return summary.exit_code()


def _accuracy(
    scorer: StampScorer | None, depth_scorer: DepthScorer | None
) -> dict[str, Any] | None:
    """``report.json``'s ``accuracy``: ``null`` when nothing was scored against anything."""
    if scorer is None and depth_scorer is None:
        return None
    accuracy = scorer.compute() if scorer is not None else {}
    if depth_scorer is not None:
        accuracy["depth"] = depth_scorer.compute()
    return accuracy


def _print_summary(report: dict[str, Any], path: Path) -> None:
    """Two or three lines on stdout: frames and latency, then accuracy when scored."""
    latency = report["latency_ms"]
    fmt = format_number
    print(
        f"{PROG}: {report['frames_answered']}/{report['frames_sent']} frames answered, "
        f"{report['frames_dropped']} dropped; latency ms p50 {fmt(latency['p50'], 1)} "
        f"p95 {fmt(latency['p95'], 1)} p99 {fmt(latency['p99'], 1)} "
        f"max {fmt(latency['max'], 1)}; report {path}"
    )
    accuracy = report.get("accuracy") or {}
    if "detection" in accuracy:
        detection = accuracy["detection"]
        print(
            f"{PROG}: detection mAP {fmt(detection['map'], 3)} "
            f"mAP@.5 {fmt(detection['map_50'], 3)} over {detection['frames']} frames"
        )
    if "segmentation" in accuracy:
        segmentation = accuracy["segmentation"]
        print(
            f"{PROG}: segmentation mIoU {fmt(segmentation['miou'], 3)} "
            f"over {segmentation['frames']} frames"
        )
    if "depth" in accuracy:
        depth = accuracy["depth"]
        print(
            f"{PROG}: depth AbsRel {fmt(depth['abs_rel'], 3)} RMSE {fmt(depth['rmse'], 3)} m "
            f"delta<1.25 {fmt(depth['delta1'], 3)} over {depth['frames']} frames "
            f"({depth['frames_without_depth']} without bag depth, "
            f"{depth['size_mismatches']} size mismatches)"
        )


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) and replay; returns the exit status."""
    return _replay(build_parser().parse_args(argv))


def main() -> None:
    """Console-script entry point (``mtl-replay``)."""
    run_cli(run, PROG)


if __name__ == "__main__":
    main()
