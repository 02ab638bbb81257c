# SPDX-License-Identifier: Apache-2.0
"""Helpers of the tests that run the perception node over DDS (test_node_ros, test_ros2_tools)."""

from __future__ import annotations

from pathlib import Path

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor


def cpu_node_args(
    checkpoint: Path, namespace: str, *more: str, autostart: bool = True
) -> list[str]:
    """The node's ROS arguments (after ``--ros-args``): ``checkpoint`` on CPU in ``namespace``.

    No warm-up (the tests time nothing); ``autostart=False`` leaves the node unconfigured, for
    the test to drive its lifecycle. ``more`` follows (remappings, other parameters).
    """
    args = ["-p", f"model_path:={checkpoint}", "-p", "device:=cpu"]
    if not autostart:
        args += ["-p", "autostart:=false"]
    return [*args, "-p", "warmup_iterations:=0", "-r", f"__ns:={namespace}", *more]


class ClientNode:
    """A test-side rclpy node in its own context, spun by its own executor; ``close`` ends both."""

    def __init__(self, name: str) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
