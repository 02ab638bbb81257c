# SPDX-License-Identifier: Apache-2.0
"""The processed multi-task dataset (docs/CONTRACTS.md section 4) as a torch ``Dataset``.

One sample = an RGB image, its detection boxes/labels, its class-id mask and (when the frame
has one) its depth map in metres, wrapped as ``tv_tensors`` for the transforms (the depth map as
a ``Mask``, so geometric transforms move it with the image and resample it nearest-neighbour:
interpolating would blend invalid zeros into valid depths). A frame marked ``"labeled": false``
(depth only) carries ``labeled=False`` in its target, which masks out its detection and
segmentation losses. The folder is checked once when opened, so a broken dataset fails with one
clear line before training starts rather than in a worker mid-epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler
from torchvision import tv_tensors

from mtl_perception.core.constants import IGNORE_INDEX
from mtl_perception.core.depth import read_depth_target
from mtl_perception.core.errors import UserError
from mtl_perception.core.json_io import read_json


@dataclass(frozen=True)
class DatasetInfo:
    """Class names and palette from ``classes.json``."""

    detection_classes: list[str]
    segmentation_classes: list[str]
    palette: list[list[int]]


def _read_json(path: Path) -> Any:
    return read_json(path, hint=f"is {path.parent} a processed dataset from `mtl-data build`?")


def read_dataset_info(root: str | Path) -> DatasetInfo:
    """Parse and check ``<root>/classes.json``."""
    path = Path(root) / "classes.json"
    data = _read_json(path)
    try:
        info = DatasetInfo(
            list(data["detection_classes"]),
            list(data["segmentation_classes"]),
            [list(c) for c in data["palette"]],
        )
    except (KeyError, TypeError) as err:
        raise UserError(f"{path}: missing or malformed field {err}") from None
    if len(info.palette) != len(info.segmentation_classes):
        raise UserError(
            f"{path}: {len(info.palette)} palette colours for "
            f"{len(info.segmentation_classes)} segmentation classes"
        )
    return info


class ProcessedDataset(Dataset):
    """One split of a processed dataset.

    Augmentation randomness is seeded per sample from ``(seed, epoch, index)`` (see
    ``__getitem__``), so an epoch's samples are identical whatever the number of workers and
    whether the epoch was resumed half-way.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[..., Any] | None = None,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"data.root {self.root} is not a folder")
        self.info = read_dataset_info(self.root)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        annotations = _read_json(self.root / "annotations.json")
        splits = _read_json(self.root / "splits.json")
        if split not in splits:
            known = sorted(k for k in splits if isinstance(splits[k], list))
            raise UserError(f"{self.root / 'splits.json'}: no {split!r} split (has {known})")
        images = {image["id"]: image for image in annotations.get("images", [])}
        missing_ids = [i for i in splits[split] if i not in images]
        if missing_ids:
            raise UserError(
                f"{self.root / 'splits.json'}: {split} lists image id {missing_ids[0]} not in "
                f"annotations.json ({len(missing_ids)} such ids)"
            )
        self.images = [images[i] for i in splits[split]]
        missing_files = [
            im["file_name"] for im in self.images if not (self.root / im["file_name"]).is_file()
        ]
        missing_files += [
            im["depth_file"]
            for im in self.images
            if im.get("depth_file") and not (self.root / im["depth_file"]).is_file()
        ]
        if missing_files:
            raise UserError(
                f"{self.root}: {len(missing_files)} image/depth file(s) of the {split} split "
                f"missing, first {missing_files[0]}"
            )
        self.has_depth = any(im.get("depth_file") for im in self.images)
        num_classes = len(self.info.detection_classes)
        self.boxes: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
        for ann in annotations.get("annotations", []):
            if not 1 <= ann.get("category_id", 0) <= num_classes:
                raise UserError(
                    f"{self.root / 'annotations.json'}: annotation {ann.get('id')} has "
                    f"category_id {ann.get('category_id')}, expected 1..{num_classes}"
                )
            # Crowd regions are not instances.
            if ann.get("iscrowd", 0) == 0 and ann["image_id"] in self.boxes:
                self.boxes[ann["image_id"]].append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation randomness of ``epoch`` (call before creating the iterator)."""
        self.epoch = epoch

    def _read_image(self, record: dict[str, Any]) -> np.ndarray:
        path = self.root / record["file_name"]
        # IMREAD_COLOR also turns mono and 16-bit frames into 8-bit 3-channel images.
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise UserError(f"{path}: not a readable image")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _read_mask(self, record: dict[str, Any], shape: tuple[int, int]) -> np.ndarray:
        mask_file = record.get("mask_file")
        if not mask_file:  # image without segmentation labels: ignore every pixel
            return np.full(shape, IGNORE_INDEX, np.uint8)
        path = self.root / mask_file
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if mask is None or mask.ndim != 2 or mask.shape != shape:
            found = "unreadable" if mask is None else f"shape {list(mask.shape)}"
            raise UserError(
                f"{path}: expected a single-channel mask of {list(shape)}, found {found}"
            )
        # Ids beyond classes.json (another label set, a tool's "void" value) are not trainable
        # and would crash the loss: treat them as unlabelled.
        mask = mask.copy()
        mask[mask >= len(self.info.segmentation_classes)] = IGNORE_INDEX
        return mask

    def load(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """The untransformed sample ``index``."""
        record = self.images[index]
        rgb = self._read_image(record)
        height, width = rgb.shape[:2]
        labeled = bool(record.get("labeled", True))
        mask = (
            self._read_mask(record, (height, width))
            if labeled
            else np.full((height, width), IGNORE_INDEX, np.uint8)
        )
        anns = self.boxes[record["id"]] if labeled else []
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "mask": tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64))),
            "image_id": int(record["id"]),
            "labeled": labeled,
        }
        if record.get("depth_file"):
            depth = read_depth_target(self.root / record["depth_file"], (height, width))
            target["depth"] = tv_tensors.Mask(torch.from_numpy(depth)[None])
        return tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1).contiguous()), target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = self.load(index)
        if self.transform is not None:
            # v2 transforms draw from torch's global RNG; fork it and seed from (seed, epoch,
            # index) so the sample does not depend on worker count or on what ran before.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(
                    int(
                        np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
                    )
                )
                image, target = self.transform(image, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor).float()
        target["mask"] = target["mask"].as_subclass(torch.Tensor).long()
        if "depth" in target:
            target["depth"] = target["depth"].as_subclass(torch.Tensor)[0].float()
        return image.as_subclass(torch.Tensor), target


def collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Keep images and targets as lists (detection models take variable box counts)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (deterministic order per epoch and seed) that can start mid-epoch.

    Also used with one process, so a resumed run sees exactly the order of the killed one and
    skips the samples it had already trained on.
    """

    def __init__(
        self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        self.start_index = 0

    def set_position(self, epoch: int, start_index: int) -> None:
        """Iterate epoch ``epoch`` beginning at its ``start_index``-th sample (of this rank)."""
        self.set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start_index :])

    def __len__(self) -> int:
        return max(self.num_samples - self.start_index, 0)
