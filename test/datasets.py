# SPDX-License-Identifier: Apache-2.0
"""Tiny processed datasets (docs/CONTRACTS.md section 4) written programmatically for tests.

``make_processed_dataset(tmp_path)`` writes ~8 images of 64x48 with boxes and masks: bright
rectangles ("box") and discs ("cone") on a dark background with a "floor" band, so models can
learn something in a few steps. It includes what real data has: an image without objects, a
grayscale frame, an image without a mask (all ignore) and ignore pixels at object borders.
With ``depth=True`` every frame but one (index 4) also gets a uint16 millimetre depth map
(wall 4 m, floor 2.5 m -> 1 m towards the bottom, objects at 1.5 m, a patch of invalid zeros);
``depth_only=N`` adds N train frames marked ``"labeled": false`` (depth, no labels).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

DETECTION_CLASSES = ["box", "cone"]
SEGMENTATION_CLASSES = ["background", "floor", "box", "cone"]
PALETTE = [[0, 0, 0], [128, 64, 128], [220, 20, 60], [255, 160, 0]]


def make_processed_dataset(
    root: Path,
    num_images: int = 8,
    size: tuple[int, int] = (48, 64),
    seed: int = 0,
    val_fraction: float = 0.25,
    depth: bool = False,
    depth_only: int = 0,
) -> Path:
    """Write a processed dataset under ``root``; returns ``root``. ``size`` is [H, W]."""
    rng = np.random.default_rng(seed)
    height, width = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    if depth or depth_only:
        (root / "depth").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images + depth_only):
        stem = f"{1_000_000_000 + index * 100_000_000}"
        rgb = np.full((height, width, 3), 30, np.uint8)
        mask = np.zeros((height, width), np.uint8)
        floor_top = height * 3 // 4
        rgb[floor_top:] = (90, 60, 90)
        mask[floor_top:] = 1
        metres = np.full((height, width), 4.0, np.float32)
        metres[floor_top:] = np.linspace(2.5, 1.0, height - floor_top, dtype=np.float32)[:, None]
        num_objects = 0 if index == 1 else 1 + index % 2
        for obj in range(num_objects):
            category = 1 + (index + obj) % 2
            w, h = int(rng.integers(12, 22)), int(rng.integers(10, 18))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            if category == 1:
                rgb[y : y + h, x : x + w] = (230, 40, 60)
                mask[y : y + h, x : x + w] = 2
                metres[y : y + h, x : x + w] = 1.5
            else:
                region = np.zeros_like(mask)
                cv2.ellipse(region, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, 1, -1)
                rgb[region > 0] = (250, 170, 10)
                mask[region > 0] = 3
                metres[region > 0] = 1.5
            mask[y, x : x + w] = 255  # annotation tools leave unlabelled borders
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
        file_name = f"{stem}.png"
        if index == 2:  # a grayscale camera
            cv2.imwrite(str(root / "images" / file_name), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        else:
            cv2.imwrite(str(root / "images" / file_name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        record = {
            "id": index + 1,
            "file_name": f"images/{file_name}",
            "width": width,
            "height": height,
            "stamp_ns": int(stem),
            "bag": "tiny",
        }
        if index >= num_images or (depth and index != 4):  # frame 4 has no depth
            metres[:3, :5] = 0.0  # no return from the sensor
            cv2.imwrite(
                str(root / "depth" / f"{stem}.png"), np.round(metres * 1000).astype(np.uint16)
            )
            record["depth_file"] = f"depth/{stem}.png"
        if index >= num_images:  # depth-only frame: its boxes and mask are not labels
            record["labeled"] = False
            annotations = [a for a in annotations if a["image_id"] != index + 1]
            images.append(record)
            continue
        if index != 3:  # frame 3 has boxes but no segmentation labels
            cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)
            record["mask_file"] = f"masks/{stem}.png"
        images.append(record)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(DETECTION_CLASSES)]
    (root / "annotations.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    (root / "classes.json").write_text(
        json.dumps(
            {
                "detection_classes": DETECTION_CLASSES,
                "segmentation_classes": SEGMENTATION_CLASSES,
                "palette": PALETTE,
            }
        )
    )
    num_val = max(1, round(num_images * val_fraction))
    ids = [im["id"] for im in images]  # depth-only frames (last) always land in train
    (root / "splits.json").write_text(
        json.dumps(
            {
                "train": ids[num_val:],
                "val": ids[:num_val],
                "test": [],
                "group_by": "bag",
                "seed": seed,
            }
        )
    )
    return root


def tiny_run_overrides(
    root: Path, out: Path, name: str, *extra: str, batch_size: int = 2
) -> list[str]:
    """`mtl-train` overrides for a short CPU run on a :func:`make_processed_dataset` folder.

    ``extra`` comes last, so it can also change what is set here.
    """
    return [
        f"data.root={root}",
        f"output_dir={out}",
        f"name={name}",
        "device=cpu",
        "model.input_size=[48,48]",
        f"data.batch_size={batch_size}",
        "data.val_batch_size=2",
        "data.num_workers=0",
        "optim.warmup_steps=1",
        "logging.progress=false",
        *extra,
    ]
