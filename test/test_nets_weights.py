# SPDX-License-Identifier: Apache-2.0
"""Weights in and out: local backbone files, checkpoints, mismatches as UserErrors (torchvision's
pretrained weights: test_nets_pretrained.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import mobilenet_v3_large, resnet18

from mtl_perception.checkpoint import load_checkpoint, save_checkpoint
from mtl_perception.core.errors import UserError
from mtl_perception.nets import build_model, load_pretrained, load_weights, model_from_checkpoint

SIZE = (64, 64)


def assert_same_backbone(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    state = model.backbone.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[key], reference[key]) for key in state)


@pytest.mark.parametrize("layout", ["body", "features", "classifier", "model"])
def test_local_backbone_weights_file_is_loaded(tmp_path: Path, layout: str) -> None:
    source = mobilenet_v3_large(weights=None)
    saved = {
        "body": build_model("deeplabv3", 0, 2, SIZE).backbone.state_dict,
        "features": source.features.state_dict,
        "classifier": source.state_dict,  # a full ImageNet-style classifier; its head is ignored
        "model": build_model("deeplabv3", 0, 2, SIZE).state_dict,  # a whole model of this package
    }[layout]()
    path = tmp_path / "backbone.pth"
    torch.save(saved, path)
    model = build_model("ssdlite_deeplabv3", 2, 2, SIZE)
    record = load_pretrained(model, {"backbone": str(path)})["backbone"]
    assert record["loaded"] == record["total"] and record["file"] == str(path)
    body = {
        key.removeprefix("backbone."): v
        for key, v in saved.items()
        if not key.startswith(("classifier.", "heads."))
    }
    prefixed = {
        key if key.startswith("features.") else f"features.{key}": v for key, v in body.items()
    }
    assert_same_backbone(model, prefixed)


def test_missing_backbone_weights_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"weights file .*nope\.pth does not exist"):
        load_pretrained(
            build_model("ssdlite", 2, 0, SIZE), {"backbone": str(tmp_path / "nope.pth")}
        )


def test_foreign_or_corrupt_backbone_weights_are_user_errors(tmp_path: Path) -> None:
    model = build_model("ssdlite", 2, 0, SIZE)
    foreign = tmp_path / "resnet.pth"
    torch.save(resnet18(weights=None).state_dict(), foreign)
    with pytest.raises(UserError, match=r"no tensor of .*resnet\.pth fits the backbone"):
        load_pretrained(model, {"backbone": str(foreign)})
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match=r"corrupt\.pth cannot be read"):
        load_pretrained(model, {"backbone": str(corrupt)})
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(UserError, match="does not hold a state_dict"):
        load_pretrained(model, {"backbone": str(not_a_state_dict)})


def payload_for(model: torch.nn.Module) -> dict:
    """The model part of a checkpoint, as the trainer writes it (docs/CONTRACTS.md section 5)."""
    return {
        "model_kwargs": model.model_kwargs,
        "detection_classes": [f"c{i}" for i in range(model.num_detection_classes)],
        "segmentation_classes": [f"s{i}" for i in range(model.num_segmentation_classes)],
        "palette": [[0, 0, 0]] * model.num_segmentation_classes,
        "model": model.state_dict(),
    }


@pytest.mark.parametrize("arch", ["ssdlite_lraspp", "frcnn"])
def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path: Path, arch: str) -> None:
    model = build_model(
        arch, 3, 2, (64, 96), trainable_backbone_layers=4, mean=(0.5, 0.5, 0.5)
    ).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, payload_for(model))
    rebuilt = model_from_checkpoint(load_checkpoint(path), path).eval()
    assert rebuilt.model_kwargs == model.model_kwargs and rebuilt.mean == [0.5, 0.5, 0.5]
    assert [p.requires_grad for p in rebuilt.parameters()] == [
        p.requires_grad for p in model.parameters()
    ]
    images = [torch.rand(3, 64, 96)]
    with torch.inference_mode():
        expected, got = model(images)[0], rebuilt(images)[0]
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_state_dict_of_another_architecture_is_a_user_error() -> None:
    model = build_model("ssdlite_deeplabv3", 2, 2, SIZE)
    other = build_model("frcnn_deeplabv3", 2, 2, SIZE).state_dict()
    with pytest.raises(UserError) as error:
        load_weights(model, other, "checkpoint run.pt", "frcnn_deeplabv3")
    message = str(error.value)
    assert "\n" not in message
    assert (
        "checkpoint run.pt (arch 'frcnn_deeplabv3')" in message
        and "'ssdlite_deeplabv3' model" in message
    )
    assert "missing" in message and "unexpected" in message


def test_state_dict_with_other_class_counts_is_a_user_error() -> None:
    model = build_model("ssdlite_deeplabv3", 2, 2, SIZE)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    other = build_model("ssdlite_deeplabv3", 5, 3, SIZE).state_dict()
    with pytest.raises(
        UserError, match=r"does not fit .* 2 detection / 2 segmentation classes.*wrong shape"
    ):
        load_weights(model, other, "checkpoint run.pt", "ssdlite_deeplabv3")
    # Nothing was half-loaded before the error.
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())


def test_checkpoint_with_unknown_model_kwargs_is_a_user_error(tmp_path: Path) -> None:
    payload = payload_for(build_model("deeplabv3", 0, 2, SIZE))
    payload["model_kwargs"] = {**payload["model_kwargs"], "width_mult": 0.5}
    with pytest.raises(
        UserError, match=r"checkpoint old\.pt: model_kwargs .* do not fit build_model"
    ):
        model_from_checkpoint(payload, "old.pt")
