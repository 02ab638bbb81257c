# SPDX-License-Identifier: Apache-2.0
"""The perception node's parameters: one table of names, defaults, ranges and descriptions.

Everything that describes a parameter lives in ``PARAMETERS`` so the declarations (with
``ParameterDescriptor`` ranges and ``read_only`` flags), the validation at start-up, the
validation of run-time ``set_parameters`` calls, ``config/perception.yaml`` and the tests
cannot drift apart. ``read_only`` parameters need a model reload or a re-subscription and
are therefore fixed for the node's lifetime (set them in the YAML file or on the command line).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from mtl_perception.core.constants import DEVICE_CHOICES, DEVICE_SPEC, MIN_INPUT_SIDE, parse_hw
from mtl_perception.core.errors import UserError
from mtl_perception.ros.conversions import DECODERS

#: A value check: returns ``None`` when fine, else the reason (without the parameter name).
Check = Callable[[Any], "str | None"]

_REJECTED_VALUE_RE = re.compile(r"Invalid parameter value \((.*?)\)")


def _one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"{value!r} is not one of {', '.join(choices)}"

    return check


def _device(value: str) -> str | None:
    return (
        None
        if DEVICE_SPEC.match(value.strip().lower())
        else f"{value!r} is not one of {DEVICE_CHOICES}"
    )


def parse_input_size(value: str) -> tuple[int, ...]:
    """``""`` -> ``()`` (the checkpoint's size); ``"480x640"`` -> ``(480, 640)``.

    Raises:
        ValueError: Neither empty nor ``<height>x<width>``, or a side below ``MIN_INPUT_SIDE``.
    """
    if not value.strip():
        return ()
    return parse_hw(value, "", min_side=MIN_INPUT_SIDE)


def _input_size(value: str) -> str | None:
    try:
        parse_input_size(value)
    except ValueError as err:
        return str(err)
    return None


def _palette(value: list[int]) -> str | None:
    if len(value) % 3:
        return f"has {len(value)} numbers; it must be flat r, g, b triplets (a multiple of 3)"
    bad = [v for v in value if not 0 <= v <= 255]
    return f"value {bad[0]} is outside 0..255" if bad else None


def _class_filter(value: list[str]) -> str | None:
    blank = [v for v in value if not v.strip()]
    return "contains an empty class name" if blank else None


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: its default, type, description and constraints."""

    name: str
    default: Any
    type: Parameter.Type
    description: str
    read_only: bool = False
    low: float | None = None  # inclusive range, for ints and floats
    high: float | None = None
    check: Check | None = None
    constraints: str = ""

    def descriptor(self) -> ParameterDescriptor:
        """The ROS descriptor (shown by ``ros2 param describe``; ranges enforced by rclpy)."""
        descriptor = ParameterDescriptor(
            name=self.name,
            type=self.type.value,
            description=self.description,
            additional_constraints=self.constraints,
            read_only=self.read_only,
        )
        if self.low is not None and self.high is not None:
            if self.type is Parameter.Type.DOUBLE:
                descriptor.floating_point_range = [
                    FloatingPointRange(
                        from_value=float(self.low), to_value=float(self.high), step=0.0
                    )
                ]
            else:
                descriptor.integer_range = [
                    IntegerRange(from_value=int(self.low), to_value=int(self.high), step=1)
                ]
        return descriptor

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable for this parameter, or ``None``."""
        if value is None:  # an array parameter left unset (ROS has no typed empty array)
            return None if self.type in _ARRAY_TYPES else "has no value"
        if self.low is not None and self.high is not None and not self.low <= value <= self.high:
            return f"{value!r} is outside the range {self.low}..{self.high}"
        return self.check(value) if self.check else None


_ARRAY_TYPES = (
    Parameter.Type.STRING_ARRAY,
    Parameter.Type.INTEGER_ARRAY,
    Parameter.Type.DOUBLE_ARRAY,
)

_T = Parameter.Type
PARAMETERS: tuple[ParamSpec, ...] = (
    # -- model (read-only: changing any of these means loading the model again)
    ParamSpec(
        "model_path",
        "",
        _T.STRING,
        "Checkpoint file (.pt): models/<name>/model.pt from mtl-export (or a run's best.pt); "
        "required.",
        read_only=True,
    ),
    ParamSpec(
        "device",
        "auto",
        _T.STRING,
        "Inference device: auto (CUDA if available), cpu, cuda or cuda:N.",
        read_only=True,
        check=_device,
        constraints="auto | cpu | cuda | cuda:N",
    ),
    ParamSpec(
        "half",
        "auto",
        _T.STRING,
        "FP16 inference: auto (on for CUDA, off for CPU), true or false.",
        read_only=True,
        check=_one_of("auto", "true", "false"),
        constraints="auto | true | false",
    ),
    # A string, not an integer array: ROS has no typed empty array, and an unset read-only
    # parameter cannot be given one after declaration (`ros2 param dump` would fail on it).
    ParamSpec(
        "input_size",
        "",
        _T.STRING,
        "Network input HEIGHTxWIDTH (e.g. 480x640); empty = the checkpoint's size.",
        read_only=True,
        check=_input_size,
        constraints=f'"" or HEIGHTxWIDTH, both >= {MIN_INPUT_SIDE}',
    ),
    ParamSpec(
        "compile",
        False,
        _T.BOOL,
        "Optimise the model with torch.compile (slow first frames).",
        read_only=True,
    ),
    ParamSpec(
        "tensorrt",
        False,
        _T.BOOL,
        "Run the model through torch-tensorrt (CUDA only; must be installed).",
        read_only=True,
    ),
    ParamSpec(
        "warmup_iterations",
        2,
        _T.INTEGER,
        "Dummy inferences at configure so the first frame is not slow.",
        read_only=True,
        low=0,
        high=100,
    ),
    # -- input (read-only: changing these means subscribing again)
    ParamSpec(
        "compressed",
        False,
        _T.BOOL,
        "Subscribe to <image>/compressed (CompressedImage, image_transport naming) instead of "
        "image.",
        read_only=True,
    ),
    ParamSpec(
        "reliability",
        "best_effort",
        _T.STRING,
        "Input QoS reliability: best_effort (sensor data) or reliable.",
        read_only=True,
        check=_one_of("best_effort", "reliable"),
        constraints="best_effort | reliable",
    ),
    ParamSpec(
        "depth",
        1,
        _T.INTEGER,
        "Input QoS history depth; 1 = only the newest frame.",
        read_only=True,
        low=1,
        high=100,
    ),
    ParamSpec(
        "decoder",
        "builtin",
        _T.STRING,
        "Image decoder: builtin (the package's own, tested on every encoding "
        "it accepts) or cv_bridge (ROS's; must be installed; see docs/ROS2.md).",
        read_only=True,
        check=_one_of(*DECODERS),
        constraints=" | ".join(DECODERS),
    ),
    ParamSpec(
        "autostart",
        True,
        _T.BOOL,
        "Configure and activate at start (plain `ros2 run`); false = wait for "
        "lifecycle transitions.",
        read_only=True,
    ),
    ParamSpec(
        "diagnostics_period",
        1.0,
        _T.DOUBLE,
        "Seconds between /diagnostics messages.",
        read_only=True,
        low=0.1,
        high=60.0,
    ),
    # -- post-processing and outputs (settable at run time)
    ParamSpec(
        "score_threshold", 0.3, _T.DOUBLE, "Minimum detection score to publish.", low=0.0, high=1.0
    ),
    ParamSpec(
        "max_detections",
        100,
        _T.INTEGER,
        "Maximum detections per frame (highest scores kept).",
        low=1,
        high=1000,
    ),
    ParamSpec(
        "class_filter",
        None,
        _T.STRING_ARRAY,
        "Detection class names to publish; empty = all classes.",
        check=_class_filter,
        constraints="names from the checkpoint's detection_classes",
    ),
    ParamSpec(
        "palette",
        None,
        _T.INTEGER_ARRAY,
        "Segmentation colours as flat r, g, b triplets, one per class; "
        "empty = the checkpoint's palette.",
        check=_palette,
        constraints="3 x number of segmentation classes, 0..255",
    ),
    ParamSpec(
        "overlay_alpha",
        0.5,
        _T.DOUBLE,
        "Opacity of the mask blended into ~/overlay.",
        low=0.0,
        high=1.0,
    ),
    ParamSpec(
        "publish_detections", True, _T.BOOL, "Publish ~/detections (vision_msgs/Detection2DArray)."
    ),
    ParamSpec(
        "publish_segmentation", True, _T.BOOL, "Publish ~/segmentation (mono8 class-id mask)."
    ),
    ParamSpec(
        "publish_color", True, _T.BOOL, "Publish ~/segmentation/color (rgb8 colourised mask)."
    ),
    ParamSpec(
        "publish_overlay", True, _T.BOOL, "Publish ~/overlay (computed only while subscribed)."
    ),
    ParamSpec(
        "publish_depth",
        True,
        _T.BOOL,
        "Publish ~/depth (32FC1 metres at input resolution; models with depth).",
    ),
    ParamSpec(
        "publish_depth_color",
        True,
        _T.BOOL,
        "Publish ~/depth/color (rgb8, near = red, far = blue; drawn only while subscribed).",
    ),
    ParamSpec(
        "depth_color_max",
        10.0,
        _T.DOUBLE,
        "Depth (metres) drawn as the far end of the ~/depth/color "
        "colour scale; farther is clipped.",
        low=0.1,
        high=1000.0,
    ),
)
SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}


@dataclass(frozen=True)
class Settings:
    """Typed snapshot of every parameter value (one field per entry of ``PARAMETERS``)."""

    model_path: str
    device: str
    half: str
    input_size: tuple[int, ...]  # () = the checkpoint's size
    compile: bool
    tensorrt: bool
    warmup_iterations: int
    compressed: bool
    reliability: str
    depth: int
    decoder: str
    autostart: bool
    diagnostics_period: float
    score_threshold: float
    max_detections: int
    class_filter: tuple[str, ...]
    palette: tuple[int, ...]
    overlay_alpha: float
    publish_detections: bool
    publish_segmentation: bool
    publish_color: bool
    publish_overlay: bool
    publish_depth: bool
    publish_depth_color: bool
    depth_color_max: float

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        """Build from ``{name: value}``; unset array parameters become empty tuples."""
        kwargs: dict[str, Any] = {}
        for field in fields(cls):
            value = values[field.name]
            kwargs[field.name] = (
                tuple(value or ()) if SPECS[field.name].type in _ARRAY_TYPES else value
            )
        kwargs["input_size"] = parse_input_size(values["input_size"])
        return cls(**kwargs)

    @property
    def half_flag(self) -> bool | None:
        """``half`` as the predictor wants it: None = automatic."""
        return {"auto": None, "true": True, "false": False}[self.half]


def first_problem(values: Iterable[tuple[str, Any]]) -> str | None:
    """The first ``"name: reason"`` among ``(name, value)`` pairs, or ``None`` if all are valid."""
    for name, value in values:
        spec = SPECS.get(name)
        if spec is None:
            continue  # not ours (e.g. use_sim_time); rclpy handles it
        reason = spec.problem(value)
        if reason:
            return f"parameter {name}: {reason}"
    return None


def declare_all(node: Any) -> Settings:
    """Declare every parameter on ``node`` and return the validated start-up values.

    Raises ``UserError`` (one line naming the parameter) when a value from the YAML file or
    the command line is out of range, of the wrong type or otherwise invalid.
    """
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    values: dict[str, Any] = {}
    for spec in PARAMETERS:
        # Array parameters are declared by type only: ROS cannot express a typed empty list.
        default = spec.type if spec.default is None else spec.default
        try:
            values[spec.name] = node.declare_parameter(spec.name, default, spec.descriptor()).value
        except InvalidParameterValueException as err:
            # rclpy keeps the rejected value only in the message text.
            given = _REJECTED_VALUE_RE.search(str(err))
            value = given.group(1) if given else "the given value"
            raise UserError(
                f"parameter {spec.name}: {value} is outside the range {spec.low}..{spec.high}"
            ) from None
        except InvalidParameterTypeException as err:
            hint = " (write decimals with a point, e.g. 1.0)" if spec.type is _T.DOUBLE else ""
            raise UserError(
                f"parameter {spec.name}: expected a {spec.type.name.lower()} value{hint}: {err}"
            ) from None
        if values[spec.name] is None:
            # Declared by type only (or `[]` in YAML, which ROS reads as "not set"): give it a
            # typed empty value, else `ros2 param get/dump` fail on the uninitialised parameter.
            result = node.set_parameters([Parameter(spec.name, spec.type, [])])[0]
            if not result.successful:
                raise RuntimeError(f"cannot initialise parameter {spec.name}: {result.reason}")
            values[spec.name] = []
    problem = first_problem(values.items())
    if problem:
        raise UserError(problem)
    return Settings.from_values(values)
