"""End to end: synth bag -> frames decoded from the bag (as unpack would) -> build."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.image import message_to_cvimage

from data_tools import build, synth

WIDTH, HEIGHT, FRAMES = 64, 48, 20


def synth_args(out: Path, **over) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(["--out", str(out), "--frames", str(FRAMES), "--size", f"{WIDTH}x{HEIGHT}"])
    vars(args).update(over)
    return args


def build_args(frames: Path, labels: list[Path], out: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    build.add_arguments(parser)
    return parser.parse_args(["--frames", str(frames), "--labels", *map(str, labels), "--name", "ds",
                              "--out", str(out), "--det-classes", "box,cone,ball", "--seg-classes", "floor,wall",
                              *extra])


def unpack_like(bag_dir: Path, interim: Path) -> Path:
    """Write the bag's frames + manifest the way `mtl-data unpack` does (CONTRACTS §1)."""
    topic_dir = interim / bag_dir.name / "camera__image_raw"
    topic_dir.mkdir(parents=True)
    rows = []
    with AnyReader([bag_dir]) as reader:
        for index, (conn, t, raw) in enumerate(reader.messages()):
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            name = f"{stamp}.png"
            cv2.imwrite(str(topic_dir / name), message_to_cvimage(msg, "bgr8"))
            rows.append([index, stamp, t, msg.header.frame_id, msg.encoding, msg.width, msg.height, bag_dir.name, name])
    with (topic_dir / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "stamp_ns", "bag_time_ns", "frame_id", "encoding", "width", "height", "bag", "file"])
        writer.writerows(rows)
    return topic_dir


@pytest.fixture(scope="module")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("e2e")
    assert synth.run(synth_args(root / "synth")) == 0
    unpack_like(root / "synth" / "synth_bag", root / "interim")
    code = build.run(build_args(root / "interim", [root / "synth" / synth.COCO_NAME], root / "processed",
                                "--split", "0.6,0.2,0.2", "--window-s", "0.2"))
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
        assert 1 <= ann["category_id"] <= 3 and w > 0 and h > 0 and x + w <= WIDTH and y + h <= HEIGHT
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == [i["id"] for i in coco["images"]]
    assert all(splits[k] for k in ("train", "val", "test"))
    assert splits["group_by"] == "time"


def test_build_mask_equals_rendered_semantics(synth_dataset: tuple[Path, Path]) -> None:
    root, ds = synth_dataset
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
    frames = sorted((root / "interim").rglob("*.png"))
    assert len(frames) == FRAMES
    built = ds / "images" / frames[0].name
    assert built.read_bytes() == frames[0].read_bytes()
