# SPDX-License-Identifier: Apache-2.0
"""Predictor pre/post-processing with a stub model whose outputs are known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtl_perception.core.errors import UserError
from mtl_perception.predictor import Predictor

INPUT_SIZE = (32, 48)  # network (height, width)
CLASSES = ["box", "cone", "ball"]


class StubModel(torch.nn.Module):
    """Eval-mode stand-in for a MultiTaskModel: fixed detections, left/right half mask."""

    def __init__(self, tasks: tuple[str, ...] = ("detection", "segmentation")) -> None:
        super().__init__()
        self.tasks = tasks
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.seen: list[torch.Tensor] = []

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for image in images:
            self.seen.append(image)
            out: dict[str, torch.Tensor] = {}
            if "detection" in self.tasks:
                out["boxes"] = torch.tensor(
                    [[0.0, 0.0, 24.0, 16.0], [24.0, 16.0, 60.0, 40.0], [1.0, 1.0, 2.0, 2.0]]
                )
                out["scores"] = torch.tensor([0.9, 0.5, 0.1])
                out["labels"] = torch.tensor([1, 2, 3])
            if "segmentation" in self.tasks:
                mask = torch.zeros(image.shape[1:], dtype=torch.int64)
                mask[:, image.shape[2] // 2 :] = 2
                out["mask"] = mask
            outputs.append(out)
        return outputs


def _predictor(model: torch.nn.Module | None = None, **kwargs: object) -> Predictor:
    return Predictor(
        model or StubModel(),
        detection_classes=CLASSES,
        segmentation_classes=["background", "floor", "wall"],
        palette=[(0, 0, 0), (1, 2, 3), (4, 5, 6)],
        input_size=INPUT_SIZE,
        device="cpu",
        **kwargs,
    )


def test_outputs_are_in_original_pixels() -> None:
    model = StubModel()
    frame = np.full((64, 96, 3), 255, np.uint8)  # twice the network size
    prediction = _predictor(model, score_threshold=0.3).predict(frame)
    # The model saw a resized, [0, 1]-scaled frame.
    assert model.seen[0].shape == (3, *INPUT_SIZE) and model.seen[0].dtype == torch.float32
    assert float(model.seen[0].max()) == pytest.approx(1.0)
    # Boxes doubled and clipped to the 96x64 frame; the 0.1 detection is below the threshold.
    np.testing.assert_allclose(prediction.boxes, [[0, 0, 48, 32], [48, 32, 96, 64]])
    assert prediction.boxes.dtype == np.float32
    assert prediction.labels.tolist() == [1, 2] and prediction.label_names == ["box", "cone"]
    assert prediction.scores.tolist() == pytest.approx([0.9, 0.5])
    assert (
        prediction.mask is not None
        and prediction.mask.shape == (64, 96)
        and prediction.mask.dtype == np.uint8
    )
    assert set(np.unique(prediction.mask[:, :48])) == {0} and set(
        np.unique(prediction.mask[:, 48:])
    ) == {2}
    assert prediction.image_size == (64, 96)
    assert prediction.timing.total_ms >= prediction.timing.inference_ms >= 0


def test_class_filter_and_max_detections() -> None:
    frame = np.zeros((32, 48, 3), np.uint8)
    only_cone = _predictor(class_filter=["cone"], score_threshold=0.0).predict(frame)
    assert only_cone.label_names == ["cone"]
    top_one = _predictor(score_threshold=0.0, max_detections=1).predict(frame)
    assert top_one.label_names == ["box"]
    everything = _predictor(score_threshold=0.0).predict(frame)
    assert everything.scores.tolist() == pytest.approx([0.9, 0.5, 0.1])


def test_unknown_class_filter_lists_valid_names() -> None:
    with pytest.raises(UserError, match=r"\['person'\].*box.*cone.*ball"):
        _predictor(class_filter=["person", "box"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"score_threshold": 1.5}, "score_threshold"), ({"max_detections": 0}, "max_detections")],
)
def test_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        _predictor(**kwargs)


def test_half_on_cpu_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="CUDA"):
        _predictor(half=True)
    assert _predictor().half is False


def test_detection_only_and_segmentation_only_models() -> None:
    frame = np.zeros((20, 30, 3), np.uint8)
    det = _predictor(StubModel(("detection",))).predict(frame)
    assert det.mask is None and len(det) == 2
    seg = _predictor(StubModel(("segmentation",))).predict(frame)
    assert len(seg) == 0 and seg.boxes.shape == (0, 4) and seg.mask.shape == (20, 30)


def test_predict_batch_keeps_each_frames_size() -> None:
    predictions = _predictor().predict_batch(
        [np.zeros((64, 96, 3), np.uint8), np.zeros((16, 24, 3), np.uint8)]
    )
    assert [p.mask.shape for p in predictions] == [(64, 96), (16, 24)]
    assert predictions[1].boxes.max() <= 24
    assert _predictor().predict_batch([]) == []


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((8, 8, 3), np.float32),
        np.zeros((0, 8, 3), np.uint8),
    ],
)
def test_rejects_frames_that_are_not_rgb8(frame: np.ndarray) -> None:
    with pytest.raises(ValueError, match="predict"):
        _predictor().predict(frame)


def test_warmup_and_properties() -> None:
    model = StubModel()
    predictor = _predictor(model)
    predictor.warmup(2)
    assert len(model.seen) == 2
    assert predictor.input_size == INPUT_SIZE and predictor.device == torch.device("cpu")
    assert predictor.detection_classes == CLASSES and predictor.palette[1] == (1, 2, 3)
    assert not model.training
