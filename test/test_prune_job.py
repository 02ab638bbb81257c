# SPDX-License-Identifier: Apache-2.0
"""`mtl-data prune`: keep/drop rules, output layout, resume, bad input (tiny images)."""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity as reference

from data_tools import prune
from data_tools.ssim import structural_similarity
from mtl_perception.core.constants import MANIFEST_COLUMNS
from mtl_perception.core.errors import UserError

BAG, TOPIC = "run1", "camera__image_raw"


def scene(seed: int, shape: tuple[int, int] = (24, 32)) -> np.ndarray:
    """A textured RGB frame; different seeds give unrelated frames."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (shape[0] // 4, shape[1] // 4, 3), dtype=np.uint8)
    return cv2.resize(small, shape[::-1], interpolation=cv2.INTER_LINEAR)


def write_topic(
    raw: Path,
    frames: list[np.ndarray | bytes | None],
    bag: str = BAG,
    topic: str = TOPIC,
    ext: str = ".png",
) -> Path:
    """Write frames like `mtl-data unpack` does (RGB arrays saved through OpenCV as BGR).

    ``bytes`` are written verbatim (corrupt files), ``None`` is listed but not written (missing).
    """
    folder = raw / bag / topic
    folder.mkdir(parents=True)
    rows = []
    for i, frame in enumerate(frames):
        name = f"{1000 + i}{ext}"
        if isinstance(frame, bytes):
            (folder / name).write_bytes(frame)
        elif isinstance(frame, np.ndarray) and ext == ".npy":
            np.save(folder / name, frame)
        elif isinstance(frame, np.ndarray):
            image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) if frame.ndim == 3 else frame
            assert cv2.imwrite(str(folder / name), image)
        shape = frame.shape if isinstance(frame, np.ndarray) else (0, 0)
        rows.append(
            {
                "index": i,
                "stamp_ns": 1000 + i,
                "bag_time_ns": 2000 + i,
                "frame_id": "cam",
                "encoding": "rgb8",
                "width": shape[1],
                "height": shape[0],
                "bag": bag,
                "file": name,
            }
        )
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return folder


def run_prune(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    prune.add_arguments(parser)
    return prune.run(parser.parse_args([str(a) for a in argv]))


def kept(out: Path, bag: str = BAG, topic: str = TOPIC) -> list[dict[str, str]]:
    with (out / bag / topic / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file under ``folder`` (to prove inputs are untouched)."""
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "raw", tmp_path / "interim"


def test_keeps_first_drops_duplicates_keeps_changes(dirs) -> None:
    raw, out = dirs
    a, b = scene(1), scene(2)
    write_topic(raw, [a, a, a.copy(), b, b, a])
    assert run_prune("--raw", raw, "--out", out) == 0
    rows = kept(out)
    assert [r["file"] for r in rows] == ["1000.png", "1003.png", "1005.png"]
    assert rows[0]["ssim"] == "" and rows[0]["compared_to"] == ""
    assert rows[1]["compared_to"] == "1000.png" and float(rows[1]["ssim"]) < 0.9
    assert rows[2]["compared_to"] == "1003.png"
    assert list(rows[0]) == [*MANIFEST_COLUMNS, "ssim", "compared_to"]
    files = sorted(p.name for p in (out / BAG / TOPIC).iterdir())
    assert files == [".prune_complete", "1000.png", "1003.png", "1005.png", "manifest.csv"]


def test_compares_with_last_kept_frame_not_previous(dirs) -> None:
    """A slow drift: every step is tiny, but the drift adds up against the last kept frame."""
    raw, out = dirs
    start, end = scene(3).astype(np.float64), scene(4).astype(np.float64)
    frames = [np.round(start + (end - start) * k / 20).astype(np.uint8) for k in range(21)]
    grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    steps = [reference(x, y, data_range=255) for x, y in itertools.pairwise(grays)]
    assert min(steps) >= 0.9  # comparing with the previous frame would keep only the first
    write_topic(raw, frames)
    assert run_prune("--raw", raw, "--out", out, "--threshold", "0.9") == 0
    rows = kept(out)
    assert 3 <= len(rows) < len(frames)
    for previous, row in itertools.pairwise(rows):
        assert row["compared_to"] == previous["file"]
        i, j = int(previous["index"]), int(row["index"])
        assert float(row["ssim"]) == pytest.approx(
            reference(grays[i], grays[j], data_range=255), abs=1e-5
        )
        assert float(row["ssim"]) < 0.9
        # every dropped frame in between was at least as similar as the threshold to `previous`
        assert all(reference(grays[i], grays[k], data_range=255) >= 0.9 for k in range(i + 1, j))


def test_dry_run_writes_nothing(dirs, capsys) -> None:
    raw, out = dirs
    write_topic(raw, [scene(1), scene(1), scene(2)])
    assert run_prune("--raw", raw, "--out", out, "--dry-run") == 0
    assert not out.exists()
    assert f"{BAG}/{TOPIC}: would keep 2 of 3 frames" in capsys.readouterr().out


def test_inputs_untouched_and_outputs_hard_linked(dirs) -> None:
    raw, out = dirs
    folder = write_topic(raw, [scene(1), scene(2), scene(2)])
    before = snapshot(raw)
    assert run_prune("--raw", raw, "--out", out) == 0
    assert snapshot(raw) == before
    linked = out / BAG / TOPIC / "1001.png"
    assert linked.stat().st_ino == (folder / "1001.png").stat().st_ino


def test_copies_when_hard_linking_fails(dirs, monkeypatch) -> None:
    raw, out = dirs
    folder = write_topic(raw, [scene(1)])

    def no_links(*_args, **_kwargs):
        raise OSError("cross-device link")

    monkeypatch.setattr(prune.os, "link", no_links)
    assert run_prune("--raw", raw, "--out", out) == 0
    copy = out / BAG / TOPIC / "1000.png"
    assert copy.read_bytes() == (folder / "1000.png").read_bytes()
    assert copy.stat().st_ino != (folder / "1000.png").stat().st_ino


def test_resume_skips_done_topics_and_reruns_on_new_threshold(dirs, capsys, monkeypatch) -> None:
    raw, out = dirs
    a = scene(5)
    shifted = np.roll(a, 1, axis=1)  # similar to `a`: kept at threshold 0.99, dropped at 0.5
    write_topic(raw, [a, shifted, scene(6)])
    assert run_prune("--raw", raw, "--out", out, "--threshold", "0.99") == 0
    assert len(kept(out)) == 3
    done = snapshot(out)

    calls = []
    monkeypatch.setattr(prune, "select_frames", lambda *a, **k: calls.append(1) or [])
    assert run_prune("--raw", raw, "--out", out, "--threshold", "0.99") == 0
    assert calls == [] and snapshot(out) == done
    assert "topics skipped (already done) 1" in capsys.readouterr().err
    monkeypatch.undo()

    assert run_prune("--raw", raw, "--out", out, "--threshold", "0.99", "--force") == 0
    assert [r["file"] for r in kept(out)] == ["1000.png", "1001.png", "1002.png"]
    # a lower threshold keeps fewer frames; the output frames it no longer keeps are removed
    assert run_prune("--raw", raw, "--out", out, "--threshold", "0.5") == 0
    assert [r["file"] for r in kept(out)] == ["1000.png", "1002.png"]
    assert not (out / BAG / TOPIC / "1001.png").exists()
    assert (raw / BAG / TOPIC / "1001.png").exists()


def test_interrupted_topic_is_redone(dirs) -> None:
    raw, out = dirs
    write_topic(raw, [scene(1), scene(2)])
    assert run_prune("--raw", raw, "--out", out) == 0
    (out / BAG / TOPIC / ".prune_complete").unlink()  # as if killed before the marker
    (out / BAG / TOPIC / "1001.png").unlink()
    assert run_prune("--raw", raw, "--out", out) == 0
    assert (out / BAG / TOPIC / "1001.png").exists()


def test_bad_frame_files_are_counted_and_skipped(dirs, capsys) -> None:
    raw, out = dirs
    a, b = scene(1), scene(2)
    write_topic(raw, [a, b"not a png", None, b"", a, b])
    assert run_prune("--raw", raw, "--out", out) == 1
    rows = kept(out)
    assert [r["file"] for r in rows] == ["1000.png", "1005.png"]  # 1004 duplicates 1000: dropped
    err = capsys.readouterr().err
    assert "read 3, kept 2, dropped 1" in err and "failed 3" in err
    assert "unreadable frame file: 2 (first:" in err and "1001.png" in err
    assert "missing frame file: 1" in err


def test_size_change_and_other_formats_are_kept(dirs) -> None:
    raw, out = dirs
    small = scene(1)
    large = cv2.resize(small, (40, 30))
    write_topic(raw, [small, small, large, large])
    depth = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 50
    write_topic(raw, [depth, depth, depth[::-1].copy()], topic="depth")
    rgb_npy = scene(2)
    write_topic(raw, [rgb_npy, rgb_npy, np.zeros((3, 3, 3), np.uint8)], topic="npy", ext=".npy")
    assert run_prune("--raw", raw, "--out", out) == 1  # the 3x3 frame is too small for SSIM
    assert [r["file"] for r in kept(out)] == ["1000.png", "1002.png"]
    assert kept(out)[1]["ssim"] == ""  # mode change: no comparison
    depth_rows = kept(out, topic="depth")
    assert [r["file"] for r in depth_rows] == ["1000.png", "1002.png"]
    gray16 = [
        cv2.imread(str(raw / BAG / "depth" / f), cv2.IMREAD_UNCHANGED)
        for f in ("1000.png", "1002.png")
    ]
    assert gray16[0].dtype == np.uint16
    assert float(depth_rows[1]["ssim"]) == pytest.approx(
        reference(*gray16, data_range=65535), abs=1e-5
    )
    assert [r["file"] for r in kept(out, topic="npy")] == ["1000.npy"]


def test_named_folders_and_missing_manifest(dirs, capsys) -> None:
    raw, out = dirs
    write_topic(raw, [scene(1)], bag="a")
    write_topic(raw, [scene(1)], bag="b")
    (raw / "b" / "broken_topic").mkdir()
    assert run_prune("--raw", raw, "--out", out, "a") == 0
    assert (out / "a" / TOPIC / "manifest.csv").exists() and not (out / "b").exists()
    assert run_prune("--raw", raw, "--out", out, raw / "b" / TOPIC) == 0
    assert (out / "b" / TOPIC / "manifest.csv").exists()
    assert run_prune("--raw", raw, "--out", out, "b") == 1  # the folder without manifest fails
    assert (
        f"topic folder without manifest.csv: 1 (first: {raw / 'b' / 'broken_topic'})"
        in capsys.readouterr().err
    )
    with pytest.raises(UserError, match=r"broken_topic: no manifest\.csv"):
        run_prune("--raw", raw, "--out", out, raw / "b" / "broken_topic")
    with pytest.raises(UserError, match="no such bag or topic folder"):
        run_prune("--raw", raw, "--out", out, "nope")
    with pytest.raises(UserError, match="does not exist"):
        run_prune("--raw", raw / "missing", "--out", out)


def test_manifest_without_file_column_is_reported(dirs, capsys) -> None:
    raw, out = dirs
    folder = write_topic(raw, [scene(1)])
    (folder / "manifest.csv").write_text("index,stamp_ns\n0,1\n")
    assert run_prune("--raw", raw, "--out", out) == 1
    assert "missing column 'file'" in capsys.readouterr().err


def test_manifest_entries_cannot_escape_the_topic_folder(dirs, capsys) -> None:
    raw, out = dirs
    folder = write_topic(raw, [scene(1), scene(2)])
    text = (folder / "manifest.csv").read_text().replace("1001.png", "../../../etc/passwd")
    (folder / "manifest.csv").write_text(text)
    assert run_prune("--raw", raw, "--out", out) == 1
    assert [r["file"] for r in kept(out)] == ["1000.png"]
    assert "bad file entry in manifest: 1" in capsys.readouterr().err


def test_bad_arguments_are_rejected() -> None:
    for argv in (["--threshold", "1.5"], ["--threshold", "x"], ["--jobs", "0"]):
        with pytest.raises(SystemExit):
            run_prune(*argv)


@pytest.mark.parametrize("settle_margin", [prune.SETTLE_MARGIN, None])
def test_fast_decisions_match_the_skimage_reference(tmp_path, settle_margin) -> None:
    """On a small version of the bench's camera sequence every decision is the same; frames
    dropped on the sampled estimate are clear near-duplicates, every other SSIM is exact."""
    from bench.sequence import write_sequence

    folder = write_sequence(tmp_path, 40, seed=1, width=96, height=72)
    paths = sorted(folder.glob("*.jpg"))
    decisions = prune.select_frames(paths, threshold=0.9, jobs=2, settle_margin=settle_margin)
    last = None
    for decision, path in zip(decisions, paths, strict=True):
        gray = prune.read_gray(path)
        if last is None:
            assert decision.keep
        else:
            score = reference(last, gray, data_range=255)
            if decision.exact:
                assert decision.ssim == pytest.approx(score, abs=1e-5)
            else:
                assert not decision.keep and decision.ssim >= 0.9 + prune.SETTLE_MARGIN
                assert decision.ssim == pytest.approx(score, abs=0.01)
            assert decision.keep == (score < 0.9)
        last = gray if decision.keep else last
    assert 1 < sum(d.keep for d in decisions) < len(paths)
    settled = sum(not d.exact for d in decisions)
    assert settled > 0 if settle_margin is not None else settled == 0
    assert structural_similarity(last, last) == 1.0


def test_refuses_to_write_into_the_input_folder(dirs, capsys) -> None:
    raw, _ = dirs
    write_topic(raw, [scene(1), scene(1)])
    before = snapshot(raw)
    assert run_prune("--raw", raw, "--out", raw) == 1
    assert "would write into the input folder" in capsys.readouterr().err
    assert snapshot(raw) == before
