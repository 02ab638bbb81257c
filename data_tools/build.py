# SPDX-License-Identifier: Apache-2.0
"""Turn pruned frames plus annotation exports into a training dataset with grouped splits.

Inputs: ``--frames`` is a folder of interim frames (``manifest.csv`` per topic, see
docs/CONTRACTS.md §2) or a plain folder of images (stills labeled by hand: bag = first
sub-folder). A still's file stem is its time stamp only when the integer stems of its folder
look like nanosecond stamps (frames at least 1 ms apart); numbered photos (``0.jpg`` ...
``17.jpg``, as annotation tools export them) have no stamp, so each is its own split group:
a plain folder of photos splits into train/val/test with no extra flags (with enough
sub-folders, ``--group-by auto`` keeps each sub-folder in one split instead). ``--labels``
takes COCO json and/or CVAT "for images 1.1" XML files; an image labeled in several files
gets the union of its regions.

Matching a labeled image to a frame, in this order: the same file stem (folders and extension
are ignored, since tools export ``images/x.jpg`` for a frame ``x.png``; Label Studio's
``<8 hex>-`` upload prefix is dropped if needed), then the stamp (the COCO image's
``stamp_ns`` field, or a stem that is an integer). Several candidate frames (same stem in two
bags, ``a.png`` next to ``a.jpg``) are narrowed by the exact file name, then by the folders
in the labeled name (bag/topic), else reported as ambiguous.

Classes: ``--det-classes`` and ``--seg-classes`` (comma lists), or a YAML ``--classes-file``::

    detection_classes: [box, cone, ball]
    segmentation_classes: [floor, wall]      # "background" (id 0) is added in front
    palette: {floor: [128, 64, 128]}         # optional RGB per segmentation class

A category may be in both lists; categories in neither are ignored (counted). ``iscrowd``
regions are never detection targets and are painted 255 (ignore) when their class is a
segmentation class. Masks: 0 = background, i = i-th segmentation class, 255 = ignore; larger
regions are painted first so small objects stay on top (see ``mtl_perception.core.rasterize``).

Validation: boxes with zero area or entirely outside the image, unknown categories, malformed
or < 3 point polygons, ambiguous matches are problems (counted, first example shown, item
skipped, exit status 1). Reported as warnings (exit status 0): labels for images not among the
frames (typically dropped by ``prune``; the rest is built), boxes partly outside the image
(clipped), frames without labels, which are skipped (``--unlabeled skip``) or kept as
all-background images (``--unlabeled background``, then not a warning). A labeled image
without regions is a labeled empty frame and is kept. ``--strict`` turns every problem and
warning into an error: nothing is written.

Depth (RGB-D, CONTRACTS §11): with ``--depth-topic`` every frame is paired with the aligned
depth frame of the same bag nearest in stamp (``--depth-tolerance-ms``, default 20) and gets a
``depth/<stem>.png`` target (uint16 mm, 0 = invalid) and ``depth_file``; see
``data_tools.depth_targets``. ``--unlabeled depth-only`` lets frames without labels join for
the depth task only (``"labeled": false``, all-ignore mask, no boxes). Topic folders of depth
encodings (16UC1, 32FC1, compressedDepth) are never labelable images.

Output (CONTRACTS §4): ``<out>/<name>/`` with ``images/`` (hard links, copies across file
systems), ``masks/``, ``depth/`` (with ``--depth-topic``), ``annotations.json``, ``classes.json``,
``splits.json``. It is built in a
temporary folder and renamed into place, so an existing dataset is complete; it is skipped
unless ``--force``.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal, get_args

import cv2
import numpy as np
from tqdm import tqdm

from data_tools import depth_targets
from data_tools.depth_targets import DepthFrame, DepthIndex, DepthOptions, DepthStats
from data_tools.split import SPLIT_NAMES, GroupBy, SplitItem, assign_splits, parse_fractions
from mtl_perception.core import atomic_io
from mtl_perception.core.constants import IGNORE_INDEX, MANIFEST_NAME
from mtl_perception.core.errors import UserError
from mtl_perception.core.images import write_image
from mtl_perception.core.labels import (
    ClassConfig,
    LabeledImage,
    Region,
    label_files,
    load_class_config,
    read_labels,
)
from mtl_perception.core.names import inside, safe_component
from mtl_perception.core.rasterize import BoxMaskMode, frame_targets
from mtl_perception.core.summary import JobSummary

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
MARKER_NAME = ".build_complete"
# ``--group-by``: a grouping of data_tools.split, or ``auto`` to choose one from the bag count.
GroupByOption = Literal["auto", "bag", "time"]
# Label Studio renames uploads to "<8 hex digits>-<original name>".
LABEL_STUDIO_PREFIX = re.compile(r"^[0-9a-f]{8}-")


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class FrameFile:
    """One candidate image on disk."""

    path: Path
    bag: str
    topic: str  # topic folder (or sub-folder of a plain image folder)
    stamp_ns: int | None
    width: int | None  # from the manifest; None for plain folders until read
    height: int | None

    @property
    def stem(self) -> str:
        """File name without folders and extension (the first key labels are matched on)."""
        return self.path.stem


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def discover_frames(
    root: Path, summary: JobSummary, skip_folder: str | None = None
) -> list[FrameFile]:
    """Frames under ``root``: manifest rows where a ``manifest.csv`` exists, else image files.

    Topic folders named ``skip_folder`` (the depth topic) and depth-encoded rows are left out.
    """
    if not root.is_dir():
        raise UserError(f"--frames {root}: not a folder")
    frames: list[FrameFile] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # no hidden/partial outputs
        here = Path(folder)
        rel = here.relative_to(root)
        if MANIFEST_NAME in files and here.name == skip_folder:
            continue
        if MANIFEST_NAME in files:
            frames += _manifest_frames(here / MANIFEST_NAME, summary)
            continue
        images = [
            here / n
            for n in sorted(files)
            if Path(n).suffix.lower() in IMAGE_SUFFIXES and not n.startswith(".")
        ]
        stamps = _still_stamps([p.stem for p in images])
        for path in images:
            bag = rel.parts[0] if rel.parts else root.resolve().name
            frames.append(
                FrameFile(
                    path=path,
                    bag=bag,
                    topic="/".join(rel.parts[1:]),
                    stamp_ns=stamps.get(path.stem),
                    width=None,
                    height=None,
                )
            )
    return frames


MIN_FRAME_GAP_NS = 1_000_000
"""No camera runs above 1 kHz: integer stems closer together than this are a numbering."""


def _still_stamps(stems: Sequence[str]) -> dict[str, int]:
    """The stems of one plain folder that are time stamps (see the module docstring)."""
    values = {stem: value for stem in stems if (value := _int_or_none(stem)) is not None}
    ordered = sorted(set(values.values()))
    gaps = np.diff(ordered)
    is_time = (
        bool(ordered) and (float(np.median(gaps)) if len(gaps) else ordered[0]) >= MIN_FRAME_GAP_NS
    )
    return values if is_time else {}


def _manifest_frames(manifest: Path, summary: JobSummary) -> list[FrameFile]:
    frames = []
    with manifest.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"file", "stamp_ns", "bag"} - set(reader.fieldnames or ())
        if missing:
            summary.fail(
                "manifest without required columns", f"{manifest}: missing {sorted(missing)}"
            )
            return []
        for row in reader:
            try:
                path = inside(manifest.parent, row["file"] or "")
            except ValueError as err:
                summary.fail("bad file entry in manifest", f"{manifest}: {err}")
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES or depth_targets.is_depth_row(row):
                continue  # depth (.npy arrays, 16UC1 PNGs) is not a labelable image
            if not path.is_file():
                summary.fail("manifest row without its file", str(path))
                continue
            frames.append(
                FrameFile(
                    path=path,
                    bag=row["bag"] or manifest.parent.parent.name,
                    topic=manifest.parent.name,
                    stamp_ns=_int_or_none(row["stamp_ns"]),
                    width=_int_or_none(row.get("width")),
                    height=_int_or_none(row.get("height")),
                )
            )
    return frames


# --------------------------------------------------------------------------- matching


class FrameIndex:
    """Looks up the frame a labeled image refers to (see the module docstring)."""

    def __init__(self, frames: Iterable[FrameFile]) -> None:
        self.by_stem: dict[str, list[FrameFile]] = defaultdict(list)
        self.by_stamp: dict[int, list[FrameFile]] = defaultdict(list)
        for frame in frames:
            self.by_stem[frame.stem].append(frame)
            if frame.stamp_ns is not None:
                self.by_stamp[frame.stamp_ns].append(frame)

    def match(self, image: LabeledImage) -> list[FrameFile]:
        """Candidate frames, best rule first; more than one means ambiguous."""
        candidates = self.by_stem.get(image.stem) or self.by_stem.get(
            LABEL_STUDIO_PREFIX.sub("", image.stem), []
        )
        if not candidates:
            stamp = image.stamp_ns if image.stamp_ns is not None else _int_or_none(image.stem)
            candidates = self.by_stamp.get(stamp, []) if stamp is not None else []
        exported = PurePosixPath(image.name.replace("\\", "/"))
        for same in (
            lambda f: f.path.name == exported.name,  # same extension too
            lambda f: bool({f.bag, f.topic} & set(exported.parts[:-1])),
        ):  # bag/topic folders
            if len(candidates) > 1:
                candidates = [f for f in candidates if same(f)] or candidates
        return candidates


@dataclass
class Sample:
    """A frame selected for the dataset with the labeled regions that apply to it."""

    frame: FrameFile
    regions: list[Region] = field(default_factory=list)
    labeled: bool = False
    depth: DepthFrame | None = None
    depth_only: bool = False  # joins for the depth task only (no detection/segmentation labels)


def match_labels(
    frames: Sequence[FrameFile], labeled: Iterable[LabeledImage], summary: JobSummary
) -> dict[Path, Sample]:
    """Attach every labeled image's regions to its frame; record unmatched and ambiguous ones."""
    index = FrameIndex(frames)
    samples = {frame.path: Sample(frame) for frame in frames}
    for image in labeled:
        candidates = index.match(image)
        if not candidates:
            # Usually a frame the pruner dropped (labels cover the raw frames): reported only.
            summary.warn(
                "labels for an image not among the frames (pruned or missing)",
                f"{image.source}: {image.name}",
            )
            continue
        if len(candidates) > 1:
            summary.fail(
                "labels match several frames",
                f"{image.source}: {image.name} -> {candidates[0].path}, {candidates[1].path}",
            )
            continue
        sample = samples[candidates[0].path]
        if (
            image.width is not None
            and sample.frame.width is not None
            and ((image.width, image.height) != (sample.frame.width, sample.frame.height))
        ):
            summary.fail(
                "labeled image size differs from the frame",
                f"{image.source}: {image.name} {image.width}x{image.height} vs "
                f"{sample.frame.width}x{sample.frame.height}",
            )
            continue
        sample.labeled = True
        sample.regions.extend(image.regions)
    return samples


# --------------------------------------------------------------------------- building


@dataclass
class BuildOptions:
    """What :func:`build_dataset` writes: classes, splits and targets (from the command line)."""

    classes: ClassConfig
    fractions: tuple[float, float, float]
    group_by: GroupByOption
    window_s: float
    seed: int
    unlabeled: str  # "skip" | "background" | "depth-only"
    box_masks: BoxMaskMode
    depth: DepthOptions = field(default_factory=DepthOptions)


def _image_size(frame: FrameFile) -> tuple[int, int]:
    """(height, width) from the manifest, else from the file (plain image folders)."""
    if frame.width is not None and frame.height is not None:
        return frame.height, frame.width
    image = cv2.imread(str(frame.path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("unreadable image")
    return image.shape[0], image.shape[1]


def _output_names(frames: Sequence[FrameFile]) -> dict[Path, str]:
    """Output file names with unique stems (masks are ``<stem>.png``).

    A frame keeps its own name; names whose stem occurs more than once (the same stamp in two
    bags, ``a.jpg`` next to ``a.png``) get the bag and topic as prefix, then the extension.
    """

    def qualified(frame: FrameFile) -> str:  # bag and topic come from manifests: data, made safe
        return "__".join(safe_component(p) for p in (frame.bag, frame.topic, frame.path.name) if p)

    names = {f.path: f.path.name for f in frames}
    for rename in (
        qualified,
        lambda f: f"{Path(qualified(f)).stem}-{f.path.suffix.lstrip('.')}{f.path.suffix}",
    ):
        stems = Counter(Path(n).stem for n in names.values())
        names = {
            f.path: rename(f) if stems[Path(names[f.path]).stem] > 1 else names[f.path]
            for f in frames
        }
    return names


def _resolve_group_by(
    group_by: GroupByOption, samples: Sequence[Sample], fractions: Sequence[float]
) -> GroupBy:
    """``auto``: by bag when there are enough bags for every wanted split, else by time."""
    if group_by != "auto":
        return group_by
    bags = {s.frame.bag for s in samples}
    return "bag" if len(bags) >= sum(1 for f in fractions if f > 0) else "time"


def build_dataset(
    samples: Sequence[Sample], options: BuildOptions, out_dir: Path, summary: JobSummary
) -> dict:
    """Write images, masks and annotations of ``samples`` into ``out_dir``; return splits.json."""
    det = options.classes.detection_ids()
    seg = options.classes.segmentation_ids()
    names = _output_names([s.frame for s in samples])
    images: list[dict] = []
    annotations: list[dict] = []
    split_items: list[SplitItem] = []
    depth_stats = DepthStats()
    for sample in tqdm(samples, desc="build", unit="image", disable=len(samples) < 50):
        frame = sample.frame
        try:
            height, width = _image_size(frame)
        except ValueError as err:
            summary.fail("unreadable image", f"{frame.path}: {err}")
            continue
        depth = None
        if sample.depth is not None:
            depth = depth_targets.depth_target(
                sample.depth, frame.path, (height, width), options.depth, summary, depth_stats
            )
        elif options.depth.topic is not None and options.depth.color_folder in (None, frame.topic):
            depth_stats.unmatched += 1
            summary.warn(
                "no depth frame within the tolerance (kept without depth)",
                f"{frame.path} (stamp {frame.stamp_ns})",
            )
        if sample.depth_only and depth is None:
            continue  # nothing left to learn from this frame (its depth was refused, and recorded)
        image_id = len(images) + 1
        file_name = names[frame.path]
        stem = Path(file_name).stem
        mask_name = f"{stem}.png"
        detections: list[dict]
        if sample.depth_only:  # no labels: every pixel ignored, no boxes
            mask, detections = np.full((height, width), IGNORE_INDEX, np.uint8), []
            summary.add("depth-only frames")
        else:
            mask, detections = frame_targets(
                sample.regions, det, seg, (height, width), options.box_masks, summary
            )
        annotations += [
            {"id": len(annotations) + k + 1, "image_id": image_id, **ann}
            for k, ann in enumerate(detections)
        ]
        write_image(out_dir / "masks" / mask_name, mask)
        atomic_io.link_or_copy(frame.path, out_dir / "images" / file_name)
        entry = {
            "id": image_id,
            "file_name": f"images/{file_name}",
            "width": width,
            "height": height,
            "stamp_ns": frame.stamp_ns,
            "bag": frame.bag,
            "mask_file": f"masks/{mask_name}",
        }
        if depth is not None:
            write_image(out_dir / "depth" / f"{stem}.png", depth)
            entry["depth_file"] = f"depth/{stem}.png"
            depth_stats.paired += 1
        if sample.depth_only:
            entry["labeled"] = False
        images.append(entry)
        split_items.append(
            SplitItem(key=image_id, bag=frame.bag, stamp_ns=frame.stamp_ns, name=file_name)
        )
        summary.add("written")

    classes = options.classes
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k, "name": n} for n, k in det.items()],
    }
    group_by = _resolve_group_by(options.group_by, samples, options.fractions)
    splits, n_groups = assign_splits(
        split_items, options.fractions, group_by, options.window_s, options.seed
    )
    for name, frac in zip(SPLIT_NAMES, options.fractions, strict=True):
        if frac > 0 and not splits[name]:
            summary.warn(
                "empty split (too few groups)",
                f"{name}: {n_groups} {group_by} group(s) for "
                f"{len(images)} images; use more bags or a shorter --window-s",
            )
    split_doc = {**splits, "group_by": group_by, "seed": options.seed}
    atomic_io.write_json(out_dir / "annotations.json", coco)
    atomic_io.write_json(
        out_dir / "classes.json",
        {
            "detection_classes": classes.detection_classes,
            "segmentation_classes": ["background", *classes.segmentation_classes],
            "palette": classes.palette_rgb(),
        },
    )
    atomic_io.write_json(out_dir / "splits.json", split_doc)
    if options.depth.topic is not None:
        print(f"build: {depth_stats.line(options.depth)}")
    return split_doc


def pair_depth(samples: dict[Path, Sample], index: DepthIndex, options: DepthOptions) -> None:
    """Give every sample (of ``--color-topic``, if set) its nearest depth frame in tolerance."""
    for sample in samples.values():
        frame = sample.frame
        if options.color_folder is not None and frame.topic != options.color_folder:
            continue
        sample.depth = index.nearest(frame.bag, frame.stamp_ns, options.tolerance_ns)


def select_samples(
    samples: dict[Path, Sample], unlabeled: str, summary: JobSummary
) -> list[Sample]:
    """Labeled samples plus the unlabeled ones ``--unlabeled`` asks for; stable order.

    ``background`` keeps every unlabeled frame as all-background; ``depth-only`` keeps those
    with a paired depth frame for the depth task only.
    """
    ordered = sorted(
        samples.values(),
        key=lambda s: (s.frame.bag, s.frame.topic, s.frame.stamp_ns or 0, s.frame.path.name),
    )
    chosen = []
    for sample in ordered:
        if sample.labeled or unlabeled == "background":
            chosen.append(sample)
            if not sample.labeled:
                summary.add("unlabeled kept as background")
        elif unlabeled == "depth-only" and sample.depth is not None:
            sample.depth_only = True
            chosen.append(sample)
        else:
            summary.warn("frames without labels (skipped)", str(sample.frame.path))
    return chosen


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mtl-data build``."""
    parser.add_argument(
        "--frames",
        type=Path,
        default=Path("data/interim"),
        help="interim frames (manifest.csv per topic) or a plain folder of images",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        nargs="+",
        required=True,
        help="COCO json and/or CVAT XML files, or folders holding them",
    )
    parser.add_argument("--name", required=True, help="dataset name: output goes to <out>/<name>/")
    parser.add_argument(
        "--out", type=Path, default=Path("data/processed"), help="parent folder of datasets"
    )
    parser.add_argument(
        "--det-classes", help="comma list of detection classes, e.g. box,cone,ball"
    )
    parser.add_argument(
        "--seg-classes", help="comma list of segmentation classes (background is implicit)"
    )
    parser.add_argument(
        "--classes-file",
        type=Path,
        help="YAML with detection_classes, segmentation_classes and optional palette",
    )
    parser.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions")
    parser.add_argument(
        "--group-by",
        choices=get_args(GroupByOption),
        default="auto",
        help="keep these groups within one split; auto = bag if there are enough bags, else time "
        "(stills without a time stamp are each their own group)",
    )
    parser.add_argument(
        "--window-s", type=float, default=10.0, help="time-window length for --group-by time"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the group shuffle")
    parser.add_argument(
        "--unlabeled",
        choices=("skip", "background", "depth-only"),
        default="skip",
        help="frames without labels: leave out, keep as images with no objects and all-background "
        "masks, or (with --depth-topic) keep those with depth for the depth task only",
    )
    parser.add_argument(
        "--box-masks",
        choices=("ignore", "fill"),
        default="ignore",
        help="segmentation regions known only by a box: paint 255 (ignore) or the class",
    )
    parser.add_argument(
        "--strict", action="store_true", help="any problem or warning is an error; write nothing"
    )
    parser.add_argument("--force", action="store_true", help="rebuild an existing dataset")
    depth_targets.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``mtl-data build``; returns the exit status (1 when anything failed).

    The dataset is built in a staging folder and replaces ``--out/--name`` only when complete
    (and, with ``--strict``, free of problems and warnings).

    Raises:
        UserError: An option value is invalid, or an input (frames folder, label folder, class
            file, depth topic) is unusable.
    """
    classes = load_class_config(args.det_classes, args.seg_classes, args.classes_file)
    if args.window_s <= 0:
        raise UserError(f"--window-s {args.window_s}: must be positive")
    if not args.name or args.name in (".", "..") or "/" in args.name or "\\" in args.name:
        raise UserError(f"--name {args.name!r}: must be a plain folder name")
    depth = depth_targets.options_from_args(args)
    if args.unlabeled == "depth-only" and depth.topic is None:
        raise UserError("--unlabeled depth-only needs --depth-topic")
    options = BuildOptions(
        classes=classes,
        fractions=parse_fractions(args.split),
        group_by=args.group_by,
        window_s=args.window_s,
        seed=args.seed,
        unlabeled=args.unlabeled,
        box_masks=args.box_masks,
        depth=depth,
    )
    target = args.out / args.name
    if target.exists() and not args.force:
        print(f"build: {target} exists, skipping (use --force to rebuild)")
        return 0

    summary = JobSummary("build")
    frames = discover_frames(args.frames, summary, skip_folder=depth.folder)
    summary.add("read", len(frames))
    depth_index = (
        depth_targets.discover_depth(args.frames, depth, summary)
        if depth.topic is not None
        else None
    )
    labeled = [image for path in label_files(args.labels) for image in read_labels(path, summary)]
    matched = match_labels(frames, labeled, summary)
    if depth_index is not None:
        pair_depth(matched, depth_index, depth)
    samples = select_samples(matched, options.unlabeled, summary)

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{args.name}.partial-", dir=args.out) as tmp:
        staging = Path(tmp) / args.name
        staging.mkdir()
        splits = build_dataset(samples, options, staging, summary)
        if args.strict and (summary.failed or summary.warnings):
            summary.print()
            warnings = sum(summary.warnings.values())
            print(
                f"build: --strict: {summary.failed} problem(s), {warnings} warning(s); "
                "nothing written",
                flush=True,
            )
            return 1
        if not samples:
            summary.print()
            print("build: no labeled frames matched; nothing written")
            return 1
        atomic_io.write_text(staging / MARKER_NAME, "complete\n")
        _replace_dir(staging, target)
    summary.print()
    print(
        f"build: {target}: "
        + ", ".join(f"{k} {len(splits[k])}" for k in SPLIT_NAMES)
        + f" (grouped by {splits['group_by']})"
    )
    return summary.exit_code()


def _replace_dir(new: Path, target: Path) -> None:
    """Move the finished ``new`` folder to ``target``, replacing an older build of it."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)
