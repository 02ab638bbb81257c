# SPDX-License-Identifier: Apache-2.0
"""``mtl-data unpack``: ROS 1 / ROS 2 bags -> one file per image message + manifest per topic."""

from __future__ import annotations

import argparse
import csv
import json
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from bagfactory import (
    COMPRESSED,
    IMAGE,
    ROS2_TYPES,
    compressed_msg,
    image_msg,
    single_file_bag,
    write_bag,
)

from data_tools import unpack
from mtl_perception.core.bags import find_bags, output_names, topic_dirname
from mtl_perception.core.constants import MANIFEST_NAME
from mtl_perception.core.errors import UserError

H, W = 6, 8
BASE = 1_700_000_000_000_000_000


def frame(i: int) -> np.ndarray:
    """A distinct RGB frame per index."""
    return ((np.arange(H * W * 3).reshape(H, W, 3) + 37 * i) % 256).astype(np.uint8)


def jpeg_bytes(i: int) -> bytes:
    ok, data = cv2.imencode(".jpg", frame(i))
    assert ok
    return data.tobytes()


def run_unpack(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser()
    unpack.add_arguments(parser)
    return unpack.run(parser.parse_args([str(a) for a in argv]))


def read_manifest(folder: Path) -> list[dict[str, str]]:
    with (folder / MANIFEST_NAME).open(newline="") as handle:
        return list(csv.DictReader(handle))


def multi_topic_messages() -> list[tuple]:
    """Three topics: raw rgb8, compressed JPEG, and a raw mono8 topic without a leading slash."""
    messages = []
    for i in range(3):
        stamp = BASE + i * 100_000_000
        messages.append(
            (
                "/camera/image_raw",
                IMAGE,
                stamp + 5,
                image_msg(frame(i), "rgb8", stamp, frame_id="cam_optical"),
            )
        )
        messages.append(
            (
                "/camera/image_raw/compressed",
                COMPRESSED,
                stamp + 6,
                compressed_msg(jpeg_bytes(i), "jpeg", stamp),
            )
        )
        messages.append(
            ("mono", IMAGE, stamp + 7, image_msg(frame(i)[:, :, 0], "mono8", stamp + 1))
        )
    messages.append(("/imu", "std_msgs/msg/String", BASE, None))  # non-image topic, ignored
    return messages


def write_messages(path: Path, fmt: str, messages: list[tuple]) -> Path:
    """write_bag, filling in ``std_msgs/String`` messages given as None."""
    filled = [
        (t, m, s, msg if msg is not None else ROS2_TYPES[m](data="x")) for t, m, s, msg in messages
    ]
    return write_bag(path, fmt, filled)


@pytest.mark.parametrize(("fmt", "name"), [("ros1", "run.bag"), ("db3", "run"), ("mcap", "run")])
def test_every_message_of_every_topic_comes_out_with_its_stamp(tmp_path, fmt, name):
    bag = write_messages(tmp_path / "bags" / name, fmt, multi_topic_messages())
    out = tmp_path / "raw"
    assert run_unpack(bag, "--out", out, "--jobs", "1") == 0

    raw = out / "run" / "camera__image_raw"
    rows = read_manifest(raw)
    assert [r["index"] for r in rows] == ["0", "1", "2"]  # message 0 is not dropped
    assert list(rows[0]) == list(unpack.MANIFEST_COLUMNS)
    for i, row in enumerate(rows):
        stamp = BASE + i * 100_000_000
        assert row["stamp_ns"] == str(stamp) and row["file"] == f"{stamp}.png"
        assert row["bag_time_ns"] == str(stamp + 5)
        assert (row["frame_id"], row["encoding"], row["width"], row["height"], row["bag"]) == (
            "cam_optical",
            "rgb8",
            "8",
            "6",
            "run",
        )
        on_disk = cv2.imread(str(raw / row["file"]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(cv2.cvtColor(on_disk, cv2.COLOR_BGR2RGB), frame(i))

    compressed = out / "run" / "camera__image_raw__compressed"
    for i, row in enumerate(read_manifest(compressed)):
        assert (compressed / row["file"]).read_bytes() == jpeg_bytes(
            i
        )  # byte-for-byte, no re-encode
        assert row["file"].endswith(".jpg") and row["encoding"] == "jpeg"

    mono = out / "run" / "mono"
    rows = read_manifest(mono)
    assert len(rows) == 3
    np.testing.assert_array_equal(
        cv2.imread(str(mono / rows[0]["file"]), cv2.IMREAD_UNCHANGED), frame(0)[:, :, 0]
    )
    for folder in (raw, compressed, mono):
        assert json.loads((folder / unpack.MARKER).read_text())["messages"] == 3
    assert not (out / "run" / "imu").exists()


def test_single_file_db3_and_mcap_bags_and_folder_discovery(tmp_path):
    messages = [("/cam", IMAGE, BASE + i, image_msg(frame(i), "bgr8", BASE + i)) for i in range(2)]
    folder = tmp_path / "bags"
    single_file_bag(write_bag(tmp_path / "src_a", "db3", messages), folder / "a.db3")
    single_file_bag(write_bag(tmp_path / "src_b", "mcap", messages), folder / "nested" / "b.mcap")
    write_bag(folder / "c", "mcap", messages)  # rosbag2 folder: its .mcap is not a separate bag
    write_bag(folder / "d.bag", "ros1", messages)
    assert [p.name for p in find_bags([folder])] == ["a.db3", "c", "d.bag", "b.mcap"]

    out = tmp_path / "raw"
    assert run_unpack(folder, "--out", out, "--jobs", "2") == 0  # process pool across bags
    for name in ("a", "b", "c", "d"):
        rows = read_manifest(out / name / "cam")
        assert [r["stamp_ns"] for r in rows] == [str(BASE), str(BASE + 1)]
        first = cv2.imread(str(out / name / "cam" / rows[0]["file"]))
        np.testing.assert_array_equal(first, frame(0))  # bgr8 in the bag is BGR on disk


def test_duplicate_and_zero_stamps_get_index_suffixes(tmp_path):
    messages = [
        ("/cam", IMAGE, BASE + i, image_msg(frame(i), "rgb8", stamp))
        for i, stamp in enumerate([0, 0, 5, 5, 0])
    ]
    bag = write_bag(tmp_path / "dup.bag", "ros1", messages)
    assert run_unpack(bag, "--out", tmp_path / "raw", "--jobs", "1") == 0
    files = [r["file"] for r in read_manifest(tmp_path / "raw" / "dup" / "cam")]
    assert files == ["0.png", "0-1.png", "5.png", "5-3.png", "0-4.png"]


def test_depth_encodings_are_stored_losslessly(tmp_path):
    depth16 = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 1000
    depth32 = np.linspace(0.25, 12.5, H * W, dtype=np.float32).reshape(H, W)
    depth32[0, 0] = np.nan
    _, png16 = cv2.imencode(".png", depth16)
    messages = [
        ("/depth16", IMAGE, BASE, image_msg(depth16, "16UC1", BASE, is_bigendian=True)),
        ("/depth32", IMAGE, BASE, image_msg(depth32, "32FC1", BASE)),
        (
            "/cd",
            COMPRESSED,
            BASE,
            compressed_msg(
                struct.pack("<iff", 0, 0, 0) + png16.tobytes(), "16UC1; compressedDepth png", BASE
            ),
        ),
    ]
    bag = write_bag(tmp_path / "depth", "db3", messages)
    out = tmp_path / "raw"
    assert run_unpack(bag, "--out", out, "--jobs", "1") == 0
    np.testing.assert_array_equal(
        cv2.imread(str(out / "depth/depth16" / f"{BASE}.png"), cv2.IMREAD_UNCHANGED), depth16
    )
    np.testing.assert_array_equal(np.load(out / "depth/depth32" / f"{BASE}.npy"), depth32)
    np.testing.assert_array_equal(
        cv2.imread(str(out / "depth/cd" / f"{BASE}.png"), cv2.IMREAD_UNCHANGED), depth16
    )

    assert (
        run_unpack(
            bag, "--out", out, "--jobs", "1", "--depth-float", "scaled", "--topics", "depth32"
        )
        == 0
    )
    mm = cv2.imread(str(out / "depth/depth32" / f"{BASE}.png"), cv2.IMREAD_UNCHANGED)
    assert mm.dtype == np.uint16 and mm[0, 0] == 0 and mm[0, 1] == np.round(depth32[0, 1] * 1000)
    assert not (out / "depth/depth32" / f"{BASE}.npy").exists()  # the old-format frame is gone
    assert read_manifest(out / "depth/depth32")[0]["file"] == f"{BASE}.png"


def test_bad_messages_are_counted_and_skipped(tmp_path, capsys):
    messages = [
        ("/cam", IMAGE, BASE, image_msg(frame(0), "rgb8", BASE)),
        ("/cam", IMAGE, BASE + 1, image_msg(frame(1), "exotic16", BASE + 1)),
        (
            "/cam",
            IMAGE,
            BASE + 2,
            image_msg(bytes(10), "rgb8", BASE + 2, width=W, height=H, step=W * 3),
        ),
        ("/cam", COMPRESSED, BASE + 3, compressed_msg(b"not an image", "jpeg", BASE + 3)),
        ("/cam", IMAGE, BASE + 4, image_msg(frame(4), "rgb8", BASE + 4)),
    ]
    bag = write_bag(tmp_path / "bad.bag", "ros1", messages)
    assert run_unpack(bag, "--out", tmp_path / "raw", "--jobs", "1") == 1
    rows = read_manifest(tmp_path / "raw" / "bad" / "cam")
    assert [r["index"] for r in rows] == ["0", "4"]
    err = capsys.readouterr().err
    assert "read 5, written 2" in err and "failed 3" in err
    assert "unsupported encoding: 1" in err and "bad /cam index 1" in err
    assert "corrupt message: 2" in err and "bad /cam index 2" in err


def test_truncated_bag_gives_one_error_and_other_bags_are_still_processed(tmp_path, capsys):
    messages = [("/cam", IMAGE, BASE + i, image_msg(frame(i), "rgb8", BASE + i)) for i in range(4)]
    folder = tmp_path / "bags"
    good = write_bag(folder / "good.bag", "ros1", messages)
    data = good.read_bytes()
    (folder / "cut.bag").write_bytes(data[: len(data) // 2])
    assert run_unpack(folder, "--out", tmp_path / "raw", "--jobs", "1") == 1
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("mtl-data unpack: error:")]
    assert len(error_lines) == 1 and "cut.bag" in error_lines[0]
    assert len(read_manifest(tmp_path / "raw" / "good" / "cam")) == 4
    assert not (tmp_path / "raw" / "cut").exists()


@pytest.mark.parametrize(("fmt", "name"), [("ros1", "run.bag"), ("db3", "run"), ("mcap", "run")])
def test_second_run_skips_force_redoes_and_inputs_are_untouched(tmp_path, capsys, fmt, name):
    bag = write_messages(tmp_path / "bags" / name, fmt, multi_topic_messages())
    inputs = tmp_path / "bags"
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in inputs.rglob("*") if p.is_file()}
    out = tmp_path / "raw"
    assert run_unpack(bag, "--out", out, "--jobs", "1") == 0
    first = out / "run" / "camera__image_raw" / f"{BASE}.png"
    mtime = first.stat().st_mtime_ns
    capsys.readouterr()

    assert run_unpack(bag, "--out", out, "--jobs", "1") == 0
    assert "skipped 9" in capsys.readouterr().err
    assert first.stat().st_mtime_ns == mtime

    first.unlink()
    assert (
        run_unpack(bag, "--out", out, "--jobs", "1", "--force", "--topics", "camera/image_raw")
        == 0
    )
    assert first.exists()
    assert "read 3, written 3" in capsys.readouterr().err

    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in inputs.rglob("*") if p.is_file()}
    assert after == before  # same bytes and mtimes, and no new files (e.g. SQLite journals)


def test_interrupted_topic_is_redone_and_leftovers_removed(tmp_path):
    bag = write_bag(
        tmp_path / "r.bag",
        "ros1",
        [("/cam", IMAGE, BASE + i, image_msg(frame(i), "rgb8", BASE + i)) for i in range(3)],
    )
    folder = tmp_path / "raw" / "r" / "cam"
    folder.mkdir(parents=True)
    (folder / f"{BASE}.png").write_bytes(
        b"half"
    )  # an earlier run's frame (no manifest, no marker)
    (folder / f".{BASE}.abc.tmp.png").write_bytes(b"tmp")  # temp file of a killed atomic write
    (folder / "notes.txt").write_text("user file")
    assert run_unpack(bag, "--out", tmp_path / "raw", "--jobs", "1") == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{BASE + i}.png" for i in range(3)] + ["manifest.csv", ".unpack_complete", "notes.txt"]
    )
    assert cv2.imread(str(folder / f"{BASE}.png")) is not None


def test_jpg_format_and_topic_selection(tmp_path):
    bag = write_messages(tmp_path / "run.bag", "ros1", multi_topic_messages())
    out = tmp_path / "raw"
    assert (
        run_unpack(
            bag,
            "--out",
            out,
            "--jobs",
            "1",
            "--format",
            "jpg",
            "--topics",
            "/mono,camera/image_raw",
        )
        == 0
    )
    assert sorted(p.name for p in (out / "run").iterdir()) == ["camera__image_raw", "mono"]
    rows = read_manifest(out / "run" / "camera__image_raw")
    assert all(r["file"].endswith(".jpg") for r in rows)
    decoded = cv2.cvtColor(
        cv2.imread(str(out / "run" / "camera__image_raw" / rows[1]["file"])), cv2.COLOR_BGR2RGB
    )
    assert np.abs(decoded.astype(int) - frame(1)).mean() < 10


def test_unknown_topic_and_non_image_topic_fail(tmp_path, capsys):
    bag = write_messages(tmp_path / "run.bag", "ros1", multi_topic_messages())
    assert run_unpack(bag, "--out", tmp_path / "raw", "--jobs", "1", "--topics", "/nope,/imu") == 1
    err = capsys.readouterr().err
    assert "topic not found: 1" in err and "/nope" in err
    assert "not an image topic: 1" in err


def test_user_errors_for_missing_or_empty_inputs(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        run_unpack(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no bags found"):
        run_unpack(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not a bag"):
        run_unpack(tmp_path / "notes.txt")


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_same_named_bags_unpack_in_one_run(tmp_path, jobs):
    """Session folders that each hold data.bag (or a rosbag2 folder of the same name) get their
    parent folder in front of the output name; a bag with a unique name keeps its own."""
    for session, fmt, name, i in (
        ("s1", "ros1", "data.bag", 0),
        ("s2", "ros1", "data.bag", 1),
        ("s1", "mcap", "rec", 2),
        ("s2", "db3", "rec", 3),
        ("s2", "ros1", "solo.bag", 4),
    ):
        write_bag(
            tmp_path / "bags" / session / name,
            fmt,
            [("/cam", IMAGE, BASE, image_msg(frame(i), "rgb8", BASE))],
        )
    assert run_unpack(tmp_path / "bags", "--out", tmp_path / "raw", "--jobs", jobs) == 0
    outputs = sorted(p.name for p in (tmp_path / "raw").iterdir())
    assert outputs == ["s1__data", "s1__rec", "s2__data", "s2__rec", "solo"]
    for folder, i in (
        ("s1__data", 0),
        ("s2__data", 1),
        ("s1__rec", 2),
        ("s2__rec", 3),
        ("solo", 4),
    ):
        (row,) = read_manifest(tmp_path / "raw" / folder / "cam")
        image = cv2.imread(str(tmp_path / "raw" / folder / "cam" / row["file"]))
        assert np.array_equal(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), frame(i))
    # the same inputs again: the same folders, nothing redone
    assert run_unpack(tmp_path / "bags", "--out", tmp_path / "raw", "--jobs", jobs) == 0
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == outputs


def test_output_names_of_same_named_bags():
    def names(*paths):
        return list(output_names([Path(p) for p in paths]).values())

    assert names("/r/a/data.bag", "/r/b/data.bag", "/r/c/other.bag") == [
        "a__data",
        "b__data",
        "other",
    ]
    assert names("/r/x/a/data.bag", "/r/y/a/data.bag") == ["x__a__data", "y__a__data"]
    assert names("/r/a/data.bag", "/r/b/data.bag", "/q/a__data.bag") == [
        "r__a__data",
        "b__data",
        "q__a__data",
    ]
    assert names("/b/c.bag", "/z/c.bag", "/b__c.bag") == [
        "b__c-1",
        "z__c",
        "b__c-2",
    ]  # no parents left


TRICKY_TOPICS = [
    "/..",
    "..",
    ".",
    "/",
    "",
    "/" + "x" * 400,
    "/kamera/straße",
    "/a\\b",
    "/a:b*?",
    "/.hidden",
    "/../../escape",
    "/\u202e/rtl",
    "/%2E.",
]


def test_topic_names_are_data_and_never_leave_the_bag_folder(tmp_path):
    """A ROS 1 bag can hold any string as a topic name: every topic gets its own folder inside
    <out>/<bag>/, with its frames, manifest and completion marker."""
    messages = [
        (topic, IMAGE, BASE + i, image_msg(frame(i), "rgb8", BASE + i))
        for i, topic in enumerate(TRICKY_TOPICS)
    ]
    bag = write_bag(tmp_path / "in" / "tricky.bag", "ros1", messages)
    out = tmp_path / "out" / "raw"
    code = run_unpack(bag, "--out", out, "--jobs", "1")
    bag_folder = out / "tricky"
    assert sorted(p.name for p in out.iterdir()) == ["tricky"]
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(bag_folder.resolve())
        assert len(path.name.encode()) <= 255
    folders = [p for p in bag_folder.iterdir() if p.is_dir()]
    assert all(not p.name.startswith(".") for p in folders)
    # rosbags normalises ROS 1 topic names ("//" and a trailing "/" vanish): count distinct ones
    with unpack.open_bag(bag) as reader:
        topics = {c.topic for c in reader.connections}
    assert len(folders) == len({topic_dirname(t) for t in topics})
    done = [p for p in folders if (p / unpack.MARKER).is_file()]
    assert sum(len(read_manifest(p)) for p in done) == sum(
        json.loads((p / unpack.MARKER).read_text())["written"] for p in done
    )
    assert code == (0 if len(folders) == len(topics) else 1)  # a clash of two names is reported


def test_bag_names_are_data_too(tmp_path):
    messages = [("/cam", IMAGE, BASE, image_msg(frame(0), "rgb8", BASE))]
    for name in ("...bag", ".hidden.bag", "..bag"):
        write_bag(tmp_path / "in" / name, "ros1", messages)
    assert run_unpack(tmp_path / "in", "--out", tmp_path / "raw", "--jobs", "1") == 0
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["%2E", "%2E.", "%2Ehidden"]
    assert not (tmp_path / "raw" / "cam").exists()


def test_topic_dirname_is_one_safe_component():
    for topic in TRICKY_TOPICS:
        name = topic_dirname(topic)
        assert name not in ("", ".", "..") and "/" not in name and not name.startswith(".")
        assert len(name.encode()) <= 200
    assert (
        len({topic_dirname(t) for t in ("/a" + "x" * 400, "/b" + "x" * 400, "/a" + "x" * 401)})
        == 3
    )


def test_topics_with_and_without_slash_that_share_a_folder_are_reported(tmp_path, capsys):
    messages = [
        (topic, IMAGE, BASE, image_msg(frame(0), "rgb8", BASE)) for topic in ("/cam", "cam")
    ]
    bag = write_bag(tmp_path / "clash.bag", "ros1", messages)
    assert run_unpack(bag, "--out", tmp_path / "raw", "--jobs", "1") == 1
    assert "topic folder clash: 1" in capsys.readouterr().err
    assert len(read_manifest(tmp_path / "raw" / "clash" / "cam")) == 1


def test_topic_dirname():
    assert topic_dirname("/camera/image_raw") == "camera__image_raw"
    assert topic_dirname("cam") == "cam"
    assert topic_dirname("/a/b/c") == "a__b__c"


def test_help_documents_the_file_formats():
    # built like data_tools.cli builds the subcommand parser
    parser = argparse.ArgumentParser(
        description=unpack.__doc__.strip(), formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    unpack.add_arguments(parser)
    text = parser.format_help()
    assert "--depth-float" in text and "millimetres" in text and ".npy" in text
    assert "default: data/raw" in text
    assert any(
        line.lstrip().startswith("32FC1 depth") for line in text.splitlines()
    )  # table kept as written


def test_console_command_exit_statuses(tmp_path):
    """Through the real ``mtl-data`` entry point: 1 when a bag failed, 2 on bad input."""
    messages = [("/cam", IMAGE, BASE, image_msg(frame(0), "rgb8", BASE))]
    bags = tmp_path / "bags"
    write_bag(bags / "ok.bag", "ros1", messages)
    command = [sys.executable, "-m", "data_tools.cli", "unpack", "--out", str(tmp_path / "raw")]
    cwd = Path(__file__).resolve().parents[1]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
        )

    (bags / "broken.mcap").write_bytes(b"\x89MCAP0\r\n" + b"\0" * 30)
    done = run("--jobs", "2", str(bags))
    assert done.returncode == 1 and "broken.mcap: cannot read the bag" in done.stderr
    assert len(read_manifest(tmp_path / "raw" / "ok" / "cam")) == 1
    (tmp_path / "empty").mkdir()
    done = run(str(tmp_path / "empty"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"mtl-data: error: {tmp_path / 'empty'}: no bags found "
        f"(.bag, .db3, .mcap or rosbag2 folders with metadata.yaml)"
    ]
