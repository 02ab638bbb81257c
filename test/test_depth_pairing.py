# SPDX-License-Identifier: Apache-2.0
"""Depth in `mtl-data build`: stamp pairing, units, invalid pixels, size refusal, resampling."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from interim import write_topic_folder
from test_build_dataset import (
    H,
    W,
    build_train_only,
    coco_for,
    dump,
    load,
    run_build,
    write_interim,
)

from mtl_perception.core.depth import (
    depth_to_metres,
    is_depth_encoding,
    metres_to_depth_png,
    nearest_stamp,
    read_depth_file,
    read_depth_png_m,
)
from mtl_perception.core.errors import UserError

DEPTH_DIR = "camera__aligned_depth_to_color__image_raw"
DEPTH_TOPIC = "/camera/aligned_depth_to_color/image_raw"


def write_depth(
    root: Path, bag: str, frames: dict[int, np.ndarray], encoding: str = "16UC1"
) -> Path:
    """An unpacked depth topic folder (CONTRACTS §1): 16-bit PNG, or .npy for float metres."""
    return write_topic_folder(root / bag / DEPTH_DIR, bag, frames, encoding=encoding, pruned=False)


def build_with_depth(tmp_path: Path, labels: Path, *extra: str, topic: str = DEPTH_TOPIC) -> int:
    """Build ``tmp_path/interim`` into ``tmp_path/out``, all in train, depth from ``topic``."""
    return build_train_only(
        tmp_path / "interim", [labels], tmp_path / "out", "--depth-topic", topic, *extra
    )


def depth_mm(value: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    return np.full(shape, value, np.uint16)


# --------------------------------------------------------------------------- core helpers


def test_nearest_stamp_within_tolerance_ties_to_the_earlier() -> None:
    stamps = [100, 200, 300]
    assert nearest_stamp(stamps, 205, 10) == 1
    assert nearest_stamp(stamps, 250, 50) == 1  # tie: earlier
    assert nearest_stamp(stamps, 250, 49) is None
    assert nearest_stamp(stamps, 0, 100) == 0 and nearest_stamp(stamps, 400, 100) == 2
    assert nearest_stamp([], 5, 10**9) is None


def test_conversions_mark_every_kind_of_invalid_pixel() -> None:
    mm = np.array([[0, 1500, 65535]], np.uint16)
    np.testing.assert_allclose(depth_to_metres(mm), [[0.0, 1.5, 65.535]])
    np.testing.assert_allclose(depth_to_metres(mm, max_depth=10.0), [[0.0, 1.5, 0.0]])
    np.testing.assert_allclose(depth_to_metres(mm, unit_m=0.00025), [[0.0, 0.375, 16.38375]])
    metres = np.array([[np.nan, np.inf, -np.inf, -1.0, 0.0, 2.25]], np.float32)
    np.testing.assert_array_equal(depth_to_metres(metres), [[0, 0, 0, 0, 0, 2.25]])
    # Back to the dataset's millimetres: 0 stays invalid, > 65.535 m is a hole, not clipped.
    np.testing.assert_array_equal(
        metres_to_depth_png(np.array([[0.0, np.nan, 1.2344, 70.0, 0.0004]])), [[0, 0, 1234, 0, 0]]
    )
    with pytest.raises(ValueError, match="single-channel"):
        depth_to_metres(np.zeros((2, 2, 3), np.uint16))
    assert (
        is_depth_encoding("16UC1")
        and is_depth_encoding("32fc1")
        and is_depth_encoding("16UC1; compressedDepth")
    )
    assert not is_depth_encoding("mono16") and not is_depth_encoding("rgb8")


def test_read_depth_files(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.array([[1.5, np.nan]], np.float32))
    cv2.imwrite(str(tmp_path / "b.png"), np.array([[2500, 0]], np.uint16))
    cv2.imwrite(str(tmp_path / "c.png"), np.zeros((2, 2), np.uint8))
    np.testing.assert_array_equal(read_depth_file(tmp_path / "a.npy"), [[1.5, 0.0]])
    np.testing.assert_array_equal(read_depth_file(tmp_path / "b.png"), [[2.5, 0.0]])
    np.testing.assert_array_equal(read_depth_png_m(tmp_path / "b.png"), [[2.5, 0.0]])
    with pytest.raises(ValueError, match=r"c\.png: 8-bit"):
        read_depth_file(tmp_path / "c.png")
    with pytest.raises(ValueError, match="cannot read"):
        read_depth_file(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="uint16"):
        read_depth_png_m(tmp_path / "c.png")


# --------------------------------------------------------------------------- build


def test_pairs_nearest_stamp_within_tolerance(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    frames = tmp_path / "interim"
    stamps = write_interim(frames, {"bag": 4})["bag"]
    # Depth 5 ms after frame 0, 15 ms before frame 1, 30 ms after frame 2 (too far), none for 3;
    # a decoy 60 ms after frame 0 must not win over the nearer one.
    write_depth(
        frames,
        "bag",
        {
            stamps[0] + 5_000_000: depth_mm(1000),
            stamps[0] + 60_000_000: depth_mm(9),
            stamps[1] - 15_000_000: depth_mm(2000),
            stamps[2] + 30_000_000: depth_mm(3000),
        },
    )
    labels = dump(tmp_path / "l.json", coco_for(stamps))
    assert build_with_depth(tmp_path, labels) == 0
    images = {
        i["stamp_ns"]: i for i in load(tmp_path / "out" / "ds", "annotations.json")["images"]
    }
    assert len(images) == 4  # depth frames are never labelable images themselves
    ds = tmp_path / "out" / "ds"
    assert read_depth_png_m(ds / images[stamps[0]]["depth_file"]).mean() == pytest.approx(1.0)
    assert read_depth_png_m(ds / images[stamps[1]]["depth_file"]).mean() == pytest.approx(2.0)
    assert "depth_file" not in images[stamps[2]] and "depth_file" not in images[stamps[3]]
    out, err = capfd.readouterr()
    assert f"depth from {DEPTH_TOPIC}: 2 paired, 2 unmatched (none within 20 ms), 0 refused" in out
    assert "no depth frame within the tolerance (kept without depth): 2" in err

    # A wider tolerance picks up frame 2's depth; the dataset is rebuilt with --force.
    assert (
        build_with_depth(
            tmp_path, labels, "--depth-tolerance-ms", "35", "--force", topic=DEPTH_DIR
        )
        == 0
    )
    images = {i["stamp_ns"]: i for i in load(ds, "annotations.json")["images"]}
    assert read_depth_png_m(ds / images[stamps[2]]["depth_file"]).mean() == pytest.approx(3.0)


def test_float_metres_and_invalid_pixels(tmp_path: Path) -> None:
    frames = tmp_path / "interim"
    stamps = write_interim(frames, {"bag": 1})["bag"]
    metres = np.full((H, W), 2.0, np.float32)
    metres[0, :4] = [np.nan, np.inf, -1.0, 0.0]
    metres[1, 0] = 12.0  # beyond --max-depth
    write_depth(frames, "bag", {stamps[0]: metres}, encoding="32FC1")
    labels = dump(tmp_path / "l.json", coco_for(stamps))
    assert build_with_depth(tmp_path, labels, "--max-depth", "10") == 0
    ds = tmp_path / "out" / "ds"
    (image,) = load(ds, "annotations.json")["images"]
    target = cv2.imread(str(ds / image["depth_file"]), cv2.IMREAD_UNCHANGED)
    assert target.dtype == np.uint16 and target.shape == (H, W)
    assert target[0, :4].tolist() == [0, 0, 0, 0] and target[1, 0] == 0
    assert (target[2:] == 2000).all()


def test_size_mismatch_refused_or_resampled_by_nearest(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    frames = tmp_path / "interim"
    stamps = write_interim(frames, {"bag": 2})["bag"]
    half = np.zeros((H // 2, W // 2), np.uint16)
    half[:, : W // 4] = 1000  # a sharp depth edge: 1 m left, 4 m right
    half[:, W // 4 :] = 4000
    half[0, 0] = 0
    write_depth(
        frames, "bag", {stamps[0]: half, stamps[1]: depth_mm(1000, (H, W // 2))}
    )  # 2nd: other aspect
    labels = dump(tmp_path / "l.json", coco_for(stamps))
    assert build_with_depth(tmp_path, labels) == 1
    out, err = capfd.readouterr()
    assert "0 paired, 0 unmatched (none within 20 ms), 2 refused" in out
    depth_file = frames / "bag" / DEPTH_DIR / f"{stamps[0]}.png"
    assert f"{depth_file}: {W // 2}x{H // 2} vs image" in err and f"{W}x{H}" in err
    assert "--depth-resize nearest" in err
    ds = tmp_path / "out" / "ds"
    assert all(
        "depth_file" not in i for i in load(ds, "annotations.json")["images"]
    )  # labels kept, no depth

    assert (
        build_with_depth(tmp_path, labels, "--depth-resize", "nearest", "--force") == 1
    )  # the other aspect ratio is still refused
    out, err = capfd.readouterr()
    assert "aspect ratio differs" in err and "1 paired (1 resized), 0 unmatched" in out
    assert "1 refused" in out
    images = {i["stamp_ns"]: i for i in load(ds, "annotations.json")["images"]}
    target = cv2.imread(str(ds / images[stamps[0]]["depth_file"]), cv2.IMREAD_UNCHANGED)
    assert target.shape == (H, W)
    assert set(np.unique(target).tolist()) == {0, 1000, 4000}  # no value invented across the edge
    assert target[:2, :2].tolist() == [[0, 0], [0, 0]]
    assert "depth_file" not in images[stamps[1]]


def test_depth_only_frames_and_color_topic(tmp_path: Path) -> None:
    frames = tmp_path / "interim"
    stamps = write_interim(frames, {"bag": 3})["bag"]
    write_depth(frames, "bag", {s: depth_mm(1000 + i) for i, s in enumerate(stamps)})
    labels = dump(tmp_path / "l.json", coco_for(stamps[:1]))
    assert (
        build_with_depth(
            tmp_path, labels, "--unlabeled", "depth-only", "--color-topic", "/camera/image_raw"
        )
        == 0
    )
    ds = tmp_path / "out" / "ds"
    coco = load(ds, "annotations.json")
    by_stamp = {i["stamp_ns"]: i for i in coco["images"]}
    assert "labeled" not in by_stamp[stamps[0]]
    for stamp in stamps[1:]:
        image = by_stamp[stamp]
        assert image["labeled"] is False and image["depth_file"]
        assert (cv2.imread(str(ds / image["mask_file"]), cv2.IMREAD_UNCHANGED) == 255).all()
    assert {a["image_id"] for a in coco["annotations"]} == {by_stamp[stamps[0]]["id"]}
    assert sorted(load(ds, "splits.json")["train"]) == sorted(i["id"] for i in coco["images"])

    # --color-topic naming another topic: nothing is paired, so no depth-only frame can join.
    assert (
        build_with_depth(
            tmp_path,
            labels,
            "--unlabeled",
            "depth-only",
            "--color-topic",
            "/other/image",
            "--force",
        )
        == 0
    )
    (image,) = load(ds, "annotations.json")["images"]
    assert "depth_file" not in image


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--depth-topic", "/nope"), "no topic folder 'nope'"),
        (("--depth-topic", DEPTH_TOPIC, "--depth-tolerance-ms", "-1"), "--depth-tolerance-ms"),
        (("--depth-topic", DEPTH_TOPIC, "--depth-unit-m", "0"), "--depth-unit-m"),
        (("--depth-topic", DEPTH_TOPIC, "--max-depth", "0"), "--max-depth"),
        (("--unlabeled", "depth-only"), "needs --depth-topic"),
        (("--color-topic", "/camera/image_raw"), "only applies with --depth-topic"),
    ],
)
def test_bad_depth_options(tmp_path: Path, argv: tuple[str, ...], message: str) -> None:
    frames = tmp_path / "interim"
    stamps = write_interim(frames, {"bag": 1})["bag"]
    write_depth(frames, "bag", {stamps[0]: depth_mm(1000)})
    labels = dump(tmp_path / "l.json", coco_for(stamps))
    with pytest.raises(UserError, match=message):
        run_build(frames, [labels], tmp_path / "out", *argv)


def test_depth_topic_without_flag_is_not_labelable(tmp_path: Path) -> None:
    """Without --depth-topic, a 16UC1 folder's PNGs (same stems as colour frames) are ignored."""
    frames = tmp_path / "interim"
    stamps = write_interim(frames, {"bag": 2})["bag"]
    write_depth(frames, "bag", {s: depth_mm(1000) for s in stamps})
    labels = dump(tmp_path / "l.json", coco_for(stamps))
    assert build_train_only(frames, [labels], tmp_path / "out") == 0
    images = load(tmp_path / "out" / "ds", "annotations.json")["images"]
    assert len(images) == 2 and all("depth_file" not in i for i in images)
    assert json.dumps(images).count(DEPTH_DIR) == 0
