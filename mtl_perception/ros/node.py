# SPDX-License-Identifier: Apache-2.0
"""The ROS 2 perception node: camera frames in, detections, segmentation and depth out.

A lifecycle node (``rclpy.lifecycle.LifecycleNode``):

- configure: load the checkpoint into a ``Predictor``, warm it up, create the publishers;
- activate: subscribe to ``image`` (or, with ``compressed``, ``image/compressed`` when that is
  remapped, else ``<remapped image>/compressed`` as image_transport names it) and start the
  inference worker;
- deactivate: unsubscribe, stop the worker and release the model (and its GPU memory);
  a later activate loads it again;
- cleanup / shutdown: drop publishers and model.

With ``autostart`` (default) the node configures and activates itself, for plain
``ros2 run mtl_perception perception_node``; a failure there is one fatal line and exit 2.

Frames go through a one-slot ``Mailbox``: the subscription callback only stores the newest
frame (counting the one it replaces as dropped) and a worker thread deserialises, decodes,
infers and publishes, so the executor stays free for parameters, lifecycle services and
diagnostics. The subscription is ``raw``: rclpy hands over the serialized bytes and only the
frame the worker takes is deserialised, so frames dropped under overload cost almost nothing
(deserialising a 480x640 rgb8 frame is a 900 KB copy). Every output carries the input header
unchanged. A bad frame (malformed message, unknown encoding, truncated, empty, undecodable)
is counted, logged with a throttled warning and skipped; an unexpected exception (a bug) is
counted and logged with its traceback once per kind, and /diagnostics turns ERROR while every
frame fails. Each frame's stages (wait, deserialise, decode, preprocess, model, postprocess,
message build, publish) are timed and their medians reported in /diagnostics. Optional image
outputs (colour mask, overlay, colour depth) are only drawn while someone subscribes to them;
the depth itself comes from the ``Predictor`` in metres at the frame's resolution, the node only
converts it.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_system_default
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray

from mtl_perception.core.errors import UserError
from mtl_perception.ros.conversions import (
    ImageDecoder,
    UnsupportedEncoding,
    make_decoder,
    to_network_rgb,
)
from mtl_perception.ros.diagnostics import ERROR, WARN, FrameStats
from mtl_perception.ros.mailbox import Mailbox
from mtl_perception.ros.messages import (
    color_depth_message,
    color_mask_message,
    depth_message,
    detections_message,
    mask_message,
    overlay_message,
)
from mtl_perception.ros.params import SPECS, Settings, declare_all, first_problem
from mtl_perception.ros.qos import input_qos

if TYPE_CHECKING:  # the predictor imports torch; see load_predictor
    from mtl_perception.predictor import Prediction, Predictor

NODE_NAME = "perception_node"
WARN_THROTTLE_SEC = 5.0
# Depth encodings: on the colour input they mean a wrong remapping (warned once per encoding).
DEPTH_ENCODINGS = frozenset({"16UC1", "32FC1", "compressedDepth"})
# Output topics, private to the node (``~/``) so several perception nodes can run side by side.
DETECTIONS_TOPIC = "~/detections"
SEGMENTATION_TOPIC = "~/segmentation"
COLOR_TOPIC = "~/segmentation/color"
OVERLAY_TOPIC = "~/overlay"
DEPTH_TOPIC = "~/depth"
DEPTH_COLOR_TOPIC = "~/depth/color"

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


@dataclasses.dataclass(frozen=True)
class ReceivedFrame:
    """A received frame, still serialized (CDR bytes), and its arrival time (monotonic seconds)."""

    data: bytes
    received: float


def load_predictor(settings: Settings) -> Predictor:
    """Build the ``Predictor`` the parameters ask for; every problem is one ``UserError``."""
    if not settings.model_path:
        raise UserError(
            "parameter model_path is empty: set it to a checkpoint file written by mtl-train"
        )
    if settings.tensorrt and importlib.util.find_spec("torch_tensorrt") is None:
        raise UserError(
            "parameter tensorrt is true but torch-tensorrt is not installed "
            "(pip install torch-tensorrt, or set tensorrt:=false)"
        )
    # Imported here: torch and torchvision take seconds to import, and a node that fails on
    # its parameters should say so at once.
    from mtl_perception.predictor import Predictor

    predictor = Predictor.from_checkpoint(
        settings.model_path,
        device=settings.device,
        half=settings.half_flag,
        score_threshold=settings.score_threshold,
        max_detections=settings.max_detections,
        class_filter=list(settings.class_filter) or None,
        input_size=list(settings.input_size) or None,
        compile_model=settings.compile and not settings.tensorrt,
    )
    if settings.tensorrt:
        predictor.model = _tensorrt_compile(predictor)
    return predictor


def _tensorrt_compile(predictor: Predictor) -> Any:
    """The predictor's model compiled by torch-tensorrt (through its ``torch.compile`` backend)."""
    if predictor.device.type != "cuda":
        raise UserError(
            f"parameter tensorrt is true but the device is {predictor.device}; TensorRT needs CUDA"
        )
    import torch
    import torch_tensorrt  # noqa: F401  (registers the "torch_tensorrt" torch.compile backend)

    return torch.compile(predictor.model, backend="torch_tensorrt", dynamic=False)


def with_runtime_settings(predictor: Predictor, settings: Settings) -> Predictor:
    """A predictor sharing ``predictor``'s model with new threshold / max detections / filter.

    Re-wrapping through the public constructor (cheap: the model is reused as is) lets the
    Predictor validate the values and keeps the swap atomic for the worker thread.
    """
    return type(predictor)(
        predictor.model,
        detection_classes=predictor.detection_classes,
        segmentation_classes=predictor.segmentation_classes,
        palette=predictor.palette,
        input_size=predictor.input_size,
        device=predictor.device,
        half=predictor.half,
        score_threshold=settings.score_threshold,
        max_detections=settings.max_detections,
        class_filter=list(settings.class_filter) or None,
    )


def model_problem(
    settings: Settings, detection_classes: Sequence[str], segmentation_classes: Sequence[str]
) -> str | None:
    """Why ``class_filter`` / ``palette`` do not fit the loaded model, or ``None``."""
    unknown = [name for name in settings.class_filter if name not in detection_classes]
    if unknown:
        return (
            f"parameter class_filter: {unknown} not among the model's detection classes "
            f"{list(detection_classes)}"
        )
    if settings.palette and len(settings.palette) != 3 * len(segmentation_classes):
        return (
            f"parameter palette: has {len(settings.palette) // 3} colours but the model has "
            f"{len(segmentation_classes)} segmentation classes {list(segmentation_classes)}"
        )
    return None


class PerceptionNode(LifecycleNode):
    """Multi-task perception on a camera stream (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.settings: Settings = declare_all(self)  # UserError on bad start-up values
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._stats = FrameStats()
        self._mailbox: Mailbox[ReceivedFrame] = Mailbox()
        self._predictor: Predictor | None = None
        self._decoder: ImageDecoder | None = None
        self._outputs: dict[str, Any] = {}
        self._subscription: Any = None
        self._input_type: type[Image] | type[CompressedImage] = Image
        self._worker: threading.Thread | None = None
        self._last_size: tuple[int, int] | None = None
        self._warned_encodings: set[str] = set()
        self._logged_bugs: set[str] = set()
        self._active = False
        self._fatal: str | None = None
        self._diagnostics = self.create_publisher(
            DiagnosticArray, "/diagnostics", qos_profile_system_default
        )
        # Steady clock: diagnostics go on with use_sim_time while a bag is paused (no /clock).
        self._diagnostics_timer = self.create_timer(
            self.settings.diagnostics_period,
            self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load and warm up the model, create the publishers."""
        try:
            decoder = make_decoder(self.settings.decoder)
        except UserError as err:
            self._fail(str(err))
            return FAILURE
        self._decoder = decoder
        predictor = self._load_model()
        if predictor is None:
            return FAILURE
        self._outputs = {
            "detections": self.create_lifecycle_publisher(Detection2DArray, DETECTIONS_TOPIC, 10),
            "segmentation": self.create_lifecycle_publisher(Image, SEGMENTATION_TOPIC, 10),
            "color": self.create_lifecycle_publisher(Image, COLOR_TOPIC, 10),
            "overlay": self.create_lifecycle_publisher(Image, OVERLAY_TOPIC, 10),
            "depth": self.create_lifecycle_publisher(Image, DEPTH_TOPIC, 10),
            "depth_color": self.create_lifecycle_publisher(Image, DEPTH_COLOR_TOPIC, 10),
        }
        self.get_logger().info(
            f"configured: model {self.settings.model_path} on {predictor.device} "
            f"(fp16 {predictor.half}, input {predictor.input_size}), "
            f"images decoded by {decoder.name} decoder"
        )
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to the camera and start the inference worker (reloading a released model)."""
        if self._predictor is None and self._load_model() is None:
            return FAILURE
        topic, msg_type = (
            (self._compressed_topic(), CompressedImage)
            if self.settings.compressed
            else ("image", Image)
        )
        qos = input_qos(self.settings.reliability, self.settings.depth)
        self._mailbox.reopen()
        self._last_size = None
        self._input_type = msg_type
        self._worker = threading.Thread(target=self._run_worker, name="inference", daemon=True)
        self._worker.start()
        self._subscription = self.create_subscription(
            msg_type, topic, self._on_image, qos, raw=True
        )
        self._active = True
        self.get_logger().info(
            f"active: listening on {self._subscription.topic_name} ({msg_type.__name__})"
        )
        return super().on_activate(state)

    def _compressed_topic(self) -> str:
        """``image/compressed`` if remapped explicitly, else ``<remapped image>/compressed``.

        The second is image_transport's naming, so remapping ``image`` alone is enough.
        """
        if self.resolve_topic_name("image/compressed") != self.resolve_topic_name(
            "image/compressed", only_expand=True
        ):
            return "image/compressed"
        return f"{self.resolve_topic_name('image')}/compressed"

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop listening and inferring; release the model so the GPU is free while inactive."""
        self.stop_processing()
        self._release_model()
        self.get_logger().info(
            "inactive: stopped listening, model released (activate loads it again)"
        )
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Back to unconfigured: drop publishers, model and statistics."""
        self._destroy_publishers()
        self._release_model()
        self._stats.reset()
        self.get_logger().info("unconfigured: publishers and model released")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop everything (from any primary state)."""
        self.stop_processing()
        self._destroy_publishers()
        self._release_model()
        self.get_logger().info(f"finalized: shut down from {state.label}")
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition callback raised: stop and release everything, go back to unconfigured."""
        self.stop_processing()
        self._destroy_publishers()
        self._release_model()
        self.get_logger().error(
            f"error in a transition from {state.label}: stopped, back to unconfigured"
        )
        return SUCCESS

    @property
    def fatal_error(self) -> str | None:
        """The reason of the last failed configure/activate (for ``main``'s exit status)."""
        return self._fatal

    def _load_model(self) -> Predictor | None:
        """Load + warm up the predictor; on a user error log one fatal line and return None."""
        try:
            predictor = load_predictor(self.settings)
            problem = model_problem(
                self.settings, predictor.detection_classes, predictor.segmentation_classes
            )
            if problem:
                raise UserError(problem)
            predictor.warmup(self.settings.warmup_iterations)
        except UserError as err:
            self._fail(str(err))
            return None
        self._predictor, self._fatal = predictor, None
        return predictor

    def _fail(self, reason: str) -> None:
        """A transition cannot complete because of the user's input: one fatal line."""
        self._fatal = reason
        self.get_logger().fatal(reason)

    def _release_model(self) -> None:
        from mtl_perception.device import release_memory  # imports torch: only once a model exists

        if self._predictor is not None:
            device = self._predictor.device
            self._predictor = None
            release_memory(device)

    def stop_processing(self) -> None:
        """Unsubscribe and stop the worker (idempotent)."""
        self._active = False
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        self._mailbox.close()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def _destroy_publishers(self) -> None:
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}

    # ------------------------------------------------------------------ frames
    def _on_image(self, data: bytes) -> None:
        """Subscription callback (raw): keep only the newest serialized frame for the worker."""
        self._stats.received()
        if self._mailbox.put(ReceivedFrame(data, time.monotonic())):
            self._stats.dropped()

    def _run_worker(self) -> None:
        while (frame := self._mailbox.take()) is not None:
            self._process(frame)

    def _process(self, frame: ReceivedFrame) -> None:
        """One frame; a bug (unexpected exception) is logged with its traceback and counted."""
        predictor, decoder = self._predictor, self._decoder
        if predictor is None or decoder is None:
            return
        try:
            self._process_frame(frame, predictor, decoder, self.settings)
        except Exception as err:
            self._unexpected_error(err)

    def _process_frame(
        self, frame: ReceivedFrame, predictor: Predictor, decoder: ImageDecoder, settings: Settings
    ) -> None:
        """Deserialise, decode, infer and publish one frame, timing each stage.

        A bad frame is counted and skipped.
        """
        clock = time.monotonic
        start = clock()
        try:
            msg = deserialize_message(frame.data, self._input_type)
        except RuntimeError as err:  # rclpy's RMWError (private type) for malformed CDR
            self._frame_error("bad message", err)
            return
        deserialised = clock()
        self._check_depth_encoding(msg, settings.compressed)
        try:
            rgb = to_network_rgb(decoder, msg, settings.compressed)
        except UnsupportedEncoding as err:
            self._frame_error("unsupported encoding", err)
            return
        except ValueError as err:
            self._frame_error("bad image", err)
            return
        decoded = clock()
        self._check_size(rgb.shape[:2])
        prediction = predictor.predict(rgb)
        predicted = clock()
        messages = self._messages(msg.header, rgb, prediction, settings)
        built = clock()
        for publisher, message in messages:
            publisher.publish(message)
        published = clock()
        timing = prediction.timing
        self._stats.processed(
            published - frame.received,
            {
                "wait": start - frame.received,
                "deserialise": deserialised - start,
                "decode": decoded - deserialised,
                "preprocess": timing.preprocess_ms / 1000.0,
                "model": timing.inference_ms / 1000.0,
                "postprocess": timing.postprocess_ms / 1000.0,
                "messages": built - predicted,
                "publish": published - built,
            },
        )

    def _check_size(self, size: tuple[int, int]) -> None:
        """Count and warn when the stream's resolution changes (the frame is still processed)."""
        if self._last_size is not None and size != self._last_size:
            self._stats.error("size changed")
            self.get_logger().warning(
                f"input size changed from {self._last_size} to {size} (HxW)",
                throttle_duration_sec=WARN_THROTTLE_SEC,
            )
        self._last_size = size

    def _check_depth_encoding(self, msg: Any, compressed: bool) -> None:
        """Warn once per encoding when depth images arrive on the colour input (bad remapping)."""
        encoding = str(msg.format if compressed else msg.encoding).strip()
        kind = (
            "compressedDepth"
            if compressed and "compresseddepth" in encoding.lower()
            else encoding.upper()
        )
        if kind not in DEPTH_ENCODINGS or kind in self._warned_encodings:
            return
        self._warned_encodings.add(kind)
        self.get_logger().warning(
            f"frames on {self._subscription_topic()} are {encoding}, a depth encoding: is a "
            "depth topic remapped to the colour input `image`? They are processed as grey "
            "images (min-max scaled), which is almost never meant"
        )

    def _subscription_topic(self) -> str:
        subscription = self._subscription
        return subscription.topic_name if subscription is not None else "the input topic"

    def _frame_error(self, kind: str, err: Exception) -> None:
        self._stats.error(kind)
        self.get_logger().warning(
            f"skipped a frame: {kind}: {err}", throttle_duration_sec=WARN_THROTTLE_SEC
        )

    def _unexpected_error(self, err: Exception) -> None:
        """A bug: counted every time, logged with its traceback once per kind (type + place)."""
        where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
        kind = (
            f"{type(err).__name__} at {where.filename}:{where.lineno}"
            if where
            else type(err).__name__
        )
        self._stats.error(f"unexpected {type(err).__name__}")
        if kind in self._logged_bugs:
            return
        self._logged_bugs.add(kind)
        trace = "".join(traceback.format_exception(err))
        self.get_logger().error(
            f"unexpected error while processing a frame (logged once per kind, every one is "
            f"counted in /diagnostics; the node goes on with the next frame):\n{trace}"
        )

    def _messages(
        self, header: Any, rgb: np.ndarray, prediction: Prediction, settings: Settings
    ) -> list[tuple[Any, Any]]:
        """Every enabled output for one frame as (publisher, message), with the input's header."""
        pubs = self._outputs
        out: list[tuple[Any, Any]] = []
        palette = _triplets(settings.palette) or self._predictor_palette()
        if settings.publish_detections and "detection" in self._tasks():
            out.append((pubs["detections"], detections_message(prediction, header)))
        if prediction.mask is not None:
            if settings.publish_segmentation:
                out.append((pubs["segmentation"], mask_message(prediction.mask, header)))
            # Colourising (~1.5 ms at 480x640) and drawing (a few ms) only while someone looks;
            # the class-id mask is always published (replay evaluation and recorders rely on it).
            if settings.publish_color and _has_subscribers(pubs["color"]):
                out.append((pubs["color"], color_mask_message(prediction.mask, palette, header)))
        if settings.publish_overlay and _has_subscribers(pubs["overlay"]):
            out.append(
                (
                    pubs["overlay"],
                    overlay_message(rgb, prediction, palette, settings.overlay_alpha, header),
                )
            )
        if prediction.depth is not None:
            if settings.publish_depth:
                out.append((pubs["depth"], depth_message(prediction.depth, header)))
            if settings.publish_depth_color and _has_subscribers(pubs["depth_color"]):
                out.append(
                    (
                        pubs["depth_color"],
                        color_depth_message(prediction.depth, settings.depth_color_max, header),
                    )
                )
        return out

    def _predictor_palette(self) -> list[tuple[int, ...]]:
        predictor = self._predictor
        return predictor.palette if predictor is not None else []

    def _tasks(self) -> tuple[str, ...]:
        predictor = self._predictor
        return predictor.tasks if predictor is not None else ()

    # ------------------------------------------------------------------ parameters
    def _validate_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Reject a run-time change with a reason (ranges and read-only are checked by rclpy)."""
        problem = first_problem((p.name, p.value) for p in parameters)
        if problem is None:
            candidate = self._settings_with(parameters)
            predictor = self._predictor
            if predictor is not None:
                problem = model_problem(
                    candidate, predictor.detection_classes, predictor.segmentation_classes
                )
        return SetParametersResult(successful=problem is None, reason=problem or "")

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        """Take accepted values into use; the worker sees them from its next frame on."""
        self.settings = self._settings_with(parameters)
        if self._predictor is not None and {p.name for p in parameters} & {
            "score_threshold",
            "max_detections",
            "class_filter",
        }:
            self._predictor = with_runtime_settings(self._predictor, self.settings)

    def _settings_with(self, parameters: list[Parameter]) -> Settings:
        """The settings if ``parameters`` were applied on top of the current values."""
        values = {name: self.get_parameter(name).value for name in SPECS}
        values.update((p.name, p.value) for p in parameters if p.name in SPECS)
        return Settings.from_values(values)

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        report = self._stats.report()
        status = DiagnosticStatus(
            name=f"{self.get_name()}: perception", hardware_id=self._device_name()
        )
        if self._active:
            status.level = bytes([report.level])
            if report.level == ERROR:
                status.message = (
                    f"every frame fails: {report.new_errors} errors since the last report, "
                    "none processed"
                )
            elif report.new_errors:
                status.message = (
                    f"{report.processed_rate_hz:.1f} Hz, {report.new_errors} new errors"
                )
            else:
                status.message = f"{report.processed_rate_hz:.1f} Hz"
        else:
            status.level = bytes([ERROR if self._fatal else WARN])
            status.message = self._fatal or "inactive"
        pairs = [
            ("model", self.settings.model_path),
            ("device", self._device_name()),
            *report.key_values(),
        ]
        status.values = [KeyValue(key=key, value=value) for key, value in pairs]
        self._diagnostics.publish(DiagnosticArray(header=_stamped(self), status=[status]))

    def _device_name(self) -> str:
        predictor = self._predictor
        return str(predictor.device) if predictor is not None else self.settings.device


def _has_subscribers(publisher: Any) -> bool:
    """Whether anyone listens on ``publisher``.

    A late subscriber misses at most the frames published before it matched.
    """
    return publisher.get_subscription_count() > 0


def _triplets(flat: Sequence[int]) -> list[tuple[int, int, int]]:
    """Flat ``[r, g, b, r, g, b, ...]`` -> list of colours."""
    return [tuple(flat[i : i + 3]) for i in range(0, len(flat), 3)]  # type: ignore[misc]


def _stamped(node: LifecycleNode) -> Any:
    from std_msgs.msg import Header

    return Header(stamp=node.get_clock().now().to_msg())


def main(args: Sequence[str] | None = None) -> int:
    """``ros2 run mtl_perception perception_node``: exit 0 on shutdown, 2 on a fatal user error."""
    rclpy.init(args=None if args is None else list(args))
    node: PerceptionNode | None = None
    try:
        try:
            node = PerceptionNode()
        except UserError as err:
            print(f"{NODE_NAME}: error: {err}", file=sys.stderr)
            return 2
        if node.settings.autostart:
            if node.trigger_configure() != SUCCESS or node.trigger_activate() != SUCCESS:
                return 2  # the reason was logged as one fatal line
        else:
            node.get_logger().info(
                "unconfigured: waiting for lifecycle transitions (autostart is false)"
            )
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop_processing()
            node.destroy_node()
        rclpy.try_shutdown()
        # The interpreter's last garbage collections walk every object torch created: seconds
        # on a loaded robot, past launch's 5 s SIGINT grace. Frozen objects are skipped (the
        # OS frees the memory), so Ctrl-C ends the node promptly.
        gc.freeze()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
