# SPDX-License-Identifier: Apache-2.0
"""launch_testing test of perception.launch.py for a lifecycle manager: start inactive, sim time.

Run by ``launch_test`` (as ROS's ``add_launch_test`` does; test/test_ros2_tools.py runs it in CI
against a colcon-built workspace):

    launch_test test/launch/perception_node.test.py model:=/path/to/model.pt

The node is started with ``autostart:=false use_sim_time:=true``: it must wait unconfigured
with ``use_sim_time`` set, log one line per lifecycle transition it is driven through
(configure, activate), then answer a frame with the input's header; after the test, launch's
SIGINT must end it with exit code 0.
"""

from __future__ import annotations

import os
import time
import unittest
from typing import Any

import launch_testing
import launch_testing.actions
import launch_testing.asserts
import rclpy
from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import GetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

from launch import LaunchDescription

NODE = "/lt/perception_node"
CAMERA = "/lt/camera/image"
TIMEOUT = 120.0  # a loaded 2-core CI machine imports torch slowly; every wait ends at its event


def generate_test_description() -> tuple[LaunchDescription, dict[str, Any]]:
    launch_file = os.path.join(
        get_package_share_directory("mtl_perception"), "launch", "perception.launch.py"
    )
    perception = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(launch_file),
        launch_arguments={
            "model": LaunchConfiguration("model"),
            "device": "cpu",
            "namespace": "lt",
            "image": CAMERA,
            "autostart": "false",
            "use_sim_time": "true",
        }.items(),
    )
    return LaunchDescription(
        [
            DeclareLaunchArgument("model", description="checkpoint for the node"),
            perception,
            launch_testing.actions.ReadyToTest(),
        ]
    ), {}


class TestLifecycleManagerStart(unittest.TestCase):
    """The node waits for a lifecycle manager, then runs once driven."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.context = Context()
        rclpy.init(context=cls.context)
        cls.node = rclpy.create_node("launch_test_client", context=cls.context)
        cls.executor = SingleThreadedExecutor(context=cls.context)
        cls.executor.add_node(cls.node)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.executor.shutdown()
        cls.node.destroy_node()
        rclpy.shutdown(context=cls.context)

    def _call(self, srv_type: type, name: str, request: Any) -> Any:
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=TIMEOUT), f"{name} never appeared"
        future = client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=TIMEOUT)
        self.node.destroy_client(client)
        assert future.done(), f"{name} did not answer"
        return future.result()

    def _transition(self, transition_id: int) -> None:
        result = self._call(
            ChangeState,
            f"{NODE}/change_state",
            ChangeState.Request(transition=Transition(id=transition_id)),
        )
        assert result.success, f"transition {transition_id} refused"

    def test_starts_inactive_with_sim_time_then_runs_when_driven(self, proc_output: Any) -> None:
        state = self._call(GetState, f"{NODE}/get_state", GetState.Request())
        assert state.current_state.label == "unconfigured"
        values = self._call(
            GetParameters, f"{NODE}/get_parameters", GetParameters.Request(names=["use_sim_time"])
        )
        assert values.values[0].bool_value

        self._transition(Transition.TRANSITION_CONFIGURE)
        proc_output.assertWaitFor("configured: model", timeout=TIMEOUT)
        self._transition(Transition.TRANSITION_ACTIVATE)
        proc_output.assertWaitFor(f"active: listening on {CAMERA}", timeout=TIMEOUT)

        answers: list[Detection2DArray] = []
        self.node.create_subscription(Detection2DArray, f"{NODE}/detections", answers.append, 10)
        publisher = self.node.create_publisher(Image, CAMERA, 10)
        frame = Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=bytes(48 * 64 * 3))
        frame.header.frame_id = "lt_camera"
        frame.header.stamp.sec = 4242
        deadline = time.monotonic() + TIMEOUT
        while not answers and time.monotonic() < deadline:
            publisher.publish(
                frame
            )  # again until the subscription has matched (best-effort input)
            end = time.monotonic() + 0.5
            while not answers and time.monotonic() < end:
                self.executor.spin_once(timeout_sec=0.05)
        assert answers, "no detections for the published frame"
        assert (answers[0].header.frame_id, answers[0].header.stamp.sec) == ("lt_camera", 4242)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    """launch's SIGINT at the end of the test is a clean shutdown."""

    def test_exit_code(self, proc_info: Any) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
