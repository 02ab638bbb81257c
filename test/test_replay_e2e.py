# SPDX-License-Identifier: Apache-2.0
"""``mtl-replay`` end to end: a tiny bag replayed in lockstep into a real node subprocess.

Random-weights checkpoint (no download), 64x48 frames; the replay (run in-process, so torch
is imported once) starts the node itself, records its outputs to an .mcap and writes
report.json with accuracy against a COCO file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bagfactory import COMPRESSED, IMAGE, compressed_msg, image_msg, write_bag

pytest.importorskip("rclpy")

from rosbags.highlevel import AnyReader

from mtl_perception.core.errors import UserError
from mtl_perception.replay.recorder import replay_typestore
from mtl_perception.replay.source import open_image_bag
from mtl_perception.ros.replay import run, to_ros_message
from mtl_perception.ros.replay_launch import FASTDDS_PROFILE, NodeProcess

pytestmark = pytest.mark.ros

HEIGHT, WIDTH = 48, 64
STAMPS = [1_700_000_000_000_000_000 + i * 33_333_333 for i in range(5)]


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    frames = []
    for _ in STAMPS:
        rgb = rng.integers(0, 60, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        rgb[HEIGHT // 2 :] = (90, 90, 90)  # "floor"
        rgb[10:30, 20:40] = (200, 40, 40)  # a "box"
        frames.append(rgb)
    return frames


def _coco(path: Path) -> Path:
    """Ground truth in the synth COCO layout: one box object and the floor as stuff."""
    floor = [[0, HEIGHT // 2, WIDTH, HEIGHT // 2, WIDTH, HEIGHT, 0, HEIGHT]]
    images, anns = [], []
    for i, stamp in enumerate(STAMPS):
        images.append(
            {
                "id": i + 1,
                "file_name": f"{stamp}.png",
                "width": WIDTH,
                "height": HEIGHT,
                "stamp_ns": stamp,
            }
        )
        anns.append(
            {
                "id": 2 * i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "bbox": [20, 10, 20, 20],
                "iscrowd": 0,
                "area": 400,
                "segmentation": [[20, 10, 40, 10, 40, 30, 20, 30]],
            }
        )
        anns.append(
            {
                "id": 2 * i + 2,
                "image_id": i + 1,
                "category_id": 4,
                "bbox": [0, 24, 64, 24],
                "iscrowd": 0,
                "area": 1536,
                "segmentation": floor,
            }
        )
    categories = [
        {"id": 1, "name": "box", "supercategory": "object"},
        {"id": 2, "name": "cone", "supercategory": "object"},
        {"id": 3, "name": "ball", "supercategory": "object"},
        {"id": 4, "name": "floor", "supercategory": "stuff"},
        {"id": 5, "name": "wall", "supercategory": "stuff"},
    ]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


@pytest.fixture
def checkpoint(make_checkpoint) -> Path:
    return make_checkpoint(
        detection_classes=("box", "cone", "ball"),
        segmentation_classes=("background", "floor", "wall", "box"),
        input_size=(HEIGHT, WIDTH),
        tasks=("detection", "segmentation", "depth"),
    )


def test_lockstep_replay_answers_every_frame(
    tmp_path: Path,
    checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bag = write_bag(
        tmp_path / "run",
        "mcap",
        [
            ("/camera/image_raw", IMAGE, stamp + 5_000_000, image_msg(rgb, "rgb8", stamp))
            for rgb, stamp in zip(_frames(), STAMPS, strict=True)
        ],
    )
    gt = _coco(tmp_path / "gt.json")
    out = tmp_path / "report"
    monkeypatch.setenv(
        "FASTRTPS_DEFAULT_PROFILES_FILE", str(FASTDDS_PROFILE)
    )  # restored after the test
    code = run(
        [
            str(bag),
            "--model",
            str(checkpoint),
            "--lockstep",
            "--ground-truth",
            str(gt),
            "--out",
            str(out),
            "--examples",
            "2",
            "--frame-timeout",
            "30",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err + (out / "node.log").read_text()
    assert f"{len(STAMPS)}/{len(STAMPS)} frames answered" in printed.out

    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "lockstep" and report["topic"] == "/camera/image_raw"
    assert report["frames_sent"] == report["frames_answered"] == len(STAMPS)
    assert report["frames_dropped"] == 0
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert report["throughput_fps"] > 0
    assert report["ground_truth_frames_matched"] == len(STAMPS)
    detection = report["accuracy"]["detection"]
    segmentation = report["accuracy"]["segmentation"]
    assert detection["frames"] == len(STAMPS) and 0.0 <= (detection["map_50"] or 0.0) <= 1.0
    assert segmentation["frames"] == len(STAMPS) and 0.0 <= segmentation["pixel_accuracy"] <= 1.0
    assert segmentation["classes"] == ["background", "floor", "wall", "box"]
    for figure in report["figures"]:
        assert (out / figure).stat().st_size > 0
    assert "latency_histogram.png" in report["figures"] and "examples.png" in report["figures"]
    assert len([f for f in report["figures"] if f.startswith("overlay_")]) == 2

    # The recorded bag is readable by rosbags and holds one Detection2DArray per input stamp.
    with AnyReader([out / "outputs"], default_typestore=replay_typestore()) as reader:
        by_topic: dict[str, list[int]] = {}
        for conn, _, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.msgtype != "diagnostic_msgs/msg/DiagnosticArray":
                by_topic.setdefault(conn.topic, []).append(
                    msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
                )
        types = {c.topic: c.msgtype for c in reader.connections}
    assert types["/perception_node/detections"] == "vision_msgs/msg/Detection2DArray"
    assert sorted(by_topic["/perception_node/detections"]) == STAMPS
    assert sorted(by_topic["/perception_node/segmentation"]) == STAMPS
    assert (
        sorted(by_topic["/perception_node/depth"]) == STAMPS
    )  # 32FC1 metres, recorded for every frame
    assert types["/perception_node/depth/color"] == "sensor_msgs/msg/Image"


def test_clear_errors_before_and_during_start_up(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    frames = _frames()[:2]
    jpegs = [cv2.imencode(".jpg", f[:, :, ::-1])[1].tobytes() for f in frames]
    bag = write_bag(
        tmp_path / "two",
        "db3",
        [
            ("/cam/image", IMAGE, s, image_msg(f, "rgb8", s))
            for f, s in zip(frames, STAMPS, strict=False)
        ]
        + [
            ("/cam/image/compressed", COMPRESSED, s, compressed_msg(j, "jpeg", s))
            for j, s in zip(jpegs, STAMPS, strict=False)
        ],
    )
    monkeypatch.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", str(FASTDDS_PROFILE))

    def error_of(*args: str) -> str:
        with pytest.raises(UserError) as info:
            run([*args, "--out", str(tmp_path / "r")])
        return str(info.value)

    several = error_of(str(bag), "--model", str(checkpoint))
    assert (
        "several image topics" in several and "/cam/image/compressed (CompressedImage)" in several
    )
    assert "no image topic '/nope'" in error_of(
        str(bag), "--model", str(checkpoint), "--topic", "/nope"
    )
    assert "none.pt does not exist" in error_of(
        str(bag), "--topic", "/cam/image", "--model", str(tmp_path / "none.pt")
    )
    assert "bag not found" in error_of(str(tmp_path / "nobag.mcap"), "--model", str(checkpoint))
    assert "--model is required" in error_of(str(bag), "--topic", "/cam/image")
    # Attaching to a node that is not running names the check that failed.
    no_node = error_of(
        str(bag),
        "--topic",
        "/cam/image",
        "--attach",
        "--node-ns",
        "/ghost",
        "--startup-timeout",
        "1",
    )
    assert "did not come up within 1 s: no subscriber on /cam/image" in no_node
    assert not (tmp_path / "r" / "outputs").exists()  # the partial output bag was discarded


def test_node_command_line_and_bag_to_ros_messages(tmp_path: Path) -> None:
    from sensor_msgs.msg import CompressedImage, Image

    node = NodeProcess(
        Path("/models/m.pt"),
        "/cam/image/compressed",
        tmp_path / "node.log",
        compressed=True,
        parameters=["reliability:=reliable"],
        params_file=Path("/cfg/p.yaml"),
    )
    args = node.args
    assert args[1:4] == ["-m", "mtl_perception.ros.node", "--ros-args"]
    for expected in (
        "image/compressed:=/cam/image/compressed",
        "compressed:=true",
        "model_path:=/models/m.pt",
        "autostart:=true",
        "reliability:=reliable",
    ):
        assert expected in args
    assert (
        args[args.index("--params-file") + 1] == "/cfg/p.yaml"
        and node.namespace == "/perception_node"
    )
    assert node.exit_code() is None and node.stop() is None  # never started: nothing to stop

    # ROS 1 bag (other robot): encoding, padding and bytes pass through unchanged; stamps kept.
    bgr = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    padded = b"".join(bgr[r].tobytes() + b"\0\0" for r in range(4))
    jpeg = bytes(range(10))
    bag = write_bag(
        tmp_path / "r1.bag",
        "ros1",
        [
            (
                "/cam/image",
                IMAGE,
                1,
                image_msg(padded, "bgr8", STAMPS[1], width=5, height=4, step=17),
            ),
            ("/cam/image/compressed", COMPRESSED, 2, compressed_msg(jpeg, "jpeg", STAMPS[2])),
        ],
    )
    with open_image_bag(bag, "/cam/image") as image_bag:
        msg = to_ros_message(next(image_bag.frames()))
    assert isinstance(msg, Image) and (msg.encoding, msg.width, msg.height, msg.step) == (
        "bgr8",
        5,
        4,
        17,
    )
    assert bytes(msg.data) == padded
    assert (
        msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == STAMPS[1]
        and msg.header.frame_id == "camera"
    )
    with open_image_bag(bag, "/cam/image/compressed") as image_bag:
        msg = to_ros_message(next(image_bag.frames()))
    assert isinstance(msg, CompressedImage) and msg.format == "jpeg" and bytes(msg.data) == jpeg


def test_timed_replay_of_compressed_topic_into_attached_node(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    monkeypatch.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", str(FASTDDS_PROFILE))
    frames = _frames() * 2
    stamps = [STAMPS[0] + i * 33_333_333 for i in range(len(frames))]
    jpegs = [cv2.imencode(".jpg", f[:, :, ::-1])[1].tobytes() for f in frames]
    bag = write_bag(
        tmp_path / "jpeg",
        "mcap",
        [
            ("/cam/image/compressed", COMPRESSED, s, compressed_msg(j, "jpeg", s))
            for j, s in zip(jpegs, stamps, strict=True)
        ],
    )
    out = tmp_path / "timed"
    with NodeProcess(
        checkpoint,
        "/cam/image/compressed",
        tmp_path / "node.log",
        compressed=True,
        node_name="attached_node",
    ):
        code = run(
            [
                str(bag),
                "--attach",
                "--node-ns",
                "/attached_node",
                "--rate",
                "2",
                "--out",
                str(out),
                "--no-record-color",
                "--frame-timeout",
                "30",
            ]
        )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert (
        report["mode"] == "timed" and report["rate"] == 2.0 and report["node"]["started"] is False
    )
    assert report["frames_sent"] == len(frames) and report["frames_answered"] >= 1
    assert report["frames_answered"] + report["frames_dropped"] == len(frames)
    assert stamps[-1] not in report["dropped_stamps"]  # the node always gets to the newest frame
    assert (
        report["wall_time_s"] >= (stamps[-1] - stamps[0]) / 1e9 / 2
    )  # recorded spacing, twice as fast
    with AnyReader([out / "outputs"], default_typestore=replay_typestore()) as reader:
        topics = {c.topic for c in reader.connections}
    assert (
        "/attached_node/detections" in topics and "/attached_node/segmentation/color" not in topics
    )
    assert "/attached_node/depth/color" not in topics
