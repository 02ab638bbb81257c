# SPDX-License-Identifier: Apache-2.0
"""Pure parts of ``mtl-replay`` (no rclpy).

Bag frames, stamp-matched ground truth, frame accounting, accuracy scoring, the output
recorder and the report. The ROS side lives in ``mtl_perception.ros.replay``.
"""
