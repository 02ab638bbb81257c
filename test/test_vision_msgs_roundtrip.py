# SPDX-License-Identifier: Apache-2.0
"""vision_msgs built into the venv (tools/build_interfaces.sh): import, fields, type hash, DDS.

The cross-process test proves rclpy finds the generated C type support of a package that
was built here (not shipped as a wheel) in a fresh interpreter, and that the type hash
announced over DDS is the one generated from our .msg files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from vision_msgs.msg import (  # noqa: E402
    BoundingBox2D,
    Detection2D,
    Detection2DArray,
    LabelInfo,
    ObjectHypothesisWithPose,
    VisionClass,
)

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]
MSG_DIR = REPO / "ros_interfaces" / "vision_msgs" / "msg"

# Upstream vision_msgs 4.x (Jazzy) has exactly these 16 message types.
UPSTREAM_MESSAGES = {
    "BoundingBox2D",
    "BoundingBox2DArray",
    "BoundingBox3D",
    "BoundingBox3DArray",
    "Classification",
    "Detection2D",
    "Detection2DArray",
    "Detection3D",
    "Detection3DArray",
    "LabelInfo",
    "ObjectHypothesis",
    "ObjectHypothesisWithPose",
    "Point2D",
    "Pose2D",
    "VisionClass",
    "VisionInfo",
}

PUBLISHER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
    rclpy.init()
    node = rclpy.create_node("vision_msgs_test_publisher")
    pub = node.create_publisher(Detection2DArray, sys.argv[1], 10)
    deadline = time.monotonic() + float(sys.argv[2])
    i = 0
    try:  # runs until the deadline or until the test terminates it (SIGTERM -> shutdown)
        while time.monotonic() < deadline:
            msg = Detection2DArray()
            msg.header.stamp.sec = 1000 + i
            msg.header.frame_id = "camera"
            det = Detection2D()
            det.bbox.center.position.x = 12.5
            det.bbox.size_x = 4.0
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id = "cone"
            hyp.hypothesis.score = 0.75
            det.results.append(hyp)
            msg.detections.append(det)
            pub.publish(msg)
            i += 1
            rclpy.spin_once(node, timeout_sec=0.05)
    except ExternalShutdownException:
        pass
    rclpy.try_shutdown()
    """
)


def _built_type_hash(type_name: str) -> str:
    """The RIHS01 hash rosidl generated for ``type_name`` (from the installed .json file)."""
    import vision_msgs

    share = Path(vision_msgs.__file__).resolve().parents[4] / "share" / "vision_msgs" / "msg"
    description = json.loads((share / f"{type_name}.json").read_text())
    return next(
        h["hash_string"]
        for h in description["type_hashes"]
        if h["type_name"] == f"vision_msgs/msg/{type_name}"
    )


def test_msg_files_match_upstream_set() -> None:
    assert {p.stem for p in MSG_DIR.glob("*.msg")} == UPSTREAM_MESSAGES


def test_build_message_in_process() -> None:
    det = Detection2D()
    det.bbox = BoundingBox2D()
    det.bbox.center.position.x = 320.0
    det.bbox.center.position.y = 240.0
    det.bbox.size_x = 50.0
    det.bbox.size_y = 20.0
    hyp = ObjectHypothesisWithPose()
    hyp.hypothesis.class_id = "box"
    hyp.hypothesis.score = 0.9
    det.results.append(hyp)
    msg = Detection2DArray(detections=[det])
    msg.header.frame_id = "camera"

    assert msg.detections[0].results[0].hypothesis.class_id == "box"
    assert msg.detections[0].bbox.center.position.x == pytest.approx(320.0)
    # Field layout of upstream Jazzy (a mismatch would change the type hash).
    assert list(Detection2D.get_fields_and_field_types()) == ["header", "results", "bbox", "id"]
    assert LabelInfo.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "class_map": "sequence<vision_msgs/VisionClass>",
        "threshold": "float",
    }
    assert VisionClass.get_fields_and_field_types()["class_id"] == "uint16"


def test_cross_process_round_trip_and_type_hash(ros_domain: dict[str, str]) -> None:
    topic = f"/vision_msgs_test_{os.getpid()}"
    env = {**os.environ, **ros_domain}
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER_SCRIPT, topic, "20"], env=env)
    context = Context()
    rclpy.init(context=context)
    received: list[Detection2DArray] = []
    try:
        node = rclpy.create_node("vision_msgs_test_subscriber", context=context)
        node.create_subscription(Detection2DArray, topic, received.append, 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 15
        while len(received) < 3 and time.monotonic() < deadline and publisher.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        endpoints = node.get_publishers_info_by_topic(topic)
        announced_hash = str(endpoints[0].topic_type_hash) if endpoints else None
    finally:
        publisher.terminate()
        publisher.wait(timeout=10)
        rclpy.shutdown(context=context)

    assert len(received) >= 3, "no Detection2DArray arrived from the publisher process"
    first = received[0]
    assert first.header.frame_id == "camera" and first.header.stamp.sec >= 1000
    assert first.detections[0].results[0].hypothesis.class_id == "cone"
    assert first.detections[0].results[0].hypothesis.score == pytest.approx(0.75)
    assert first.detections[0].bbox.center.position.x == pytest.approx(12.5)
    expected_hash = _built_type_hash("Detection2DArray")
    print(f"Detection2DArray type hash: {announced_hash} (built: {expected_hash})")
    assert announced_hash == expected_hash


def test_build_script_is_idempotent_and_explains_bad_input(tmp_path: Path) -> None:
    script = REPO / "tools" / "build_interfaces.sh"
    venv = Path(sys.executable).parents[1]
    package = REPO / "ros_interfaces" / "vision_msgs"

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(script), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    again = run(venv, package)
    assert again.returncode == 0, again.stderr
    assert (
        "vision_msgs up to date" in again.stderr or "already importable" in again.stderr
    )  # no rebuild
    missing = run(tmp_path / "no_venv", package)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    not_venv = run(tmp_path, package)
    assert not_venv.returncode == 1 and "is not a Python venv" in not_venv.stderr
    no_package = run(venv, tmp_path)
    assert no_package.returncode == 1 and "is not an interface package" in no_package.stderr
