# SPDX-License-Identifier: Apache-2.0
"""What happens to each message the node sends back: record it, score it, keep examples.

Messages arrive as raw CDR (rclpy ``raw=True`` subscriptions), are written verbatim to the
output bag and deserialised with the rosbags typestore for scoring, exactly as a reader of
the recorded bag would see them. This runs on a worker thread, off the executor, so that
receive timestamps are not delayed by mask decoding or metric updates.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rosbags.serde import SerdeError

from mtl_perception.core.images import decode_image
from mtl_perception.core.stamps import NS_PER_S
from mtl_perception.core.summary import JobSummary
from mtl_perception.replay.depth_scoring import DepthScorer
from mtl_perception.replay.recorder import OutputRecorder, replay_typestore
from mtl_perception.replay.scoring import StampScorer

__all__ = [
    "DETECTIONS_TYPE",
    "IMAGE_TYPE",
    "Answer",
    "OutputSink",
    "detections_to_arrays",
    "header_stamp_ns",
]

DETECTIONS_TYPE = "vision_msgs/msg/Detection2DArray"
IMAGE_TYPE = "sensor_msgs/msg/Image"
_TIME = {b"\x00": struct.Struct(">iI"), b"\x01": struct.Struct("<iI")}


def header_stamp_ns(cdr: bytes) -> int | None:
    """Header stamp of a serialised message whose first field is ``std_msgs/Header``.

    Hand-written on purpose: the stamp sits right after the 4-byte CDR encapsulation header
    (int32 sec, uint32 nanosec, byte order from the encapsulation id), and reading 8 bytes is
    far cheaper than deserialising a 1 MB image on the executor thread just to time it.
    """
    if len(cdr) < 12 or cdr[1:2] not in _TIME:
        return None
    sec, nanosec = _TIME[cdr[1:2]].unpack_from(cdr, 4)
    return sec * NS_PER_S + nanosec


def detections_to_arrays(msg: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``Detection2DArray`` -> (boxes xyxy float32 [N,4], scores [N], class names).

    Each box contributes its best hypothesis.
    """
    boxes, scores, names = [], [], []
    for det in msg.detections:
        if not det.results:
            continue
        best = max(det.results, key=lambda r: r.hypothesis.score).hypothesis
        cx, cy = det.bbox.center.position.x, det.bbox.center.position.y
        half_w, half_h = det.bbox.size_x / 2.0, det.bbox.size_y / 2.0
        boxes.append([cx - half_w, cy - half_h, cx + half_w, cy + half_h])
        scores.append(best.score)
        names.append(best.class_id)
    return (
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(scores, dtype=np.float32),
        names,
    )


@dataclass
class Answer:
    """The node's outputs for one example frame, as ``visualize.draw_prediction`` reads them."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    label_names: list[str] = field(default_factory=list)
    mask: np.ndarray | None = None


class OutputSink:
    """Consumes ``(topic, msgtype, cdr, receive_time_ns)`` tuples from the node's outputs.

    ``detections_topic``/``segmentation_topic`` (and ``depth_topic``, scored by
    ``depth_scorer`` against the bag's depth) name the topics to score; ``example_stamps``
    are the frames whose answers are kept for the report's overlay pictures.
    """

    def __init__(
        self,
        recorder: OutputRecorder | None,
        scorer: StampScorer | None,
        detections_topic: str,
        segmentation_topic: str,
        detection_classes: Sequence[str] = (),
        example_stamps: Iterable[int] = (),
        depth_topic: str | None = None,
        depth_scorer: DepthScorer | None = None,
    ) -> None:
        self.recorder = recorder
        self.scorer = scorer
        self.depth_topic = depth_topic
        self.depth_scorer = depth_scorer
        self.detections_topic = detections_topic
        self.segmentation_topic = segmentation_topic
        self._label_of = {name: i + 1 for i, name in enumerate(detection_classes)}
        self.examples: dict[int, Answer] = {stamp: Answer() for stamp in example_stamps}
        self.summary = JobSummary("replay outputs")
        self._typestore = replay_typestore()

    def want_example(self, stamp_ns: int) -> None:
        """Keep the answer for this frame for the report's overlays (call before publishing it)."""
        self.examples.setdefault(stamp_ns, Answer())

    def consume(self, topic: str, msgtype: str, cdr: bytes, receive_time_ns: int) -> None:
        """Record one output; score it when it is a detections or segmentation message."""
        if self.recorder is not None:
            self.recorder.write(topic, msgtype, cdr, receive_time_ns)
        self.summary.add(f"messages on {topic}")
        stamp = header_stamp_ns(cdr)
        if stamp is None:
            return
        if topic == self.depth_topic:
            wanted = self.depth_scorer is not None
        elif topic in (self.detections_topic, self.segmentation_topic):
            wanted = stamp in self.examples or self.scorer is not None
        else:
            return
        if not wanted:
            return
        try:
            msg = self._typestore.deserialize_cdr(cdr, msgtype)
            if topic == self.detections_topic:
                self._detections(stamp, msg)
            elif topic == self.segmentation_topic:
                self._mask(stamp, decode_image(msg))
            else:
                self._depth(stamp, decode_image(msg))
        except (SerdeError, ValueError) as err:  # a malformed output must not end the replay
            self.summary.fail(f"unreadable message on {topic}", f"stamp {stamp}: {err}")

    def _detections(self, stamp: int, msg: Any) -> None:
        boxes, scores, names = detections_to_arrays(msg)
        if self.scorer is not None:
            self.scorer.add_detections(stamp, boxes, scores, names)
        if stamp in self.examples:
            labels = np.asarray([self._label_of.get(n, 0) for n in names], dtype=np.int64)
            example = self.examples[stamp]
            example.boxes, example.scores, example.labels, example.label_names = (
                boxes,
                scores,
                labels,
                names,
            )

    def _depth(self, stamp: int, depth_m: np.ndarray) -> None:
        assert self.depth_scorer is not None
        if depth_m.dtype != np.float32:
            raise ValueError(f"depth answer is {depth_m.dtype}, expected 32FC1 metres")
        self.depth_scorer.add_depth(stamp, depth_m)

    def _mask(self, stamp: int, mask: np.ndarray) -> None:
        if mask.ndim != 2:
            raise ValueError(f"segmentation mask has shape {mask.shape}, expected mono8 [H, W]")
        if self.scorer is not None:
            self.scorer.add_mask(stamp, mask)
        if stamp in self.examples:
            self.examples[stamp].mask = mask
