# SPDX-License-Identifier: Apache-2.0
"""Predictor.from_checkpoint with real networks (random weights, tiny inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtl_perception.checkpoint import load_checkpoint, save_checkpoint
from mtl_perception.core.errors import UserError
from mtl_perception.nets import model_from_checkpoint
from mtl_perception.predictor import Predictor


def _frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_predictions_equal_the_checkpoint_models_outputs(make_checkpoint) -> None:
    path = make_checkpoint()
    predictor = Predictor.from_checkpoint(
        path, device="cpu", score_threshold=0.0, max_detections=1000
    )
    frame = _frame(64, 64)  # already the input size: no resize, so outputs must match exactly
    prediction = predictor.predict(frame)

    model = model_from_checkpoint(load_checkpoint(path), path).eval()
    with torch.inference_mode():
        expected = model([torch.from_numpy(frame).permute(2, 0, 1).float() / 255.0])[0]
    order = torch.argsort(expected["scores"], descending=True)
    np.testing.assert_allclose(prediction.boxes, expected["boxes"][order].numpy(), atol=1e-4)
    np.testing.assert_array_equal(prediction.labels, expected["labels"][order].numpy())
    np.testing.assert_array_equal(prediction.mask, expected["mask"].numpy().astype(np.uint8))
    assert set(prediction.label_names) <= {"box", "cone", "ball"}


def test_other_frame_size_and_input_size_override(make_checkpoint) -> None:
    predictor = Predictor.from_checkpoint(
        make_checkpoint(), device="cpu", score_threshold=0.0, input_size=(48, 80)
    )
    assert predictor.input_size == (48, 80)
    prediction = predictor.predict(_frame(90, 60))
    assert prediction.mask.shape == (90, 60)
    assert len(prediction) > 0
    assert prediction.boxes[:, 0::2].max() <= 60 and prediction.boxes[:, 1::2].max() <= 90
    assert set(np.unique(prediction.mask)) <= {0, 1, 2}


@pytest.mark.parametrize("arch", ["ssdlite", "lraspp"])
def test_single_task_checkpoints(make_checkpoint, arch: str) -> None:
    predictor = Predictor.from_checkpoint(
        make_checkpoint(arch=arch), device="cpu", score_threshold=0.0
    )
    prediction = predictor.predict(_frame(40, 50))
    if arch == "ssdlite":
        assert prediction.mask is None and len(prediction) > 0
    else:
        assert prediction.mask.shape == (40, 50) and len(prediction) == 0


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        Predictor.from_checkpoint(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not an mtl_perception checkpoint"):
        Predictor.from_checkpoint(foreign)


def test_weights_of_another_architecture(make_checkpoint, tmp_path: Path) -> None:
    payload = load_checkpoint(make_checkpoint(arch="ssdlite"))
    payload["model_kwargs"] = {**payload["model_kwargs"], "arch": "frcnn"}
    path = tmp_path / "mixed.pt"
    save_checkpoint(path, payload)
    with pytest.raises(UserError, match="does not fit"):
        Predictor.from_checkpoint(path, device="cpu")


def test_class_list_that_does_not_match_the_model(make_checkpoint, tmp_path: Path) -> None:
    payload = load_checkpoint(make_checkpoint())
    payload["detection_classes"] = ["box"]
    path = tmp_path / "edited.pt"
    save_checkpoint(path, payload)
    with pytest.raises(UserError, match="1 detection_classes for a model with 3"):
        Predictor.from_checkpoint(path, device="cpu")
