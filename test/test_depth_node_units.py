# SPDX-License-Identifier: Apache-2.0
"""The node's depth outputs as messages: 32FC1 metres and the colourised image (no DDS)."""

from __future__ import annotations

import numpy as np
import pytest
from std_msgs.msg import Header

from mtl_perception.core.images import decode_image
from mtl_perception.ros.messages import color_depth_message, depth_message
from mtl_perception.ros.params import SPECS
from mtl_perception.visualize import colorize_depth


def _header() -> Header:
    header = Header(frame_id="camera_depth_optical")
    header.stamp.sec, header.stamp.nanosec = 7, 99
    return header


def test_depth_message_is_32fc1_metres_that_decode_back_exactly() -> None:
    depth = np.random.default_rng(0).uniform(0.3, 12.0, (30, 40)).astype(np.float32)
    msg = depth_message(depth[:, ::-1], _header())  # a non-contiguous view, as a resize may give
    assert (msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian) == (
        "32FC1",
        30,
        40,
        160,
        0,
    )
    assert (msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec) == (
        "camera_depth_optical",
        7,
        99,
    )
    decoded = decode_image(msg)  # the package's reader of sensor_msgs/Image (unpack, replay)
    assert decoded.dtype == np.float32 and np.array_equal(decoded, depth[:, ::-1])


def test_colour_depth_runs_from_near_red_to_far_blue_and_invalid_black() -> None:
    depth = np.array([[0.2, 5.0, 10.0, 50.0, 0.0, np.nan]], np.float32)
    rgb = colorize_depth(depth, 10.0)
    near, middle, far, beyond, zero, nan = (tuple(int(v) for v in rgb[0, i]) for i in range(6))
    assert near[0] > near[2] and far[2] > far[0]  # red-ish near, blue-ish far
    assert beyond == far and zero == nan == (0, 0, 0) and middle not in (near, far)
    msg = color_depth_message(depth, 10.0, _header())
    assert (msg.encoding, msg.width, msg.header.frame_id) == ("rgb8", 6, "camera_depth_optical")
    with pytest.raises(ValueError, match="max_m > 0"):
        colorize_depth(depth, 0.0)


def test_depth_outputs_have_switches_in_the_parameter_table() -> None:
    assert SPECS["publish_depth"].default is True and not SPECS["publish_depth"].read_only
    assert SPECS["publish_depth_color"].default is True
    assert SPECS["depth_color_max"].problem(0.0) and SPECS["depth_color_max"].problem(5.0) is None
