# SPDX-License-Identifier: Apache-2.0
"""The lowest layer: what the data tools, the networks and the ROS node all share.

Errors, atomic file writes, JSON reading, batch-job summaries, ROS image message <-> numpy
codecs, bag opening and constants (ignore index, minimum input side, HxW size strings).
Nothing here imports torch or rclpy, and nothing here imports another part of the package.
"""
