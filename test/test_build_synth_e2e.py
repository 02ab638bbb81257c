# SPDX-License-Identifier: Apache-2.0
"""End to end: synth bag -> frames decoded from the bag (as unpack would) -> build."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from interim import build_args

from data_tools import build, prune, synth
from data_tools import unpack as unpack_module
from mtl_perception.core.depth import read_depth_png_m

WIDTH, HEIGHT, FRAMES = 64, 48, 20


def synth_args(out: Path, **over) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(
        ["--out", str(out), "--frames", str(FRAMES), "--size", f"{HEIGHT}x{WIDTH}"]
    )
    vars(args).update(over)
    return args


def synth_build_args(
    frames: Path, labels: list[Path], out: Path, *extra: str
) -> argparse.Namespace:
    """`mtl-data build` arguments with the synthetic scene's classes."""
    return build_args(
        frames,
        labels,
        out,
        "--det-classes",
        "box,cone,ball",
        "--seg-classes",
        "floor,wall",
        *extra,
    )


def unpack(bag_dir: Path, raw: Path) -> None:
    """The real `mtl-data unpack` (colour and aligned depth topics, CONTRACTS §1)."""
    parser = argparse.ArgumentParser()
    unpack_module.add_arguments(parser)
    assert (
        unpack_module.run(parser.parse_args([str(bag_dir), "--out", str(raw), "--jobs", "1"])) == 0
    )


@pytest.fixture(scope="module")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("e2e")
    assert synth.run(synth_args(root / "synth")) == 0
    unpack(root / "synth" / "synth_bag", root / "interim")
    code = build.run(
        synth_build_args(
            root / "interim",
            [root / "synth" / synth.COCO_NAME],
            root / "processed",
            "--split",
            "0.6,0.2,0.2",
            "--window-s",
            "0.2",
            "--depth-topic",
            synth.DEPTH_TOPIC,
        )
    )
    assert code == 0
    return root, root / "processed" / "ds"


def test_build_writes_contract_layout(synth_dataset: tuple[Path, Path]) -> None:
    _, ds = synth_dataset
    coco = json.loads((ds / "annotations.json").read_text())
    classes = json.loads((ds / "classes.json").read_text())
    splits = json.loads((ds / "splits.json").read_text())
    assert classes["detection_classes"] == ["box", "cone", "ball"]
    assert classes["segmentation_classes"] == ["background", "floor", "wall"]
    assert len(classes["palette"]) == 3
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    assert len(coco["images"]) == FRAMES
    for image in coco["images"]:
        assert (ds / image["file_name"]).is_file() and (ds / image["mask_file"]).is_file()
        assert (image["width"], image["height"]) == (WIDTH, HEIGHT)
        assert image["bag"] == "synth_bag" and isinstance(image["stamp_ns"], int)
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert (
            1 <= ann["category_id"] <= 3 and w > 0 and h > 0 and x + w <= WIDTH and y + h <= HEIGHT
        )
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == [
        i["id"] for i in coco["images"]
    ]
    assert all(splits[k] for k in ("train", "val", "test"))
    assert splits["group_by"] == "time"


def test_build_mask_equals_rendered_semantics(synth_dataset: tuple[Path, Path]) -> None:
    _, ds = synth_dataset
    scene = synth.Scene(synth.SynthConfig(frames=FRAMES, width=WIDTH, height=HEIGHT))
    coco = json.loads((ds / "annotations.json").read_text())
    for index in (0, FRAMES // 2, FRAMES - 1):
        image = next(i for i in coco["images"] if i["stamp_ns"] == synth.stamp_ns(index))
        mask = cv2.imread(str(ds / image["mask_file"]), cv2.IMREAD_UNCHANGED)
        expected = scene.render(index).semantic  # 0 background+objects, 1 floor, 2 wall
        np.testing.assert_array_equal(mask, expected)
        assert {1, 2} <= set(np.unique(mask).tolist())


def test_images_are_linked_not_moved(synth_dataset: tuple[Path, Path]) -> None:
    root, ds = synth_dataset
    frames = sorted((root / "interim" / "synth_bag" / "camera__image_raw").glob("*.png"))
    assert len(frames) == FRAMES
    built = ds / "images" / frames[0].name
    assert built.read_bytes() == frames[0].read_bytes()


def test_depth_targets_follow_the_contract(synth_dataset: tuple[Path, Path]) -> None:
    """Every frame got the bag's depth of its own stamp, in mm, 0 where the sensor had none."""
    root, ds = synth_dataset
    scene = synth.Scene(synth.SynthConfig(frames=FRAMES, width=WIDTH, height=HEIGHT))
    coco = json.loads((ds / "annotations.json").read_text())
    raw_depth = root / "interim" / "synth_bag" / "camera__aligned_depth_to_color__image_raw"
    for image in coco["images"]:
        stem = Path(image["file_name"]).stem
        assert image["depth_file"] == f"depth/{stem}.png" and "labeled" not in image
        target = cv2.imread(str(ds / image["depth_file"]), cv2.IMREAD_UNCHANGED)
        assert target.dtype == np.uint16 and target.shape == (HEIGHT, WIDTH)
        # Same stamp -> the very depth frame unpack wrote for that moment, unchanged (mm -> mm).
        np.testing.assert_array_equal(
            target, cv2.imread(str(raw_depth / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        )
    index = FRAMES // 2
    image = next(i for i in coco["images"] if i["stamp_ns"] == synth.stamp_ns(index))
    metres = read_depth_png_m(ds / image["depth_file"])
    truth = scene.render(index).depth
    assert not metres[truth == 0].any()  # nothing beyond the wall: invalid
    valid = metres > 0
    assert np.median(np.abs(metres[valid] - truth[valid]) / truth[valid]) < 0.01


def test_prune_keeps_depth_whole_and_depth_only_frames_join(
    synth_dataset: tuple[Path, Path], capfd: pytest.CaptureFixture
) -> None:
    root, _ = synth_dataset
    assert synth.run(synth_args(root / "moving", seed=4)) == 0  # seed 4: stops and moves early on
    unpack(root / "moving" / "synth_bag", root / "raw4")
    parser = argparse.ArgumentParser()
    prune.add_arguments(parser)
    interim = root / "pruned"
    assert (
        prune.run(
            parser.parse_args(["--raw", str(root / "raw4"), "--out", str(interim), "--jobs", "1"])
        )
        == 0
    )
    colour = sorted((interim / "synth_bag" / "camera__image_raw").glob("*.png"))
    depth = sorted(
        (interim / "synth_bag" / "camera__aligned_depth_to_color__image_raw").glob("*.png")
    )
    assert 0 < len(colour) < FRAMES and len(depth) == FRAMES  # colour pruned, depth kept whole

    # Labels for only the first three frames; the other kept frames join for depth only.
    coco = json.loads((root / "moving" / synth.COCO_NAME).read_text())
    kept = {int(p.stem) for p in colour}
    labeled_stamps = sorted(kept)[:3]
    coco["images"] = [i for i in coco["images"] if i["stamp_ns"] in labeled_stamps]
    ids = {i["id"] for i in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    labels = root / "three.json"
    labels.write_text(json.dumps(coco))
    capfd.readouterr()
    code = build.run(
        synth_build_args(
            interim,
            [labels],
            root / "processed",
            "--name",
            "mixed",
            "--split",
            "1,0,0",
            "--depth-topic",
            "camera__aligned_depth_to_color__image_raw",
            "--unlabeled",
            "depth-only",
        )
    )
    assert code == 0
    out, err = capfd.readouterr()
    assert (
        f"{len(kept)} paired, 0 unmatched" in out and f"depth-only frames {len(kept) - 3}" in err
    )
    ds = root / "processed" / "mixed"
    built = json.loads((ds / "annotations.json").read_text())
    assert len(built["images"]) == len(kept)
    for image in built["images"]:
        assert (ds / image["depth_file"]).is_file()
        if image["stamp_ns"] in labeled_stamps:
            assert "labeled" not in image
            continue
        assert image["labeled"] is False
        assert not [a for a in built["annotations"] if a["image_id"] == image["id"]]
        assert (cv2.imread(str(ds / image["mask_file"]), cv2.IMREAD_UNCHANGED) == 255).all()
