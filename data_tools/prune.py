# SPDX-License-Identifier: Apache-2.0
"""Drop near-duplicate frames: keep a frame only when it differs enough from the last KEPT one.

Reads ``<raw>/<bag>/<topic_dir>/manifest.csv`` (written by ``mtl-data unpack``) and writes the
kept frames (hard links, or copies where linking fails) plus a manifest with scores to
``<out>/<bag>/<topic_dir>/`` (docs/CONTRACTS.md §2). Inputs are never modified.

Rule: every frame is compared, in grayscale, with the last kept frame using SSIM (7x7 uniform
window, sample covariance; the same value as ``skimage.metrics.structural_similarity`` with
``data_range`` 255 for 8-bit and 65535 for 16-bit frames; float ``.npy`` frames use the joint
value range of the two frames). SSIM 1.0 means identical; a frame
whose SSIM is at least ``--threshold`` (default 0.90) is a near-duplicate and is dropped, a
frame below it is kept and becomes the new reference. Comparing with the last kept frame (not
the previous frame) means a slow drift is still sampled once it has drifted far enough. The
first frame is always kept, and so is a frame whose size or bit depth differs from the last
kept one (a camera mode change: SSIM is undefined across sizes). JPEG frames are decoded
straight to their luma channel (what the colour decode converted to gray gives, within rounding).

Speed: an 8-bit frame is first compared on a sample of the SSIM windows (the disjoint 7x7
blocks); a clear near-duplicate, estimated at ``threshold + 0.02`` or more, is dropped on that
estimate (its error is below 0.004 on camera footage). Every other frame, so every kept one,
gets the exact value, which is what the manifest records. ``--exact`` computes the exact value
for every frame (slower; decisions then equal skimage's).

Depth topics (manifest ``encoding`` 16UC1, 32FC1 or compressedDepth) are not pruned: they are
linked whole, so every kept colour frame still finds its aligned depth frame when ``mtl-data
build --depth-topic`` pairs them by stamp (docs/CONTRACTS.md §11).

Unreadable frame files are counted, reported and treated as if they did not exist. A topic
folder finished with the same threshold (``.prune_complete`` marker) and an unchanged raw
manifest is skipped, so an interrupted job can simply be run again; ``--force`` redoes it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from tqdm import tqdm

from data_tools.ssim import (
    DEFAULT_WIN_SIZE,
    BlockStats,
    ChannelOrder,
    WindowStats,
    block_stats,
    sampled_ssim,
    ssim_from_stats,
    to_gray,
    window_stats,
)
from mtl_perception.core.atomic_io import link_or_copy, write_csv, write_json
from mtl_perception.core.constants import MANIFEST_NAME
from mtl_perception.core.depth import is_depth_encoding
from mtl_perception.core.errors import UserError
from mtl_perception.core.names import inside
from mtl_perception.core.summary import JobSummary

DEFAULT_THRESHOLD = 0.90
SETTLE_MARGIN = 0.02
"""Frames estimated at ``threshold + SETTLE_MARGIN`` or more are dropped without the exact SSIM
(5x the estimate's largest error measured on camera footage, see
``data_tools.ssim.BlockStats``)."""
MARKER = ".prune_complete"
SCORE_COLUMNS = ("ssim", "compared_to")
MARKER_VERSION = 1

T = TypeVar("T")
R = TypeVar("R")


class FrameError(Exception):
    """An unusable frame file (missing, undecodable, unsupported); the frame is skipped."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class FrameDecision:
    """The outcome for one manifest row."""

    index: int
    """Position of the row in the manifest."""
    keep: bool
    ssim: float | None = None
    """SSIM against the last kept frame; ``None`` for a first frame, a mode change or a failure."""
    compared_to: int | None = None
    """Row position of the last kept frame it was compared with."""
    error: FrameError | None = None
    mode_change: bool = False
    """Kept because size or bit depth differs from the last kept frame."""
    exact: bool = True
    """False when ``ssim`` is the sampled estimate (a clear near-duplicate, dropped on it)."""


# --------------------------------------------------------------------------- reading frames


def read_gray(path: Path) -> np.ndarray:
    """Decode one frame file to a 2-D grayscale array (uint8, uint16 or float).

    ``.npy`` arrays are RGB(A) when they have channels (package convention); every other file
    goes through ``cv2.imread`` (BGR order). Raises :class:`FrameError` for unusable files.
    """
    if not path.is_file():
        raise FrameError("missing frame file", str(path))
    order: ChannelOrder
    try:
        if path.suffix.lower() == ".npy":
            image, order = np.load(path, allow_pickle=False), "rgb"
        elif path.suffix.lower() in (
            ".jpg",
            ".jpeg",
        ):  # the file's luma: no colour conversion at all
            image, order = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), "bgr"
        else:
            image, order = cv2.imread(str(path), cv2.IMREAD_UNCHANGED), "bgr"
    except (OSError, ValueError, EOFError) as err:
        raise FrameError("unreadable frame file", f"{path} ({err})") from err
    if image is None or image.size == 0:
        raise FrameError("unreadable frame file", str(path))
    if image.dtype == np.float16:
        image = image.astype(np.float32)
    if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise FrameError("unsupported frame dtype", f"{path} ({image.dtype})")
    try:
        return to_gray(image, order)
    except ValueError as err:
        raise FrameError("unsupported frame shape", f"{path} ({err})") from err


@dataclass(eq=False)
class LoadedFrame:
    """A decoded frame in the decision loop; its exact statistics are computed only when needed."""

    gray: np.ndarray
    blocks: BlockStats | None
    """Sampled window statistics (8-bit frames only) for the quick estimate."""
    stats: WindowStats | None = None

    @property
    def kind(self) -> tuple[tuple[int, ...], np.dtype]:
        """Two frames are comparable only when their size and dtype are equal."""
        return self.gray.shape, self.gray.dtype


def load_frame(path: Path, win_size: int = DEFAULT_WIN_SIZE) -> LoadedFrame:
    """Decode one frame and compute its sampled statistics (a worker's per-frame work)."""
    gray = read_gray(path)
    if min(gray.shape) < win_size:
        raise FrameError(
            "frame too small for SSIM",
            f"{path} ({gray.shape[1]}x{gray.shape[0]} is smaller than "
            f"the {win_size}x{win_size} window)",
        )
    return LoadedFrame(gray, block_stats(gray, win_size))


def ordered_map(
    fn: Callable[[T], R], items: Sequence[T], workers: int, lookahead: int
) -> Iterator[Future[R]]:
    """Run ``fn`` over ``items`` in a thread pool, yielding finished futures in input order.

    At most ``lookahead`` items are in flight, which bounds memory. Threads (not processes)
    suffice: decoding and the OpenCV filters release the GIL.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="prune") as pool:
        queue = iter(items)
        pending = deque(pool.submit(fn, item) for item in islice(queue, max(1, lookahead)))
        while pending:
            future = pending.popleft()
            pending.extend(pool.submit(fn, item) for item in islice(queue, 1))
            yield future


@contextmanager
def opencv_threads(n: int) -> Iterator[None]:
    """Temporarily set OpenCV's own thread count (our workers already use every core)."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def select_frames(
    paths: Sequence[Path],
    threshold: float = DEFAULT_THRESHOLD,
    jobs: int | None = None,
    win_size: int = DEFAULT_WIN_SIZE,
    progress: Callable[[int], object] | None = None,
    settle_margin: float | None = SETTLE_MARGIN,
) -> list[FrameDecision]:
    """Decide keep/drop for each frame path, in order, against the last kept frame.

    Workers decode frames and compute their sampled statistics ahead of the decision loop. A
    frame whose sampled estimate is at least ``threshold + settle_margin`` is dropped on the
    estimate; every other frame (so every kept one) gets the exact SSIM, computed from window
    statistics that are cached for the last kept frame. ``settle_margin=None``: exact for all.
    """
    jobs = jobs or os.cpu_count() or 1
    decisions: list[FrameDecision] = []
    last: LoadedFrame | None = None
    last_index: int | None = None
    spare: WindowStats | None = None  # statistics no longer needed: their arrays are reused
    with opencv_threads(1):
        results = ordered_map(lambda p: load_frame(p, win_size), paths, jobs, lookahead=4 * jobs)
        for index, future in enumerate(results):
            error = future.exception()
            if error is not None:
                if not isinstance(error, FrameError):
                    raise error
                decisions.append(FrameDecision(index, keep=False, error=error))
            else:
                frame = future.result()
                if last is None or last.kind != frame.kind:
                    decision = FrameDecision(index, keep=True, mode_change=last is not None)
                else:
                    estimate = None
                    if (
                        settle_margin is not None
                        and frame.blocks is not None
                        and last.blocks is not None
                    ):
                        estimate = sampled_ssim(last.blocks, frame.blocks)
                    if (
                        estimate is not None
                        and settle_margin is not None
                        and estimate >= threshold + settle_margin
                    ):
                        decision = FrameDecision(
                            index, keep=False, ssim=estimate, compared_to=last_index, exact=False
                        )
                    else:
                        if last.stats is None:
                            last.stats, spare = window_stats(last.gray, win_size, spare), None
                        frame.stats, spare = window_stats(frame.gray, win_size, spare), None
                        score = ssim_from_stats(last.stats, frame.stats)
                        decision = FrameDecision(
                            index, keep=score < threshold, ssim=score, compared_to=last_index
                        )
                if decision.keep:  # the new frame becomes the reference; the old one is discarded
                    if last is not None and last.stats is not None:
                        spare = last.stats
                    last, last_index = frame, index
                elif frame.stats is not None:
                    spare = frame.stats
                decisions.append(decision)
            if progress is not None:
                progress(1)
    return decisions


# --------------------------------------------------------------------------- one topic folder


@dataclass(frozen=True)
class Topic:
    """One raw topic folder and where its pruned copy goes."""

    raw: Path
    out: Path

    @property
    def name(self) -> str:
        """``<bag>/<topic>``: the folder as messages name it."""
        return f"{self.raw.parent.name}/{self.raw.name}"


def read_manifest(folder: Path) -> tuple[list[str], list[dict[str, str]], str]:
    """Columns, rows and SHA-256 of ``folder/manifest.csv``; ``UserError`` if missing/invalid."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise UserError(
            f"{folder}: no {MANIFEST_NAME} (not an unpacked topic folder; "
            "run `mtl-data unpack` first)"
        )
    data = path.read_bytes()
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
    columns = list(reader.fieldnames or [])
    if "file" not in columns:
        raise UserError(f"{path}: missing column 'file' (columns: {', '.join(columns) or 'none'})")
    return columns, list(reader), hashlib.sha256(data).hexdigest()


def frame_path(folder: Path, entry: str) -> Path:
    """The frame file named by a manifest ``file`` entry; it must stay inside the topic folder."""
    try:
        return inside(folder, entry)
    except ValueError:
        raise FrameError(
            "bad file entry in manifest", f"{folder / MANIFEST_NAME}: {entry!r}"
        ) from None


def marker_content(
    threshold: float,
    manifest_hash: str,
    win_size: int,
    settle_margin: float | None = SETTLE_MARGIN,
) -> dict[str, object]:
    """What a finished topic's marker records; a mismatch means the topic must be redone."""
    return {
        "version": MARKER_VERSION,
        "threshold": threshold,
        "win_size": win_size,
        "settle_margin": settle_margin,
        "raw_manifest_sha256": manifest_hash,
    }


def is_done(out: Path, expected: dict[str, object]) -> bool:
    """True when ``out`` holds a marker written with the same settings and raw manifest."""
    try:
        recorded = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in expected.items())


def previous_outputs(out: Path) -> set[str]:
    """Frame entries listed by an earlier run's output manifest (candidates for stale removal)."""
    try:
        with (out / MANIFEST_NAME).open(newline="", encoding="utf-8") as handle:
            return {row["file"] for row in csv.DictReader(handle) if row.get("file")}
    except (OSError, KeyError, csv.Error):
        return set()


def write_topic(
    topic: Topic, columns: list[str], kept_rows: list[dict[str, str]], marker: dict[str, object]
) -> None:
    """Write kept frames, the scored manifest and finally the marker (so a crash is redone)."""
    (topic.out / MARKER).unlink(missing_ok=True)
    stale = previous_outputs(topic.out)
    for row in kept_rows:
        link_or_copy(frame_path(topic.raw, row["file"]), frame_path(topic.out, row["file"]))
    write_csv(topic.out / MANIFEST_NAME, columns + list(SCORE_COLUMNS), kept_rows)
    for entry in stale - {row["file"] for row in kept_rows}:
        try:  # frames kept by a run with another threshold; our own outputs, never raw inputs
            frame_path(topic.out, entry).unlink(missing_ok=True)
        except FrameError:
            continue
    write_json(topic.out / MARKER, {**marker, "kept": len(kept_rows)})


def prune_topic(topic: Topic, args: argparse.Namespace, summary: JobSummary) -> None:
    """Prune one topic folder (or, with ``--dry-run``, only report what would be kept)."""
    if topic.out.resolve() == topic.raw.resolve():
        raise UserError(f"--out {args.out}: would write into the input folder {topic.raw}")
    columns, rows, manifest_hash = read_manifest(topic.raw)
    columns = [c for c in columns if c not in SCORE_COLUMNS]
    settle_margin = None if args.exact else SETTLE_MARGIN
    marker = marker_content(args.threshold, manifest_hash, DEFAULT_WIN_SIZE, settle_margin)
    if not args.dry_run and not args.force and is_done(topic.out, marker):
        summary.add("topics skipped (already done)")
        return

    if rows and all(is_depth_encoding(row.get("encoding") or "") for row in rows):
        _keep_depth_topic(topic, columns, rows, marker, args.dry_run, summary)
        return

    paths: list[Path] = []
    usable: list[int] = []  # manifest rows whose file entry is valid
    for i, row in enumerate(rows):
        try:
            paths.append(frame_path(topic.raw, row.get("file") or ""))
            usable.append(i)
        except FrameError as err:
            summary.fail(err.kind, err.detail)
    with tqdm(total=len(paths), desc=topic.name, unit="frame", disable=None, leave=False) as bar:
        decisions = select_frames(
            paths, args.threshold, args.jobs, progress=bar.update, settle_margin=settle_margin
        )

    kept_rows: list[dict[str, str]] = []
    for decision in decisions:
        if decision.error is not None:
            summary.fail(decision.error.kind, decision.error.detail)
            continue
        summary.add("read")
        if not decision.keep:
            summary.add("dropped")
            continue
        summary.add("kept")
        if decision.mode_change:
            summary.add("kept on size/depth change")
        row = {c: rows[usable[decision.index]].get(c, "") for c in columns}
        row["ssim"] = "" if decision.ssim is None else f"{decision.ssim:.6f}"
        row["compared_to"] = (
            "" if decision.compared_to is None else paths[decision.compared_to].name
        )
        kept_rows.append(row)

    if args.dry_run:
        print(f"{topic.name}: would keep {len(kept_rows)} of {len(rows)} frames")
        return
    write_topic(topic, columns, kept_rows, marker)
    summary.add("topics done")


def _keep_depth_topic(
    topic: Topic,
    columns: list[str],
    rows: list[dict[str, str]],
    marker: dict[str, object],
    dry_run: bool,
    summary: JobSummary,
) -> None:
    """Keep every frame of a depth topic: depth is paired with colour frames later, not pruned."""
    kept_rows: list[dict[str, str]] = []
    for row in rows:
        try:
            path = frame_path(topic.raw, row.get("file") or "")
        except FrameError as err:
            summary.fail(err.kind, err.detail)
            continue
        if not path.is_file():
            summary.fail("missing frame file", str(path))
            continue
        kept_rows.append({**{c: row.get(c, "") for c in columns}, "ssim": "", "compared_to": ""})
    summary.add("depth frames kept (not pruned)", len(kept_rows))
    if dry_run:
        print(f"{topic.name}: depth topic, would keep all {len(kept_rows)} frames")
        return
    write_topic(topic, columns, kept_rows, marker)
    summary.add("topics done")


# --------------------------------------------------------------------------- finding topics


def find_topics(raw: Path, out: Path, targets: Sequence[str], summary: JobSummary) -> list[Topic]:
    """Topic folders to prune: every ``<raw>/<bag>/<topic>`` or those under the named folders.

    A named folder is a topic folder (has a manifest) or a bag folder (its sub-folders); a
    name that is not an existing path is looked up under ``raw``.
    """
    if not targets:
        if not raw.is_dir():
            raise UserError(f"--raw {raw}: folder does not exist")
        bags = sorted(p for p in raw.iterdir() if p.is_dir())
    else:
        bags = []
        for target in targets:
            folder = Path(target) if Path(target).exists() else raw / target
            if not folder.is_dir():
                raise UserError(f"{target}: no such bag or topic folder (also looked in {raw})")
            if (folder / MANIFEST_NAME).is_file():
                bags.append(folder)
            elif not any(
                (sub / MANIFEST_NAME).is_file() for sub in folder.iterdir() if sub.is_dir()
            ):
                raise UserError(
                    f"{folder}: no {MANIFEST_NAME} here or in its topic folders "
                    "(run `mtl-data unpack` first)"
                )
            else:
                bags.append(folder)

    topics: list[Topic] = []
    for folder in bags:
        if (folder / MANIFEST_NAME).is_file():  # a topic folder named directly
            topics.append(Topic(folder, out / folder.parent.name / folder.name))
            continue
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if (sub / MANIFEST_NAME).is_file():
                topics.append(Topic(sub, out / folder.name / sub.name))
            else:
                summary.fail(f"topic folder without {MANIFEST_NAME}", str(sub))
    return topics


# --------------------------------------------------------------------------- command line


def threshold_value(text: str) -> float:
    """Argparse type for ``--threshold``: an SSIM value in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def positive_int(text: str) -> int:
    """Argparse type for ``--jobs``."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``prune`` options."""
    parser.add_argument(
        "folders",
        nargs="*",
        metavar="FOLDER",
        help="bag or topic folders to prune (paths, or names under --raw); default: all of --raw",
    )
    parser.add_argument(
        "--raw",
        type=Path,
        default=Path("data/raw"),
        help="unpacked frames: <raw>/<bag>/<topic>/manifest.csv",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("data/interim"), help="output root: <out>/<bag>/<topic>/"
    )
    parser.add_argument(
        "--threshold",
        type=threshold_value,
        default=DEFAULT_THRESHOLD,
        help="SSIM (1.0 = identical) at or above which a frame counts as a near-duplicate of the "
        "last kept frame and is dropped; lower keeps fewer frames",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="redo topic folders already pruned with this threshold",
    )
    parser.add_argument(
        "--exact",
        action="store_true",
        help="exact SSIM for every frame, also clear near-duplicates (slower; see above)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="only report how many frames would be kept; write nothing",
    )
    parser.add_argument(
        "--jobs",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="worker threads that decode frames and compute their statistics ahead",
    )


def run(args: argparse.Namespace) -> int:
    """Prune every selected topic folder; exit status 1 if any frame or folder failed."""
    summary = JobSummary("prune")
    raw, out = Path(args.raw), Path(args.out)
    topics = find_topics(raw, out, args.folders, summary)
    for topic in topics:
        try:
            prune_topic(topic, args, summary)
        except UserError as err:  # one broken topic folder must not stop the others
            summary.fail("bad topic folder", str(err))
    summary.print()
    return summary.exit_code()
