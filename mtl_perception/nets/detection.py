# SPDX-License-Identifier: Apache-2.0
"""Detection heads on the shared MobileNetV3 taps: SSDLite and Faster R-CNN with FPN.

Both subclass torchvision's detector so its anchor generators, box matchers, losses and
post-processing are reused unchanged. Only the front is replaced: torchvision's ``forward`` runs
its own transform (resize + normalise) and its own backbone, whereas here the images are already
at input size and normalised, and the backbone has run once for all tasks. So ``loss`` and
``predict`` start from the backbone taps; boxes are in input-size pixels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block, _normal_init
from torchvision.ops import FeaturePyramidNetwork, box_iou
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from mtl_perception.core.errors import UserError
from mtl_perception.nets.backbone import TAP_STRIDE16_EXPAND, TAP_STRIDE32, TAP_STRIDE32_BLOCK
from mtl_perception.nets.task_head import DETECTION, Targets, is_labeled

# The detectors never see raw images (the model normalises once): their transforms get identity
# statistics.
_IDENTITY_MEAN = [0.0, 0.0, 0.0]
_IDENTITY_STD = [1.0, 1.0, 1.0]


def _image_list(images: Tensor) -> ImageList:
    """All images already have the batch's size: no padding, no rescaling back afterwards."""
    height, width = images.shape[-2:]
    return ImageList(images, [(int(height), int(width))] * images.shape[0])


def _total(losses: Mapping[str, Tensor]) -> Tensor:
    """The detection loss: the plain sum of the detector's loss terms."""
    return torch.stack(list(losses.values())).sum()


def detection_targets(targets: Targets, num_classes: int) -> list[dict[str, Tensor]]:
    """Check boxes/labels of each target and keep only those two fields (what the detectors read).

    Errors name the batch position and the value, since torchvision's own checks either assert
    with little context or fail deep inside the loss.
    """
    checked = []
    for index, target in enumerate(targets):
        boxes, labels = target["boxes"], target["labels"]
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            shapes = f"boxes {tuple(boxes.shape)} / labels {tuple(labels.shape)}"
            raise ValueError(f"target {index}: {shapes} must be [N,4] / [N]")
        if boxes.numel():
            degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
            if degenerate.any():
                box = boxes[degenerate][0].tolist()
                raise ValueError(
                    f"target {index}: box {box} has no positive width and height (xyxy expected)"
                )
            if labels.min() < 1 or labels.max() > num_classes:
                raise ValueError(
                    f"target {index}: labels {labels.tolist()} must be in 1..{num_classes} "
                    "(0 is background)"
                )
        checked.append({"boxes": boxes.float(), "labels": labels.long()})
    return checked


def _positive_int(name: str, value: object) -> int:
    """``value`` if it is an integer >= 1, else a ``UserError`` naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name}={value!r} must be an integer >= 1")
    return value


class SSDLiteDetector(SSD):
    """SSDLite (MobileNetV3 paper, section 6.3) on the stride-16 expansion and stride-32 taps.

    The four extra stride-2 blocks and the depthwise prediction heads are torchvision's, as are the
    settings of ``ssdlite320_mobilenet_v3_large``. Default boxes are generated per feature-map
    size, so they follow any (also non-square) input size.
    """

    task = DETECTION
    feature_taps: tuple[str, ...] = (TAP_STRIDE16_EXPAND, TAP_STRIDE32)
    option_names: tuple[str, ...] = ()

    def __init__(
        self, tap_channels: Mapping[str, int], num_classes: int, input_size: tuple[int, int]
    ) -> None:
        """``num_classes`` counts real classes; background is added here."""
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
        extra_channels = [512, 256, 256, 128]
        extra_in = [tap_channels[TAP_STRIDE32], *extra_channels[:-1]]
        # torchvision's private builders, reused so the extra layers stay exactly torchvision's
        # (version pinned).
        extra = nn.ModuleList(
            _extra_block(cin, cout, norm_layer)
            for cin, cout in zip(extra_in, extra_channels, strict=True)
        )
        _normal_init(extra)
        anchor_generator = DefaultBoxGenerator(
            [[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95
        )
        map_channels = [tap_channels[tap] for tap in self.feature_taps] + extra_channels
        head = SSDLiteHead(
            map_channels, anchor_generator.num_anchors_per_location(), num_classes + 1, norm_layer
        )
        super().__init__(
            nn.Identity(),  # the shared body runs outside; torchvision's slot stays empty
            anchor_generator,
            input_size,
            num_classes + 1,
            image_mean=_IDENTITY_MEAN,
            image_std=_IDENTITY_STD,
            head=head,
            score_thresh=0.001,
            nms_thresh=0.55,
            detections_per_img=300,
            topk_candidates=300,
        )
        del self.backbone
        self.extra = extra
        self.num_classes = num_classes
        self.options: dict[str, object] = {}

    def forward(
        self, features: Mapping[str, Tensor], images: Tensor, targets: Targets | None = None
    ) -> Tensor | list[dict[str, Tensor]]:
        """The loss when ``targets`` are given, else the detections."""
        return (
            self.predict(features, images)
            if targets is None
            else self.loss(features, images, targets)
        )

    def _outputs(
        self, features: Mapping[str, Tensor], images: Tensor
    ) -> tuple[dict[str, Tensor], list[Tensor]]:
        """Head outputs and default boxes (one set per image) for the six SSD feature maps."""
        maps = [features[tap] for tap in self.feature_taps]
        for block in self.extra:
            maps.append(block(maps[-1]))
        return self.head(maps), self.anchor_generator(_image_list(images), maps)

    def _match(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """Ground-truth index per default box (-1 = background; all of them without boxes)."""
        if boxes.numel() == 0:
            return torch.full((anchors.size(0),), -1, dtype=torch.int64, device=anchors.device)
        return self.proposal_matcher(box_iou(boxes, anchors))

    def loss(self, features: Mapping[str, Tensor], images: Tensor, targets: Targets) -> Tensor:
        """Sum of SSD's box-regression and classification (hard-negative-mined) losses.

        An unlabeled target (``"labeled": False``) counts as an image without boxes, which
        torchvision's mining leaves out of the loss, and is not given the box-free negatives.
        """
        labeled = [is_labeled(target) for target in targets]
        targets = [
            target
            if keep
            else {**target, "boxes": target["boxes"][:0], "labels": target["labels"][:0]}
            for target, keep in zip(targets, labeled, strict=True)
        ]
        targets = detection_targets(targets, self.num_classes)
        head_outputs, anchors = self._outputs(features, images)
        matched = [
            self._match(anchors_i, target["boxes"])
            for anchors_i, target in zip(anchors, targets, strict=True)
        ]
        losses = self.compute_loss(targets, head_outputs, anchors, matched)
        # compute_loss normalises by the number of matched default boxes (at least 1); so does
        # this term.
        num_foreground = max(1, int(sum(int((m >= 0).sum()) for m in matched)))
        negatives = self._box_free_image_negatives(head_outputs["cls_logits"], matched, labeled)
        return _total(losses) + negatives / num_foreground

    def _box_free_image_negatives(
        self, cls_logits: Tensor, matched: Sequence[Tensor], labeled: Sequence[bool]
    ) -> Tensor:
        """Background loss of the hardest default boxes of labeled images without any matched box.

        torchvision mines ``neg_to_pos_ratio`` negatives per positive, so an image without boxes
        adds nothing to the loss and could never teach "no object here". Its minimum of
        ``neg_to_pos_ratio`` negatives per image (present but commented out in
        ``SSD.compute_loss``) is restored here for exactly those images.
        """
        empty = [
            index
            for index, (matched_idxs, keep) in enumerate(zip(matched, labeled, strict=True))
            if keep and not bool((matched_idxs >= 0).any())
        ]
        if not empty:
            return cls_logits.new_zeros(())
        logits = cls_logits[empty]
        background = torch.zeros(logits.shape[:2], dtype=torch.int64, device=logits.device)
        per_box = nn.functional.cross_entropy(
            logits.flatten(0, 1), background.flatten(), reduction="none"
        ).view_as(background)
        hardest = min(int(self.neg_to_pos_ratio), per_box.shape[1])
        return per_box.topk(hardest, dim=1).values.sum()

    def predict(self, features: Mapping[str, Tensor], images: Tensor) -> list[dict[str, Tensor]]:
        """Boxes (xyxy, input pixels), 1-based labels and scores per image, after NMS."""
        head_outputs, anchors = self._outputs(features, images)
        return self.postprocess_detections(head_outputs, anchors, _image_list(images).image_sizes)


class TapFeaturePyramid(nn.Module):
    """FPN over chosen backbone taps (+ a max-pooled level), as in torchvision's MobileNetV3 FPN.

    The layout is that of ``fasterrcnn_mobilenet_v3_large_fpn``.
    """

    def __init__(
        self, taps: Sequence[str], in_channels: Sequence[int], out_channels: int = 256
    ) -> None:
        super().__init__()
        self.taps = tuple(taps)
        self.out_channels = out_channels  # read by torchvision's FasterRCNN constructor
        self.fpn = FeaturePyramidNetwork(
            list(in_channels), out_channels, extra_blocks=LastLevelMaxPool()
        )

    def forward(self, features: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
        """FPN levels keyed ``"0"``, ``"1"``, ``"pool"`` (the names RoI pooling expects)."""
        return self.fpn(OrderedDict((str(i), features[tap]) for i, tap in enumerate(self.taps)))


# Test-time RPN proposals kept before / after NMS. torchvision's default (1000 / 1000) is meant for
# 800-px images; its low-resolution mobile model (``fasterrcnn_mobilenet_v3_large_320_fpn``) keeps
# 150 / 150. The RoI box head runs once per proposal, so at 240x320 1000 proposals cost ~29 GFLOPs
# there (>20x the whole backbone); 150 bring it to ~4. Training keeps torchvision's 2000 / 2000
# (the RoI head then samples 512 per image anyway, so it is not the training bottleneck).
DEFAULT_RPN_PRE_NMS_TOP_N_TEST = 150
DEFAULT_RPN_POST_NMS_TOP_N_TEST = 150


class FasterRCNNDetector(FasterRCNN):
    """Faster R-CNN with FPN, RPN and RoI heads as torchvision's MobileNetV3-Large FPN model.

    The FPN belongs to the detection task (its parameters are detection parameters); its inputs
    are the two stride-32 taps, as in torchvision. torchvision's resize transform (``min_size``)
    never runs: images arrive at the model's input size.
    """

    task = DETECTION
    feature_taps: tuple[str, ...] = (TAP_STRIDE32_BLOCK, TAP_STRIDE32)
    option_names: tuple[str, ...] = ("rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test")

    def __init__(
        self,
        tap_channels: Mapping[str, int],
        num_classes: int,
        input_size: tuple[int, int],
        *,
        rpn_pre_nms_top_n_test: int = DEFAULT_RPN_PRE_NMS_TOP_N_TEST,
        rpn_post_nms_top_n_test: int = DEFAULT_RPN_POST_NMS_TOP_N_TEST,
    ) -> None:
        """Build Faster R-CNN on the two stride-32 taps.

        Args:
            tap_channels: Channels of each backbone tap.
            num_classes: Real classes; background is added here.
            input_size: ``(H, W)`` the model runs at.
            rpn_pre_nms_top_n_test: Proposals per FPN level kept before NMS in eval mode.
            rpn_post_nms_top_n_test: Proposals per image kept after NMS in eval mode.

        Raises:
            UserError: an ``rpn_*`` option is not an integer >= 1.
        """
        options = {
            "rpn_pre_nms_top_n_test": _positive_int(
                "rpn_pre_nms_top_n_test", rpn_pre_nms_top_n_test
            ),
            "rpn_post_nms_top_n_test": _positive_int(
                "rpn_post_nms_top_n_test", rpn_post_nms_top_n_test
            ),
        }
        fpn = TapFeaturePyramid(
            self.feature_taps, [tap_channels[tap] for tap in self.feature_taps]
        )
        anchor_sizes = ((32, 64, 128, 256, 512),) * 3
        super().__init__(
            fpn,
            num_classes + 1,
            min_size=min(input_size),
            max_size=max(input_size),
            image_mean=_IDENTITY_MEAN,
            image_std=_IDENTITY_STD,
            rpn_anchor_generator=AnchorGenerator(
                anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes)
            ),
            **options,
        )
        # In this package "backbone" means the shared body only; torchvision's slot holds the FPN.
        del self.backbone
        self.fpn = fpn
        self.num_classes = num_classes
        self.options = options

    def forward(
        self, features: Mapping[str, Tensor], images: Tensor, targets: Targets | None = None
    ) -> Tensor | list[dict[str, Tensor]]:
        """The loss when ``targets`` are given, else the detections."""
        return (
            self.predict(features, images)
            if targets is None
            else self.loss(features, images, targets)
        )

    def _run(
        self,
        features: Mapping[str, Tensor],
        images: Tensor,
        targets: list[dict[str, Tensor]] | None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Torchvision's GeneralizedRCNN.forward after its backbone: FPN, RPN, RoI heads."""
        pyramid = self.fpn(features)
        image_list = _image_list(images)
        proposals, rpn_losses = self.rpn(image_list, pyramid, targets)
        detections, roi_losses = self.roi_heads(
            pyramid, proposals, image_list.image_sizes, targets
        )
        return detections, {**rpn_losses, **roi_losses}

    def loss(self, features: Mapping[str, Tensor], images: Tensor, targets: Targets) -> Tensor:
        """Sum of RPN objectness and box, classifier and box-regression losses (training mode).

        Unlabeled targets (``"labeled": False``) are left out of the batch: torchvision's RPN and
        RoI samplers would take an image without boxes as all background. (Dropping samples is
        safe here: FPN, RPN and RoI heads have no BatchNorm.)
        """
        if not self.training:
            raise RuntimeError(
                "Faster R-CNN computes losses only in training mode (torchvision's RPN/RoI heads)"
            )
        keep = [index for index, target in enumerate(targets) if is_labeled(target)]
        if len(keep) < len(targets):
            index = torch.tensor(keep, dtype=torch.int64, device=images.device)
            features = {tap: features[tap].index_select(0, index) for tap in self.feature_taps}
            images, targets = images.index_select(0, index), [targets[i] for i in keep]
        _, losses = self._run(features, images, detection_targets(targets, self.num_classes))
        return _total(losses)

    def predict(self, features: Mapping[str, Tensor], images: Tensor) -> list[dict[str, Tensor]]:
        """Boxes (xyxy, input pixels), 1-based labels and scores per image."""
        detections, _ = self._run(features, images, None)
        return detections
