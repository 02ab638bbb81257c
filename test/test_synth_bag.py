# SPDX-License-Identifier: Apache-2.0
"""`mtl-data synth`: bag contents, ground truth consistency, determinism, re-runs."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from data_tools import synth
from mtl_perception.core.errors import UserError
from mtl_perception.core.labels import Region
from mtl_perception.core.rasterize import region_mask

W, H, N = 64, 48, 12


def run_synth(out: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    return synth.run(
        parser.parse_args(["--out", str(out), "--frames", str(N), "--size", f"{H}x{W}", *extra])
    )


def read_bag(bag: Path, depth: bool = False) -> list[tuple[str, int, object]]:
    """The colour messages (or, with ``depth``, the depth messages) of a synth bag."""
    with AnyReader([bag]) as reader:
        conns = [c for c in reader.connections if (c.topic == synth.DEPTH_TOPIC) == depth]
        messages = reader.messages(conns) if conns else []  # no connections would mean "all"
        return [(c.topic, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in messages]


@pytest.fixture(scope="module")
def rgb_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert run_synth(out) == 0
    return out


def test_bag_messages_match_ground_truth(rgb_out: Path) -> None:
    messages = read_bag(rgb_out / synth.BAG_DIRNAME)
    coco = json.loads((rgb_out / synth.COCO_NAME).read_text())
    assert (rgb_out / synth.BAG_DIRNAME / "metadata.yaml").is_file()
    assert len(messages) == len(coco["images"]) == N
    for (topic, t, msg), image in zip(messages, coco["images"], strict=True):
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        assert (
            topic == "/camera/image_raw"
            and msg.encoding == "rgb8"
            and msg.header.frame_id == "camera"
        )
        assert stamp == t == image["stamp_ns"] and image["file_name"] == f"{stamp}.png"
        assert (
            (msg.width, msg.height, msg.step)
            == (W, H, 3 * W)
            == (image["width"], image["height"], 3 * W)
        )
    stamps = [m[1] for m in messages]
    assert np.allclose(np.diff(stamps), 1e9 / 30, atol=1)
    assert [c["name"] for c in coco["categories"]] == ["box", "cone", "ball", "floor", "wall"]


def test_annotations_are_consistent_with_rendering(rgb_out: Path) -> None:
    coco = json.loads((rgb_out / synth.COCO_NAME).read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    scene = synth.Scene(synth.SynthConfig(frames=N, width=W, height=H))
    frame = scene.render(0)
    anns = [a for a in coco["annotations"] if a["image_id"] == 1]
    objects = [a for a in anns if names[a["category_id"]] in synth.OBJECT_CLASSES]
    assert objects and len(objects) <= len(frame.instances)
    for ann in objects:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= W and y + h <= H and ann["iscrowd"] == 0
        assert all(len(p) >= 6 for p in ann["segmentation"])
    for ann in anns:
        if names[ann["category_id"]] in synth.STUFF_CLASSES:
            decoded = region_mask(Region("stuff", "t", rle=ann["segmentation"]), H, W)
            class_id = synth.STUFF_CLASSES.index(names[ann["category_id"]]) + 1
            np.testing.assert_array_equal(decoded, frame.semantic == class_id)
            assert ann["area"] == decoded.sum()


def test_rendered_objects_are_told_apart_by_colour() -> None:
    """Shading aside, every object's median chromaticity is nearest its own class colour."""
    scene = synth.Scene(synth.SynthConfig(frames=3, width=160, height=120))
    frame = scene.render(1)
    assert len(frame.instances) >= 3

    def chroma(rgb) -> np.ndarray:
        rgb = np.asarray(rgb, float)
        return rgb / rgb.sum(axis=-1, keepdims=True)

    references = {kind: chroma(colour) for kind, colour in synth.OBJECT_COLOURS.items()}
    for kind, visible in frame.instances:
        median = chroma(np.median(frame.rgb[visible], axis=0))
        nearest = min(references, key=lambda k: np.abs(references[k] - median).sum())
        assert nearest == kind


def test_fully_occluded_and_outside_objects_not_annotated() -> None:
    scene = synth.Scene(synth.SynthConfig(frames=2, width=W, height=H, objects=0))
    pose = scene.poses[0]
    scene.objects = [
        synth.WorldObject("box", x=pose.x, z=pose.z + 3.0, size=1.5, shade=1.0),  # big, near
        synth.WorldObject(
            "ball", x=pose.x, z=pose.z + 6.0, size=0.3, shade=1.0
        ),  # hidden behind it
        synth.WorldObject(
            "cone", x=pose.x + 50, z=pose.z + 4.0, size=0.8, shade=1.0
        ),  # off-screen
    ]
    frame = scene.render(0)
    anns = synth.frame_annotations(frame, image_id=1, first_ann_id=1)
    assert [kind for kind, _ in frame.instances] == ["box"]
    assert sorted(a["category_id"] for a in anns) == [1, 4, 5]


def test_still_and_fast_stretches() -> None:
    scene = synth.Scene(synth.SynthConfig(frames=300, width=W, height=H))
    steps = [abs(b.x - a.x) + abs(b.z - a.z) for a, b in itertools.pairwise(scene.poses)]
    assert sum(s == 0 for s in steps) > 30  # camera stops: near-duplicates for the pruner
    assert max(steps) > 0.05


def test_same_seed_same_output_other_seed_differs(tmp_path: Path, rgb_out: Path) -> None:
    assert run_synth(tmp_path / "again") == 0
    assert (tmp_path / "again" / synth.COCO_NAME).read_bytes() == (
        rgb_out / synth.COCO_NAME
    ).read_bytes()
    for depth in (False, True):
        first = [bytes(m.data) for *_, m in read_bag(rgb_out / synth.BAG_DIRNAME, depth)]
        assert [
            bytes(m.data) for *_, m in read_bag(tmp_path / "again" / synth.BAG_DIRNAME, depth)
        ] == first
    assert run_synth(tmp_path / "other", "--seed", "3") == 0
    assert (tmp_path / "other" / synth.COCO_NAME).read_bytes() != (
        rgb_out / synth.COCO_NAME
    ).read_bytes()


def test_rerun_is_noop_other_args_need_force(tmp_path: Path) -> None:
    assert run_synth(tmp_path) == 0
    bag_file = next((tmp_path / synth.BAG_DIRNAME).glob("*.mcap"))
    mtime = bag_file.stat().st_mtime_ns
    assert run_synth(tmp_path) == 0
    assert bag_file.stat().st_mtime_ns == mtime
    with pytest.raises(UserError, match="--force"):
        run_synth(tmp_path, "--seed", "1")
    assert run_synth(tmp_path, "--seed", "1", "--force") == 0
    assert len(read_bag(tmp_path / synth.BAG_DIRNAME)) == N
    (tmp_path / synth.COCO_NAME).unlink()  # our own output, half gone: regenerated without --force
    assert run_synth(tmp_path, "--seed", "1") == 0
    assert (tmp_path / synth.COCO_NAME).is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".synth-")] == []


@pytest.mark.parametrize(
    ("encoding", "storage"), [("jpeg", "db3"), ("png", "mcap"), ("bgr8", "db3")]
)
def test_other_encodings_and_storage(
    tmp_path: Path, rgb_out: Path, encoding: str, storage: str
) -> None:
    assert run_synth(tmp_path, "--encoding", encoding, "--storage", storage) == 0
    bag = tmp_path / synth.BAG_DIRNAME
    assert list(bag.glob(f"*.{storage}"))
    ((topic, _, msg),) = read_bag(bag)[:1]
    ((_, _, reference),) = read_bag(rgb_out / synth.BAG_DIRNAME)[:1]
    rgb_ref = np.asarray(reference.data).reshape(H, W, 3)
    if encoding == "bgr8":
        assert topic == "/camera/image_raw" and msg.encoding == "bgr8"
        np.testing.assert_array_equal(np.asarray(msg.data).reshape(H, W, 3)[..., ::-1], rgb_ref)
        return
    assert topic == "/camera/image_raw/compressed" and msg.format == encoding
    rgb = cv2.cvtColor(cv2.imdecode(np.asarray(msg.data), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    mean_error = np.abs(rgb.astype(int) - rgb_ref.astype(int)).mean()
    assert mean_error == 0 if encoding == "png" else mean_error < 10


@pytest.mark.parametrize("argv", [("--size", "64"), ("--size", "8x8"), ("--frames", "0")])
def test_bad_arguments(tmp_path: Path, argv: tuple[str, ...]) -> None:
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), *argv])
    with pytest.raises(UserError):
        synth.run(args)


@pytest.mark.parametrize(("width", "height"), [(640, 32), (32, 480), (33, 25)])
def test_extreme_sizes_render(width: int, height: int) -> None:
    scene = synth.Scene(synth.SynthConfig(frames=40, width=width, height=height))
    for index in (0, 39):
        frame = scene.render(index)
        assert frame.rgb.shape == (height, width, 3) and frame.semantic.shape == (height, width)
        classes = set(np.unique(frame.semantic).tolist())
        assert classes <= {0, synth.FLOOR_ID, synth.WALL_ID} and len(classes) >= 2


def test_depth_topic_is_aligned_16uc1_millimetres_with_colour_stamps(rgb_out: Path) -> None:
    colour = read_bag(rgb_out / synth.BAG_DIRNAME)
    depth = read_bag(rgb_out / synth.BAG_DIRNAME, depth=True)
    assert len(depth) == len(colour) == N
    for (_, t, msg), (_, t_colour, colour_msg) in zip(depth, colour, strict=True):
        assert t == t_colour and repr(msg.header) == repr(colour_msg.header)  # stamp and frame_id
        assert (msg.encoding, msg.width, msg.height, msg.step, msg.is_bigendian) == (
            "16UC1",
            W,
            H,
            2 * W,
            0,
        )


def test_depth_is_consistent_with_the_rendered_scene(rgb_out: Path) -> None:
    """The bag's depth (decoded as unpack would) against the scene: floor, wall, objects, holes."""
    from mtl_perception.core.images import decode_image

    scene = synth.Scene(synth.SynthConfig(frames=N, width=W, height=H))
    for index, (_, _, msg) in enumerate(read_bag(rgb_out / synth.BAG_DIRNAME, depth=True)[:3]):
        frame = scene.render(index)
        mm = decode_image(msg)
        assert mm.dtype == np.uint16 and mm.shape == (H, W)
        measured = mm > 0
        # Holes like a real sensor: nothing beyond the wall, a left band, a few dropouts.
        assert not measured[frame.depth == 0].any()
        assert not measured[:, 0].any()
        assert 0 < (~measured & (frame.depth > 0)).mean() < 0.1
        # Measured values are the scene's depth with distance-dependent noise (1 mm at 1 m).
        truth = frame.depth[measured] * 1000.0
        assert np.median(np.abs(mm[measured] - truth) / truth) < 0.01
        # The wall is fronto-parallel (one depth) and farther than everything in front of it.
        wall = frame.semantic == synth.WALL_ID
        wall_depth = synth.WALL_DISTANCE - scene.poses[index].z
        np.testing.assert_allclose(frame.depth[wall], wall_depth, rtol=1e-6)
        # The floor recedes towards the horizon: depth falls row by row down the image.
        floor_rows = [frame.depth[r][frame.semantic[r] == synth.FLOOR_ID] for r in range(H)]
        floor_depth = [row.mean() for row in floor_rows if row.size]
        assert len(floor_depth) > 3 and np.all(np.diff(floor_depth) < 0)
        # Objects stand in front of the wall.
        for _, visible in frame.instances:
            assert frame.depth[visible].max() < wall_depth


def test_object_depth_matches_its_distance() -> None:
    scene = synth.Scene(synth.SynthConfig(frames=2, width=160, height=120, objects=0))
    pose = scene.poses[0]
    scene.objects = [synth.WorldObject("box", x=pose.x, z=pose.z + 4.0, size=1.0, shade=1.0)]
    frame = scene.render(0)
    ((_, visible),) = frame.instances
    depths = frame.depth[visible]
    assert depths.min() == pytest.approx(4.0)  # the front face
    assert 4.0 <= depths.max() <= 5.0  # the top face recedes by at most the box size
    assert np.median(depths) == pytest.approx(4.0)


def test_no_depth_leaves_the_topic_out(tmp_path: Path) -> None:
    assert run_synth(tmp_path, "--no-depth") == 0
    assert read_bag(tmp_path / synth.BAG_DIRNAME, depth=True) == []
    assert len(read_bag(tmp_path / synth.BAG_DIRNAME)) == N
