# SPDX-License-Identifier: Apache-2.0
"""`mtl-data build`: matching, validation, splits, idempotence, on small hand-made inputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from interim import build_args, write_topic_folder

from data_tools import build
from data_tools.split import SplitItem, assign_splits, parse_fractions
from mtl_perception.core.errors import UserError

H, W = 24, 32
T0 = 1_700_000_000_000_000_000
STEP = 500_000_000  # 2 Hz


def write_interim(root: Path, bags: dict[str, int]) -> dict[str, list[int]]:
    """Interim layout (CONTRACTS §2): <bag>/camera__image_raw/<stamp>.png + manifest.csv."""
    stamps = {}
    for b, (bag, count) in enumerate(bags.items()):
        stamps[bag] = [T0 + b * 10**12 + i * STEP for i in range(count)]
        frames = {s: np.full((H, W, 3), 10 * i % 255, np.uint8) for i, s in enumerate(stamps[bag])}
        write_topic_folder(root / bag / "camera__image_raw", bag, frames)
    return stamps


def coco_for(stamps: list[int], name=lambda s: f"{s}.png", boxes=None, extra_images=()) -> dict:
    images = [
        {"id": 100 + i, "file_name": name(s), "width": W, "height": H}
        for i, s in enumerate(stamps)
    ]
    images += list(extra_images)
    anns = [
        {
            "id": i + 1,
            "image_id": img["id"],
            "category_id": 9,
            "bbox": [4, 4, 8, 8],
            "iscrowd": 0,
            "segmentation": [[4, 4, 12, 4, 12, 12, 4, 12]],
        }
        for i, img in enumerate(images)
    ]
    for k, bbox in enumerate(boxes or []):
        anns.append(
            {
                "id": 1000 + k,
                "image_id": images[0]["id"],
                "category_id": 9,
                "bbox": bbox,
                "iscrowd": 0,
            }
        )
    return {"images": images, "annotations": anns, "categories": [{"id": 9, "name": "cone"}]}


def run_build(
    frames: Path,
    labels: list[Path],
    out: Path,
    *extra: str,
    classes=("--det-classes", "cone", "--seg-classes", "cone"),
) -> int:
    return build.run(build_args(frames, labels, out, *classes, *extra))


def build_train_only(frames: Path, labels: list[Path], out: Path, *extra: str, **kwargs) -> int:
    """``run_build`` with every image in train, for what the split does not change."""
    return run_build(frames, labels, out, "--split", "1,0,0", *extra, **kwargs)


def dump(path: Path, obj: dict) -> Path:
    path.write_text(json.dumps(obj))
    return path


def load(ds: Path, name: str) -> dict:
    return json.loads((ds / name).read_text())


def test_match_by_stamp_field_stem_and_other_extension(tmp_path: Path) -> None:
    stamps = write_interim(tmp_path / "interim", {"bag_a": 3})["bag_a"]
    coco = coco_for([])
    coco["images"] = [
        {
            "id": 1,
            "file_name": "upload/frame_x.jpg",
            "width": W,
            "height": H,
            "stamp_ns": stamps[0],
        },
        {"id": 2, "file_name": f"images/{stamps[1]}.jpg", "width": W, "height": H},
        {"id": 3, "file_name": f"{stamps[2]}.png", "width": W, "height": H},
    ]
    coco["annotations"] = [
        {"id": i, "image_id": i, "category_id": 9, "bbox": [1, 1, 5, 5]} for i in (1, 2, 3)
    ]
    assert (
        run_build(tmp_path / "interim", [dump(tmp_path / "l.json", coco)], tmp_path / "out") == 0
    )
    images = load(tmp_path / "out" / "ds", "annotations.json")["images"]
    assert sorted(i["stamp_ns"] for i in images) == stamps
    assert all(i["file_name"].endswith(".png") for i in images)


def test_missing_images_are_reported_and_the_rest_built(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    stamps = write_interim(tmp_path / "interim", {"bag_a": 4})["bag_a"]
    ghost = {"id": 555, "file_name": "gone/123.png", "width": W, "height": H}
    labels = dump(tmp_path / "l.json", coco_for(stamps, extra_images=[ghost]))
    assert build_train_only(tmp_path / "interim", [labels], tmp_path / "out") == 0
    err = capfd.readouterr().err
    assert "warning: labels for an image not among the frames (pruned or missing): 1" in err
    assert "gone/123.png" in err
    coco = load(tmp_path / "out" / "ds", "annotations.json")
    assert len(coco["images"]) == 4 and len(coco["annotations"]) == 4


def test_boxes_outside_clipped_or_dropped(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    stamps = write_interim(tmp_path / "interim", {"bag_a": 1})["bag_a"]
    labels = dump(
        tmp_path / "l.json", coco_for(stamps, boxes=[[-4, 2, 10, 6], [40, 2, 5, 5], [3, 3, 0, 4]])
    )
    assert build_train_only(tmp_path / "interim", [labels], tmp_path / "out") == 1
    err = capfd.readouterr().err
    assert "box outside the image: 1" in err and "box with zero area: 1" in err
    assert "warning: box partly outside the image (clipped): 1" in err
    anns = load(tmp_path / "out" / "ds", "annotations.json")["annotations"]
    assert sorted(a["bbox"] for a in anns) == [[0, 2, 6, 6], [4, 4, 8, 8]]


def test_strict_writes_nothing(tmp_path: Path) -> None:
    stamps = write_interim(tmp_path / "interim", {"bag_a": 2})["bag_a"]
    labels = dump(tmp_path / "l.json", coco_for(stamps, boxes=[[-4, 2, 10, 6]]))
    assert build_train_only(tmp_path / "interim", [labels], tmp_path / "out", "--strict") == 1
    assert not (tmp_path / "out" / "ds").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def test_unlabeled_frames_skip_or_background(tmp_path: Path) -> None:
    stamps = write_interim(tmp_path / "interim", {"bag_a": 4})["bag_a"]
    labels = dump(tmp_path / "l.json", coco_for(stamps[:2]))
    assert build_train_only(tmp_path / "interim", [labels], tmp_path / "skip") == 0
    assert len(load(tmp_path / "skip" / "ds", "annotations.json")["images"]) == 2
    assert (
        build_train_only(
            tmp_path / "interim", [labels], tmp_path / "bg", "--unlabeled", "background"
        )
        == 0
    )
    ds = tmp_path / "bg" / "ds"
    coco = load(ds, "annotations.json")
    assert len(coco["images"]) == 4 and len(coco["annotations"]) == 2
    unlabeled = next(i for i in coco["images"] if i["stamp_ns"] == stamps[3])
    assert not cv2.imread(str(ds / unlabeled["mask_file"]), cv2.IMREAD_UNCHANGED).any()


def test_rebuild_is_skipped_then_forced_identically(tmp_path: Path) -> None:
    stamps = write_interim(tmp_path / "interim", {"a": 3, "b": 3, "c": 3})
    labels = dump(tmp_path / "l.json", coco_for([s for v in stamps.values() for s in v]))
    out = tmp_path / "out"
    assert run_build(tmp_path / "interim", [labels], out) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / "ds" / "splits.json").write_text("{}")  # a skipped rebuild must not touch it
    assert run_build(tmp_path / "interim", [labels], out) == 0
    assert (out / "ds" / "splits.json").read_text() == "{}"
    assert run_build(tmp_path / "interim", [labels], out, "--force") == 0
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert all(p.is_file() for p in (tmp_path / "interim").rglob("*.png"))  # inputs untouched


def test_split_by_bag_keeps_bags_whole_and_is_seeded(tmp_path: Path) -> None:
    stamps = write_interim(tmp_path / "interim", {f"bag{i}": 2 + i % 3 for i in range(8)})
    labels = dump(tmp_path / "l.json", coco_for([s for v in stamps.values() for s in v]))
    results = []
    for seed, out in ((0, "o1"), (0, "o2"), (5, "o3")):
        assert run_build(tmp_path / "interim", [labels], tmp_path / out, "--seed", str(seed)) == 0
        ds = tmp_path / out / "ds"
        splits = load(ds, "splits.json")
        bag_of = {i["id"]: i["bag"] for i in load(ds, "annotations.json")["images"]}
        bags = {k: {bag_of[i] for i in splits[k]} for k in ("train", "val", "test")}
        assert splits["group_by"] == "bag" and splits["seed"] == seed
        assert all(bags.values())
        assert (
            not bags["train"] & bags["val"]
            and not bags["train"] & bags["test"]
            and not bags["val"] & bags["test"]
        )
        results.append({k: sorted(v) for k, v in bags.items()})
    assert results[0] == results[1]


def test_time_windows_never_straddle_splits() -> None:
    items = [
        SplitItem(key=i, bag="only", stamp_ns=T0 + i * 100_000_000, name=str(i))
        for i in range(300)
    ]
    splits, n_groups = assign_splits(items, (0.7, 0.15, 0.15), "time", 3.0, seed=1)
    assert n_groups == 10 and all(splits.values())
    window = {i.key: (i.stamp_ns - T0) // 3_000_000_000 for i in items}
    seen = {name: {window[k] for k in keys} for name, keys in splits.items()}
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"]
    assert 150 <= len(splits["train"]) <= 240
    assert (
        assign_splits(list(reversed(items)), (0.7, 0.15, 0.15), "time", 3.0, seed=1)[0] == splits
    )


def test_too_few_groups_is_reported(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    stamps = write_interim(tmp_path / "interim", {"a": 3, "b": 3})
    labels = dump(tmp_path / "l.json", coco_for([s for v in stamps.values() for s in v]))
    assert run_build(tmp_path / "interim", [labels], tmp_path / "out", "--group-by", "bag") == 0
    assert "empty split (too few groups)" in capfd.readouterr().err


def test_plain_image_folder_and_classes_file(tmp_path: Path) -> None:
    stills = tmp_path / "stills" / "site1"
    stills.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(stills / name), np.zeros((H, W, 3), np.uint8))
    coco = coco_for(
        [],
        extra_images=[
            {"id": 1, "file_name": "a.jpg", "width": W, "height": H},
            {"id": 2, "file_name": "C:\\labels\\b.jpg"},
        ],
    )
    classes = tmp_path / "classes.yaml"
    classes.write_text(
        "detection_classes: [cone]\nsegmentation_classes: [cone]\npalette: {cone: [1, 2, 3]}\n"
    )
    assert (
        build_train_only(
            tmp_path / "stills",
            [dump(tmp_path / "l.json", coco)],
            tmp_path / "out",
            classes=("--classes-file", str(classes)),
        )
        == 0
    )
    ds = tmp_path / "out" / "ds"
    images = load(ds, "annotations.json")["images"]
    assert sorted(i["file_name"] for i in images) == ["images/a.jpg", "images/b.jpg"]
    assert {i["bag"] for i in images} == {"site1"} and all(i["stamp_ns"] is None for i in images)
    assert load(ds, "classes.json")["palette"] == [[0, 0, 0], [1, 2, 3]]
    mask = cv2.imread(str(ds / images[0]["mask_file"]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (H, W) and mask[8, 8] == 1 and mask[20, 20] == 0


def test_numbered_stills_split_with_no_extra_flags(tmp_path: Path) -> None:
    """Photos named 0.jpg ... 17.jpg (as annotation tools export them) have no stamps: each is
    its own group, so the default split puts images in train, val and test."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(18):
        cv2.imwrite(str(photos / f"{i}.jpg"), np.full((H, W, 3), 12 * i, np.uint8))
    coco = coco_for(list(range(18)), name=lambda i: f"{i}.jpg")
    assert run_build(photos, [dump(tmp_path / "l.json", coco)], tmp_path / "out") == 0
    ds = tmp_path / "out" / "ds"
    assert all(i["stamp_ns"] is None for i in load(ds, "annotations.json")["images"])
    splits = load(ds, "splits.json")
    assert splits["group_by"] == "time" and all(splits[name] for name in ("train", "val", "test"))


def test_stills_named_by_time_stamp_keep_it(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    stamps = [T0 + i * STEP for i in range(4)]
    for stamp in stamps:
        cv2.imwrite(str(photos / f"{stamp}.png"), np.zeros((H, W, 3), np.uint8))
    assert (
        build_train_only(photos, [dump(tmp_path / "l.json", coco_for(stamps))], tmp_path / "out")
        == 0
    )
    images = load(tmp_path / "out" / "ds", "annotations.json")["images"]
    assert sorted(i["stamp_ns"] for i in images) == stamps


def test_names_from_manifests_never_leave_the_dataset(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """A manifest's bag column and file entries are data: output names stay inside images/."""
    for folder, bag in (("x", "../../../evil"), ("y", "/..")):
        topic = tmp_path / "interim" / folder / "cam"
        topic.mkdir(parents=True)
        cv2.imwrite(str(topic / "1000.png"), np.zeros((H, W, 3), np.uint8))
        (topic / "manifest.csv").write_text(
            f"index,stamp_ns,bag,file\n0,1000,{bag},1000.png\n1,1001,{bag},../../outside.png\n"
        )
    cv2.imwrite(str(tmp_path / "outside.png"), np.zeros((H, W, 3), np.uint8))
    assert (
        build_train_only(
            tmp_path / "interim",
            [dump(tmp_path / "l.json", coco_for([]))],
            tmp_path / "out",
            "--unlabeled",
            "background",
        )
        == 1
    )
    assert "bad file entry in manifest: 2" in capfd.readouterr().err
    ds = tmp_path / "out" / "ds"
    names = sorted(i["file_name"] for i in load(ds, "annotations.json")["images"])
    assert len(names) == 2 and all(n.startswith("images/") and n.count("/") == 1 for n in names)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ds"]
    assert sorted(p.name for p in (ds / "images").iterdir()) == [
        n.removeprefix("images/") for n in names
    ]


def test_label_file_names_are_only_matched_never_used_as_paths(tmp_path: Path) -> None:
    photos = tmp_path / "work" / "photos"
    photos.mkdir(parents=True)
    cv2.imwrite(str(photos / "evil.jpg"), np.zeros((H, W, 3), np.uint8))
    coco = coco_for(
        [],
        extra_images=[{"id": 1, "file_name": "../../../../etc/evil.jpg", "width": W, "height": H}],
    )
    assert (
        build_train_only(photos, [dump(tmp_path / "l.json", coco)], tmp_path / "work" / "out") == 0
    )
    (image,) = load(tmp_path / "work" / "out" / "ds", "annotations.json")["images"]
    assert image["file_name"] == "images/evil.jpg"
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["out", "photos"]
    assert not (tmp_path / "etc").exists()


def test_same_file_name_in_two_bags(tmp_path: Path) -> None:
    for bag in ("a", "b"):
        (tmp_path / "stills" / bag).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "stills" / bag / "img.png"), np.zeros((H, W, 3), np.uint8))
    coco = coco_for(
        [], extra_images=[{"id": 1, "file_name": "b/img.png"}, {"id": 2, "file_name": "img.png"}]
    )
    assert (
        build_train_only(tmp_path / "stills", [dump(tmp_path / "l.json", coco)], tmp_path / "out")
        == 1
    )  # the second one is ambiguous
    images = load(tmp_path / "out" / "ds", "annotations.json")["images"]
    assert [(i["bag"], i["file_name"]) for i in images] == [("b", "images/img.png")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--det-classes", "cone,cone"), "duplicate"),
        (("--seg-classes", "background,floor"), "implicit"),
        (("--det-classes", ""), "no detection and no segmentation"),
    ],
)
def test_bad_class_lists(tmp_path: Path, argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(UserError, match=message):
        run_build(tmp_path, [tmp_path / "l.json"], tmp_path / "out", classes=argv)


@pytest.mark.parametrize("text", ["0.8,0.2", "0.5,0.5,0.5", "a,b,c", "0,0.5,0.5"])
def test_bad_split_fractions(text: str) -> None:
    with pytest.raises(UserError, match="--split"):
        parse_fractions(text)


def test_same_stem_different_extension_and_label_studio_names(tmp_path: Path) -> None:
    folder = tmp_path / "stills" / "cam"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), np.zeros((H, W, 3), np.uint8))
    cv2.imwrite(str(folder / "a.jpg"), np.full((H, W, 3), 200, np.uint8))
    cv2.imwrite(str(folder / "frame7.png"), np.zeros((H, W, 3), np.uint8))
    coco = coco_for(
        [],
        extra_images=[
            {"id": 1, "file_name": "a.png"},
            {"id": 2, "file_name": "a.jpg"},
            {"id": 3, "file_name": "/data/upload/3/8f3a2c1d-frame7.png"},
        ],
    )
    assert (
        build_train_only(tmp_path / "stills", [dump(tmp_path / "l.json", coco)], tmp_path / "out")
        == 0
    )
    ds = tmp_path / "out" / "ds"
    images = load(ds, "annotations.json")["images"]
    assert len(images) == 3
    assert len({Path(i["mask_file"]).name for i in images}) == 3  # masks/<stem>.png never collide
    for image in images:
        assert Path(image["mask_file"]).stem == Path(image["file_name"]).stem
        assert (ds / image["file_name"]).is_file() and (ds / image["mask_file"]).is_file()


def test_cli_user_error_is_one_line_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "labels.json"
    bad.write_text("not json")
    (tmp_path / "frames").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_tools.cli",
            "build",
            "--frames",
            str(tmp_path / "frames"),
            "--labels",
            str(bad),
            "--name",
            "x",
            "--out",
            str(tmp_path / "out"),
            "--det-classes",
            "cone",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and str(bad) in result.stderr
    assert not (tmp_path / "out" / "x").exists()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_fractions_met_with_uneven_groups(seed: int) -> None:
    rng = np.random.default_rng(seed)
    items, key = [], 0
    for bag in range(40):
        for _ in range(int(rng.integers(1, 30))):
            items.append(SplitItem(key=key, bag=f"bag{bag}", stamp_ns=None, name=str(key)))
            key += 1
    splits, n_groups = assign_splits(items, (0.8, 0.1, 0.1), "bag", 10.0, seed=seed)
    assert n_groups == 40
    assert sorted(k for keys in splits.values() for k in keys) == list(range(len(items)))
    for name, fraction in zip(("train", "val", "test"), (0.8, 0.1, 0.1), strict=True):
        assert abs(len(splits[name]) - fraction * len(items)) <= 30  # at most about one group off


def test_rle_of_wrong_size_without_image_sizes(tmp_path: Path) -> None:
    stamps = write_interim(tmp_path / "interim", {"bag_a": 1})["bag_a"]
    coco = coco_for(
        [], extra_images=[{"id": 1, "file_name": f"{stamps[0]}.png"}]
    )  # no width/height
    coco["annotations"] = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 9,
            "iscrowd": 0,
            "segmentation": {"size": [H * 2, W], "counts": [0, 2 * H * W]},
        }
    ]
    assert (
        build_train_only(tmp_path / "interim", [dump(tmp_path / "l.json", coco)], tmp_path / "out")
        == 1
    )
    ds = tmp_path / "out" / "ds"
    assert load(ds, "annotations.json")["annotations"] == []
    assert not cv2.imread(str(next((ds / "masks").iterdir())), cv2.IMREAD_UNCHANGED).any()


def test_label_folder_and_repeated_files_count_once(tmp_path: Path) -> None:
    stamps = write_interim(tmp_path / "interim", {"bag_a": 2})["bag_a"]
    export = tmp_path / "export" / "annotations"
    export.mkdir(parents=True)
    labels = dump(export / "instances_default.json", coco_for(stamps))
    assert (
        build_train_only(tmp_path / "interim", [tmp_path / "export", labels], tmp_path / "out")
        == 0
    )
    assert len(load(tmp_path / "out" / "ds", "annotations.json")["annotations"]) == 2
    with pytest.raises(UserError, match=r"no \.json or \.xml"):
        run_build(tmp_path / "interim", [tmp_path / "interim"], tmp_path / "out2")
