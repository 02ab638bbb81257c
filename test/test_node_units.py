# SPDX-License-Identifier: Apache-2.0
"""Unit tests of the perception node's pure helpers: parameters, statistics, mailbox, messages."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, ReliabilityPolicy
from std_msgs.msg import Header

from mtl_perception.core.constants import MIN_INPUT_SIDE
from mtl_perception.core.errors import UserError
from mtl_perception.predictor import Prediction
from mtl_perception.ros import node as node_module
from mtl_perception.ros.diagnostics import ERROR, OK, STAGES, WARN, FrameStats
from mtl_perception.ros.mailbox import Mailbox
from mtl_perception.ros.messages import (
    color_mask_message,
    detections_message,
    mask_message,
    overlay_message,
)
from mtl_perception.ros.node import load_predictor, model_problem
from mtl_perception.ros.params import PARAMETERS, SPECS, Settings, first_problem
from mtl_perception.ros.qos import input_qos


def _defaults(**changes: object) -> Settings:
    return Settings.from_values({**{spec.name: spec.default for spec in PARAMETERS}, **changes})


# ---------------------------------------------------------------- parameters
def test_settings_cover_every_parameter_and_defaults_are_valid() -> None:
    settings = _defaults()
    assert set(Settings.__dataclass_fields__) == set(SPECS)
    assert first_problem((spec.name, spec.default) for spec in PARAMETERS) is None
    assert settings.class_filter == () and settings.palette == () and settings.input_size == ()
    assert settings.half_flag is None
    assert _defaults(half="true").half_flag is True and _defaults(half="false").half_flag is False
    assert _defaults(input_size="480x640").input_size == (480, 640)


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("score_threshold", -0.1, "outside the range 0.0..1.0"),
        ("score_threshold", 1.5, "outside the range"),
        ("max_detections", 0, "outside the range 1..1000"),
        ("device", "gpu", "not one of auto, cpu, cuda, cuda:N"),
        ("device", "cuda:x", "not one of"),
        ("half", "yes", "not one of auto, true, false"),
        ("reliability", "RELIABLE", "not one of best_effort, reliable"),
        ("palette", [255, 0], "multiple of 3"),
        ("palette", [0, 0, 300], "300 is outside 0..255"),
        ("input_size", "48", "HEIGHTxWIDTH"),
        ("input_size", "48x-64", "HEIGHTxWIDTH"),
        ("input_size", "8x64", f">= {MIN_INPUT_SIDE}"),
        ("class_filter", ["box", " "], "empty class name"),
        ("depth", 0, "outside the range 1..100"),
    ],
)
def test_bad_values_are_rejected_with_the_parameter_name(
    name: str, value: object, fragment: str
) -> None:
    problem = first_problem([("score_threshold", 0.5), (name, value)])
    assert (
        problem is not None and problem.startswith(f"parameter {name}: ") and fragment in problem
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("device", "cuda:1"),
        ("device", "CPU"),
        ("input_size", "480x640"),
        ("input_size", " 48X64 "),
        ("palette", [1, 2, 3]),
        ("class_filter", None),
        ("palette", []),
        ("use_sim_time", True),
    ],
)
def test_good_values_pass(name: str, value: object) -> None:
    assert first_problem([(name, value)]) is None


def test_descriptors_carry_ranges_and_read_only() -> None:
    threshold = SPECS["score_threshold"].descriptor()
    assert (
        threshold.floating_point_range[0].from_value == 0.0
        and threshold.floating_point_range[0].to_value == 1.0
    )
    assert not threshold.read_only and threshold.description
    depth = SPECS["depth"].descriptor()
    assert depth.integer_range[0].from_value == 1 and depth.read_only
    assert SPECS["model_path"].descriptor().read_only
    assert SPECS["class_filter"].descriptor().type == Parameter.Type.STRING_ARRAY.value
    # Everything that needs a model reload or a new subscription is read-only.
    for name in (
        "model_path",
        "device",
        "half",
        "input_size",
        "compile",
        "tensorrt",
        "compressed",
        "reliability",
        "depth",
    ):
        assert SPECS[name].read_only, name
    for name in (
        "score_threshold",
        "max_detections",
        "class_filter",
        "palette",
        "publish_overlay",
    ):
        assert not SPECS[name].read_only, name


def test_model_problem_checks_names_and_palette_size() -> None:
    det, seg = ["box", "cone"], ["background", "floor"]
    assert model_problem(_defaults(class_filter=["cone"]), det, seg) is None
    problem = model_problem(_defaults(class_filter=["cone", "sheep"]), det, seg)
    assert problem is not None and "sheep" in problem and "class_filter" in problem
    problem = model_problem(_defaults(palette=[1, 2, 3]), det, seg)
    assert problem is not None and "1 colours" in problem and "2 segmentation classes" in problem
    assert model_problem(_defaults(palette=[1, 2, 3, 4, 5, 6]), det, seg) is None


def test_load_predictor_explains_missing_model_and_tensorrt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(UserError, match="model_path is empty"):
        load_predictor(_defaults())
    monkeypatch.setattr(
        node_module.importlib.util, "find_spec", lambda name: None
    )  # torch_tensorrt absent
    with pytest.raises(UserError, match="torch-tensorrt is not installed"):
        load_predictor(_defaults(model_path="best.pt", tensorrt=True))


def test_input_qos() -> None:
    default = input_qos()
    assert default.reliability == ReliabilityPolicy.BEST_EFFORT and default.depth == 1
    assert default.history == HistoryPolicy.KEEP_LAST
    assert input_qos("reliable", 5).reliability == ReliabilityPolicy.RELIABLE
    with pytest.raises(ValueError, match="reliability"):
        input_qos("sometimes")
    with pytest.raises(ValueError, match="depth"):
        input_qos("reliable", 0)


# ---------------------------------------------------------------- statistics
class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_frame_stats_rates_latency_and_errors() -> None:
    clock = _Clock()
    stats = FrameStats(window_sec=5.0, clock=clock)
    empty = stats.report()
    assert empty.input_rate_hz == 0.0 and empty.latency_p50_ms is None and empty.level == OK
    for i in range(21):  # 20 Hz input for one second, half of it processed
        clock.now = 100.0 + i * 0.05
        stats.received()
        if i % 2 == 0:
            stats.processed(latency_sec=0.010 if i < 18 else 0.100)
        else:
            stats.dropped()
    stats.error("bad image")
    stats.error("bad image")
    stats.error("unsupported encoding")
    report = stats.report()
    assert report.input_rate_hz == pytest.approx(20.0)
    assert report.processed_rate_hz == pytest.approx(10.0)
    assert (report.received, report.processed, report.dropped) == (21, 11, 10)
    assert report.latency_p50_ms == pytest.approx(10.0)
    assert 10.0 < report.latency_p95_ms <= 100.0
    assert report.errors == {"bad image": 2, "unsupported encoding": 1}
    assert report.level == WARN and report.new_errors == 3
    values = dict(report.key_values())
    assert (
        values["frames dropped"] == "10"
        and values["errors"] == "3"
        and values["errors: bad image"] == "2"
    )
    assert values["stage p50 (ms): model"] == "n/a"  # processed() was given no stage times
    # No new errors since the last report: back to OK; the counts stay.
    again = stats.report()
    assert again.level == OK and again.errors["bad image"] == 2
    # A stream that stopped: rates decay to zero once the window has passed.
    clock.now += 10.0
    assert stats.report().input_rate_hz == 0.0
    stats.reset()
    assert stats.report().received == 0


# ---------------------------------------------------------------- mailbox
def test_mailbox_keeps_only_the_newest_item() -> None:
    box: Mailbox[int] = Mailbox()
    assert box.put(1) is False
    assert box.put(2) is True  # 1 was never read: dropped
    assert box.take(timeout=0.1) == 2
    assert box.take(timeout=0.01) is None  # empty: times out


def _blocked_in_take(box: Mailbox[Any]) -> None:
    """Return once a thread waits inside ``box.take()`` (an event: the condition has a waiter)."""
    deadline = time.monotonic() + 30.0
    while not box._cond._waiters:  # type: ignore[attr-defined]  # CPython's Condition keeps its waiters here
        assert time.monotonic() < deadline, "the worker never blocked in take()"
        time.sleep(0)  # yield the GIL to the worker thread


def test_mailbox_put_wakes_a_worker_blocked_without_timeout() -> None:
    """The worker blocks with no timeout (no polling) and ``put`` alone wakes it with the item."""
    box: Mailbox[int] = Mailbox()
    taken: list[int | None] = []
    worker = threading.Thread(target=lambda: taken.append(box.take()))
    worker.start()
    _blocked_in_take(box)
    box.put(7)
    worker.join(timeout=30.0)
    assert not worker.is_alive() and taken == [7]


def test_mailbox_close_wakes_a_waiting_worker() -> None:
    box: Mailbox[int] = Mailbox()
    results: list[int | None] = []
    worker = threading.Thread(target=lambda: results.append(box.take()))
    worker.start()
    _blocked_in_take(box)
    box.close()
    worker.join(timeout=2.0)
    assert not worker.is_alive() and results == [None]
    box.put(3)
    assert box.take(timeout=0.01) is None  # closed: items are not handed out
    box.reopen()
    box.put(4)
    assert box.take(timeout=0.1) == 4


# ---------------------------------------------------------------- messages
def _prediction(height: int = 48, width: int = 64) -> Prediction:
    mask = np.zeros((height, width), np.uint8)
    mask[10:20, 5:30] = 1
    mask[30:, :] = 2
    return Prediction(
        boxes=np.array([[10.0, 4.0, 30.0, 24.0], [0.0, 0.0, 64.0, 48.0]], np.float32),
        scores=np.array([0.9, 0.4], np.float32),
        labels=np.array([2, 1]),
        label_names=["cone", "box"],
        mask=mask,
        image_size=(height, width),
    )


def _header() -> Header:
    header = Header(frame_id="camera_optical")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    return header


def test_detections_message_geometry_and_header() -> None:
    msg = detections_message(_prediction(), _header())
    assert msg.header.frame_id == "camera_optical" and msg.header.stamp.nanosec == 345
    assert len(msg.detections) == 2
    first = msg.detections[0]
    assert first.id == "0" and first.header.stamp.sec == 12
    assert (first.bbox.center.position.x, first.bbox.center.position.y) == (20.0, 14.0)
    assert (first.bbox.size_x, first.bbox.size_y) == (20.0, 20.0)
    assert first.results[0].hypothesis.class_id == "cone"
    assert first.results[0].hypothesis.score == pytest.approx(0.9)
    assert msg.detections[1].id == "1" and msg.detections[1].bbox.size_x == 64.0


def test_empty_prediction_gives_an_empty_array_with_header() -> None:
    empty = Prediction(
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.float32),
        np.zeros(0, np.int64),
        [],
        None,
        (48, 64),
    )
    msg = detections_message(empty, _header())
    assert msg.detections == [] and msg.header.frame_id == "camera_optical"


def test_mask_messages() -> None:
    prediction = _prediction()
    mono = mask_message(prediction.mask, _header())
    assert (mono.encoding, mono.height, mono.width, mono.step) == ("mono8", 48, 64, 64)
    assert np.array_equal(
        np.frombuffer(bytes(mono.data), np.uint8).reshape(48, 64), prediction.mask
    )
    palette = [(0, 0, 0), (0, 255, 0), (255, 0, 255)]
    color = color_mask_message(prediction.mask, palette, _header())
    assert (color.encoding, color.step, color.header.frame_id) == (
        "rgb8",
        64 * 3,
        "camera_optical",
    )
    pixels = np.frombuffer(bytes(color.data), np.uint8).reshape(48, 64, 3)
    assert (
        tuple(pixels[15, 10]) == (0, 255, 0)
        and tuple(pixels[40, 0]) == (255, 0, 255)
        and tuple(pixels[0, 0]) == (0, 0, 0)
    )


def test_overlay_message_draws_on_a_copy_of_the_frame() -> None:
    frame = np.full((48, 64, 3), 128, np.uint8)
    msg = overlay_message(
        frame, _prediction(), [(0, 0, 0), (0, 255, 0), (255, 0, 255)], 0.5, _header()
    )
    assert (msg.encoding, msg.height, msg.width) == ("rgb8", 48, 64)
    drawn = np.frombuffer(bytes(msg.data), np.uint8).reshape(48, 64, 3)
    assert not np.array_equal(drawn, frame) and np.all(frame == 128)


def test_frame_stats_error_while_every_frame_fails_and_stage_medians() -> None:
    stats = FrameStats(clock=_Clock())
    for model_ms in (10.0, 30.0, 20.0):
        stats.processed(0.05, {"decode": 0.001, "model": model_ms / 1000.0})
    report = stats.report()
    assert report.level == OK and report.new_processed == 3
    assert report.stage_p50_ms["model"] == pytest.approx(20.0) and report.stage_p50_ms[
        "decode"
    ] == pytest.approx(1.0)
    values = dict(report.key_values())
    assert values["stage p50 (ms): model"] == "20.0" and values["stage p50 (ms): publish"] == "n/a"
    assert [key for key in values if key.startswith("stage")] == [
        f"stage p50 (ms): {s}" for s in STAGES
    ]
    stats.error("unexpected ZeroDivisionError")
    stats.error("unexpected ZeroDivisionError")
    assert (
        stats.report().level == ERROR
    )  # errors and not one frame processed since the last report
    stats.error("bad image")
    stats.processed(0.05)
    assert stats.report().level == WARN  # some frames fail, others get through
    assert stats.report().level == OK
