# SPDX-License-Identifier: Apache-2.0
"""mtl-replay's depth scoring (pure, no ROS): the bag's depth topic is the reference."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from bagfactory import COMPRESSED, IMAGE, ROS2_STORE, compressed_msg, image_msg, write_bag

from mtl_perception.core.errors import UserError
from mtl_perception.evaluation.depth_metrics import DEPTH_METRIC_KEYS, DepthMetrics
from mtl_perception.replay.depth_scoring import DepthReference, DepthScorer
from mtl_perception.replay.outputs import OutputSink
from mtl_perception.replay.source import open_depth_reference

T0 = 1_700_000_000_000_000_000
PERIOD = 33_333_333
H, W = 6, 8


def depth_frames(count: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(count):
        mm = rng.integers(500, 5000, size=(H, W)).astype(np.uint16)
        mm[0, :2] = 0  # sensor holes
        frames.append(mm)
    return frames


@pytest.fixture
def depth_bag(tmp_path: Path) -> Path:
    """A ROS 2 bag with colour and a 16UC1 depth topic (the last depth frame dropped)."""
    messages = []
    for i, mm in enumerate(depth_frames()):
        stamp = T0 + i * PERIOD
        messages.append(
            ("/cam/color", IMAGE, stamp, image_msg(np.zeros((H, W, 3), np.uint8), "rgb8", stamp))
        )
        if i < 3:
            messages.append(
                ("/cam/depth", IMAGE, stamp + 1000, image_msg(mm, "16UC1", stamp + 1000))
            )
    return write_bag(tmp_path / "rgbd", "mcap", messages)


def test_bag_depth_scored_by_stamp_against_independent_metrics(depth_bag: Path) -> None:
    frames = depth_frames()
    rng = np.random.default_rng(1)
    preds = [(mm / 1000.0 * rng.uniform(0.8, 1.2, (H, W))).astype(np.float32) for mm in frames]
    with open_depth_reference(depth_bag, "cam/depth") as reference:
        assert reference.topic == "/cam/depth" and len(reference) == 3
        scorer = DepthScorer(reference, tolerance_ns=20_000_000)
        # Answers arrive out of order; frame 3 has no depth in the bag.
        for i in (1, 0, 3, 2):
            assert scorer.add_depth(T0 + i * PERIOD, preds[i]) is (i < 3)
        result = scorer.compute()
    expected = DepthMetrics()
    for i in range(3):
        target = frames[i].astype(np.float32) / 1000.0  # 0 stays 0 = invalid
        expected.update(preds[i], target)
    want = expected.compute()
    for key in DEPTH_METRIC_KEYS:
        assert result[key] == pytest.approx(want[key]), key
    assert result["valid_pixels"] == 3 * (H * W - 2) and result["frames"] == 3
    assert result["frames_without_depth"] == 1 and result["size_mismatches"] == 0
    assert result["depth_topic"] == "/cam/depth"


def test_tolerance_size_mismatch_and_float_depth(tmp_path: Path) -> None:
    metres = np.full((H, W), 2.0, np.float32)
    metres[0, 0] = np.nan
    bag = write_bag(tmp_path / "f", "mcap", [("/d", IMAGE, T0, image_msg(metres, "32FC1", T0))])
    with open_depth_reference(bag, "/d") as reference:
        scorer = DepthScorer(reference, tolerance_ns=5_000_000)
        assert not scorer.add_depth(T0 + 6_000_000, metres)  # outside the tolerance
        assert not scorer.add_depth(T0, np.ones((H, W * 2), np.float32))  # another resolution
        assert scorer.add_depth(T0 + 4_000_000, np.full((H, W), 2.5, np.float32))
        result = scorer.compute()
    assert result["frames_without_depth"] == 1 and result["size_mismatches"] == 1
    assert f"{W * 2}x{H} vs /d {W}x{H}" in result["first_problem"]
    assert result["mae"] == pytest.approx(0.5) and result["valid_pixels"] == H * W - 1


def test_compressed_depth_reference(tmp_path: Path) -> None:
    mm = depth_frames(1)[0]
    payload = struct.pack("<iff", 0, 0, 0) + cv2.imencode(".png", mm)[1].tobytes()
    bag = write_bag(
        tmp_path / "c",
        "db3",
        [
            (
                "/d/compressedDepth",
                COMPRESSED,
                T0,
                compressed_msg(payload, "16UC1; compressedDepth", T0),
            )
        ],
    )
    with open_depth_reference(bag, "/d/compressedDepth") as reference:
        scorer = DepthScorer(reference, tolerance_ns=0, max_depth=3.0)
        assert scorer.add_depth(T0, mm.astype(np.float32) / 1000.0)
        result = scorer.compute()
    assert result["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert result["valid_pixels"] == int(((mm > 0) & (mm <= 3000)).sum())


def test_missing_depth_topic_is_a_user_error(depth_bag: Path) -> None:
    with (
        pytest.raises(
            UserError, match=r"--depth-topic /nope: not an image topic .*/cam/color, /cam/depth"
        ),
        open_depth_reference(depth_bag, "/nope"),
    ):
        pass


def test_sink_scores_depth_answers_and_reports_bad_ones() -> None:
    target = np.full((H, W), 1500, np.uint16)
    reference = DepthReference("/bag/depth", [T0], lambda _: target)
    scorer = DepthScorer(reference, tolerance_ns=0)
    sink = OutputSink(
        None, None, "/n/detections", "/n/segmentation", depth_topic="/n/depth", depth_scorer=scorer
    )
    answer = image_msg(np.full((H, W), 1.5, np.float32), "32FC1", T0)
    sink.consume("/n/depth", IMAGE, bytes(ROS2_STORE.serialize_cdr(answer, IMAGE)), 1)
    wrong = image_msg(np.zeros((H, W), np.uint8), "mono8", T0)
    sink.consume("/n/depth", IMAGE, bytes(ROS2_STORE.serialize_cdr(wrong, IMAGE)), 2)
    result = scorer.compute()
    assert result["frames"] == 1 and result["rmse"] == 0.0 and result["delta1"] == 1.0
    assert sink.summary.problems["unreadable message on /n/depth"] == 1
    # Without a depth scorer, depth answers are only recorded.
    quiet = OutputSink(None, None, "/n/detections", "/n/segmentation", depth_topic="/n/depth")
    quiet.consume("/n/depth", IMAGE, bytes(ROS2_STORE.serialize_cdr(wrong, IMAGE)), 3)
    assert not quiet.summary.problems and math.isnan(DepthScorer(reference, 0).compute()["rmse"])
