# SPDX-License-Identifier: Apache-2.0
"""ConfusionMatrix against a confusion matrix and IoUs worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from mtl_perception.evaluation.metrics import ConfusionMatrix

# 11 pixels, 4 classes (0 = background), two ignored (255) pixels that must not count.
TARGET = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2, 255, 255]])
PRED = torch.tensor([[0, 0, 1, 2, 1, 1, 0, 2, 1, 3, 0]])
# Rows = ground truth, columns = prediction, counted by hand from the two rows above.
EXPECTED_CONFUSION = [
    [2, 1, 1, 0],
    [1, 2, 0, 0],
    [0, 1, 1, 0],
    [0, 0, 0, 0],
]
# IoU = TP / (row sum + column sum - TP):
#   class 0: 2 / (4 + 3 - 2) = 0.4;  class 1: 2 / (3 + 4 - 2) = 0.4;
#   class 2: 1 / (2 + 2 - 1) = 1/3
#   class 3: absent from ground truth and prediction -> undefined, excluded from the mean.
EXPECTED_IOU = [0.4, 0.4, 1 / 3, None]
EXPECTED_MIOU = (0.4 + 0.4 + 1 / 3) / 3
EXPECTED_PIXEL_ACCURACY = 5 / 9


def test_hand_computed_example() -> None:
    matrix = ConfusionMatrix(num_classes=4)
    matrix.update(PRED, TARGET)
    result = matrix.compute()
    assert result["confusion"] == EXPECTED_CONFUSION
    assert result["per_class_iou"][:3] == pytest.approx(EXPECTED_IOU[:3])
    assert result["per_class_iou"][3] is None
    assert result["miou"] == pytest.approx(EXPECTED_MIOU)
    assert result["pixel_accuracy"] == pytest.approx(EXPECTED_PIXEL_ACCURACY)


def test_accumulates_over_updates_and_resets() -> None:
    matrix = ConfusionMatrix(num_classes=4)
    matrix.update(PRED[:, :5], TARGET[:, :5])
    matrix.update(PRED[:, 5:], TARGET[:, 5:])
    assert matrix.compute()["confusion"] == EXPECTED_CONFUSION
    matrix.reset()
    assert matrix.confusion.sum() == 0
    assert math.isnan(matrix.compute()["miou"]) and math.isnan(matrix.compute()["pixel_accuracy"])


def test_class_predicted_but_absent_counts_as_zero() -> None:
    matrix = ConfusionMatrix(num_classes=3)
    matrix.update(torch.tensor([0, 2, 1, 1]), torch.tensor([0, 0, 1, 1]))
    result = matrix.compute()
    # class 0: 1/(2+1-1)=0.5, class 1: 2/2=1, class 2: 0/(0+1-0)=0 -> all three in the mean.
    assert result["per_class_iou"] == pytest.approx([0.5, 1.0, 0.0])
    assert result["miou"] == pytest.approx(0.5)


def test_batched_maps_and_custom_ignore_index() -> None:
    matrix = ConfusionMatrix(num_classes=2, ignore_index=9)
    target = torch.tensor([[[0, 1], [9, 1]], [[1, 1], [0, 9]]], dtype=torch.uint8)
    pred = torch.tensor([[[0, 1], [1, 1]], [[1, 0], [0, 1]]])
    matrix.update(pred, target)
    assert matrix.compute()["confusion"] == [[2, 0], [1, 3]]


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        (torch.tensor([0, 1]), torch.tensor([0, 7]), "target class id 7"),
        (torch.tensor([0, 5]), torch.tensor([0, 1]), "prediction class id 5"),
        (torch.tensor([0, 1, 1]), torch.tensor([0, 1]), "shape"),
    ],
)
def test_rejects_foreign_label_sets(
    pred: torch.Tensor, target: torch.Tensor, message: str
) -> None:
    matrix = ConfusionMatrix(num_classes=2)
    with pytest.raises(ValueError, match=message):
        matrix.update(pred, target)
