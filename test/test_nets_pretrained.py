# SPDX-License-Identifier: Apache-2.0
"""Pretrained starts: torchvision's own builders' state_dicts, planted in a temporary TORCH_HOME
under the file names of the weights enums' URLs, load into every architecture as claimed.

The check is functional where the layers are the same: a torchvision reference model holding
the planted weights and this package's model must compute the same features on the same input.
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision.models import MobileNet_V3_Large_Weights, get_model
from torchvision.ops.misc import FrozenBatchNorm2d

from mtl_perception.core.errors import UserError
from mtl_perception.nets import ARCHITECTURES, build_model, load_pretrained
from mtl_perception.nets.detection import FasterRCNNDetector, SSDLiteDetector
from mtl_perception.nets.pretrained import COCO_SOURCES, describe
from mtl_perception.nets.segmentation import DeepLabV3Segmenter, LRASPPSegmenter

SIZE = (96, 128)
IMAGENET_WEIGHTS = MobileNet_V3_Large_Weights.IMAGENET1K_V1
# torchvision builder and arguments of each head's COCO weights: the real layout (the COCO
# models were trained from the ImageNet backbone, which e.g. makes SSDLite keep the full tail).
BUILDERS = {
    SSDLiteDetector: ("ssdlite320_mobilenet_v3_large", {}),
    FasterRCNNDetector: ("fasterrcnn_mobilenet_v3_large_320_fpn", {}),
    DeepLabV3Segmenter: ("deeplabv3_mobilenet_v3_large", {"aux_loss": True, "num_classes": 21}),
    LRASPPSegmenter: ("lraspp_mobilenet_v3_large", {"num_classes": 21}),
}
# Layers whose shape depends on the class count: the only ones a COCO start leaves at init.
CLASS_LAYERS = {
    SSDLiteDetector: {
        f"heads.detection.head.classification_head.module_list.{i}.1.{p}"
        for i in range(6)
        for p in ("weight", "bias")
    },
    FasterRCNNDetector: {
        f"heads.detection.roi_heads.box_predictor.{n}.{p}"
        for n in ("cls_score", "bbox_pred")
        for p in ("weight", "bias")
    },
    DeepLabV3Segmenter: {f"heads.segmentation.head.4.{p}" for p in ("weight", "bias")},
    LRASPPSegmenter: {
        f"heads.segmentation.head.{n}_classifier.{p}"
        for n in ("low", "high")
        for p in ("weight", "bias")
    },
}


def _vary_norm_layers(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Freshly built BatchNorms are all alike (1, 0, 0, 1); make each distinct, so loading one
    into the place of another cannot pass unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    varied = {}
    for key, value in state.items():
        if key.endswith(("running_var", "bn.weight")) or (
            key.endswith(".weight") and value.ndim == 1
        ):
            value = value * (0.8 + 0.4 * torch.rand(value.shape, generator=generator))
        elif key.endswith(("running_mean", ".bias")) and value.is_floating_point():
            value = value + 0.2 * torch.rand(value.shape, generator=generator) - 0.1
        varied[key] = value
    return varied


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory: pytest.TempPathFactory):
    """A TORCH_HOME holding every file the mapping reads, made by torchvision's builders."""
    home = tmp_path_factory.mktemp("torch_home")
    cache = home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        torch.manual_seed(0)
        imagenet = _vary_norm_layers(get_model("mobilenet_v3_large", weights=None).state_dict(), 0)
        torch.save(imagenet, cache / os.path.basename(IMAGENET_WEIGHTS.url))
        references = {}
        for seed, (head, (name, kwargs)) in enumerate(BUILDERS.items(), start=1):
            # The builder loads the planted ImageNet file as the COCO models' training did.
            model = get_model(name, weights=None, weights_backbone=IMAGENET_WEIGHTS, **kwargs)
            state = _vary_norm_layers(model.state_dict(), seed)
            model.load_state_dict(state)
            weights = COCO_SOURCES[head](build_model("ssdlite_lraspp", 1, 2, SIZE)).weights
            torch.save(state, cache / os.path.basename(weights.url))
            references[head] = model.eval()
        yield home, references


def _model(arch: str) -> torch.nn.Module:
    spec = ARCHITECTURES[arch]
    options = {"aspp_separable": False} if spec.segmentation is DeepLabV3Segmenter else {}
    return build_model(
        arch, 3 if spec.detection else 0, 4 if spec.segmentation else 0, SIZE, **options
    ).eval()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_coco_start_loads_everything_but_the_class_layers(
    arch: str, torch_home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(torch_home[0]))
    spec = ARCHITECTURES[arch]
    model = _model(arch)
    parts = {
        "backbone": "coco",
        "detection": "coco" if spec.detection else None,
        "segmentation": "coco" if spec.segmentation else None,
    }
    records = load_pretrained(model, parts)
    assert set(records) == {part for part, choice in parts.items() if choice}
    assert (
        records["backbone"]["loaded"] == records["backbone"]["total"] == 262
        and not records["backbone"]["not_loaded"]
    )
    for task, head in (("detection", spec.detection), ("segmentation", spec.segmentation)):
        if head is None:
            continue
        record = records[task]
        assert set(record["not_loaded"]) == CLASS_LAYERS[head]
        assert record["loaded"] == record["total"] - len(CLASS_LAYERS[head])
        assert {entry.split(" ")[0] for entry in record["shape_mismatch"]} == CLASS_LAYERS[head]
    lines = describe(records)
    assert len(lines) == len(records) and all(line.startswith("pretrained ") for line in lines)


def _blocks(features, count: int, x: torch.Tensor) -> torch.Tensor:
    for index in range(count):
        x = (
            features[index](x)
            if not isinstance(features, torch.nn.ModuleDict)
            else features[str(index)](x)
        )
    return x


@torch.no_grad()
def test_loaded_parts_compute_what_torchvision_computes(
    torch_home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(torch_home[0]))
    references = torch_home[1]
    x = torch.randn(1, 3, *SIZE)

    imagenet = get_model("mobilenet_v3_large", weights=None)
    imagenet.load_state_dict(
        torch.load(
            Path(torch_home[0]) / "hub/checkpoints" / os.path.basename(IMAGENET_WEIGHTS.url)
        )
    )
    model = _model("ssdlite")
    load_pretrained(model, {"backbone": "imagenet"})
    torch.testing.assert_close(model.backbone(x)["stride32"], imagenet.eval().features(x))

    # SSDLite: the six feature maps (body taps + extra blocks) and the box regression.
    model = _model("ssdlite")
    load_pretrained(model, {"backbone": "coco", "detection": "coco"})
    reference = references[SSDLiteDetector]
    taps = model.backbone(x)
    head = model.heads["detection"]
    maps = [taps["stride16_expand"], taps["stride32"]]
    for block in head.extra:
        maps.append(block(maps[-1]))
    expected = list(reference.backbone(x).values())
    for ours, theirs in zip(maps, expected, strict=True):
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(
        head.head.regression_head(maps), reference.head.regression_head(expected)
    )

    # Faster R-CNN: FPN levels, RPN head and box head.
    model = _model("frcnn")
    load_pretrained(model, {"backbone": "coco", "detection": "coco"})
    reference = references[FasterRCNNDetector]
    for module in reference.modules():  # torchvision freezes the trained BatchNorms with eps 1e-5;
        if isinstance(module, FrozenBatchNorm2d):  # the body keeps MobileNetV3's 0.001
            module.eps = 0.001
    ours = model.heads["detection"].fpn(model.backbone(x))
    theirs = reference.backbone(x)
    for level in theirs:
        torch.testing.assert_close(ours[level], theirs[level])
    detector = model.heads["detection"]
    torch.testing.assert_close(
        detector.rpn.head(list(ours.values())), reference.rpn.head(list(theirs.values()))
    )
    rois = torch.randn(5, 256, 7, 7)
    torch.testing.assert_close(
        detector.roi_heads.box_head(rois), reference.roi_heads.box_head(rois)
    )

    # Segmenters: torchvision dilates the last stage (ours stays at stride 32), so the bodies
    # agree up to it; the head branches that do not depend on the atrous rates agree.
    for arch, head_type in (("deeplabv3", DeepLabV3Segmenter), ("lraspp", LRASPPSegmenter)):
        model = _model(arch)
        load_pretrained(model, {"backbone": "coco", "segmentation": "coco"})
        reference = references[head_type]
        undilated = model.backbone.expand_index
        torch.testing.assert_close(
            _blocks(model.backbone.features, undilated, x),
            _blocks(reference.backbone, undilated, x),
        )
        high = torch.randn(1, 960, 3, 4)
        ours_head, theirs_head = model.heads["segmentation"].head, reference.classifier
        if head_type is DeepLabV3Segmenter:
            for branch in (0, 4):
                torch.testing.assert_close(
                    ours_head[0].convs[branch](high), theirs_head[0].convs[branch](high)
                )
            mid = torch.randn(1, 256 * 5, 3, 4)
            torch.testing.assert_close(ours_head[0].project(mid), theirs_head[0].project(mid))
            after_aspp = mid[:, :256]
            torch.testing.assert_close(
                _blocks(ours_head[1:], 3, after_aspp),
                _blocks(list(theirs_head)[1:], 3, after_aspp),
            )
        else:
            torch.testing.assert_close(ours_head.cbr(high), theirs_head.cbr(high))
            torch.testing.assert_close(ours_head.scale(high), theirs_head.scale(high))


def test_offline_without_the_file_is_one_line_naming_file_and_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(
        url: str, *args: object, **kwargs: object
    ) -> None:  # what urllib raises without DNS
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as caught:
        load_pretrained(_model("ssdlite_lraspp"), {"detection": "coco"})
    message = str(caught.value)
    cache = tmp_path / "hub" / "checkpoints"
    assert "\n" not in message and "ssdlite320_mobilenet_v3_large_coco-a79551df.pth" in message
    assert f"place it in {cache}" in message and "name resolution" in message


def test_bad_choices_are_user_errors(torch_home, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(torch_home[0]))
    with pytest.raises(UserError, match="arch 'deeplabv3' has no detection head"):
        load_pretrained(_model("deeplabv3"), {"detection": "coco"})
    with pytest.raises(
        UserError, match=r"model.pretrained.detection='imagenet' must be null or 'coco'"
    ):
        load_pretrained(_model("ssdlite"), {"detection": "imagenet"})
    with pytest.raises(UserError, match="unknown part"):
        load_pretrained(_model("ssdlite"), {"neck": "coco"})


def test_finetune_config_trains_from_planted_weights(
    torch_home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """config/train/finetune.yaml end to end: loads what it claims, trains, records it."""
    from datasets import make_processed_dataset

    from mtl_perception.checkpoint import load_checkpoint
    from mtl_perception.train import cli

    monkeypatch.setenv("TORCH_HOME", str(torch_home[0]))
    root = make_processed_dataset(tmp_path / "ds")
    config = Path(__file__).resolve().parents[1] / "config/train/finetune.yaml"
    cli.run(
        [
            "--config",
            str(config),
            f"data.root={root}",
            f"output_dir={tmp_path}",
            "device=cpu",
            "model.input_size=[64,64]",
            "optim.epochs=1",
            "optim.warmup_steps=1",
            "data.batch_size=2",
            "data.num_workers=0",
            "logging.progress=false",
            "logging.tensorboard=false",
        ]
    )
    out = capsys.readouterr().out
    assert "pretrained backbone: SSDLite320_MobileNet_V3_Large_Weights.COCO_V1" in out
    assert (
        "pretrained segmentation: LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1" in out
    )
    checkpoint = load_checkpoint(tmp_path / "finetune" / "last.pt")
    record = checkpoint["pretrained"]
    assert set(record) == {"backbone", "detection", "segmentation"}
    assert (
        record["backbone"]["loaded"] == 262
        and set(record["detection"]["not_loaded"]) == CLASS_LAYERS[SSDLiteDetector]
    )
    assert checkpoint["global_step"] == 3 and all(
        torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point()
    )
    # Frozen early stages kept their COCO weights exactly; trained ones moved.
    planted = torch.load(
        Path(torch_home[0]) / "hub/checkpoints/ssdlite320_mobilenet_v3_large_coco-a79551df.pth"
    )
    assert torch.equal(
        checkpoint["ema"]["online_model"]["backbone.features.0.0.weight"],
        planted["backbone.features.0.0.0.weight"],
    )
    assert not torch.equal(
        checkpoint["ema"]["online_model"]["backbone.features.16.0.weight"],
        planted["backbone.features.1.3.0.weight"],
    )
