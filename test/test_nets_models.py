# SPDX-License-Identifier: Apache-2.0
"""Every architecture builds, trains and predicts through the one model API (tiny inputs, CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from mtl_perception.nets import ARCHITECTURES, DETECTION, SEGMENTATION, build_model

SIZE = (72, 96)  # (H, W): deliberately not square
NUM_DET, NUM_SEG = 3, 4
MULTI_TASK = [arch for arch, spec in ARCHITECTURES.items() if len(spec.tasks) == 2]
WITH_DETECTION = [arch for arch, spec in ARCHITECTURES.items() if spec.detection]
WITH_SEGMENTATION = [arch for arch, spec in ARCHITECTURES.items() if spec.segmentation]


def make_batch(
    size: tuple[int, int] = SIZE, boxes_per_image: tuple[int, ...] = (2, 0)
) -> tuple[list, list]:
    """Images in [0, 1] plus targets; an image with 0 boxes is a pure negative."""
    height, width = size
    generator = torch.Generator().manual_seed(0)
    images, targets = [], []
    for count in boxes_per_image:
        images.append(torch.rand(3, height, width, generator=generator))
        corners = torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 90.0, 60.0]])[:count]
        targets.append(
            {
                "boxes": corners,
                "labels": torch.arange(1, count + 1, dtype=torch.int64),
                "mask": torch.randint(0, NUM_SEG, (height, width), generator=generator),
            }
        )
    return images, targets


def train_steps(
    model: torch.nn.Module, images: list, targets: list, steps: int = 2
) -> list[dict[str, float]]:
    """A few plain SGD steps on the summed task losses; the loss values of each step."""
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    history = []
    for _ in range(steps):
        losses = model(images, targets)
        optimizer.zero_grad()
        torch.stack(list(losses.values())).sum().backward()
        optimizer.step()
        history.append({task: loss.item() for task, loss in losses.items()})
    return history


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_trains_and_predicts(arch: str) -> None:
    model = build_model(arch, NUM_DET, NUM_SEG, SIZE)
    images, targets = make_batch()
    history = train_steps(model, images, targets)
    assert all(set(step) == set(model.tasks) for step in history)
    assert all(math.isfinite(value) and value >= 0 for step in history for value in step.values())

    model.eval()
    with torch.inference_mode():
        outputs = model(images)
    assert len(outputs) == len(images)
    height, width = SIZE
    for output in outputs:
        if DETECTION in model.tasks:
            boxes, labels, scores = output["boxes"], output["labels"], output["scores"]
            assert boxes.ndim == 2 and boxes.shape[1] == 4 and boxes.dtype == torch.float32
            assert labels.shape == scores.shape == boxes.shape[:1] and labels.dtype == torch.int64
            if len(boxes):
                assert boxes[:, 0::2].min() >= 0 and boxes[:, 0::2].max() <= width
                assert boxes[:, 1::2].min() >= 0 and boxes[:, 1::2].max() <= height
                assert labels.min() >= 1 and labels.max() <= NUM_DET
                assert scores.min() >= 0 and scores.max() <= 1
        else:
            assert "boxes" not in output
        if SEGMENTATION in model.tasks:
            mask = output["mask"]
            assert mask.shape == SIZE and mask.dtype == torch.int64
            assert mask.min() >= 0 and mask.max() < NUM_SEG
        else:
            assert "mask" not in output


@pytest.mark.parametrize("arch", MULTI_TASK)
def test_backbone_runs_once_per_forward(arch: str) -> None:
    model = build_model(arch, NUM_DET, NUM_SEG, SIZE)
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    images, targets = make_batch()
    model.train()
    model(images, targets)
    assert len(calls) == 1
    model.eval()
    with torch.inference_mode():
        model(images)
    assert len(calls) == 2


@pytest.mark.parametrize("arch", WITH_DETECTION)
def test_batch_of_only_negatives_trains(arch: str) -> None:
    model = build_model(arch, NUM_DET, NUM_SEG, SIZE)
    images, targets = make_batch(boxes_per_image=(0, 0))
    model.train()
    loss = model(images, targets)[DETECTION]
    assert torch.isfinite(loss) and loss.item() > 0  # background classification still learns
    loss.backward()
    grads = [p.grad for p in model.task_parameters(DETECTION) if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("arch", WITH_SEGMENTATION)
def test_all_ignored_mask_gives_zero_loss_not_nan(arch: str) -> None:
    model = build_model(arch, NUM_DET, NUM_SEG, SIZE)
    images, targets = make_batch()
    for target in targets:
        target["mask"] = torch.full(SIZE, 255, dtype=torch.int64)
    model.train()
    loss = model(images, targets)[SEGMENTATION]
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph


def test_segmentation_loss_is_mean_cross_entropy_over_non_ignored_pixels() -> None:
    model = build_model(
        "deeplabv3", 0, NUM_SEG, SIZE
    ).eval()  # eval: no dropout, same logits twice
    images, targets = make_batch()
    for target in targets:
        target["mask"][:, SIZE[1] // 2 :] = 255
    head = model.heads[SEGMENTATION]
    with torch.no_grad():
        batch = model.preprocess(images)
        features = model.backbone(batch)
        loss = head.loss(features, batch, targets)
        logits = torch.nn.functional.interpolate(head.logits(features), size=SIZE, mode="bilinear")
    masks = torch.stack([target["mask"] for target in targets])
    expected = torch.nn.functional.cross_entropy(logits, masks, ignore_index=255)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (120, 160)])
def test_ssd_default_boxes_follow_input_size(size: tuple[int, int]) -> None:
    model = build_model("ssdlite", NUM_DET, 0, size).eval()
    head = model.heads[DETECTION]
    batch = model.preprocess(torch.rand(1, 3, *size))
    with torch.inference_mode():
        features = model.backbone(batch)
        head_outputs, anchors = head._outputs(features, batch)
        maps = [features[tap] for tap in head.feature_taps]
        for block in head.extra:
            maps.append(block(maps[-1]))
    per_location = head.anchor_generator.num_anchors_per_location()
    expected = sum(m.shape[-2] * m.shape[-1] * n for m, n in zip(maps, per_location, strict=True))
    assert anchors[0].shape == (expected, 4)
    assert head_outputs["cls_logits"].shape == (1, expected, NUM_DET + 1)
    centres_x = (anchors[0][:, 0] + anchors[0][:, 2]) / 2
    centres_y = (anchors[0][:, 1] + anchors[0][:, 3]) / 2
    assert centres_x.min() > 0 and centres_x.max() < size[1]
    assert centres_y.min() > 0 and centres_y.max() < size[0]


@pytest.mark.parametrize("arch", WITH_DETECTION)
def test_bad_detection_targets_are_named(arch: str) -> None:
    model = build_model(arch, NUM_DET, NUM_SEG, SIZE).train()
    images, targets = make_batch()
    targets[0]["labels"] = torch.tensor([1, NUM_DET + 1])
    with pytest.raises(ValueError, match=r"target 0: labels \[1, 4\] must be in 1\.\.3"):
        model(images, targets)
    images, targets = make_batch()
    targets[0]["boxes"] = torch.tensor([[10.0, 10.0, 10.0, 30.0], [1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(ValueError, match=r"target 0: box .* no positive width"):
        model(images, targets)


def test_bad_masks_and_images_are_named() -> None:
    model = build_model("ssdlite_deeplabv3", NUM_DET, NUM_SEG, SIZE).train()
    images, targets = make_batch()
    targets[1]["mask"][0, 0] = NUM_SEG
    with pytest.raises(ValueError, match=f"mask class id {NUM_SEG} is outside 0..{NUM_SEG - 1} "):
        model(images, targets)
    images, targets = make_batch()
    targets[0]["mask"] = torch.zeros(SIZE[1], SIZE[0], dtype=torch.int64)
    with pytest.raises(ValueError, match="mask shape"):
        model(images, targets)
    with pytest.raises(ValueError, match="input_size"):
        model([torch.rand(3, 64, 64)] * 2, targets)
    with pytest.raises(ValueError, match="one target per image"):
        model(images, targets[:1])
    model.eval()
    with pytest.raises(RuntimeError, match="training mode"):
        model.forward_train(images, targets)


def test_tensor_batch_and_channels_last_give_the_same_predictions() -> None:
    model = build_model("ssdlite_lraspp", NUM_DET, NUM_SEG, SIZE).eval()
    images, _ = make_batch()
    with torch.inference_mode():
        reference = model(images)
        model.to(memory_format=torch.channels_last)
        stacked = model(torch.stack(images))
    for expected, got in zip(reference, stacked, strict=True):
        assert torch.equal(expected["mask"], got["mask"])
        assert torch.allclose(expected["scores"][:20], got["scores"][:20], atol=1e-4)


def test_targets_in_other_dtypes_train_like_the_canonical_ones() -> None:
    """Loaders hand over uint8 masks, int32 labels or float64 boxes; the loss must not care."""
    model = build_model("ssdlite_deeplabv3", NUM_DET, NUM_SEG, SIZE).eval()  # eval: deterministic
    images, targets = make_batch()
    odd = [
        {
            "boxes": t["boxes"].double(),
            "labels": t["labels"].int(),
            "mask": t["mask"].to(torch.uint8),
        }
        for t in targets
    ]
    head_losses = []
    with torch.no_grad():
        batch = model.preprocess(images)
        features = model.backbone(batch)
        for candidate in (targets, odd):
            head_losses.append(
                [head.loss(features, batch, candidate).item() for head in model.heads.values()]
            )
    assert head_losses[0] == pytest.approx(head_losses[1])
