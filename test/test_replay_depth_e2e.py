# SPDX-License-Identifier: Apache-2.0
"""``mtl-replay --depth-topic`` end to end: an RGB-D bag into a real node, ``~/depth`` scored.

The node (random weights, depth head) answers each colour frame on ``~/depth``; the replay
scores those answers against the bag's own 16UC1 depth topic by stamp. The test reads the
recorded answers back and recomputes the metrics pixel by pixel, independently of
``DepthMetrics``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from bagfactory import IMAGE, image_msg, write_bag

pytest.importorskip("rclpy")

from rosbags.highlevel import AnyReader

from mtl_perception.replay.recorder import replay_typestore
from mtl_perception.ros.replay import run
from mtl_perception.ros.replay_launch import FASTDDS_PROFILE

pytestmark = pytest.mark.ros

HEIGHT, WIDTH = 48, 64
STAMPS = [1_700_000_000_000_000_000 + i * 33_333_333 for i in range(4)]
COLOR, DEPTH = "/camera/color/image_raw", "/camera/aligned_depth_to_color/image_raw"


def _depth_mm(index: int) -> np.ndarray:
    rows = np.linspace(4000, 800, HEIGHT, dtype=np.float64)[:, None]  # a floor-like gradient
    mm = np.repeat(rows, WIDTH, axis=1).astype(np.uint16) + 10 * index
    mm[:, :2] = 0  # invalid band
    mm[5, 5] = 0
    return mm


def test_depth_answers_scored_against_the_bags_depth(
    tmp_path: Path,
    make_checkpoint,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rng = np.random.default_rng(0)
    messages = []
    for i, stamp in enumerate(STAMPS):
        rgb = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        messages.append((COLOR, IMAGE, stamp + 1000, image_msg(rgb, "rgb8", stamp)))
        if i != 2:  # one depth frame dropped by the camera
            messages.append((DEPTH, IMAGE, stamp + 2000, image_msg(_depth_mm(i), "16UC1", stamp)))
    bag = write_bag(tmp_path / "rgbd", "mcap", messages)
    checkpoint = make_checkpoint(
        input_size=(HEIGHT, WIDTH), tasks=("detection", "segmentation", "depth")
    )
    out = tmp_path / "report"
    monkeypatch.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", str(FASTDDS_PROFILE))
    code = run(
        [
            str(bag),
            "--topic",
            COLOR,
            "--model",
            str(checkpoint),
            "--lockstep",
            "--depth-topic",
            DEPTH,
            "--out",
            str(out),
            "--frame-timeout",
            "30",
            "--examples",
            "0",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err + (out / "node.log").read_text()
    assert "depth AbsRel" in printed.out

    report = json.loads((out / "report.json").read_text())
    depth = report["accuracy"]["depth"]
    assert (
        depth["depth_topic"] == DEPTH
        and depth["frames"] == 3
        and depth["frames_without_depth"] == 1
    )
    assert depth["size_mismatches"] == 0 and "detection" not in report["accuracy"]

    # The recorded answers: 32FC1 metres at input resolution with the input's stamps.
    answers = {}
    with AnyReader([out / "outputs"], default_typestore=replay_typestore()) as reader:
        conns = [c for c in reader.connections if c.topic == "/perception_node/depth"]
        for conn, _, raw in reader.messages(conns):
            msg = reader.deserialize(raw, conn.msgtype)
            assert (msg.encoding, msg.height, msg.width) == ("32FC1", HEIGHT, WIDTH)
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            answers[stamp] = np.frombuffer(bytes(msg.data), dtype="<f4").reshape(HEIGHT, WIDTH)
    assert sorted(answers) == STAMPS

    # Independent recomputation over the three frames that have depth.
    pred, gt = [], []
    for i, stamp in enumerate(STAMPS):
        if i == 2:
            continue
        valid = _depth_mm(i) > 0
        gt.append(_depth_mm(i)[valid] / 1000.0)
        pred.append(np.maximum(answers[stamp][valid].astype(np.float64), 1e-3))
    p, g = np.concatenate(pred), np.concatenate(gt)
    ratio = np.maximum(p / g, g / p)
    assert depth["valid_pixels"] == g.size == 3 * (HEIGHT * WIDTH - 2 * HEIGHT - 1)
    assert depth["abs_rel"] == pytest.approx(np.mean(np.abs(p - g) / g), rel=1e-6)
    assert depth["rmse"] == pytest.approx(math.sqrt(np.mean((p - g) ** 2)), rel=1e-6)
    assert depth["rmse_log"] == pytest.approx(math.sqrt(np.mean(np.log(p / g) ** 2)), rel=1e-6)
    assert depth["delta1"] == pytest.approx(np.mean(ratio < 1.25), abs=1e-9)
    assert depth["mae"] == pytest.approx(np.mean(np.abs(p - g)), rel=1e-6)
