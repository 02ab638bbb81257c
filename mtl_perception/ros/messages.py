# SPDX-License-Identifier: Apache-2.0
"""Build the node's output messages from a ``Prediction``; every message keeps the input header.

- ``detections_message``: ``vision_msgs/Detection2DArray``, boxes as centre + size in the
  input image's pixels, ``class_id`` = class name, ``id`` = index within the frame.
- ``mask_message``: ``mono8`` class-id mask at input resolution.
- ``color_mask_message``: ``rgb8`` colourised mask (palette lookup).
- ``overlay_message``: ``rgb8`` frame with mask and boxes drawn (``mtl_perception.visualize``).
- ``depth_message``: ``32FC1`` depth in metres (REP 118), little-endian.
- ``color_depth_message``: ``rgb8`` colourised depth (``visualize.colorize_depth``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sensor_msgs.msg import Image
from vision_msgs.msg import BoundingBox2D, Detection2D, Detection2DArray, ObjectHypothesisWithPose

from mtl_perception.ros.conversions import image_message
from mtl_perception.visualize import colorize_depth, colorize_mask, draw_prediction

if TYPE_CHECKING:  # the predictor imports torch; message building does not need it
    from mtl_perception.predictor import Prediction


def detections_message(prediction: Prediction, header: Any) -> Detection2DArray:
    """``Detection2DArray`` of every detection in ``prediction`` (xyxy -> centre + size)."""
    array = Detection2DArray(header=header)
    for index, (box, score, name) in enumerate(
        zip(prediction.boxes, prediction.scores, prediction.label_names, strict=True)
    ):
        x1, y1, x2, y2 = (float(v) for v in box)
        bbox = BoundingBox2D(size_x=x2 - x1, size_y=y2 - y1)
        bbox.center.position.x = (x1 + x2) / 2.0
        bbox.center.position.y = (y1 + y2) / 2.0
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = name
        hypothesis.hypothesis.score = float(score)
        array.detections.append(
            Detection2D(header=header, results=[hypothesis], bbox=bbox, id=str(index))
        )
    return array


def mask_message(mask: np.ndarray, header: Any) -> Image:
    """``mono8`` image of the class-id mask."""
    return image_message(np.ascontiguousarray(mask, dtype=np.uint8), header)


def color_mask_message(mask: np.ndarray, palette: Sequence[Sequence[int]], header: Any) -> Image:
    """``rgb8`` image of the mask, one ``palette`` colour per class id."""
    return image_message(colorize_mask(mask, palette), header)


def overlay_message(
    rgb: np.ndarray,
    prediction: Prediction,
    palette: Sequence[Sequence[int]],
    alpha: float,
    header: Any,
) -> Image:
    """``rgb8`` frame with the mask blended in (``alpha``) and labelled boxes drawn on top."""
    return image_message(draw_prediction(rgb, prediction, palette, alpha), header)


def depth_message(depth_m: np.ndarray, header: Any) -> Image:
    """``32FC1`` image of a ``[H, W]`` depth map in metres (little-endian float32)."""
    depth = np.ascontiguousarray(depth_m, dtype="<f4")
    height, width = depth.shape
    return Image(
        header=header,
        height=height,
        width=width,
        encoding="32FC1",
        is_bigendian=0,
        step=width * 4,
        data=depth.tobytes(),
    )


def color_depth_message(depth_m: np.ndarray, max_m: float, header: Any) -> Image:
    """``rgb8`` image of the depth map, near red to far (``max_m``) blue."""
    return image_message(colorize_depth(depth_m, max_m), header)
