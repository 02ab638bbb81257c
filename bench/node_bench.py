# SPDX-License-Identifier: Apache-2.0
"""Set-up shared by the node benches (bench_node.py, bench_node_latency.py).

Both compare the perception node, run as a subprocess, with its bare model in this process: the
same arguments, the same random-weights checkpoint, the same node start-up and clean-up, the
same frames as ``sensor_msgs/Image`` messages, and the node's CPU time and memory read from
/proc (Linux; avoids a psutil dependency).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rclpy
import torch
from rclpy.context import Context
from sensor_msgs.msg import Image

from mtl_perception.checkpoint import inference_fields, save_checkpoint
from mtl_perception.core.constants import MIN_INPUT_SIDE, parse_hw
from mtl_perception.core.images import rgb8_to_image_fields
from mtl_perception.core.stamps import ns_to_sec_nanosec
from mtl_perception.predictor import Predictor
from mtl_perception.ros.replay_launch import NodeProcess, dds_environment

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DETECTION_CLASSES = ["box", "cone", "ball"]
SEGMENTATION_CLASSES = ["background", "floor", "wall"]


def _input_size(text: str) -> tuple[int, int]:
    """``HEIGHTxWIDTH`` -> ``(height, width)``."""
    try:
        return parse_hw(text, "--input-size", MIN_INPUT_SIDE)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def base_parser(description: str, input_size: tuple[int, int]) -> argparse.ArgumentParser:
    """The arguments every node bench takes: model, its input size and the torch thread count."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="model to run (default: random-weights ssdlite_deeplabv3)"
    )
    parser.add_argument(
        "--input-size",
        type=_input_size,
        default=input_size,
        help=f"network input HEIGHTxWIDTH of the random model (default {input_size[0]}x"
        f"{input_size[1]})",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads, model and node alike"
    )
    return parser


def random_checkpoint(folder: Path, input_size: tuple[int, int]) -> Path:
    """A random-weights multi-task checkpoint (the benches measure speed, not accuracy)."""
    from mtl_perception.nets import build_model  # heavy: only when no checkpoint is given

    torch.manual_seed(0)
    model = build_model(
        "ssdlite_deeplabv3", len(DETECTION_CLASSES), len(SEGMENTATION_CLASSES), input_size
    )
    path = folder / "bench_model.pt"
    save_checkpoint(path, inference_fields(model, DETECTION_CLASSES, SEGMENTATION_CLASSES))
    return path


def warm_predictor(args: argparse.Namespace, folder: Path) -> tuple[Path, Predictor]:
    """``--checkpoint`` (or a random one written to ``folder``) and its warmed-up CPU predictor."""
    checkpoint = args.checkpoint or random_checkpoint(folder, args.input_size)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    predictor.warmup(3)
    return checkpoint, predictor


@contextmanager
def running_node(
    checkpoint: Path, topic: str, folder: Path, threads: int, parameters: Sequence[str] = ()
) -> Iterator[tuple[Context, NodeProcess]]:
    """The node as a subprocess on CPU reading ``topic``, and a ROS context of this process.

    The node gets the large-image DDS profile and ``threads`` OpenMP threads (as the bare model
    here); its log goes to ``folder/node.log``. Both are shut down on exit.
    """
    os.environ.update(dds_environment())
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the node subprocess
    context = Context()
    rclpy.init(args=[], context=context)  # our argv is argparse's, not ROS's
    node = NodeProcess(
        checkpoint.resolve(), topic, folder / "node.log", parameters=["device:=cpu", *parameters]
    )
    try:
        node.start()
        yield context, node
    finally:
        node.stop()
        rclpy.try_shutdown(context=context)


def image_messages(frames: Sequence[np.ndarray]) -> list[Image]:
    """``rgb8`` Image messages of RGB frames (header stamps set when sent: :func:`set_stamp`)."""
    return [Image(**rgb8_to_image_fields(rgb)) for rgb in frames]


def set_stamp(msg: Image, stamp_ns: int) -> None:
    """Give ``msg`` the header stamp ``stamp_ns`` (the benches match answers by stamp)."""
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_sec_nanosec(stamp_ns)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc/<pid>/statm."""
    with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
