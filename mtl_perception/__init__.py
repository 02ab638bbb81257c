# SPDX-License-Identifier: Apache-2.0
"""mtl_perception: multi-task (detection + segmentation) perception for ROS 2 robots."""

__version__ = "0.1.0"
