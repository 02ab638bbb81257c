# SPDX-License-Identifier: Apache-2.0
"""Pure parts of mtl-replay: ground truth by stamp, scoring, stats, CDR stamp, recorder, source."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from bagfactory import (
    COMPRESSED,
    IMAGE,
    ROS2_STORE,
    ROS2_TYPES,
    compressed_msg,
    header,
    image_msg,
    write_bag,
)
from rosbags.highlevel import AnyReader

from mtl_perception.core.constants import IGNORE_INDEX
from mtl_perception.core.errors import UserError
from mtl_perception.core.json_io import json_ready
from mtl_perception.core.labels import ClassConfig
from mtl_perception.replay.ground_truth import load_ground_truth
from mtl_perception.replay.outputs import (
    DETECTIONS_TYPE,
    OutputSink,
    detections_to_arrays,
    header_stamp_ns,
)
from mtl_perception.replay.recorder import OutputRecorder, replay_typestore, vision_msgs_msg_dir
from mtl_perception.replay.report import write_report
from mtl_perception.replay.scoring import StampScorer
from mtl_perception.replay.source import open_image_bag
from mtl_perception.replay.stats import ReplayStats, latency_summary

STAMP = 1_700_000_000_123_456_789


def _coco_file(path: Path, **overrides: object) -> Path:
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 8, "height": 6, "stamp_ns": STAMP},
            {"id": 2, "file_name": "b.png", "width": 8, "height": 6},
        ],  # no stamp: cannot be matched
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 3,
                "bbox": [0, 3, 8, 3],
                "iscrowd": 0,
                "segmentation": [[0, 3, 8, 3, 8, 6, 0, 6]],
            },  # floor (stuff), bottom half
            {
                "id": 2,
                "image_id": 1,
                "category_id": 1,
                "bbox": [2, 2, 3, 3],
                "iscrowd": 0,
                "segmentation": [[2, 2, 5, 2, 5, 5, 2, 5]],
            },  # box on top of the floor
            {
                "id": 3,
                "image_id": 1,
                "category_id": 2,
                "bbox": [1, 1, 0, 0],
                "iscrowd": 0,
            },  # empty box: skipped
        ],
        "categories": [
            {"id": 1, "name": "box", "supercategory": "object"},
            {"id": 2, "name": "cone", "supercategory": "object"},
            {"id": 3, "name": "floor", "supercategory": "stuff"},
        ],
    }
    coco.update(overrides)
    path.write_text(json.dumps(coco))
    return path


def _processed(folder: Path) -> Path:
    (folder / "masks").mkdir(parents=True)
    mask = np.zeros((6, 8), np.uint8)
    mask[3:] = 1
    mask[0, 0] = IGNORE_INDEX
    cv2.imwrite(str(folder / "masks" / "a.png"), mask)
    classes = {
        "detection_classes": ["cone"],
        "segmentation_classes": ["background", "floor"],
        "palette": [[0, 0, 0], [1, 2, 3]],
    }
    (folder / "classes.json").write_text(json.dumps(classes))
    (folder / "annotations.json").write_text(
        json.dumps(
            {
                "images": [
                    {
                        "id": 7,
                        "file_name": "images/a.png",
                        "width": 8,
                        "height": 6,
                        "stamp_ns": STAMP,
                        "mask_file": "masks/a.png",
                    }
                ],
                "annotations": [
                    {"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 2, 2], "iscrowd": 0}
                ],
                "categories": [{"id": 1, "name": "cone"}],
            }
        )
    )
    return folder


CLASSES = ClassConfig(detection_classes=["box", "cone"], segmentation_classes=["box", "floor"])


def test_coco_ground_truth_by_stamp(tmp_path: Path) -> None:
    truth = load_ground_truth(_coco_file(tmp_path / "gt.json"), CLASSES)
    assert truth.detection_classes == ["box", "cone"]
    assert truth.segmentation_classes == ["background", "box", "floor"]
    assert list(truth.frames) == [STAMP] and STAMP in truth
    frame = truth.frames[STAMP]
    assert frame.names == ("box",)
    np.testing.assert_allclose(frame.boxes, [[2, 2, 5, 5]])
    mask = frame.load_mask()
    assert mask.shape == (6, 8)
    assert mask[0, 0] == 0 and mask[5, 0] == 2  # background above, floor below
    assert mask[3, 3] == 1  # the smaller object is painted over the larger floor
    assert truth.summary.problems["image without integer stamp_ns"] == 1
    assert truth.summary.problems["box with zero area"] == 1


def test_processed_dataset_ground_truth(tmp_path: Path) -> None:
    truth = load_ground_truth(_processed(tmp_path / "ds"))
    assert truth.detection_classes == ["cone"] and truth.segmentation_classes == [
        "background",
        "floor",
    ]
    np.testing.assert_allclose(truth.frames[STAMP].boxes, [[1, 1, 3, 3]])
    mask = truth.frames[STAMP].load_mask()
    assert mask[0, 0] == IGNORE_INDEX and mask[4, 4] == 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.json", "not found"),
        (
            lambda p: (p / "bad.json").write_text("{oops") and p / "bad.json",
            "not a COCO json file",
        ),
        (
            lambda p: _coco_file(p / "nostamp.json", images=[{"id": 1, "file_name": "a.png"}]),
            "no image has a 'stamp_ns'",
        ),
        (lambda p: p, "not a processed dataset"),
    ],
)
def test_ground_truth_errors(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_ground_truth(make(tmp_path), CLASSES)


def test_label_file_needs_class_lists(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="needs the class lists"):
        load_ground_truth(_coco_file(tmp_path / "gt.json"))


def test_scorer_perfect_answers_and_class_mapping(tmp_path: Path) -> None:
    truth = load_ground_truth(_coco_file(tmp_path / "gt.json"), CLASSES)
    # The model knows the classes in another order and lacks "cone" in segmentation.
    scorer = StampScorer(truth, ["background", "floor", "box"])
    boxes = np.array([[2, 2, 5, 5], [0, 0, 1, 1]], np.float32)
    assert scorer.add_detections(STAMP, boxes, np.array([0.9, 0.8]), ["box", "person"])
    assert not scorer.add_detections(
        STAMP + 1, np.zeros((0, 4)), np.zeros(0), []
    )  # no ground truth
    truth_mask = truth.frames[STAMP].load_mask()
    model_mask = np.array([0, 2, 1], np.uint8)[
        truth_mask
    ]  # truth ids -> model ids, i.e. a perfect answer
    assert scorer.add_mask(STAMP, model_mask)
    assert not scorer.add_mask(STAMP, model_mask[:3])  # wrong size: counted, not scored
    result = scorer.compute()
    assert result["detection"]["map_50"] == pytest.approx(1.0)
    assert result["detection"]["unknown_class_detections"] == 1
    assert result["segmentation"]["miou"] == pytest.approx(1.0)
    assert result["segmentation"]["mask_problems"] == 1
    assert result["segmentation"]["classes"] == ["background", "floor", "box"]


def test_stats_and_latency_summary() -> None:
    stats = ReplayStats()
    assert stats.sent(1, 10.0) and stats.sent(2, 10.1) and stats.sent(3, 10.2)
    assert not stats.sent(1, 10.3)  # duplicate stamp
    stats.output("/d", 1, 10.05, answers=True)
    stats.output("/s", 1, 10.09, answers=True)  # later output of the same frame: latency unchanged
    stats.output("/c", 2, 10.12, answers=False)  # not an answering topic
    stats.output("/d", 3, 10.30, answers=True)
    stats.output("/d", 99, 10.4, answers=True)  # someone else's frame
    summary = stats.summary(wall_time_s=1.0)
    assert (summary["frames_sent"], summary["frames_answered"], summary["frames_dropped"]) == (
        3,
        2,
        1,
    )
    assert stats.dropped_stamps() == [2]
    assert summary["duplicate_stamps_skipped"] == 1 and summary["unexpected_outputs"] == 1
    assert summary["latency_ms"]["max"] == pytest.approx(100.0) and summary["latency_ms"][
        "min"
    ] == pytest.approx(50.0)
    assert summary["throughput_fps"] == pytest.approx(2 / 0.3)
    empty = latency_summary([])
    assert empty["p99"] is None and math.isnan(ReplayStats().summary(0.0)["drop_rate"])


def _detections_cdr(stamp_ns: int) -> bytes:
    store = replay_typestore()
    t = store.types
    hyp = t["vision_msgs/msg/ObjectHypothesisWithPose"](
        hypothesis=t["vision_msgs/msg/ObjectHypothesis"](class_id="box", score=0.5),
        pose=t["geometry_msgs/msg/PoseWithCovariance"](
            pose=t["geometry_msgs/msg/Pose"](
                position=t["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
                orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
            ),
            covariance=np.zeros(36),
        ),
    )
    center = t["vision_msgs/msg/Pose2D"](
        position=t["vision_msgs/msg/Point2D"](x=10.0, y=20.0), theta=0.0
    )
    bbox = t["vision_msgs/msg/BoundingBox2D"](center=center, size_x=4.0, size_y=6.0)
    det = t["vision_msgs/msg/Detection2D"](
        header=header(stamp_ns), results=[hyp], bbox=bbox, id="0"
    )
    msg = t[DETECTIONS_TYPE](header=header(stamp_ns), detections=[det])
    return bytes(store.serialize_cdr(msg, DETECTIONS_TYPE))


def test_header_stamp_peek_and_detection_arrays() -> None:
    cdr = _detections_cdr(STAMP)
    assert header_stamp_ns(cdr) == STAMP
    big_endian = bytes(
        ROS2_STORE.serialize_cdr(header(STAMP), "std_msgs/msg/Header", little_endian=False)
    )
    assert header_stamp_ns(big_endian) == STAMP
    assert header_stamp_ns(b"\x00\x01") is None
    msg = replay_typestore().deserialize_cdr(cdr, DETECTIONS_TYPE)
    boxes, scores, names = detections_to_arrays(msg)
    np.testing.assert_allclose(boxes, [[8, 17, 12, 23]])
    assert names == ["box"] and scores.tolist() == [0.5]


def test_recorder_writes_readable_mcap_and_sink_keeps_examples(tmp_path: Path) -> None:
    assert (vision_msgs_msg_dir() / "Detection2DArray.msg").is_file()
    mask = np.zeros((6, 8), np.uint8)
    mask_msg = image_msg(mask, "mono8", STAMP)
    mask_cdr = bytes(ROS2_STORE.serialize_cdr(mask_msg, IMAGE))
    folder = tmp_path / "out" / "outputs"
    with OutputRecorder(folder) as recorder:
        sink = OutputSink(
            recorder, None, "/n/detections", "/n/segmentation", ["box"], example_stamps=[STAMP]
        )
        sink.consume("/n/detections", DETECTIONS_TYPE, _detections_cdr(STAMP), 5)
        sink.consume("/n/segmentation", IMAGE, mask_cdr, 6)
        sink.consume(
            "/n/segmentation",
            IMAGE,
            b"\x00\x01\x00\x00" + struct.pack("<iI", *divmod(STAMP, 10**9)) + b"junk",
            7,
        )
    assert sink.summary.problems["unreadable message on /n/segmentation"] == 1
    example = sink.examples[STAMP]
    assert (
        example.label_names == ["box"]
        and example.labels.tolist() == [1]
        and example.mask.shape == (6, 8)
    )
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["outputs"]  # no temp folders left
    with AnyReader([folder]) as reader:  # definitions come from the bag itself
        raw_msgs = list(reader.messages())
        assert len(raw_msgs) == 3  # everything is recorded verbatim, even the malformed message
        msgs = [(c.topic, reader.deserialize(raw, c.msgtype)) for c, _, raw in raw_msgs[:2]]
    assert [t for t, _ in msgs[:2]] == ["/n/detections", "/n/segmentation"]
    assert msgs[0][1].detections[0].results[0].hypothesis.class_id == "box"

    report = write_report(
        tmp_path / "rep",
        {"value": float("nan"), "n": np.int64(3)},
        [1.0, 2.0, 3.0],
        {STAMP: np.zeros((6, 8, 3), np.uint8)},
        sink.examples,
        None,
    )
    saved = json.loads(report.read_text())
    assert saved["value"] is None and saved["n"] == 3
    assert saved["figures"] == ["latency_histogram.png", f"overlay_{STAMP}.png", "examples.png"]
    assert json_ready({"a": [float("inf")]}) == {"a": [None]}


def test_source_topic_choice_and_errors(tmp_path: Path) -> None:
    rgb = np.zeros((6, 8, 3), np.uint8)
    png = cv2.imencode(".png", rgb)[1].tobytes()
    diag = ROS2_TYPES["std_msgs/msg/String"](data="x")
    bag = write_bag(
        tmp_path / "b.bag",
        "ros1",
        [
            ("/cam/raw", IMAGE, 1, image_msg(rgb, "rgb8", STAMP)),
            ("/cam/raw", IMAGE, 2, image_msg(rgb, "rgb8", STAMP + 1)),
            ("/cam/raw/compressed", COMPRESSED, 3, compressed_msg(png, "png", STAMP)),
            ("/chatter", "std_msgs/msg/String", 4, diag),
        ],
    )
    with open_image_bag(bag, "cam/raw") as image_bag:  # leading slash optional
        frames = list(image_bag.frames())
        assert image_bag.topic == "/cam/raw" and not image_bag.compressed and len(image_bag) == 2
    assert [f.stamp_ns for f in frames] == [STAMP, STAMP + 1] and frames[0].rgb().shape == (
        6,
        8,
        3,
    )
    with open_image_bag(bag, "/cam/raw/compressed") as image_bag:
        (frame,) = list(image_bag.frames())
        assert frame.compressed and frame.rgb().shape == (6, 8, 3)
    with (
        pytest.raises(UserError, match=r"several image topics.*/cam/raw/compressed"),
        open_image_bag(bag),
    ):
        pass
    with (
        pytest.raises(
            UserError,
            match=r"no image topic '/chatter'; image topics in the bag: /cam/raw \(Image\)",
        ),
        open_image_bag(bag, "/chatter"),
    ):
        pass
    (tmp_path / "broken.mcap").write_bytes(b"not an mcap file at all")
    with (
        pytest.raises(UserError, match="cannot read the bag"),
        open_image_bag(tmp_path / "broken.mcap"),
    ):
        pass
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not a bag"), open_image_bag(tmp_path / "notes.txt"):
        pass
    # Errors raised by the caller inside the block are not disguised as bag errors.
    with pytest.raises(KeyError), open_image_bag(bag, "/cam/raw"):
        raise KeyError("caller bug")
