# SPDX-License-Identifier: Apache-2.0
"""The training configuration: a validated pydantic model loaded from YAML plus overrides.

Every key has a type and a default; an unknown or misspelt key is an error that lists the
valid keys of its section, so a typo never silently falls back to a default. Command-line
overrides are ``dotted.key=value`` with ``value`` parsed as YAML (``optim.lr=1e-3``,
``model.input_size=[96,128]``) and then type-checked like the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from mtl_perception.balancing import GRAD_METHODS, JACOBIANS, REGRESSION_TASKS, WEIGHTINGS
from mtl_perception.core.atomic_io import write_text
from mtl_perception.core.constants import DEVICE_CHOICES, DEVICE_SPEC, MIN_INPUT_SIDE
from mtl_perception.core.errors import UserError


class Section(BaseModel):
    """Common settings: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """``data``: the processed dataset and how it is batched and loaded."""

    root: str = "data/processed/synth"
    # Per process; BatchNorm needs 2+ samples to train.
    batch_size: int = Field(default=8, ge=2)
    val_batch_size: int = Field(default=8, ge=1)
    num_workers: int = Field(default=2, ge=0)


class PretrainedConfig(Section):
    """Where each part starts from (``nets.pretrained``); null = random initialisation."""

    backbone: str | None = None  # imagenet | coco | a MobileNetV3-Large state_dict file
    detection: str | None = None  # coco
    segmentation: str | None = None  # coco (COCO images with the 20 VOC classes)


class ModelConfig(Section):
    """``model``: architecture, heads, input size ``[H, W]`` and starting weights."""

    arch: str = "ssdlite_deeplabv3"
    # Heads to train: a non-empty subset of detection, segmentation, depth; null = the arch's own.
    tasks: list[Literal["detection", "segmentation", "depth"]] | None = None
    input_size: tuple[int, int] = (320, 320)
    pretrained: PretrainedConfig = Field(default_factory=PretrainedConfig)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("input_size")
    @classmethod
    def _positive(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < MIN_INPUT_SIDE:
            raise ValueError(
                f"input_size {list(value)} must be at least {MIN_INPUT_SIDE} px on each side"
            )
        return value

    @field_validator("tasks")
    @classmethod
    def _task_set(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError(f"tasks {value} must be a non-empty list of distinct task names")
        return value


class OptimConfig(Section):
    """``optim``: optimiser, learning-rate schedule, clipping, AMP and weight EMA."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    epochs: int = Field(default=30, ge=1)
    schedule: Literal["cosine", "onecycle"] = "cosine"
    warmup_steps: int = Field(default=100, ge=0)
    grad_clip_norm: float | None = Field(default=10.0, gt=0)
    amp: bool = True  # mixed precision; only takes effect on CUDA
    # Backbone lr = lr * this (fine-tuning: < 1).
    backbone_lr_scale: float = Field(default=1.0, gt=0)
    # Decay of the EMA of the weights used for validation and best.pt; null = no EMA.
    ema_decay: float | None = Field(default=None, gt=0, lt=1)
    # On a NaN/inf loss: stop the run, or skip the step.
    nonfinite_loss: Literal["stop", "skip"] = "stop"


class BalancingConfig(Section):
    """``balancing``: loss weighting, gradient method and their settings (see ``balancing``)."""

    weighting: str = "equal"
    grad_method: str = "none"
    # Jacobian the grad_method aggregates: "exact" (w.r.t. the shared parameters) or "rep" (w.r.t.
    # the shared features: one backward through the backbone, about plain-backward cost).
    jacobian: str = "exact"
    task_weights: dict[str, float] = Field(default_factory=dict)  # for weighting=constant
    init_log_var: float = 0.0  # uncertainty
    # uncertainty: tasks weighed in the regression form 1/(2 sigma^2); the others 1/sigma^2
    regression_tasks: list[str] = Field(default_factory=lambda: list(REGRESSION_TASKS))
    # gradnorm: pull towards equal training rates
    gradnorm_alpha: float = Field(default=1.5, ge=0)
    dwa_temperature: float = Field(default=2.0, gt=0)
    bmtl_temperature: float = Field(default=1.0, gt=0)
    cagrad_alpha: float = Field(default=0.4, ge=0)
    nash_max_norm: float = Field(default=1.0, ge=0)
    nash_update_every: int = Field(default=1, ge=1)
    nash_optim_niter: int = Field(default=20, ge=1)
    cosine_every: int = Field(default=50, ge=0)  # plain backward only; 0 = never

    @field_validator("weighting", "grad_method", "jacobian")
    @classmethod
    def _known_name(cls, value: str, info: ValidationInfo) -> str:
        names = {"weighting": WEIGHTINGS, "grad_method": GRAD_METHODS, "jacobian": JACOBIANS}
        known = names[str(info.field_name)]  # set: the validator is bound to these fields
        if value not in known:
            raise ValueError(f"{value!r} is not one of {', '.join(known)}")
        return value


class AugmentConfig(Section):
    """``augment``: training-time augmentation (flip, SSD-style crop, colour jitter)."""

    hflip_prob: float = Field(default=0.5, ge=0, le=1)
    # Probability of an SSD-style RandomIoUCrop.
    crop_prob: float = Field(default=0.5, ge=0, le=1)
    brightness: float = Field(default=0.2, ge=0)
    contrast: float = Field(default=0.2, ge=0)
    saturation: float = Field(default=0.2, ge=0)
    hue: float = Field(default=0.02, ge=0, le=0.5)


class LoggingConfig(Section):
    """``logging``: TensorBoard / Weights & Biases, log interval, previews, progress bars."""

    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "mtl_perception"
    log_every: int = Field(default=10, ge=1)
    # Fixed val images drawn into TensorBoard each epoch.
    preview_images: int = Field(default=4, ge=0)
    progress: bool = True


class TrainConfig(Section):
    """The whole training configuration: run name, device, limits and one field per section."""

    name: str = "default"
    output_dir: str = "runs"
    seed: int = 0
    device: str = "auto"
    # Stop after this many optimiser steps in total; 0 = no limit.
    max_steps: int = Field(default=0, ge=0)
    # Also write last.pt every this many steps; 0 = at the end of each epoch only.
    checkpoint_every_steps: int = Field(default=0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    balancing: BalancingConfig = Field(default_factory=BalancingConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @field_validator("device")
    @classmethod
    def _device_spelling(cls, value: str) -> str:
        # Spelling only; whether CUDA is there is checked when the run starts.
        if not DEVICE_SPEC.match(value.strip().lower()):
            raise ValueError(f"{value!r} is not one of {DEVICE_CHOICES}")
        return value

    @property
    def run_dir(self) -> Path:
        """``<output_dir>/<name>``: where config, checkpoints and logs of this run go."""
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists, not tuples) for YAML files and checkpoints."""
        return self.model_dump(mode="json")


def _section_model(loc: Sequence[str | int]) -> type[BaseModel]:
    """The pydantic model that owns the field at ``loc`` (for listing its valid keys)."""
    model: type[BaseModel] = TrainConfig
    for part in loc[:-1]:
        annotation = (
            model.model_fields[str(part)].annotation if str(part) in model.model_fields else None
        )
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return model


def _explain(err: ValidationError, source: str) -> UserError:
    """Turn the first pydantic error into one readable line naming the key."""
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        valid = ", ".join(_section_model(loc).model_fields)
        return UserError(f"{source}: unknown key {key!r}; valid keys here are: {valid}")
    return UserError(f"{source}: {key}: {first['msg']} (got {first.get('input')!r})")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` -> (["optim", "lr"], 0.001); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {text!r} is not of the form key=value (e.g. optim.lr=0.001)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each ``dotted.key=value`` in a nested dict (keys are validated afterwards)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (or the defaults when ``path`` is None), apply overrides, validate."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        file = Path(path)
        if not file.is_file():
            raise UserError(f"config file {file} does not exist")
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{file}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(
                f"{file}: the top level must be a mapping of keys, not {type(data).__name__}"
            )
    data = apply_overrides(data, overrides)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise _explain(err, source + (" (with overrides)" if overrides else "")) from None


def save_config(config: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML (atomically) so the run can be reproduced."""
    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
