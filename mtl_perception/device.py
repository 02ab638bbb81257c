# SPDX-License-Identifier: Apache-2.0
"""The one place that knows about devices.

It parses ``auto``/``cpu``/``cuda``/``cuda:N``, chooses FP16 and applies CUDA-only speed
settings. Code elsewhere asks here and never checks ``torch.cuda`` itself, so the same code runs
on the CPU (tests, CI) and the robot's GPU.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from mtl_perception.core.constants import DEVICE_CHOICES, DEVICE_SPEC
from mtl_perception.core.errors import UserError


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a user's device string into a ``torch.device``.

    Raises:
        UserError: ``spec`` is not a device name, or names a CUDA device this machine lacks.
    """
    spec = (spec or "auto").strip().lower()
    if not DEVICE_SPEC.match(spec):
        raise UserError(f"device {spec!r} is not one of {DEVICE_CHOICES}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"device {spec!r} asked for, but CUDA is not available on this machine"
            )
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise UserError(
                f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
    return torch.device(spec)


def use_half(device: torch.device, half: bool | None) -> bool:
    """FP16 inference: ``None`` means automatic (on for CUDA, off for CPU)."""
    if half is None:
        return device.type == "cuda"
    if half and device.type != "cuda":
        raise UserError("half=true (FP16) needs a CUDA device; use half=false or auto on CPU")
    return half


def configure_backend(device: torch.device) -> None:
    """Speed settings that only matter on CUDA (cudnn autotuning for fixed input sizes)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager[object]:
    """Mixed-precision context for training/inference; a no-op on CPU or when disabled."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return nullcontext()


def release_memory(device: torch.device) -> None:
    """Return cached GPU memory to the driver after a model was dropped (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
