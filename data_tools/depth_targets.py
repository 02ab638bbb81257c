# SPDX-License-Identifier: Apache-2.0
"""Depth targets for ``mtl-data build``: pair colour frames with aligned depth, write ``depth/``.

An RGB-D camera (RealSense, OAK-D, ZED) publishes depth aligned to the colour image on its own
topic (e.g. ``/camera/aligned_depth_to_color/image_raw``); ``mtl-data unpack`` stores it as a
topic folder beside the colour one (16-bit PNG for ``16UC1``/``compressedDepth``, ``.npy``
metres for ``32FC1``). Here each colour frame finds the depth frame of the same bag whose header
stamp is nearest, within a tolerance; the depth is converted to metres, invalid pixels (0, NaN,
inf, negative, beyond ``--max-depth``) are marked, and the target is written as uint16
millimetres with 0 = invalid (docs/CONTRACTS.md §11).

Different sizes are refused (the depth is probably not the aligned topic) unless resampling is
asked for explicitly; resampling is nearest-neighbour only, because interpolating across a depth
edge invents surfaces between foreground and background that exist nowhere.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mtl_perception.core.bags import topic_dirname
from mtl_perception.core.constants import MANIFEST_NAME
from mtl_perception.core.depth import (
    DEFAULT_DEPTH_TOLERANCE_MS,
    DEFAULT_DEPTH_UNIT_M,
    is_depth_encoding,
    metres_to_depth_png,
    nearest_stamp,
    read_depth_file,
)
from mtl_perception.core.errors import UserError
from mtl_perception.core.summary import JobSummary

# Relative aspect-ratio difference above which depth cannot be aligned to the colour image.
ASPECT_TOLERANCE = 0.01


@dataclass(frozen=True)
class DepthOptions:
    """How depth is paired and converted (``None`` topic = no depth)."""

    topic: str | None = None
    color_topic: str | None = None
    tolerance_ns: int = round(DEFAULT_DEPTH_TOLERANCE_MS * 1e6)
    resize: str = "none"  # "none" | "nearest"
    unit_m: float = DEFAULT_DEPTH_UNIT_M
    max_depth: float | None = None

    @property
    def folder(self) -> str | None:
        """Topic folder name of the depth topic (a folder name passes through unchanged)."""
        return None if self.topic is None else topic_dirname(self.topic)

    @property
    def color_folder(self) -> str | None:
        """Topic folder name of ``--color-topic`` (``None`` = every colour topic)."""
        return None if self.color_topic is None else topic_dirname(self.color_topic)


@dataclass(frozen=True)
class DepthFrame:
    """One unpacked depth frame."""

    path: Path
    stamp_ns: int


class DepthIndex:
    """The depth frames of every bag under ``--frames``, sorted by stamp for nearest lookup."""

    def __init__(self, by_bag: dict[str, list[DepthFrame]]) -> None:
        self._frames = {
            bag: sorted(frames, key=lambda f: f.stamp_ns) for bag, frames in by_bag.items()
        }
        self._stamps = {bag: [f.stamp_ns for f in frames] for bag, frames in self._frames.items()}

    def nearest(self, bag: str, stamp_ns: int | None, tolerance_ns: int) -> DepthFrame | None:
        """The depth frame of ``bag`` nearest ``stamp_ns`` within the tolerance, if any."""
        if stamp_ns is None or bag not in self._frames:
            return None
        i = nearest_stamp(self._stamps[bag], stamp_ns, tolerance_ns)
        return None if i is None else self._frames[bag][i]


def discover_depth(root: Path, options: DepthOptions, summary: JobSummary) -> DepthIndex:
    """Read ``<root>/<bag>/<depth topic folder>/manifest.csv`` of every bag.

    Raises:
        UserError: No bag under ``root`` has the depth topic (the message lists the topic
            folders that exist, so a misspelt topic is easy to fix).
    """
    assert options.folder is not None
    by_bag: dict[str, list[DepthFrame]] = {}
    seen_topics: set[str] = set()
    for manifest in sorted(root.rglob(MANIFEST_NAME)):
        if any(part.startswith(".") for part in manifest.relative_to(root).parts):
            continue  # hidden: partial outputs of an interrupted job
        seen_topics.add(manifest.parent.name)
        if manifest.parent.name != options.folder:
            continue
        with manifest.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"file", "stamp_ns"} - set(reader.fieldnames or ())
            if missing:
                summary.fail(
                    "depth manifest without required columns",
                    f"{manifest}: missing {sorted(missing)}",
                )
                continue
            for row in reader:
                bag = row.get("bag") or manifest.parent.parent.name
                try:
                    stamp = int(row["stamp_ns"])
                except ValueError:
                    summary.fail("depth frame without a stamp", f"{manifest}: {row['file']}")
                    continue
                by_bag.setdefault(bag, []).append(DepthFrame(manifest.parent / row["file"], stamp))
    if not by_bag:
        listing = ", ".join(sorted(seen_topics)) or "none"
        raise UserError(
            f"--depth-topic {options.topic}: no topic folder {options.folder!r} under {root} "
            f"(topic folders there: {listing})"
        )
    summary.add("depth frames", sum(len(v) for v in by_bag.values()))
    return DepthIndex(by_bag)


def is_depth_row(row: dict[str, str]) -> bool:
    """True for a manifest row of a depth encoding (never a labelable image)."""
    return is_depth_encoding(row.get("encoding") or "")


@dataclass
class DepthStats:
    """What happened to depth in one build (for the build summary)."""

    paired: int = 0  # targets written
    unmatched: int = 0  # no depth frame within the tolerance
    refused: int = 0  # other size/aspect ratio, or unreadable
    resized: int = 0  # resampled by nearest neighbour
    pixels: int = 0
    valid: int = 0

    def line(self, options: DepthOptions) -> str:
        """One summary line: frames paired, unmatched, refused, and the invalid-pixel share."""
        share = 100.0 * (self.pixels - self.valid) / self.pixels if self.pixels else 0.0
        resized = f" ({self.resized} resized)" if self.resized else ""
        return (
            f"depth from {options.topic}: {self.paired} paired{resized}, "
            f"{self.unmatched} unmatched (none within {options.tolerance_ns / 1e6:g} ms), "
            f"{self.refused} refused; {share:.1f} % of depth pixels invalid (ignored)"
        )


def depth_target(
    depth: DepthFrame,
    image_path: Path,
    size_hw: tuple[int, int],
    options: DepthOptions,
    summary: JobSummary,
    stats: DepthStats,
) -> np.ndarray | None:
    """The uint16 millimetre target for one colour frame, or ``None`` (recorded) if refused.

    Args:
        depth: The paired depth frame.
        image_path: The colour frame (named in messages).
        size_hw: The colour frame's (height, width).
        options: Conversion and resampling options.
        summary: Receives ``depth refused``/``unreadable depth`` problems.
        stats: Receives the refusal/resampling counts and the pixel counts of the target.
    """
    try:
        metres = read_depth_file(depth.path, options.unit_m, options.max_depth)
    except ValueError as err:
        summary.fail("unreadable depth frame", str(err))
        stats.refused += 1
        return None
    height, width = size_hw
    dh, dw = metres.shape
    if (dh, dw) != (height, width):
        sizes = f"{depth.path}: {dw}x{dh} vs image {image_path}: {width}x{height}"
        aspect_gap = abs(dw / dh - width / height) / (width / height)
        if aspect_gap > ASPECT_TOLERANCE:
            summary.fail(
                "depth refused: aspect ratio differs from the image (not aligned depth?)", sizes
            )
            stats.refused += 1
            return None
        if options.resize != "nearest":
            summary.fail(
                "depth refused: size differs from the image (--depth-resize nearest to resample)",
                sizes,
            )
            stats.refused += 1
            return None
        metres = cv2.resize(metres, (width, height), interpolation=cv2.INTER_NEAREST)
        stats.resized += 1
    target = metres_to_depth_png(metres)
    stats.pixels += target.size
    stats.valid += int(np.count_nonzero(target))
    return target


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The depth options of ``mtl-data build``."""
    group = parser.add_argument_group("depth (RGB-D)")
    group.add_argument(
        "--depth-topic",
        help="aligned depth topic (or its folder name) to pair with the colour frames, e.g. "
        "/camera/aligned_depth_to_color/image_raw; writes depth/ targets",
    )
    group.add_argument(
        "--color-topic",
        help="only frames of this topic get depth (default: every colour topic of the bag)",
    )
    group.add_argument(
        "--depth-tolerance-ms",
        type=float,
        default=DEFAULT_DEPTH_TOLERANCE_MS,
        help="largest stamp difference between a colour frame and its depth frame",
    )
    group.add_argument(
        "--depth-resize",
        choices=("none", "nearest"),
        default="none",
        help="depth of another size than its image: refuse it, or resample by nearest neighbour",
    )
    group.add_argument(
        "--depth-unit-m",
        type=float,
        default=DEFAULT_DEPTH_UNIT_M,
        help="metres per unit of 16-bit depth images (16UC1 is millimetres)",
    )
    group.add_argument(
        "--max-depth",
        type=float,
        help="depth beyond this many metres is invalid (e.g. the sensor's range); default: all",
    )


def options_from_args(args: argparse.Namespace) -> DepthOptions:
    """Validated ``DepthOptions``; ``UserError`` naming the flag for a bad value."""
    if args.depth_tolerance_ms < 0:
        raise UserError(f"--depth-tolerance-ms {args.depth_tolerance_ms}: must not be negative")
    if not args.depth_unit_m > 0:
        raise UserError(f"--depth-unit-m {args.depth_unit_m}: must be positive")
    if args.max_depth is not None and not args.max_depth > 0:
        raise UserError(f"--max-depth {args.max_depth}: must be positive")
    if args.depth_topic is None and args.color_topic is not None:
        raise UserError("--color-topic only applies with --depth-topic")
    return DepthOptions(
        topic=args.depth_topic,
        color_topic=args.color_topic,
        tolerance_ns=round(args.depth_tolerance_ms * 1e6),
        resize=args.depth_resize,
        unit_m=args.depth_unit_m,
        max_depth=args.max_depth,
    )
