# SPDX-License-Identifier: Apache-2.0
"""Palette, mask colouring and overlay drawing."""

from __future__ import annotations

import numpy as np
import pytest

from mtl_perception.core.palette import default_palette
from mtl_perception.predictor import Prediction
from mtl_perception.visualize import colorize_mask, draw_detections, draw_prediction, overlay_mask


def test_default_palette_is_voc_and_distinct() -> None:
    palette = default_palette(256)
    assert palette[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]  # PASCAL VOC
    assert len(set(palette)) == 256


def test_colorize_mask_uses_palette_and_ignore_color() -> None:
    mask = np.array([[0, 1], [2, 255]], np.uint8)
    palette = [(0, 0, 0), (10, 20, 30), (200, 100, 50)]
    rgb = colorize_mask(mask, palette, ignore_color=(255, 255, 255))
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 1].tolist() == [10, 20, 30]
    assert rgb[1, 0].tolist() == [200, 100, 50]
    assert rgb[1, 1].tolist() == [255, 255, 255]


def test_colorize_mask_ids_beyond_palette_get_default_colors() -> None:
    rgb = colorize_mask(np.array([[5]], np.uint8), [(0, 0, 0), (1, 1, 1)])
    assert tuple(rgb[0, 0]) == default_palette(6)[5]


def test_colorize_mask_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="class-id mask"):
        colorize_mask(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"0\.\.255"):
        colorize_mask(np.array([[300]], np.int64))


def test_overlay_keeps_background_and_blends_classes() -> None:
    image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[:2] = 1
    mask[3, 3] = 255
    out = overlay_mask(image, mask, [(0, 0, 0), (200, 0, 0)], alpha=0.5)
    assert out[3, 0].tolist() == [100, 100, 100]  # background untouched
    assert out[3, 3].tolist() == [100, 100, 100]  # ignore untouched
    assert out[0, 0].tolist() == [150, 50, 50]  # 0.5 * 100 + 0.5 * colour
    assert image[0, 0].tolist() == [100, 100, 100]  # input not modified
    with pytest.raises(ValueError, match="differs"):
        overlay_mask(image, np.zeros((3, 4), np.uint8))


def test_draw_detections_draws_box_and_tag_without_touching_input() -> None:
    image = np.zeros((96, 96, 3), np.uint8)
    out = draw_detections(
        image,
        np.array([[20, 30, 70, 80]], np.float32),
        ["cone"],
        np.array([0.9]),
        np.array([1]),
        [(0, 0, 0), (0, 255, 0)],
    )
    assert image.sum() == 0
    assert out[55, 20].tolist() == [0, 255, 0]  # left edge of the box
    assert out[55, 45].tolist() == [0, 0, 0]  # inside stays clear
    assert (out[:30, 20:70] != 0).any()  # the tag sits above the box


def test_draw_detections_box_at_border_and_empty() -> None:
    image = np.zeros((48, 64, 3), np.uint8)
    out = draw_detections(
        image, np.array([[-5, 0, 200, 10]], np.float32), ["a-very-long-class-name"]
    )
    assert out.any()
    assert not draw_detections(image, np.zeros((0, 4), np.float32), []).any()


def test_draw_prediction_combines_mask_and_boxes() -> None:
    image = np.full((40, 60, 3), 50, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[30:] = 2
    prediction = Prediction(
        boxes=np.array([[5, 15, 25, 28]], np.float32),
        scores=np.array([0.5], np.float32),
        labels=np.array([1]),
        label_names=["box"],
        mask=mask,
        image_size=(40, 60),
    )
    out = draw_prediction(image, prediction, [(0, 0, 0), (0, 0, 0), (0, 0, 250)], alpha=0.4)
    assert out[35, 40].tolist() == [30, 30, 130]
    assert out[20, 5].tolist() != [50, 50, 50]
    detection_only = Prediction(
        prediction.boxes, prediction.scores, prediction.labels, ["box"], None, (40, 60)
    )
    assert draw_prediction(image, detection_only)[35, 40].tolist() == [50, 50, 50]
