# SPDX-License-Identifier: Apache-2.0
"""Extract every image message of ROS 1 / ROS 2 bags to image files plus a manifest per topic.

Inputs are bag files (.bag, .bag.active, .db3, .mcap), rosbag2 folders (with or without
metadata.yaml), or folders searched for both.
Output: ``<out>/<bag>/<topic_dir>/<stamp_ns>.<ext>`` (``<stamp_ns>-<index>.<ext>`` when the
header stamp repeats), ``manifest.csv`` and an ``.unpack_complete`` marker per topic.
``<bag>`` is the bag's name; bags of one run that share a name (``a/data.bag``, ``b/data.bag``)
get their parent folder in front (``a__data``, ``b__data``). ``<topic_dir>`` is the topic
without its leading ``/``, ``/`` -> ``__``; names that are not safe as a folder (``/..``,
empty, very long, control characters) are encoded and never leave the bag's folder.

File formats:
  colour / mono 8-bit      PNG (or JPEG with --format jpg; alpha is dropped in JPEG)
  16-bit (mono16, 16UC1)   16-bit PNG, lossless
  32FC1 depth              .npy float32 (default, lossless) or, with --depth-float scaled,
                           16-bit PNG in millimetres (value*1000 rounded; NaN, inf, <=0 and
                           beyond 65.535 m -> 0, i.e. invalid rather than a wrong clipped value)
  CompressedImage          the received JPEG/PNG bytes unchanged (never re-encoded)
  compressedDepth          decoded: 16UC1 -> 16-bit PNG, 32FC1 -> as 32FC1 depth above

Damaged bags are salvaged automatically: a bag cut short by a power loss (ROS 1 without its
index, MCAP without summary and footer, a .db3 with a damaged tail) or with a damaged chunk
gives every complete message before the damage, in order, never a partial one. A warning says
how much was salvaged and where the damage is; the bag itself is never modified. When nothing
can be read, the bag is reported as unreadable (exit status 1). Details: docs/SALVAGE.md.

Topics already unpacked with the same settings are skipped (use --force to redo them);
interrupted runs resume. Unsupported encodings and corrupt messages are counted, reported
and skipped; the exit status is 1 when anything failed (a salvaged bag alone is a warning).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rosbags.interfaces import Connection
from tqdm import tqdm

from mtl_perception.core import atomic_io
from mtl_perception.core.bags import (
    COMPRESSED_TYPE,
    IMAGE_TYPES,
    find_bags,
    image_connections,
    open_bag,
    output_names,
    same_topic,
    topic_dirname,
)
from mtl_perception.core.constants import MANIFEST_COLUMNS, MANIFEST_NAME
from mtl_perception.core.depth import metres_to_depth_png
from mtl_perception.core.errors import UserError
from mtl_perception.core.images import (
    UnsupportedEncoding,
    compressed_kind,
    decode_compressed,
    decode_image,
    write_image,
)
from mtl_perception.core.salvage import BagSalvageError, RecoveringReader
from mtl_perception.core.stamps import stamp_to_ns
from mtl_perception.core.summary import JobSummary

MARKER = ".unpack_complete"
# Files this command writes into a topic folder (frames and temporary files of atomic writes);
# only these are ever removed, when a re-run no longer produces them.
_OWN_FILE_RE = re.compile(r"^(\d+(-\d+)?\.(png|jpg|npy)|\..+\.tmp\.\w+)$")


@dataclass(frozen=True)
class UnpackOptions:
    """Settings of one unpack run (picklable: sent to the worker processes)."""

    out: Path
    image_format: str = "png"
    jpeg_quality: int = 95
    depth_float: str = "npy"
    topics: tuple[str, ...] = ()
    force: bool = False
    threads: int = 2
    progress: bool = False

    def settings(self) -> dict[str, Any]:
        """The options that change the output files; a topic unpacked with others is redone."""
        settings: dict[str, Any] = {"format": self.image_format, "depth_float": self.depth_float}
        if self.image_format == "jpg":
            settings["jpeg_quality"] = self.jpeg_quality
        return settings


@dataclass
class BagResult:
    """What unpacking one bag did: its counters, the topics it has, and a bag-level error."""

    bag: Path
    summary: JobSummary
    topics: set[str] = field(default_factory=set)
    error: str | None = None


@dataclass(frozen=True)
class WrittenFrame:
    """One written frame, as it appears in the manifest."""

    file: str
    encoding: str
    width: int
    height: int


class BagReadError(Exception):
    """The bag itself (not one message) cannot be read: missing index, truncated, corrupt."""


# ----------------------------------------------------------------------------- frame writing


def write_array(array: np.ndarray, stem_path: Path, options: UnpackOptions) -> Path:
    """Write a decoded array losslessly (JPEG for 8-bit with ``--format jpg``); return its path."""
    if array.dtype == np.float32:
        if options.depth_float == "npy":
            path = stem_path.with_suffix(".npy")
            atomic_io.write_with(path, lambda tmp: np.save(tmp, array, allow_pickle=False))
            return path
        array = metres_to_depth_png(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise UnsupportedEncoding(f"cannot store {array.dtype} images")
    jpeg = options.image_format == "jpg" and array.dtype == np.uint8
    bgr = array
    if array.ndim == 3 and array.shape[2] == 3:
        bgr = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        bgr = cv2.cvtColor(array, cv2.COLOR_RGBA2BGR if jpeg else cv2.COLOR_RGBA2BGRA)
    if jpeg:
        path = stem_path.with_suffix(".jpg")
        write_image(path, bgr, (cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality))
    else:
        path = stem_path.with_suffix(".png")
        write_image(path, bgr)
    return path


def write_frame(msg: Any, msgtype: str, stem_path: Path, options: UnpackOptions) -> WrittenFrame:
    """Decode/validate one image message and write its file next to ``stem_path``.

    Runs in a thread pool: OpenCV releases the GIL while decoding and encoding.
    Raises ``ValueError`` (incl. ``UnsupportedEncoding``) for a message that cannot be stored.
    """
    if msgtype == COMPRESSED_TYPE:
        encoding = str(msg.format)
        kind = compressed_kind(msg)
        array = decode_compressed(msg)  # also proves that the bytes are a readable image
        if kind in ("jpeg", "png"):
            path = stem_path.with_suffix(".jpg" if kind == "jpeg" else ".png")
            atomic_io.write_bytes(path, np.asarray(msg.data, dtype=np.uint8).tobytes())
        else:
            path = write_array(array, stem_path, options)
    else:
        encoding = str(msg.encoding)
        array = decode_image(msg)
        path = write_array(array, stem_path, options)
    return WrittenFrame(path.name, encoding, int(array.shape[1]), int(array.shape[0]))


# ----------------------------------------------------------------------------- per-topic output


class TopicOutput:
    """The output folder of one topic: file naming, manifest rows, completion marker."""

    def __init__(self, bag: str, topic: str, folder: Path) -> None:
        self.bag, self.topic, self.folder = bag, topic, folder
        self.count = 0
        self.written = 0
        self.failed = 0
        self.rows: list[dict[str, Any]] = []
        self._stems: set[str] = set()

    def next_index(self) -> int:
        """0-based position of the next message of this topic."""
        self.count += 1
        return self.count - 1

    def reserve_stem(self, stamp_ns: int, index: int) -> Path:
        """Path without extension for a message: its stamp, or ``<stamp>-<index>`` if taken."""
        stem = str(stamp_ns)
        if stem in self._stems:
            stem = f"{stamp_ns}-{index}"
        self._stems.add(stem)
        return self.folder / stem

    def add(
        self, index: int, stamp_ns: int, bag_time_ns: int, frame_id: str, frame: WrittenFrame
    ) -> None:
        """Record a written frame: one manifest row."""
        self.written += 1
        self.rows.append(
            {
                "index": index,
                "stamp_ns": stamp_ns,
                "bag_time_ns": bag_time_ns,
                "frame_id": frame_id,
                "encoding": frame.encoding,
                "width": frame.width,
                "height": frame.height,
                "bag": self.bag,
                "file": frame.file,
            }
        )

    def finish(self, settings: dict[str, Any]) -> None:
        """Write the manifest, drop frames an earlier run left behind, then the marker (last)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_io.write_csv(
            self.folder / MANIFEST_NAME,
            MANIFEST_COLUMNS,
            sorted(self.rows, key=lambda row: row["index"]),
        )
        keep = {row["file"] for row in self.rows}
        for path in self.folder.iterdir():
            if path.name not in keep and _OWN_FILE_RE.match(path.name):
                path.unlink(missing_ok=True)
        marker = {
            "topic": self.topic,
            "messages": self.count,
            "written": self.written,
            "failed": self.failed,
            **settings,
        }
        atomic_io.write_json(self.folder / MARKER, marker)


def completed_messages(folder: Path, settings: dict[str, Any]) -> int | None:
    """Message count recorded by a finished unpack of ``folder`` with ``settings``, else None."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or any(marker.get(k) != v for k, v in settings.items()):
        return None
    return int(marker.get("messages", 0))


# ----------------------------------------------------------------------------- per-bag work


def _read_messages(
    reader: RecoveringReader, connections: list[Connection]
) -> Iterator[tuple[Connection, int, bytes]]:
    """``reader.messages`` with any failure of the bag itself turned into ``BagReadError``."""
    iterator = reader.messages(connections=connections)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as err:  # storage backends raise many types (sqlite3, struct, lz4, ...)
            raise BagReadError(f"cannot read the bag: {type(err).__name__}: {err}") from err
        yield item


def _fail_message(summary: JobSummary, out: TopicOutput, index: int, err: Exception) -> None:
    out.failed += 1
    kind = "unsupported encoding" if isinstance(err, UnsupportedEncoding) else "corrupt message"
    summary.fail(kind, f"{out.bag} {out.topic} index {index}: {err}")


def _extract(
    reader: RecoveringReader,
    outputs: dict[str, TopicOutput],
    connections: list[Connection],
    options: UnpackOptions,
    summary: JobSummary,
) -> None:
    """Read the selected connections in bag order; decode+write frames in a bounded thread pool."""
    total = sum(conn.msgcount for conn in connections)
    window = 4 * options.threads  # frames in flight: bounds memory on long high-res bags
    pending: deque[tuple[TopicOutput, int, int, int, str, Future[WrittenFrame]]] = deque()

    def collect() -> None:
        out, index, stamp, bag_time, frame_id, future = pending.popleft()
        try:
            out.add(index, stamp, bag_time, frame_id, future.result())
            summary.add("written")
        except (ValueError, cv2.error) as err:
            _fail_message(summary, out, index, err)

    with (
        ThreadPoolExecutor(max_workers=options.threads) as pool,
        tqdm(
            total=total,
            unit="msg",
            desc=Path(reader.paths[0]).name,
            leave=False,
            file=sys.stderr,
            disable=None if options.progress else True,
        ) as bar,
    ):
        for conn, bag_time, raw in _read_messages(reader, connections):
            bar.update()
            out = outputs[conn.topic]
            index = out.next_index()
            summary.add("read")
            try:
                msg = reader.deserialize(raw, conn.msgtype)
                stamp = stamp_to_ns(msg.header.stamp)
            except Exception as err:  # rosbags raises several types for malformed CDR/ROS 1 data
                _fail_message(summary, out, index, ValueError(f"cannot deserialize: {err}"))
                continue
            future = pool.submit(
                write_frame, msg, conn.msgtype, out.reserve_stem(stamp, index), options
            )
            pending.append((out, index, stamp, bag_time, str(msg.header.frame_id), future))
            while len(pending) > window:
                collect()
        while pending:
            collect()


def _plan(
    reader: RecoveringReader, name: str, options: UnpackOptions, summary: JobSummary
) -> tuple[dict[str, TopicOutput], list[Connection]]:
    """Pick the connections to extract, skipping topics already unpacked with the same settings."""
    settings = options.settings()
    for conn in reader.connections:
        if conn.msgtype not in IMAGE_TYPES and any(
            same_topic(conn.topic, t) for t in options.topics
        ):
            summary.fail("not an image topic", f"{name} {conn.topic} has type {conn.msgtype}")
    outputs: dict[str, TopicOutput] = {}
    selected: list[Connection] = []
    left_out: set[str] = set()
    folders: dict[str, str] = {}  # topic folder -> topic, to catch "/cam" and "cam" in one bag
    for conn in image_connections(reader, options.topics):
        if conn.topic in left_out:
            continue
        if conn.topic not in outputs:  # a topic may have several connections (publishers)
            dirname = topic_dirname(conn.topic)
            if folders.setdefault(dirname, conn.topic) != conn.topic:
                summary.fail(
                    "topic folder clash",
                    f"{name}: {conn.topic} and {folders[dirname]} both map to {dirname}",
                )
                left_out.add(conn.topic)
                continue
            folder = options.out / name / dirname
            done = None if options.force else completed_messages(folder, settings)
            if done is not None:
                summary.add("skipped", done)
                left_out.add(conn.topic)
                continue
            (folder / MARKER).unlink(missing_ok=True)  # a crash from here on leaves it unfinished
            outputs[conn.topic] = TopicOutput(name, conn.topic, folder)
        selected.append(conn)
    return outputs, selected


def unpack_bag(path: Path, options: UnpackOptions, name: str) -> BagResult:
    """Unpack one bag into ``<out>/<name>`` (runs in a worker process).

    Bad bag content is reported in the result, never raised.
    """
    result = BagResult(path, JobSummary("unpack"))
    try:
        with ExitStack() as stack:
            try:
                reader = stack.enter_context(open_bag(path))
            except BagSalvageError as err:  # rosbags failed and nothing could be salvaged
                raise BagReadError(str(err).removeprefix(f"{path}: ")) from err
            result.topics = {conn.topic for conn in reader.connections}
            outputs, selected = _plan(reader, name, options, result.summary)
            if selected:
                _extract(reader, outputs, selected, options, result.summary)
                for out in outputs.values():
                    out.finish(options.settings())
            if reader.salvage is not None:
                result.summary.warn("damaged bag, salvaged", reader.describe())
    except BagReadError as err:
        result.error = f"{path}: {err}"
        result.summary.fail("unreadable bag", result.error)
    return result


# ----------------------------------------------------------------------------- command line


def _topic_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the module docstring's format table as written and still show defaults."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mtl-data unpack``."""
    parser.formatter_class = _HelpFormatter
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="BAG_OR_FOLDER",
        help="bag files (.bag, .bag.active, .db3, .mcap), rosbag2 folders, or folders containing "
        "them; damaged bags are salvaged (see above)",
    )
    parser.add_argument("--out", type=Path, default=Path("data/raw"), help="output folder")
    parser.add_argument(
        "--topics",
        type=_topic_list,
        action="extend",
        default=[],
        metavar="T1,T2",
        help="image topics to extract (comma-separated or repeated; leading / optional); "
        "none given = every sensor_msgs Image/CompressedImage topic",
    )
    parser.add_argument(
        "--format",
        dest="image_format",
        choices=("png", "jpg"),
        default="png",
        help="file format of raw 8-bit frames (16-bit and depth are always lossless)",
    )
    parser.add_argument(
        "--jpeg-quality", type=int, default=95, help="JPEG quality for --format jpg (1-100)"
    )
    parser.add_argument(
        "--depth-float",
        choices=("npy", "scaled"),
        default="npy",
        help="32FC1 depth: float32 .npy (metres, lossless) or 16-bit PNG in millimetres",
    )
    parser.add_argument(
        "--force", action="store_true", help="redo topics that are already unpacked"
    )
    parser.add_argument(
        "--jobs", type=int, default=min(4, os.cpu_count() or 1), help="bags processed in parallel"
    )
    parser.add_argument("--threads", type=int, default=2, help="encode/write threads per bag")


def _options(args: argparse.Namespace, progress: bool) -> UnpackOptions:
    if not 1 <= args.jpeg_quality <= 100:
        raise UserError(f"--jpeg-quality: {args.jpeg_quality} is not in 1..100")
    for flag in ("jobs", "threads"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag}: must be at least 1, got {getattr(args, flag)}")
    return UnpackOptions(
        out=args.out,
        image_format=args.image_format,
        jpeg_quality=args.jpeg_quality,
        depth_float=args.depth_float,
        topics=tuple(args.topics),
        force=args.force,
        threads=args.threads,
        progress=progress,
    )


def _bag_results(bags: list[Path], options: UnpackOptions, jobs: int) -> Iterator[BagResult]:
    """Unpack bags here (one job) or in a process pool; yields results as they finish."""
    names = output_names(bags)
    if jobs == 1:
        for bag in bags:
            try:
                yield unpack_bag(bag, options, names[bag])
            except (
                Exception
            ) as err:  # e.g. disk full while writing: report it, go on with the next bag
                yield _failed(bag, err)
        return
    # spawn: the parent may hold threads (tqdm, pools), which fork does not copy safely.
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        futures = {pool.submit(unpack_bag, bag, options, names[bag]): bag for bag in bags}
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as err:  # as above, plus a crashed worker (BrokenProcessPool)
                yield _failed(futures[future], err)


def _failed(bag: Path, err: Exception) -> BagResult:
    """Result of a bag whose processing raised outside the per-message and bag-read handling."""
    error = f"{bag}: {type(err).__name__}: {err}"
    result = BagResult(bag, JobSummary("unpack"), error=error)
    result.summary.fail("bag failed", error)
    return result


def run(args: argparse.Namespace) -> int:
    """Run ``mtl-data unpack``; returns the exit status (1 when anything failed)."""
    bags = find_bags(args.inputs)
    jobs = min(args.jobs, len(bags))
    options = _options(args, progress=jobs == 1)
    summary = JobSummary("unpack")
    seen_topics: set[str] = set()
    with tqdm(total=len(bags), unit="bag", desc="unpack", file=sys.stderr, disable=None) as bar:
        for result in _bag_results(bags, options, jobs):
            summary.merge(result.summary)
            seen_topics |= result.topics
            if result.error:
                tqdm.write(f"mtl-data unpack: error: {result.error}", file=sys.stderr)
            bar.update()
    for topic in options.topics:
        if not any(same_topic(topic, seen) for seen in seen_topics):
            summary.fail("topic not found", f"{topic} is in none of the {len(bags)} bag(s)")
    summary.print(sys.stderr)  # resolved now, not at import (tests and callers may redirect it)
    return summary.exit_code()
