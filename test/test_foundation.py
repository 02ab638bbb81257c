# SPDX-License-Identifier: Apache-2.0
"""Shared foundation: atomic writes, device parsing, checkpoint validation, CLI error handling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtl_perception.checkpoint import FORMAT, VERSION, load_checkpoint, save_checkpoint
from mtl_perception.core import atomic_io
from mtl_perception.core.errors import UserError
from mtl_perception.device import resolve_device, use_half


def _payload() -> dict:
    return {
        "model_kwargs": {"arch": "toy"},
        "detection_classes": ["a"],
        "segmentation_classes": ["background", "b"],
        "palette": [[0, 0, 0], [255, 0, 0]],
        "model": {"w": torch.arange(3.0)},
    }


def test_atomic_write_leaves_no_temp_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic_io.write_json(target, {"a": 1})

    def crash_mid_write() -> None:
        with atomic_io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError, match="crash mid-write"):
        crash_mid_write()
    assert target.read_text().strip().startswith("{")  # old content intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_path_keeps_suffix_for_format_sniffing(tmp_path: Path) -> None:
    with atomic_io.atomic_path(tmp_path / "x.png") as tmp:
        assert tmp.suffix == ".png"
        tmp.write_bytes(b"data")
    assert (tmp_path / "x.png").read_bytes() == b"data"


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu", "cpu:0"])
def test_bad_device_strings_are_user_errors(spec: str) -> None:
    with pytest.raises(UserError, match="device"):
        resolve_device(spec)


def test_device_resolution_on_this_machine() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:0")
        with pytest.raises(UserError, match="FP16"):
            use_half(torch.device("cpu"), True)
    assert use_half(torch.device("cpu"), None) is False


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, _payload())
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT and loaded["detection_classes"] == ["a"]
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0))


def test_checkpoint_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not an mtl_perception checkpoint"):
        load_checkpoint(foreign)
    future = tmp_path / "future.pt"
    torch.save({**_payload(), "format": FORMAT, "version": 99}, future)
    with pytest.raises(UserError, match="version 99"):
        load_checkpoint(future)
    older = tmp_path / "older.pt"
    torch.save({**_payload(), "format": FORMAT, "version": VERSION - 1}, older)
    with pytest.raises(UserError, match=f"older.pt has format version {VERSION - 1}, older than"):
        load_checkpoint(older)
    incomplete = tmp_path / "incomplete.pt"
    torch.save({"format": FORMAT, "version": VERSION, "model_kwargs": {}}, incomplete)
    with pytest.raises(UserError, match="lacks field"):
        load_checkpoint(incomplete)


def test_checkpoint_refuses_pickled_code(tmp_path: Path) -> None:
    """weights_only loading: a file carrying arbitrary objects is rejected, not executed."""
    evil = tmp_path / "evil.pt"
    torch.save({**_payload(), "format": FORMAT, "version": VERSION, "extra": Path("/")}, evil)
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(evil)


def test_cli_user_error_is_one_line_and_nonzero(tmp_path: Path) -> None:
    code = (
        "from mtl_perception.core.errors import UserError, run_cli\n"
        "def main():\n    raise UserError('file x.bag: truncated')\n"
        "run_cli(main, 'prog')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "prog: error: file x.bag: truncated"


def test_size_strings_are_height_first() -> None:
    from mtl_perception.core.constants import MIN_INPUT_SIDE, format_hw, parse_hw

    assert parse_hw(" 480 X 640 ") == (480, 640)
    assert format_hw(parse_hw("240x320")) == "240x320"
    with pytest.raises(ValueError, match=r"--size '640': expected HEIGHTxWIDTH"):
        parse_hw("640", "--size")
    with pytest.raises(ValueError, match=f">= {MIN_INPUT_SIDE}"):
        parse_hw("16x640", "input_size", MIN_INPUT_SIDE)
