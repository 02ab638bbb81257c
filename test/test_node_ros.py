# SPDX-License-Identifier: Apache-2.0
"""The perception node as a real process over DDS on loopback (one process per scenario group).

- a node started from config/perception.yaml declares exactly the file's parameters;
- rgb8 frames in -> Detection2DArray, mono8 and rgb8 masks, the overlay, 32FC1 depth (metres,
  equal to the Predictor's) and its colour image out, same headers;
- run-time parameter changes: good values apply, bad ones are rejected with a reason;
- a burst of bad frames does not kill it and /diagnostics counts them;
- compressed (JPEG) input with compressed:=true;
- bad start-up values and a missing model: one clear line, exit status 2.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import GetParameters, ListParameters, SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.serialization import serialize_message
from rosnodes import ClientNode, cpu_node_args
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from mtl_perception.checkpoint import inference_fields, save_checkpoint
from mtl_perception.nets import build_model

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "perception.yaml"
NODE = "/perception_node"
DETECTION_CLASSES = ["box", "cone", "ball"]
SEGMENTATION_CLASSES = ["background", "floor", "wall"]
HEIGHT, WIDTH = 48, 64
# Parameters every rclpy node declares by itself (not part of our YAML).
BUILTIN_PARAMETERS = {"use_sim_time", "start_type_description_service"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weights checkpoint (64x48 input) with all three tasks."""
    kwargs = {
        "arch": "ssdlite_deeplabv3",
        "num_detection_classes": 3,
        "num_segmentation_classes": 3,
        "input_size": [HEIGHT, WIDTH],
        "tasks": ["detection", "segmentation", "depth"],
    }
    model = build_model(**kwargs)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(
        path,
        inference_fields(
            model, DETECTION_CLASSES, SEGMENTATION_CLASSES, [[0, 0, 0], [0, 200, 0], [0, 0, 200]]
        ),
    )
    return path


def _node_command(*ros_args: str) -> list[str]:
    return [sys.executable, "-m", "mtl_perception.ros.node", "--ros-args", *ros_args]


def _env(ros_domain: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        **ros_domain,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "RCUTILS_COLORIZED_OUTPUT": "0",
    }


class NodeProcess:
    """A node subprocess whose output is kept for assertions and failure messages."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._interrupted = False
        self._file = log.open("w")
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self._file, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log.read_text()

    def alive(self) -> bool:
        return self.process.poll() is None

    def interrupt(self) -> None:
        """Send SIGINT (Ctrl-C), as ``ros2 run`` / ``ros2 launch`` do on shutdown."""
        if self.alive() and not self._interrupted:
            self.process.send_signal(signal.SIGINT)
            self._interrupted = True

    def stop(self) -> int:
        """SIGINT and wait; the exit status."""
        self.interrupt()
        if self.process.returncode is None:
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._file.close()
        return self.process.returncode


class RosClient(ClientNode):
    """Test-side ROS node in its own context: publishes frames, gets outputs, calls services."""

    def __init__(self) -> None:
        super().__init__("perception_test_client")
        self.received: dict[str, list[Any]] = {}

    def collect(self, msg_type: type, topic: str) -> list[Any]:
        messages: list[Any] = self.received.setdefault(topic, [])
        self.node.create_subscription(msg_type, topic, messages.append, 10)
        return messages

    def spin_until(
        self, done: Callable[[], bool], timeout: float, every: Callable[[], None] | None = None
    ) -> bool:
        deadline = time.monotonic() + timeout
        next_call = 0.0
        while time.monotonic() < deadline:
            if done():
                return True
            if every is not None and time.monotonic() >= next_call:
                every()
                next_call = time.monotonic() + 0.25
            self.executor.spin_once(timeout_sec=0.02)
        return done()

    def call(self, srv_type: type, name: str, request: Any, timeout: float = 15.0) -> Any:
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
        future = client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=timeout)
        assert future.done(), f"service {name} did not answer"
        self.node.destroy_client(client)
        return future.result()

    def set_parameter(self, name: str, value: Any) -> Any:
        request = SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg()]
        )
        return self.call(SetParameters, f"{NODE}/set_parameters", request).results[0]


def _header(sec: int, frame_id: str) -> Header:
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = sec, 1234
    return header


def _frame(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    frame = np.zeros((height, width, 3), np.uint8)
    frame[height // 2 :] = (90, 90, 90)
    frame[5:20, 10:30] = (230, 120, 20)
    return frame


def _rgb8(header: Header, frame: np.ndarray) -> Image:
    msg = Image(
        header=header,
        height=frame.shape[0],
        width=frame.shape[1],
        encoding="rgb8",
        step=frame.shape[1] * 3,
    )
    msg.data = frame.tobytes()
    return msg


def _with_stamp(messages: list[Any], sec: int) -> list[Any]:
    return [m for m in messages if m.header.stamp.sec == sec]


def _diagnostic_values(messages: list[DiagnosticArray]) -> dict[str, str]:
    """Key/values of the node's latest diagnostic status."""
    for array in reversed(messages):
        for status in array.status:
            if status.name.startswith("perception_node"):
                return {kv.key: kv.value for kv in status.values} | {"_message": status.message}
    return {}


@pytest.fixture(scope="module")
def client() -> Iterator[RosClient]:
    ros = RosClient()
    yield ros
    ros.close()


@pytest.fixture(scope="module")
def nodes(
    checkpoint: Path,
    ros_domain: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """Both node processes, started together so their start-up (torch import) overlaps.

    ``yaml``: from a copy of config/perception.yaml (only values changed), raw input.
    ``jpeg``: from command-line parameters, compressed input, in namespace /jpeg.
    """
    document = yaml.safe_load(CONFIG.read_text())
    params = document["/**"]["ros__parameters"]
    params.update(
        model_path=str(checkpoint),
        device="cpu",
        warmup_iterations=1,
        diagnostics_period=0.3,
        score_threshold=0.0,
        max_detections=5,
    )
    folder = tmp_path_factory.mktemp("nodes")
    params_file = folder / "perception.yaml"
    params_file.write_text(yaml.safe_dump(document))
    started = {
        "yaml": NodeProcess(
            _node_command("--params-file", str(params_file), "-r", "image:=/test_cam/image"),
            _env(ros_domain),
            folder / "yaml_node.log",
        ),
        "jpeg": NodeProcess(
            _node_command(
                *cpu_node_args(
                    checkpoint, "/jpeg", "-p", "compressed:=true", "-r", "image:=/test_cam/image"
                )
            ),
            _env(ros_domain),
            folder / "jpeg_node.log",
        ),
    }
    yield {"params": params, **started}
    for node in started.values():
        node.interrupt()  # both at once: shutting down a process with torch loaded takes a while
    for node in started.values():
        assert node.stop() == 0, node.output()  # Ctrl-C is a clean shutdown


@pytest.fixture(scope="module")
def yaml_node(nodes: dict[str, Any]) -> tuple[NodeProcess, dict[str, Any]]:
    return nodes["yaml"], nodes["params"]


def test_node_declares_exactly_the_yaml_parameters(
    yaml_node: tuple[NodeProcess, dict[str, Any]], client: RosClient
) -> None:
    _, params = yaml_node
    listed = client.call(
        ListParameters, f"{NODE}/list_parameters", ListParameters.Request(), timeout=60.0
    )
    declared = set(listed.result.names) - BUILTIN_PARAMETERS
    assert declared == set(params), (
        f"only in node: {declared - set(params)}, only in yaml: {set(params) - declared}"
    )
    names = sorted(params)
    values = client.call(
        GetParameters, f"{NODE}/get_parameters", GetParameters.Request(names=names)
    ).values
    assert len(values) == len(names)  # every parameter has a value, also the empty lists
    for name, value in zip(names, values, strict=True):
        got = parameter_value_to_python(value)
        assert (list(got) if isinstance(got, (list, tuple)) else got) == params[name], name


def test_frames_in_results_out_with_the_same_header(
    yaml_node: tuple[NodeProcess, dict[str, Any]], client: RosClient
) -> None:
    node, _ = yaml_node
    detections = client.collect(Detection2DArray, f"{NODE}/detections")
    masks = client.collect(Image, f"{NODE}/segmentation")
    colors = client.collect(Image, f"{NODE}/segmentation/color")
    overlays = client.collect(Image, f"{NODE}/overlay")
    publisher = client.node.create_publisher(Image, "/test_cam/image", 10)
    msg = _rgb8(_header(101, "front_camera"), _frame())

    def all_outputs() -> bool:
        return all(_with_stamp(topic, 101) for topic in (detections, masks, colors, overlays))

    assert client.spin_until(all_outputs, timeout=90.0, every=lambda: publisher.publish(msg)), (
        node.output()
    )
    for out in (detections, masks, colors, overlays):
        header = _with_stamp(out, 101)[0].header
        assert (header.frame_id, header.stamp.sec, header.stamp.nanosec) == (
            "front_camera",
            101,
            1234,
        )
    mask = _with_stamp(masks, 101)[0]
    assert (mask.encoding, mask.height, mask.width) == ("mono8", HEIGHT, WIDTH)
    assert set(np.frombuffer(bytes(mask.data), np.uint8)) <= {0, 1, 2}
    color = _with_stamp(colors, 101)[0]
    assert (color.encoding, color.height, color.width) == ("rgb8", HEIGHT, WIDTH)
    assert (_with_stamp(overlays, 101)[0].encoding, _with_stamp(overlays, 101)[0].width) == (
        "rgb8",
        WIDTH,
    )
    result = _with_stamp(detections, 101)[0]
    assert (
        0 < len(result.detections) <= 5
    )  # threshold 0 with random weights: max_detections caps it
    for index, detection in enumerate(result.detections):
        assert detection.id == str(index) and detection.header.frame_id == "front_camera"
        assert detection.results[0].hypothesis.class_id in DETECTION_CLASSES
        assert (
            0.0 <= detection.bbox.center.position.x <= WIDTH
            and 0.0 <= detection.bbox.size_y <= HEIGHT
        )


def test_depth_in_metres_with_the_input_header(
    yaml_node: tuple[NodeProcess, dict[str, Any]], client: RosClient, checkpoint: Path
) -> None:
    from mtl_perception.core.images import decode_image
    from mtl_perception.predictor import Predictor

    node, _ = yaml_node
    depths = client.collect(Image, f"{NODE}/depth")
    colors = client.collect(Image, f"{NODE}/depth/color")
    publisher = client.node.create_publisher(Image, "/test_cam/image", 10)
    frame = _frame()
    msg = _rgb8(_header(102, "rgbd_camera"), frame)

    def both() -> bool:
        return bool(_with_stamp(depths, 102) and _with_stamp(colors, 102))

    assert client.spin_until(both, timeout=90.0, every=lambda: publisher.publish(msg)), (
        node.output()
    )
    depth, color = _with_stamp(depths, 102)[0], _with_stamp(colors, 102)[0]
    for out in (depth, color):
        assert (out.header.frame_id, out.header.stamp.sec, out.header.stamp.nanosec) == (
            "rgbd_camera",
            102,
            1234,
        )
    assert (depth.encoding, depth.height, depth.width, depth.step) == (
        "32FC1",
        HEIGHT,
        WIDTH,
        WIDTH * 4,
    )
    assert (color.encoding, color.height, color.width) == ("rgb8", HEIGHT, WIDTH)
    # Metres, exactly what the ROS-free Predictor computes for the same frame.
    expected = Predictor.from_checkpoint(checkpoint, device="cpu").predict(frame).depth
    assert np.allclose(decode_image(depth), expected, rtol=1e-4, atol=1e-5)


def test_run_time_parameters(
    yaml_node: tuple[NodeProcess, dict[str, Any]], client: RosClient
) -> None:
    node, _ = yaml_node
    rejected = client.set_parameter("score_threshold", -0.5)
    assert not rejected.successful and "score_threshold" in rejected.reason
    rejected = client.set_parameter("class_filter", ["cone", "sheep"])
    assert not rejected.successful and "sheep" in rejected.reason and "cone" in rejected.reason
    rejected = client.set_parameter("palette", [1, 2, 3])
    assert not rejected.successful and "3 segmentation classes" in rejected.reason
    rejected = client.set_parameter("device", "cuda")
    assert not rejected.successful and "read-only" in rejected.reason.lower()
    assert client.set_parameter("max_detections", 2).successful
    assert client.set_parameter("class_filter", ["cone"]).successful

    detections = client.collect(Detection2DArray, f"{NODE}/detections")
    publisher = client.node.create_publisher(Image, "/test_cam/image", 10)
    msg = _rgb8(_header(202, "front_camera"), _frame())
    assert client.spin_until(
        lambda: bool(_with_stamp(detections, 202)), 30.0, lambda: publisher.publish(msg)
    ), node.output()
    result = _with_stamp(detections, 202)[0]
    assert len(result.detections) <= 2
    assert {d.results[0].hypothesis.class_id for d in result.detections} <= {"cone"}
    reset = SetParameters.Request(
        parameters=[Parameter("class_filter", Parameter.Type.STRING_ARRAY, []).to_parameter_msg()]
    )
    assert client.call(SetParameters, f"{NODE}/set_parameters", reset).results[0].successful


def test_bad_frames_are_counted_and_do_not_kill_the_node(
    yaml_node: tuple[NodeProcess, dict[str, Any]], client: RosClient
) -> None:
    node, _ = yaml_node
    masks = client.collect(Image, f"{NODE}/segmentation")
    diagnostics = client.collect(DiagnosticArray, "/diagnostics")
    publisher = client.node.create_publisher(Image, "/test_cam/image", 10)
    good = _rgb8(_header(303, "front_camera"), _frame())
    assert client.spin_until(
        lambda: bool(_with_stamp(masks, 303)), 30.0, lambda: publisher.publish(good)
    ), node.output()

    bad_encoding = _rgb8(_header(304, "front_camera"), _frame())
    bad_encoding.encoding = "rgb9"
    truncated = _rgb8(_header(305, "front_camera"), _frame())
    truncated.data = bytes(truncated.data)[:100]
    empty = Image(header=_header(306, "front_camera"), encoding="rgb8")
    resized = _rgb8(_header(307, "front_camera"), _frame(HEIGHT * 2, WIDTH * 2))
    # Serialized bytes that are no valid Image (rclpy publishes bytes as they are): the node
    # subscribes raw and deserialises in its worker, so this is a bad frame, not a crash.
    malformed = serialize_message(good)[:64]

    def count(kind: str) -> int:
        return int(_diagnostic_values(diagnostics).get(f"errors: {kind}", 0))

    def fresh_diagnostics() -> None:
        seen = len(diagnostics)
        assert client.spin_until(lambda: len(diagnostics) >= seen + 2, timeout=20.0), node.output()

    # One frame at a time, each waited for by its count in /diagnostics (no pacing by sleeps): the
    # node keeps only the newest frame, so frames sent back to back would replace each other.
    for bad, kind in (
        (bad_encoding, "unsupported encoding"),
        (truncated, "bad image"),
        (empty, "bad image"),
        (malformed, "bad message"),
        (resized, "size changed"),
    ):
        fresh_diagnostics()
        before = count(kind)
        for _ in range(3):  # best-effort input: a frame may be lost, send it again
            publisher.publish(bad)
            if client.spin_until(lambda: count(kind) > before, timeout=10.0):  # noqa: B023
                break
        assert count(kind) > before, (kind, _diagnostic_values(diagnostics), node.output())
    # The resized frame is valid: it is processed at its own resolution.
    assert client.spin_until(
        lambda: bool(_with_stamp(masks, 307)), 20.0, lambda: publisher.publish(resized)
    )
    assert _with_stamp(masks, 307)[0].width == WIDTH * 2
    assert node.alive()
    values = _diagnostic_values(diagnostics)
    assert values["device"] == "cpu" and values["model"].endswith("tiny.pt")
    assert float(values["processed rate (Hz)"]) >= 0.0 and values["latency p50 (ms)"] != "n/a"
    assert int(values["frames received"]) >= 7 and "frames dropped" in values
    assert "skipped a frame: unsupported encoding" in node.output()


def test_compressed_input(nodes: dict[str, Any], client: RosClient) -> None:
    node = nodes["jpeg"]
    detections = client.collect(Detection2DArray, "/jpeg/perception_node/detections")
    masks = client.collect(Image, "/jpeg/perception_node/segmentation")
    # image remapped to /test_cam/image: compressed frames come from /test_cam/image/compressed.
    publisher = client.node.create_publisher(CompressedImage, "/test_cam/image/compressed", 10)
    msg = CompressedImage(header=_header(404, "jpeg_camera"), format="rgb8; jpeg compressed bgr8")
    msg.data = cv2.imencode(".jpg", _frame()[:, :, ::-1])[1].tobytes()
    done = lambda: bool(_with_stamp(detections, 404)) and bool(_with_stamp(masks, 404))  # noqa: E731
    assert client.spin_until(done, timeout=90.0, every=lambda: publisher.publish(msg)), (
        node.output()
    )
    mask = _with_stamp(masks, 404)[0]
    assert (mask.header.frame_id, mask.height, mask.width) == ("jpeg_camera", HEIGHT, WIDTH)
    assert _with_stamp(detections, 404)[0].header.stamp.nanosec == 1234


BAD_STARTS = {
    "negative-threshold": (
        ("-p", "score_threshold:=-0.5"),
        "parameter score_threshold: -0.5 is outside the range 0.0..1.0",
    ),
    "unknown-device": (
        ("-p", "device:=tpu"),
        "parameter device: 'tpu' is not one of auto, cpu, cuda, cuda:N",
    ),
    "bad-reliability": (
        ("-p", "reliability:=sometimes"),
        "parameter reliability: 'sometimes' is not one of",
    ),
    "missing-model-path": ((), "parameter model_path is empty"),
    "missing-checkpoint": (
        ("-p", "model_path:=/nonexistent/best.pt"),
        "checkpoint /nonexistent/best.pt does not exist",
    ),
}


@pytest.fixture(scope="module")
def bad_starts(ros_domain: dict[str, str]) -> dict[str, tuple[int, list[str]]]:
    """Exit status and non-empty output lines of each bad start (run concurrently)."""
    processes = {
        case: subprocess.Popen(
            _node_command(*ros_args),
            cwd=REPO,
            env=_env(ros_domain),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for case, (ros_args, _) in BAD_STARTS.items()
    }
    results = {}
    for case, process in processes.items():
        output, _ = process.communicate(timeout=60)
        results[case] = (
            process.returncode,
            [line for line in output.splitlines() if line.strip()],
        )
    return results


@pytest.mark.parametrize("case", list(BAD_STARTS))
def test_bad_start_is_one_clear_line_and_exit_2(
    case: str, bad_starts: dict[str, tuple[int, list[str]]]
) -> None:
    returncode, lines = bad_starts[case]
    assert returncode == 2, lines
    assert len(lines) == 1 and BAD_STARTS[case][1] in lines[0], lines


def test_lifecycle_transitions_and_overlay_on_demand(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: autostart off, configure/activate/deactivate/re-activate/cleanup; the overlay
    and the colour mask are drawn only while someone subscribes to them."""
    import mtl_perception.ros.node as node_module
    from mtl_perception.ros.node import PerceptionNode

    drawn: list[int] = []
    colourised: list[int] = []
    real_overlay, real_color = node_module.overlay_message, node_module.color_mask_message
    monkeypatch.setattr(
        node_module, "overlay_message", lambda *a, **k: drawn.append(1) or real_overlay(*a, **k)
    )
    monkeypatch.setattr(
        node_module,
        "color_mask_message",
        lambda *a, **k: colourised.append(1) or real_color(*a, **k),
    )
    context = Context()
    rclpy.init(
        context=context,
        args=[
            "--ros-args",
            *cpu_node_args(checkpoint, "/inproc", "-r", "image:=/inproc/camera", autostart=False),
        ],
    )
    node = PerceptionNode(context=context)
    helper = rclpy.create_node("inproc_helper", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(helper)
    masks: list[Image] = []
    helper.create_subscription(Image, "/inproc/perception_node/segmentation", masks.append, 10)
    publisher = helper.create_publisher(Image, "/inproc/camera", 10)

    def round_trip(sec: int, timeout: float = 20.0) -> bool:
        # Publish, then give the executor time to deliver the answer before publishing again: a
        # frame per spin would keep the node's subscription always ready and starve the helper's.
        msg = _rgb8(_header(sec, "inproc"), _frame())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not _with_stamp(masks, sec):
            publisher.publish(msg)
            resend = min(deadline, time.monotonic() + 0.5)
            while time.monotonic() < resend and not _with_stamp(masks, sec):
                executor.spin_once(timeout_sec=0.05)
        return bool(_with_stamp(masks, sec))

    try:
        # A class filter that does not fit the model: configure fails with the reason.
        node.set_parameters([Parameter("class_filter", Parameter.Type.STRING_ARRAY, ["unicorn"])])
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert "unicorn" in (node.fatal_error or "")
        node.set_parameters([Parameter("class_filter", Parameter.Type.STRING_ARRAY, [])])
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert not round_trip(1, timeout=1.0)  # configured but inactive: no subscription yet
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert round_trip(2)
        assert (
            drawn == [] and colourised == []
        )  # nobody subscribed to ~/overlay, ~/segmentation/color
        overlays: list[Image] = []
        colors: list[Image] = []
        helper.create_subscription(Image, "/inproc/perception_node/overlay", overlays.append, 10)
        helper.create_subscription(
            Image, "/inproc/perception_node/segmentation/color", colors.append, 10
        )
        assert round_trip(3)
        deadline = time.monotonic() + 20.0
        while not (overlays and colors) and time.monotonic() < deadline:
            publisher.publish(_rgb8(_header(4, "inproc"), _frame()))
            for _ in range(10):
                executor.spin_once(timeout_sec=0.05)
        assert overlays and drawn and colors and colourised
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert not round_trip(5, timeout=1.0)
        assert (
            node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        )  # reloads the released model
        assert round_trip(6)
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        executor.shutdown()
        node.stop_processing()
        node.destroy_node()
        helper.destroy_node()
        rclpy.shutdown(context=context)


@pytest.mark.parametrize(
    ("remaps", "expected"),
    [
        ((), "/image/compressed"),
        (("-r", "image:=/cam/raw"), "/cam/raw/compressed"),  # image_transport naming
        (
            ("-r", "image:=/cam/raw", "-r", "image/compressed:=/cam/jpeg"),
            "/cam/jpeg",
        ),  # explicit wins
    ],
)
def test_compressed_topic_follows_remapping(remaps: tuple[str, ...], expected: str) -> None:
    from mtl_perception.ros.node import PerceptionNode

    context = Context()
    rclpy.init(
        context=context,
        args=["--ros-args", "-p", "compressed:=true", "-p", "autostart:=false", *remaps],
    )
    node = PerceptionNode(context=context)
    try:
        assert node.resolve_topic_name(node._compressed_topic()) == expected
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


class _Log:
    """Records what the node logs (its rclpy logger's methods, by level)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level: str) -> Callable[..., bool]:
        return lambda message, **_: self.lines.append((level, str(message))) or True

    def at(self, level: str) -> list[str]:
        return [message for lvl, message in self.lines if lvl == level]


def test_a_bug_in_a_frame_is_logged_with_traceback_once_counted_and_an_error(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames go straight to the worker's code (no DDS): every failure is counted, the traceback
    is logged once per kind, diagnostics are ERROR while all frames fail; depth frames get a
    warning."""
    from mtl_perception.ros.diagnostics import ERROR, OK
    from mtl_perception.ros.node import PerceptionNode, ReceivedFrame

    context = Context()
    rclpy.init(
        context=context,
        args=["--ros-args", *cpu_node_args(checkpoint, "/bug", autostart=False)],
    )
    node = PerceptionNode(context=context)
    log = _Log()
    monkeypatch.setattr(node, "get_logger", lambda: log)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        good = serialize_message(_rgb8(_header(1, "cam"), _frame()))

        def broken(rgb: np.ndarray) -> Any:
            return rgb.shape[0] / 0

        monkeypatch.setattr(node._predictor, "predict", broken)
        for _ in range(3):
            node._process(ReceivedFrame(good, time.monotonic()))
        report = node._stats.report()
        assert report.errors == {"unexpected ZeroDivisionError": 3} and report.level == ERROR
        errors = log.at("error")
        assert len(errors) == 1 and "Traceback" in errors[0] and "ZeroDivisionError" in errors[0]
        assert "in broken" in errors[0]  # the traceback names the failing function

        monkeypatch.undo()  # the real predictor again (and the real logger: keep ours)
        monkeypatch.setattr(node, "get_logger", lambda: log)
        node._process(ReceivedFrame(good, time.monotonic()))
        assert node._stats.report().new_processed == 1
        assert node._stats.report().level == OK

        depth = Image(
            header=_header(2, "cam"), height=HEIGHT, width=WIDTH, encoding="16UC1", step=WIDTH * 2
        )
        depth.data = np.full((HEIGHT, WIDTH), 1500, np.uint16).tobytes()
        for _ in range(2):
            node._process(ReceivedFrame(serialize_message(depth), time.monotonic()))
        warnings = [w for w in log.at("warning") if "depth encoding" in w]
        assert len(warnings) == 1 and "16UC1" in warnings[0] and "remapped" in warnings[0]
        assert node._stats.report().new_processed == 2  # still processed
    finally:
        node.stop_processing()
        node.destroy_node()
        rclpy.shutdown(context=context)
