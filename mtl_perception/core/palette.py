# SPDX-License-Identifier: Apache-2.0
"""Default colours of segmentation classes (``mtl-data build``, checkpoints, drawing)."""

from __future__ import annotations

Color = tuple[int, int, int]


def default_palette(num_classes: int) -> list[Color]:
    """``num_classes`` distinct RGB colours, class 0 (background) black.

    The PASCAL VOC label colour map: the bits of the class id are spread over the high bits
    of R, G and B, so neighbouring ids get clearly different colours and the palette is the
    same in every tool that uses VOC colours.
    """
    palette: list[Color] = []
    for class_id in range(num_classes):
        r = g = b = 0
        value = class_id
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.append((r, g, b))
    return palette
