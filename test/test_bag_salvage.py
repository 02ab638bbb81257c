# SPDX-License-Identifier: Apache-2.0
"""Salvage of cut-off and damaged bags: exactly the complete messages before the damage.

Bags of every storage (ROS 1 uncompressed/bz2/lz4, MCAP as rosbags and as ``ros2 bag record``
write it, SQLite) are cut at many offsets or get a damaged chunk. What the salvage returns is
checked against the messages written (pixel-exact, in order) and against where each message,
or each chunk, lies in the intact file, found independently of the salvage code (the pixel
bytes of uncompressed messages; the chunk index of the intact file read by rosbags / mcap).
"""

from __future__ import annotations

import argparse
import hashlib
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from bagfactory import IMAGE, image_msg, single_file_bag, write_bag, write_recorder_mcap
from mcap.reader import make_reader
from rosbags.rosbag1 import Reader as Ros1Reader
from rosbags.typesys import Stores, get_typestore

from data_tools import unpack
from data_tools.synth import SynthConfig, synthesize
from mtl_perception.core.salvage import BagSalvageError, RecoveringReader, SalvageReader
from mtl_perception.replay.source import open_image_bag

N = 24
START = 1_700_000_000_000_000_000
JAZZY = get_typestore(Stores.ROS2_JAZZY)
UNCOMPRESSED = ("ros1", "mcap-rosbags", "mcap-none")
KINDS = (*UNCOMPRESSED, "ros1-bz2", "ros1-lz4", "mcap-zstd", "mcap-lz4")


def truth(height: int = 10, width: int = 12) -> list[tuple[str, int, np.ndarray]]:
    """``(topic, stamp, pixels)`` of every message, in recording order; every image distinct."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(N):
        shape = (height, width, 3) if i % 2 == 0 else (height, width)
        out.append(
            (
                "/cam" if i % 2 == 0 else "/mono",
                START + i * 33_000_000,
                rng.integers(0, 256, shape, np.uint8),
            )
        )
    return out


TRUTH = truth()
BIG = truth(64, 64)  # larger than one lz4 (64 kB) or zstd (128 kB) block in total


def messages(which: list[tuple[str, int, np.ndarray]] = TRUTH) -> list[tuple]:
    return [
        (topic, IMAGE, stamp, image_msg(pixels, "rgb8" if pixels.ndim == 3 else "mono8", stamp))
        for topic, stamp, pixels in which
    ]


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bags")
    made = {
        "ros1": write_bag(root / "ros1.bag", "ros1", messages(), ros1_chunk_size=1500),
        "ros1-bz2": write_bag(
            root / "bz2.bag", "ros1", messages(), ros1_compression="bz2", ros1_chunk_size=1500
        ),
        "ros1-lz4": write_bag(
            root / "lz4.bag", "ros1", messages(), ros1_compression="lz4", ros1_chunk_size=1500
        ),
        "mcap-rosbags": single_file_bag(
            write_bag(root / "m", "mcap", messages()), root / "rosbags.mcap"
        ),
        "db3": single_file_bag(write_bag(root / "d", "db3", messages()), root / "d.db3"),
    }
    for compression in ("zstd", "lz4", "none"):
        made[f"mcap-{compression}"] = write_recorder_mcap(
            root / f"{compression}.mcap",
            messages(),
            compression="" if compression == "none" else compression,
            chunk_size=1500,
        )
    return made


def read_all(reader: RecoveringReader | SalvageReader) -> list[tuple[str, int, np.ndarray]]:
    out = []
    for conn, _, raw in reader.messages():
        msg = reader.deserialize(raw, conn.msgtype)
        pixels = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, -1)
        stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        out.append((conn.topic, stamp, pixels[..., 0] if pixels.shape[2] == 1 else pixels))
    return out


def salvaged(path: Path) -> tuple[list[tuple[str, int, np.ndarray]], RecoveringReader]:
    with RecoveringReader(path, JAZZY) as reader:
        return read_all(reader), reader


def assert_prefix(got: list[tuple[str, int, np.ndarray]], written: list[tuple] = TRUTH) -> None:
    """``got`` is the first ``len(got)`` messages written, in order, pixel for pixel."""
    assert len(got) <= N
    for (topic, stamp, pixels), (want_topic, want_stamp, want_pixels) in zip(
        got, written, strict=False
    ):
        assert (topic, stamp) == (want_topic, want_stamp)
        assert pixels.shape == want_pixels.shape and np.array_equal(pixels, want_pixels)


def message_ends(data: bytes) -> list[int]:
    """Where each message's bytes end in an uncompressed bag (its pixels are the last field)."""
    ends = []
    for _, _, pixels in TRUTH:
        start = data.find(pixels.tobytes())
        assert start > 0 and data.find(pixels.tobytes(), start + 1) < 0
        ends.append(start + pixels.nbytes)
    assert ends == sorted(ends)
    return ends


def chunk_spans(kind: str, path: Path) -> list[tuple[int, int, int]]:
    """``(start, end, messages before its end)`` of each chunk, from the intact file's index."""
    spans = []
    if kind.startswith("ros1"):
        with Ros1Reader(path) as reader:
            for info in reader.chunk_infos:
                chunk = reader.chunks[info.pos]
                spans.append(
                    (
                        info.pos,
                        chunk.datapos + chunk.datasize,
                        sum(s <= info.end_time for _, s, _ in TRUTH),
                    )
                )
    else:
        with path.open("rb") as handle:
            summary = make_reader(handle).get_summary()
        for index in summary.chunk_indexes:
            end = index.chunk_start_offset + index.chunk_length
            spans.append(
                (
                    index.chunk_start_offset,
                    end,
                    sum(s <= index.message_end_time for _, s, _ in TRUTH),
                )
            )
    return sorted(spans)


def cut_offsets(kind: str, data: bytes, path: Path) -> dict[str, int]:
    size = len(data)
    spans = chunk_spans(kind, path)
    middle = spans[len(spans) // 2]
    offsets = {
        "in-magic": 5,
        "in-first-record": 30,
        "mid-chunk": (middle[0] + middle[1]) // 2,
        "at-chunk-end": middle[1],
        "40%": int(0.4 * size),
        "70%": int(0.7 * size),
        "end-1": size - 1,
    }
    if kind in UNCOMPRESSED:
        ends = message_ends(data)
        pixels = TRUTH[N // 2][2].nbytes
        offsets |= {
            "mid-message": ends[N // 2] - pixels // 2,
            "message-end": ends[N // 2],
            "message-end-1": ends[N // 2] - 1,
        }
    return offsets


CUTS = [
    (kind, cut)
    for kind in KINDS
    for cut in (
        "in-magic",
        "in-first-record",
        "mid-chunk",
        "at-chunk-end",
        "40%",
        "70%",
        "end-1",
        *(("mid-message", "message-end", "message-end-1") if kind in UNCOMPRESSED else ()),
    )
]


@pytest.mark.parametrize(("kind", "cut"), CUTS)
def test_cut_bag_gives_exactly_the_complete_messages_before_the_cut(
    bags, tmp_path, kind, cut
) -> None:
    source = bags[kind]
    data = source.read_bytes()
    offset = cut_offsets(kind, data, source)[cut]
    damaged = tmp_path / source.name
    damaged.write_bytes(data[:offset])
    if kind in UNCOMPRESSED:  # exactly the messages whose last byte is before the cut
        expected = sum(end <= offset for end in message_ends(data))
    else:  # at least every message of the chunks that end before the cut
        expected = max([n for _, end, n in chunk_spans(kind, source) if end <= offset], default=0)
    if expected == 0 and cut.startswith("in-"):
        with pytest.raises(BagSalvageError, match="no complete message could be read"):
            salvaged(damaged)
        return
    got, reader = salvaged(damaged)
    assert_prefix(got)
    if kind in UNCOMPRESSED:
        assert len(got) == expected
    else:
        assert len(got) >= expected
    assert reader.salvage is not None and "salvaged" in reader.describe()
    assert damaged.read_bytes() == data[:offset]  # input untouched


def test_unchunked_mcap_cut_anywhere(tmp_path) -> None:
    """``ros2 bag record``'s fastwrite preset writes no chunks: messages are top-level records."""
    source = write_recorder_mcap(tmp_path / "fast.mcap", messages(), compression="", chunked=False)
    data = source.read_bytes()
    ends = message_ends(data)
    for offset in (ends[3] - 1, ends[3], ends[N // 2] - 7, ends[-1], len(data) - 1):
        damaged = tmp_path / "cut.mcap"
        damaged.write_bytes(data[:offset])
        got, reader = salvaged(damaged)
        assert_prefix(got)
        assert len(got) == sum(end <= offset for end in ends) and reader.salvage is not None


@pytest.mark.parametrize("kind", ["ros1-lz4", "mcap-zstd", "mcap-lz4"])
def test_messages_of_a_partly_written_compressed_chunk_are_recovered(tmp_path, kind) -> None:
    """One large chunk cut in the middle: lz4 and zstd decode the part that is there."""
    path = tmp_path / ("big.bag" if kind.startswith("ros1") else "big.mcap")
    if kind.startswith("ros1"):
        write_bag(path, "ros1", messages(BIG), ros1_compression="lz4", ros1_chunk_size=10**7)
    else:
        write_recorder_mcap(
            path, messages(BIG), compression=kind.removeprefix("mcap-"), chunk_size=10**7
        )
    assert len(chunk_spans(kind, path)) == 1
    data = path.read_bytes()
    start, end, _ = chunk_spans(kind, path)[0]
    path.write_bytes(data[: start + (end - start) * 3 // 4])
    got, reader = salvaged(path)
    assert_prefix(got, BIG)
    assert 0 < len(got) < N
    assert "of its messages are complete and kept" in reader.describe()


def corrupt(data: bytes, at: int, length: int = 16) -> bytes:
    return data[:at] + bytes(b ^ 0xFF for b in data[at : at + length]) + data[at + length :]


@pytest.mark.parametrize("kind", ["mcap-zstd", "mcap-none", "mcap-lz4", "ros1-bz2", "ros1"])
def test_damaged_chunk_in_the_middle_stops_the_salvage_before_it(bags, tmp_path, kind) -> None:
    """The index is intact, so rosbags opens the bag and fails at the damaged chunk; the messages
    it delivered are not repeated and salvage adds none of the damaged chunk (CRC, bz2 checksum,
    or for uncompressed ROS 1 a chunk header that does not parse)."""
    source = bags[kind]
    spans = chunk_spans(kind, source)
    k = len(spans) // 2
    start, end, _ = spans[k]
    at = (
        start + 6 if kind == "ros1" else (start + end) // 2
    )  # ROS 1: inside the chunk's header fields
    damaged = tmp_path / source.name
    damaged.write_bytes(corrupt(source.read_bytes(), at))
    got, reader = salvaged(damaged)
    assert_prefix(got)
    assert len(got) == spans[k - 1][2]
    assert reader.salvage is not None and reader.failure


def test_db3_cut_anywhere_gives_a_clean_prefix_or_says_nothing_could_be_read(
    bags, tmp_path
) -> None:
    """SQLite reads a page cut by the end of the file as zeros: salvage never returns such rows."""
    data = bags["db3"].read_bytes()
    counts = {}
    for share in (0.0, 0.05, 0.3, 0.5, 0.7, 0.9, 0.97, 0.99, 0.999):
        offset = int(len(data) * share) + 1
        damaged = tmp_path / f"cut{offset}.db3"
        damaged.write_bytes(data[:offset])
        error = ""
        try:
            got, _ = salvaged(damaged)
        except BagSalvageError as err:
            error = str(err)
        if error:
            assert "no complete message could be read" in error and str(damaged) in error
            counts[share] = 0
            continue
        assert_prefix(got)
        counts[share] = len(got)
    assert (
        counts[0.0] == 0 and counts[0.999] > 0
    )  # nothing from the first page; most from the last
    got, reader = salvaged(bags["db3"])
    assert len(got) == N and reader.salvage is None


def test_db3_with_a_damaged_page_stops_before_it(bags, tmp_path) -> None:
    data = bags["db3"].read_bytes()
    (page_size,) = struct.unpack_from(">H", data, 16)
    page = data.find(TRUTH[N // 2][2].tobytes()) // page_size
    damaged = tmp_path / "damaged.db3"
    damaged.write_bytes(corrupt(data, page * page_size, 12))  # the b-tree page header of that row
    got, _ = salvaged(damaged)
    assert_prefix(got)
    assert 0 < len(got) <= N // 2


def never_closed(path: Path, keep: float) -> bytes:
    """What a killed ROS 1 recorder leaves: a chunk whose sizes were never written, no index."""
    with Ros1Reader(path) as reader:
        (info,) = reader.chunk_infos
        chunk = reader.chunks[info.pos]
    data = bytearray(path.read_bytes())
    (header_length,) = struct.unpack_from("<I", data, info.pos)
    size_field = data.find(b"size=", info.pos, info.pos + 4 + header_length) + 5
    data[size_field : size_field + 4] = bytes(
        4
    )  # rosbag writes the sizes when it closes the chunk
    data[info.pos + 4 + header_length : info.pos + 8 + header_length] = bytes(4)
    index_pos = data.find(b"index_pos=") + 10
    data[index_pos : index_pos + 8] = bytes(
        8
    )  # the bag header's index position, also written on close
    end = chunk.datapos + int(chunk.datasize * keep)
    return bytes(data[:end])


@pytest.mark.parametrize("keep", [1.0, 0.6])
def test_bag_active_with_a_chunk_still_open(tmp_path, keep) -> None:
    bag = write_bag(tmp_path / "one_chunk.bag", "ros1", messages(), ros1_chunk_size=10**7)
    active = tmp_path / "rec.bag.active"
    active.write_bytes(never_closed(bag, keep))
    expected = sum(end <= active.stat().st_size for end in message_ends(bag.read_bytes()))
    got, reader = salvaged(active)
    assert_prefix(got)
    assert len(got) == expected and (keep < 1.0 or expected == N)
    assert "never closed" in reader.describe()


@pytest.mark.parametrize("metadata", [True, False])
def test_rosbag2_folder_with_a_cut_storage_file(bags, tmp_path, metadata) -> None:
    folder = write_bag(tmp_path / "rec", "mcap", messages())
    storage = next(folder.glob("*.mcap"))
    data = storage.read_bytes()
    storage.write_bytes(data[: len(data) // 2])
    if not metadata:  # a killed recorder may not have written it
        (folder / "metadata.yaml").unlink()
        target = storage
    else:
        target = folder
    got, reader = salvaged(target)
    assert_prefix(got)
    assert len(got) == sum(end <= len(data) // 2 for end in message_ends(data))
    assert reader.salvage is not None


def test_intact_bags_are_read_by_rosbags_not_salvaged(bags) -> None:
    for kind in (*KINDS, "db3"):
        got, reader = salvaged(bags[kind])
        assert len(got) == N and reader.salvage is None and reader.describe() == ""
        assert_prefix(got)


def test_salvage_of_an_intact_bag_reads_everything(bags) -> None:
    for kind in (*KINDS, "db3"):
        with SalvageReader(bags[kind], JAZZY) as reader:
            assert len(read_all(reader)) == N and not reader.damaged
            assert sorted(c.msgcount for c in reader.connections) == [N // 2, N // 2]


# ----------------------------------------------------------------------------- commands


def run_unpack(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser()
    unpack.add_arguments(parser)
    return unpack.run(parser.parse_args([str(a) for a in argv]))


def frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".png")


@pytest.fixture(scope="module")
def synth_bags(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    out = {}
    for storage in ("mcap", "db3"):
        bag, _ = synthesize(
            SynthConfig(frames=10, width=64, height=48, storage=storage, objects=4),
            root / storage,
            show_progress=False,
        )
        out[storage] = next(p for p in bag.iterdir() if p.suffix == f".{storage}")
    return out


@pytest.mark.parametrize("storage", ["mcap", "db3"])
@pytest.mark.parametrize("share", [0.35, 0.6, 0.9])
def test_unpack_salvages_a_cut_synth_bag(synth_bags, tmp_path, capsys, storage, share) -> None:
    intact_out, cut_out = tmp_path / "intact", tmp_path / "cut"
    assert run_unpack(synth_bags[storage], "--out", intact_out, "--jobs", "1") == 0
    data = synth_bags[storage].read_bytes()
    damaged = tmp_path / "bags" / f"synth_bag.{storage}"
    damaged.parent.mkdir()
    damaged.write_bytes(data[: int(len(data) * share)])
    digest = hashlib.sha256(damaged.read_bytes()).hexdigest()
    capsys.readouterr()
    assert run_unpack(damaged.parent, "--out", cut_out, "--jobs", "1") == 0
    err = capsys.readouterr().err
    assert "warning: damaged bag, salvaged: 1" in err and "complete messages" in err
    want = frame_files(intact_out / "synth_bag" / "camera__image_raw")
    got = frame_files(cut_out / "synth_bag" / "camera__image_raw")
    assert 0 < len(got) < len(want)
    for a, b in zip(
        got, want, strict=False
    ):  # the first frames of the intact bag, pixel for pixel
        assert a.name == b.name
        assert np.array_equal(
            cv2.imread(str(a), cv2.IMREAD_UNCHANGED), cv2.imread(str(b), cv2.IMREAD_UNCHANGED)
        )
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == digest


def test_unpack_reports_a_bag_with_nothing_readable_as_an_error(
    synth_bags, tmp_path, capsys
) -> None:
    data = synth_bags["db3"].read_bytes()
    damaged = tmp_path / "cut.db3"
    damaged.write_bytes(data[:1000])  # inside the first page
    assert run_unpack(damaged, "--out", tmp_path / "raw", "--jobs", "1") == 1
    err = capsys.readouterr().err
    assert f"{damaged}: cannot read the bag" in err
    assert "no complete message could be read" in err


def test_unpack_finds_and_salvages_a_bag_active(tmp_path, capsys) -> None:
    bag = write_bag(tmp_path / "src" / "one_chunk.bag", "ros1", messages(), ros1_chunk_size=10**7)
    folder = tmp_path / "robot"
    folder.mkdir()
    (folder / "run_2024.bag.active").write_bytes(never_closed(bag, 1.0))
    assert run_unpack(folder, "--out", tmp_path / "raw", "--jobs", "1") == 0
    assert len(frame_files(tmp_path / "raw" / "run_2024" / "cam")) == N // 2
    assert "never closed" in capsys.readouterr().err


def test_replay_source_reads_a_cut_bag(bags, tmp_path) -> None:
    data = bags["mcap-zstd"].read_bytes()
    damaged = tmp_path / "cut.mcap"
    damaged.write_bytes(data[: len(data) * 2 // 3])
    with open_image_bag(damaged, "/cam") as bag:
        frames = list(bag.frames())
        assert len(frames) == len(bag) > 0
    assert [f.stamp_ns for f in frames] == [s for t, s, _ in TRUTH if t == "/cam"][: len(frames)]
    for frame in frames:
        pixels = next(p for t, s, p in TRUTH if s == frame.stamp_ns)
        assert np.array_equal(frame.rgb(), pixels)
