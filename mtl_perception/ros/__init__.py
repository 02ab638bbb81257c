# SPDX-License-Identifier: Apache-2.0
"""ROS 2 side of mtl_perception: the lifecycle perception node and its helpers.

Only this sub-package imports ``rclpy``; the inference itself is
``mtl_perception.predictor.Predictor``, shared with evaluation and replay.
"""
