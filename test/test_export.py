# SPDX-License-Identifier: Apache-2.0
"""`mtl-export`: a run's checkpoint becomes models/<name>/ that the predictor loads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mtl_perception.checkpoint import inference_fields, load_checkpoint, save_checkpoint
from mtl_perception.core.errors import UserError
from mtl_perception.export import MODEL_FILE, TRAINING_STATE, export, main
from mtl_perception.nets import build_model
from mtl_perception.predictor import Predictor

CONFIG = {
    "data": {"root": "SET IN TEST"},
    "balancing": {"weighting": "uncertainty", "grad_method": "none"},
}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder whose best.pt carries training state, like mtl-train writes it."""
    dataset = tmp_path / "data"
    dataset.mkdir()
    (dataset / "splits.json").write_text(
        json.dumps({"train": [1, 2, 3], "val": [4], "test": [], "group_by": "time"})
    )
    torch.manual_seed(0)
    model = build_model("ssdlite_lraspp", 2, 3, (64, 64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    payload = {
        **inference_fields(model, ["box", "cone"], ["background", "floor", "wall"]),
        "epoch": 3,
        "global_step": 30,
        "optimizer": optimizer.state_dict(),
        "rng": torch.zeros(3),
        "config": {**CONFIG, "data": {"root": str(dataset)}},
        "metrics": {"detection": {"map": 0.25, "per_class_ap": {"box": 0.3}}, "score": 0.4},
    }
    run = tmp_path / "runs" / "first"
    save_checkpoint(run / "best.pt", payload)
    return run


def test_export_writes_a_deployable_model(run_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"segmentation": {"miou": 0.5}}))
    folder = export(run_dir / "best.pt", tmp_path / "models", "first", report)
    assert sorted(p.name for p in folder.iterdir()) == [
        "MODEL_CARD.md",
        "config.yaml",
        MODEL_FILE,
        "model_card.json",
    ]
    payload = load_checkpoint(folder / MODEL_FILE)
    assert not TRAINING_STATE & set(payload) and payload["epoch"] == 3
    source = load_checkpoint(run_dir / "best.pt")
    assert all(torch.equal(payload["model"][k], v) for k, v in source["model"].items())
    predictor = Predictor.from_checkpoint(folder / MODEL_FILE, device="cpu")
    assert predictor.input_size == (64, 64)
    card = json.loads((folder / "model_card.json").read_text())
    assert card["detection_classes"] == ["box", "cone"] and card["input_size_hw"] == [64, 64]
    assert card["training"]["data"]["images"] == {"train": 3, "val": 1, "test": 0}
    assert card["evaluation"] == {"segmentation": {"miou": 0.5}}
    assert (
        yaml.safe_load((folder / "config.yaml").read_text())["balancing"]["weighting"]
        == "uncertainty"
    )
    text = (folder / "MODEL_CARD.md").read_text()
    assert (
        "64x64" in text
        and "| detection map | 0.250 |" in text
        and "| segmentation miou | 0.500 |" in text
    )


def test_existing_model_needs_force(run_dir: Path, tmp_path: Path) -> None:
    export(run_dir / "best.pt", tmp_path / "models", "first")
    with pytest.raises(UserError, match="exists; pass --force"):
        export(run_dir / "best.pt", tmp_path / "models", "first")
    export(run_dir / "best.pt", tmp_path / "models", "first", force=True)
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["first"]  # no staging left behind


def test_cli_names_the_model_after_the_run(
    run_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(
        sys, "argv", ["mtl-export", str(run_dir), "--out", str(tmp_path / "models")]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0 and (tmp_path / "models" / "first" / MODEL_FILE).is_file()
    monkeypatch.setattr(sys, "argv", ["mtl-export", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
