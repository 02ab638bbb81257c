# SPDX-License-Identifier: Apache-2.0
"""Inference on single frames: the one pre/post-processing path of every consumer.

``mtl-eval``, the ROS 2 node and bag replay all go through it (docs/CONTRACTS.md §7).
``Predictor.from_checkpoint`` rebuilds the model from a self-describing checkpoint;
``predict`` takes an RGB uint8 frame of any size and returns boxes/labels/scores, a class
mask and a depth map (metres) in that frame's own pixels, plus how long each stage took (for
node diagnostics).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from mtl_perception.checkpoint import load_checkpoint
from mtl_perception.core.errors import UserError
from mtl_perception.device import autocast, configure_backend, resolve_device, use_half
from mtl_perception.nets import model_from_checkpoint
from mtl_perception.preprocessing import resize_to_input, to_float

__all__ = ["Prediction", "Predictor", "Timing"]


@dataclass(frozen=True)
class Timing:
    """Milliseconds per frame spent in each stage (a batch's frames share its time equally)."""

    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        """The sum of the three stages."""
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms


@dataclass
class Prediction:
    """Result for one frame, in the pixel coordinates of the frame that was passed in.

    ``boxes`` float32 ``[N, 4]`` xyxy, ``scores`` float32 ``[N]``, ``labels`` int64 ``[N]``
    (1-based into ``detection_classes``), ``label_names`` the matching class names, ``mask``
    uint8 ``[H, W]`` segmentation class ids or ``None`` for a model without segmentation,
    ``depth`` float32 ``[H, W]`` metres (> 0) or ``None`` for a model without depth.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    mask: np.ndarray | None
    image_size: tuple[int, int]  # (height, width) of the input frame
    timing: Timing = field(default_factory=Timing)
    depth: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


def _validate_frame(rgb: np.ndarray) -> np.ndarray:
    """The frame as a C-contiguous ``[H, W, 3]`` uint8 array, or a clear ``ValueError``."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", type(rgb).__name__)
        raise ValueError(f"predict() needs an RGB uint8 array [H, W, 3], got shape {shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"predict() needs an RGB uint8 array, got dtype {rgb.dtype}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"predict() got an empty frame of shape {rgb.shape}")
    return np.ascontiguousarray(rgb)


class Predictor:
    """A model in eval mode on one device, with its class names and pre/post-processing.

    Pre-processing: resize to ``input_size`` with ``preprocessing.resize_to_input`` (the resize
    training and validation use, so the network sees the pixels it was trained on), upload as
    uint8 (4x less transfer than float; pinned + non-blocking on CUDA) and scale to [0, 1] on the
    device; the model normalises internally.
    Post-processing: score threshold, class filter, top ``max_detections`` by score, boxes
    scaled back to the frame's pixels and clipped, mask resized with nearest-neighbour, depth
    bilinearly. The model returns a class-id map (not logits, see CONTRACTS §6), and nearest is
    the only resize that keeps class ids valid; it is also cheap, which matters on the robot.
    Depth is a continuous, everywhere-valid prediction, so bilinear resizing is exact enough
    and keeps it smooth (and positive: it only averages positive values).
    FP16 uses autocast (not ``.half()``) so box decoding and NMS stay in float32.
    Not thread-safe (staging buffers): use one Predictor per thread; they may share a model.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        detection_classes: Sequence[str],
        segmentation_classes: Sequence[str],
        palette: Sequence[Sequence[int]],
        input_size: Sequence[int],
        device: str | torch.device = "auto",
        half: bool | None = None,
        score_threshold: float = 0.3,
        max_detections: int = 100,
        class_filter: Iterable[str] | None = None,
        compile_model: bool = False,
    ) -> None:
        if not 0.0 <= float(score_threshold) <= 1.0:
            raise UserError(f"score_threshold {score_threshold} must be within [0, 1]")
        if int(max_detections) < 1:
            raise UserError(f"max_detections {max_detections} must be at least 1")
        if len(segmentation_classes) > 256:
            raise UserError(
                f"{len(segmentation_classes)} segmentation classes do not fit a uint8 mask "
                "(max 256)"
            )
        self._device = device if isinstance(device, torch.device) else resolve_device(device)
        self._half = use_half(self._device, half)
        self._detection_classes = list(detection_classes)
        self._segmentation_classes = list(segmentation_classes)
        self._palette = [tuple(int(c) for c in color) for color in palette]
        self._input_size = (int(input_size[0]), int(input_size[1]))
        self.score_threshold = float(score_threshold)
        self.max_detections = int(max_detections)
        self._allowed_labels = self._labels_for(class_filter)
        self._pinned: list[torch.Tensor] = []  # CUDA staging buffers, see _preprocess

        configure_backend(self._device)
        model = model.eval().to(self._device)
        if self._device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.tasks: tuple[str, ...] = tuple(getattr(model, "tasks", ("detection", "segmentation")))
        self.model: Any = torch.compile(model) if compile_model else model

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "auto",
        half: bool | None = None,
        score_threshold: float = 0.3,
        max_detections: int = 100,
        class_filter: Iterable[str] | None = None,
        input_size: Sequence[int] | None = None,
        compile_model: bool = False,
    ) -> Predictor:
        """Rebuild the model of a checkpoint (weights only, no pickled code) and wrap it.

        ``input_size`` ``[H, W]`` overrides the training resolution (the networks are fully
        convolutional, so the weights still fit). A missing or foreign file, or weights that
        do not fit the checkpoint's own architecture, raise one clear ``UserError``.
        """
        ckpt = load_checkpoint(path, map_location="cpu")
        if input_size is not None and isinstance(ckpt["model_kwargs"], Mapping):
            ckpt = {
                **ckpt,
                "model_kwargs": {**ckpt["model_kwargs"], "input_size": list(input_size)},
            }
        model = model_from_checkpoint(ckpt, path)
        for task, names, count in (
            ("detection_classes", ckpt["detection_classes"], model.num_detection_classes),
            ("segmentation_classes", ckpt["segmentation_classes"], model.num_segmentation_classes),
        ):
            if count and len(names) != count:
                raise UserError(
                    f"checkpoint {path}: {len(names)} {task} for a model with {count} such classes"
                )
        return cls(
            model,
            detection_classes=ckpt["detection_classes"],
            segmentation_classes=ckpt["segmentation_classes"],
            palette=ckpt["palette"],
            input_size=model.input_size,
            device=device,
            half=half,
            score_threshold=score_threshold,
            max_detections=max_detections,
            class_filter=class_filter,
            compile_model=compile_model,
        )

    # ----------------------------------------------------------------- properties
    @property
    def detection_classes(self) -> list[str]:
        """Detection class names; label ``k`` is ``detection_classes[k - 1]``."""
        return list(self._detection_classes)

    @property
    def segmentation_classes(self) -> list[str]:
        """Segmentation class names, indexed by mask id (background included)."""
        return list(self._segmentation_classes)

    @property
    def palette(self) -> list[tuple[int, ...]]:
        """RGB colour per segmentation class, for overlays."""
        return list(self._palette)

    @property
    def input_size(self) -> tuple[int, int]:
        """Network input ``(height, width)``."""
        return self._input_size

    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        return self._device

    @property
    def half(self) -> bool:
        """Whether inference runs under FP16 autocast."""
        return self._half

    # ----------------------------------------------------------------- inference
    def _labels_for(self, class_filter: Iterable[str] | None) -> torch.Tensor | None:
        """1-based label ids of the filtered class names; unknown names are a UserError."""
        if class_filter is None:
            return None
        names = [class_filter] if isinstance(class_filter, str) else list(class_filter)
        unknown = [name for name in names if name not in self._detection_classes]
        if unknown:
            raise UserError(
                f"class_filter {unknown} not among the model's classes {self._detection_classes}"
            )
        return torch.tensor(
            sorted({self._detection_classes.index(name) + 1 for name in names}), dtype=torch.int64
        )

    def _preprocess(self, rgb: np.ndarray, slot: int = 0) -> torch.Tensor:
        """Resize, upload and scale one frame to a float ``[3, h, w]`` tensor in [0, 1].

        On CUDA the frame goes through a reusable pinned buffer (one per batch slot):
        pinning a fresh tensor every frame costs more than the copy it speeds up. Reuse is
        safe because ``predict_batch`` synchronises before the next frame is staged.
        """
        height, width = self._input_size
        tensor = torch.from_numpy(rgb).permute(2, 0, 1)
        if rgb.shape[:2] != (height, width):
            tensor = resize_to_input(tensor, self._input_size)  # the resize training used
        if self._device.type == "cuda":
            while len(self._pinned) <= slot:
                self._pinned.append(
                    torch.empty((3, height, width), dtype=torch.uint8).pin_memory()
                )
            tensor = self._pinned[slot].copy_(tensor).to(self._device, non_blocking=True)
        return to_float(tensor)

    def _synchronize(self) -> None:
        """Wait for queued GPU work so stage timings measure the work, not the launch."""
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def _postprocess(
        self, output: dict[str, torch.Tensor], image_size: tuple[int, int], timing: Timing
    ) -> Prediction:
        """Filter detections, map boxes and mask back to the frame's pixels."""
        height, width = image_size
        boxes = np.zeros((0, 4), np.float32)
        scores = np.zeros((0,), np.float32)
        labels = np.zeros((0,), np.int64)
        if "boxes" in output:
            det_scores = output["scores"].float()
            det_labels = output["labels"].to(torch.int64)
            keep = det_scores >= self.score_threshold
            if self._allowed_labels is not None:
                keep &= torch.isin(det_labels, self._allowed_labels.to(det_labels.device))
            order = torch.argsort(det_scores[keep], descending=True)[: self.max_detections]
            boxes = output["boxes"].float()[keep][order].cpu().numpy()
            scores = det_scores[keep][order].cpu().numpy()
            labels = det_labels[keep][order].cpu().numpy()
            scale = np.array(
                [width / self._input_size[1], height / self._input_size[0]] * 2, np.float32
            )
            boxes = boxes * scale
            np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
            np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
        mask = None
        if "mask" in output:
            mask = output["mask"].to(torch.uint8).cpu().numpy()
            if mask.shape != (height, width):
                mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
        depth = None
        if "depth" in output:
            depth = output["depth"][0].float().cpu().numpy()
            if depth.shape != (height, width):
                depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_LINEAR)
        names = [
            self._detection_classes[int(k) - 1]
            if 1 <= k <= len(self._detection_classes)
            else str(int(k))
            for k in labels
        ]
        return Prediction(
            boxes.astype(np.float32),
            scores.astype(np.float32),
            labels,
            names,
            mask,
            (height, width),
            timing,
            depth,
        )

    @torch.inference_mode()
    def predict_batch(self, frames: Sequence[np.ndarray]) -> list[Prediction]:
        """Run several frames (sizes may differ) through the model in one forward pass."""
        if not frames:
            return []
        frames = [_validate_frame(frame) for frame in frames]
        start = time.perf_counter()
        inputs = [self._preprocess(frame, slot) for slot, frame in enumerate(frames)]
        self._synchronize()
        preprocessed = time.perf_counter()
        with autocast(self._device, self._half):
            outputs = self.model(inputs)
        self._synchronize()
        inferred = time.perf_counter()
        share = 1000.0 / len(frames)
        base = Timing((preprocessed - start) * share, (inferred - preprocessed) * share)
        predictions = [
            self._postprocess(out, frame.shape[:2], base)
            for out, frame in zip(outputs, frames, strict=True)
        ]
        post_ms = (time.perf_counter() - inferred) * share
        for prediction in predictions:
            prediction.timing = Timing(base.preprocess_ms, base.inference_ms, post_ms)
        return predictions

    def predict(self, rgb: np.ndarray) -> Prediction:
        """Run one RGB uint8 ``[H, W, 3]`` frame; results are in that frame's pixels."""
        return self.predict_batch([rgb])[0]

    def warmup(self, n: int = 3) -> None:
        """Run ``n`` dummy frames so lazy initialisation (cudnn autotune, compile) happens now."""
        frame = np.zeros((*self._input_size, 3), np.uint8)
        for _ in range(max(0, n)):
            self.predict(frame)
