# SPDX-License-Identifier: Apache-2.0
"""Drawing predictions: colour a class-id mask, draw boxes with labels, blend the two.

Used by the ROS node's overlay image, TensorBoard image grids and the demo report. Every
function takes and returns RGB uint8 arrays (the package's in-memory convention) and never
draws into its input.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np

from mtl_perception.core.constants import IGNORE_INDEX
from mtl_perception.core.palette import Color, default_palette

__all__ = ["colorize_mask", "draw_detections", "draw_prediction", "overlay_mask"]


class PredictionLike(Protocol):
    """What ``draw_prediction`` reads (``mtl_perception.predictor.Prediction`` fits)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    mask: np.ndarray | None


_VOC_TABLE = np.array(default_palette(256), dtype=np.uint8)


@functools.lru_cache(maxsize=32)
def _cached_table(
    palette: tuple[tuple[int, ...], ...], ignore_index: int | None, ignore_color: Color
) -> np.ndarray:
    """The lookup table of one palette (cached: the node colours every frame with the same one)."""
    table = _lookup_table(palette, ignore_index, ignore_color)
    table.flags.writeable = False
    return table


def _lookup_table(
    palette: Sequence[Sequence[int]], ignore_index: int | None, ignore_color: Color
) -> np.ndarray:
    """A 256x3 colour table for indexing a uint8 mask; ids past the palette get VOC colours."""
    table = _VOC_TABLE.copy()
    if len(palette):
        table[: min(len(palette), 256)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    if ignore_index is not None and 0 <= ignore_index < 256:
        table[ignore_index] = ignore_color
    return table


def colorize_mask(
    mask: np.ndarray,
    palette: Sequence[Sequence[int]] | None = None,
    ignore_index: int | None = IGNORE_INDEX,
    ignore_color: Color = (0, 0, 0),
) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` image of a class-id mask ``[H, W]`` (one colour per class)."""
    if mask.ndim != 2:
        raise ValueError(f"colorize_mask needs a [H, W] class-id mask, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(
            f"class ids must be within 0..255 to colour a mask, got {mask.min()}..{mask.max()}"
        )
    key = tuple(tuple(int(v) for v in colour) for colour in palette) if palette is not None else ()
    table = _cached_table(key, ignore_index, tuple(ignore_color))
    # np.take is ~4x faster than fancy indexing (table[mask]) for a 480x640 mask.
    return np.take(table, mask.astype(np.uint8, copy=False), axis=0)


def overlay_mask(
    image: np.ndarray,
    mask: np.ndarray,
    palette: Sequence[Sequence[int]] | None = None,
    alpha: float = 0.5,
    skip_classes: Sequence[int] = (0, 255),
) -> np.ndarray:
    """Blend the coloured mask into ``image``.

    Pixels of ``skip_classes`` (background, ignore) stay untouched so the scene remains
    readable.

    Raises:
        ValueError: ``mask`` is not the size of ``image``.
    """
    if image.shape[:2] != mask.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image size {image.shape[:2]}")
    colored = colorize_mask(mask, palette)
    blended = cv2.addWeighted(image, 1.0 - alpha, colored, alpha, 0.0)
    out = image.copy()
    paint = ~np.isin(mask, np.asarray(skip_classes))
    out[paint] = blended[paint]
    return out


def _text_style(image: np.ndarray) -> tuple[float, int]:
    """Font scale and line thickness that stay legible from thumbnails to 1080p frames."""
    short_side = min(image.shape[:2])
    return max(0.35, short_side / 900.0), max(1, round(short_side / 320.0))


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    label_names: Sequence[str],
    scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    palette: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """Copy of ``image`` with one rectangle and a filled "name score" tag per box.

    Box colours come from ``palette[label]`` (1-based labels; default VOC colours, which
    skip black), or from the box index when ``labels`` is not given.
    """
    out = np.ascontiguousarray(image).copy()
    colors = palette if palette is not None else default_palette(256)
    font_scale, thickness = _text_style(out)
    width = out.shape[1]
    for index, box in enumerate(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)):
        color_id = int(labels[index]) if labels is not None else index + 1
        color = tuple(int(c) for c in colors[color_id % len(colors)])
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        # Axis-aligned: no anti-aliasing needed.
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        text = label_names[index] if index < len(label_names) else "?"
        if scores is not None:
            text = f"{text} {float(scores[index]):.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(
            text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness
        )
        # Tag above the box, or inside it when the box touches the top edge; kept on-screen.
        top = y1 - text_h - baseline if y1 - text_h - baseline >= 0 else y1
        left = min(max(0, x1), max(0, width - text_w))
        cv2.rectangle(
            out, (left, top), (left + text_w, top + text_h + baseline), color, cv2.FILLED
        )
        text_color = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)  # contrast on the tag
        cv2.putText(
            out,
            text,
            (left, top + text_h),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            text_color,
            thickness,
            cv2.LINE_AA,
        )
    return out


def draw_prediction(
    image: np.ndarray,
    prediction: PredictionLike,
    palette: Sequence[Sequence[int]] | None = None,
    alpha: float = 0.5,
    box_palette: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """The overlay image: mask blended with ``palette`` (segmentation classes), then boxes."""
    out = image
    if prediction.mask is not None:
        out = overlay_mask(out, prediction.mask, palette, alpha)
    return draw_detections(
        out,
        prediction.boxes,
        prediction.label_names,
        prediction.scores,
        prediction.labels,
        box_palette,
    )


def colorize_depth(depth_m: np.ndarray, max_m: float) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` image of a depth map in metres (OpenCV's Turbo colour map).

    Near is red, far (``>= max_m``) blue, invalid pixels (``<= 0`` or non-finite) black.

    Raises:
        ValueError: ``depth_m`` is not 2-D, or ``max_m`` is not positive.
    """
    if depth_m.ndim != 2:
        raise ValueError(f"colorize_depth needs a [H, W] depth map, got shape {depth_m.shape}")
    if not max_m > 0:
        raise ValueError(f"colorize_depth needs max_m > 0, got {max_m}")
    depth = np.asarray(depth_m, dtype=np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    near = 1.0 - np.clip(np.where(valid, depth, max_m) / np.float32(max_m), 0.0, 1.0)
    rgb = cv2.cvtColor(
        cv2.applyColorMap(np.round(near * 255).astype(np.uint8), cv2.COLORMAP_TURBO),
        cv2.COLOR_BGR2RGB,
    )
    rgb[~valid] = 0
    return rgb
