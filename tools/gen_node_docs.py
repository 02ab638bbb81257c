"""Generate docs/NODE.md, the perception node's reference, from the code that defines the node.

The parameter table comes from ``mtl_perception.ros.params.PARAMETERS`` (names, types,
defaults, ranges, read-only flags, descriptions), the topic names from the constants in
``mtl_perception.ros.node``, the diagnostics keys from ``mtl_perception.ros.diagnostics`` and
the launch arguments from ``launch/perception.launch.py`` (read with ``ast``: ``launch`` is
not importable outside a ROS install). ``test/test_docs_node.py`` fails when the committed
file differs from this output, so the reference cannot drift from the code.

    .venv/bin/python tools/gen_node_docs.py            # rewrite docs/NODE.md
    .venv/bin/python tools/gen_node_docs.py --check    # exit 1 if docs/NODE.md is stale
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: the package is not installed
    sys.path.insert(0, str(REPO))

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from mtl_perception.core.atomic_io import write_text  # noqa: E402
from mtl_perception.ros import node  # noqa: E402
from mtl_perception.ros.diagnostics import StatsReport  # noqa: E402
from mtl_perception.ros.params import PARAMETERS, ParamSpec  # noqa: E402

OUTPUT = REPO / "docs" / "NODE.md"
LAUNCH_FILE = REPO / "launch" / "perception.launch.py"

_TYPE_NAMES = {
    Parameter.Type.BOOL: "bool",
    Parameter.Type.INTEGER: "int",
    Parameter.Type.DOUBLE: "double",
    Parameter.Type.STRING: "string",
    Parameter.Type.STRING_ARRAY: "string[]",
    Parameter.Type.INTEGER_ARRAY: "int[]",
}


def ros_type(msg_class: type) -> str:
    """``vision_msgs/msg/Detection2DArray`` for the generated Python message class."""
    return f"{msg_class.__module__.split('.')[0]}/msg/{msg_class.__name__}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A GitHub-flavoured Markdown table; ``|`` inside cells is escaped."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows)]


def _text(prose: str) -> str:
    """Free text from the code for a Markdown cell: ``<image>`` must not read as an HTML tag."""
    return prose.replace("<", "&lt;").replace(">", "&gt;")


def _default(spec: ParamSpec) -> str:
    """The default as it is written in config/perception.yaml."""
    value = spec.default
    if value is None:
        return "`[]`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def _allowed(spec: ParamSpec) -> str:
    if spec.low is not None and spec.high is not None:
        return f"{spec.low:g} .. {spec.high:g}"
    return _text(spec.constraints)


def parameter_rows() -> list[list[str]]:
    """One row per declared parameter, in declaration order."""
    return [
        [f"`{spec.name}`", _TYPE_NAMES[spec.type], _default(spec), _allowed(spec),
         "no (read-only)" if spec.read_only else "yes", _text(spec.description)]
        for spec in PARAMETERS
    ]


def topic_rows() -> tuple[list[list[str]], list[list[str]]]:
    """(subscriptions, publications) of the node, from its topic constants."""
    inputs = [
        ["`image`", ros_type(Image), "`compressed: false` (default); remap it to your camera topic"],
        ["`<image>/compressed`", ros_type(CompressedImage),
         "`compressed: true`; image_transport naming (remapping `image` is enough; "
         "`image/compressed` may also be remapped explicitly)"],
    ]
    outputs = [
        [f"`{node.DETECTIONS_TOPIC}`", ros_type(Detection2DArray), "`publish_detections`",
         "boxes in input-image pixels (centre + size); `results[0].hypothesis.class_id` = class name, "
         "`score`; `id` = index in the frame"],
        [f"`{node.SEGMENTATION_TOPIC}`", ros_type(Image), "`publish_segmentation`",
         "`mono8` class ids at input resolution (0 = background)"],
        [f"`{node.COLOR_TOPIC}`", ros_type(Image), "`publish_color`", "`rgb8` mask coloured with `palette`; drawn only while someone subscribes"],
        [f"`{node.OVERLAY_TOPIC}`", ros_type(Image), "`publish_overlay`",
         "`rgb8` frame with boxes and the blended mask; drawn only while someone subscribes"],
        [f"`{node.DEPTH_TOPIC}`", ros_type(Image), "`publish_depth`",
         "`32FC1` depth in metres at input resolution (models trained with depth)"],
        [f"`{node.DEPTH_COLOR_TOPIC}`", ros_type(Image), "`publish_depth_color`",
         "`rgb8` depth, near red to far blue (`depth_color_max`); drawn only while someone subscribes"],
        ["`/diagnostics`", ros_type(DiagnosticArray), "always",
         "every `diagnostics_period` s, also while inactive (level WARN/ERROR with the reason)"],
    ]
    return inputs, outputs


def diagnostics_keys() -> list[str]:
    """The keys of the node's DiagnosticStatus values (from the statistics report itself)."""
    sample = StatsReport(input_rate_hz=0.0, processed_rate_hz=0.0, received=0, processed=0, dropped=0,
                         latency_p50_ms=None, latency_p95_ms=None, errors={"<kind>": 0})
    return ["model", "device", *(key for key, _ in sample.key_values())]


def _launch_default(node_ast: ast.expr) -> str:
    """A launch argument default as text: literals as is, ``_share(a, b)`` as ``<share>/a/b``."""
    if isinstance(node_ast, ast.Constant):
        return f'`"{node_ast.value}"`'
    if isinstance(node_ast, ast.Call) and getattr(node_ast.func, "id", None) == "_share":
        parts = [ast.literal_eval(arg) for arg in node_ast.args]
        return "`<share>/" + "/".join(parts) + "`"
    return f"`{ast.unparse(node_ast)}`"


def launch_rows(path: Path = LAUNCH_FILE) -> list[list[str]]:
    """``DeclareLaunchArgument`` calls of the launch file: name, default, description."""
    rows = []
    for call in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "DeclareLaunchArgument":
            keywords: dict[str, Any] = {kw.arg: kw.value for kw in call.keywords}
            description = ast.literal_eval(keywords["description"]) if "description" in keywords else ""
            default = _launch_default(keywords["default_value"]) if "default_value" in keywords else "(required)"
            rows.append([f"`{ast.literal_eval(call.args[0])}`", default, _text(description)])
    return rows


def render() -> str:
    """The complete text of docs/NODE.md."""
    inputs, outputs = topic_rows()
    lines = [
        "# perception_node reference",
        "",
        "<!-- Generated by tools/gen_node_docs.py from mtl_perception/ros/params.py, mtl_perception/ros/node.py,",
        "     mtl_perception/ros/diagnostics.py and launch/perception.launch.py. Do not edit by hand:",
        "     run `.venv/bin/python tools/gen_node_docs.py` (test/test_docs_node.py checks it is current). -->",
        "",
        f"Lifecycle node `{node.NODE_NAME}` (executable `perception_node`). Output topics are private "
        "(`~/` = `<namespace>/perception_node/`), so several nodes can run side by side. Every output "
        "carries the input message's header unchanged (stamp and `frame_id`).",
        "",
        "## Subscribed topics",
        "",
        *_table(["Topic", "Type", "When"], inputs),
        "",
        "Input QoS: keep last `depth` (default 1), reliability `reliability` (default best effort, "
        "like `qos_profile_sensor_data`), volatile.",
        "",
        "## Published topics",
        "",
        *_table(["Topic", "Type", "Switch", "Content"], outputs),
        "",
        "Output QoS: reliable, keep last 10, volatile (a best-effort or reliable subscriber both match). "
        "The `~/` publishers are lifecycle publishers: they exist from `configure` and publish only while active.",
        "",
        "## Parameters",
        "",
        "Defaults and comments are also in `config/perception.yaml`. Read-only parameters are fixed for the "
        "node's lifetime (set them in the YAML file or with `-p name:=value`); the others can be changed with "
        f"`ros2 param set /{node.NODE_NAME} <name> <value>`, and a bad value is rejected with the reason.",
        "",
        *_table(["Parameter", "Type", "Default", "Allowed", "Set at run time", "Description"], parameter_rows()),
        "",
        "## Lifecycle",
        "",
        "- `configure`: load the checkpoint, warm it up, create the publishers.",
        "- `activate`: subscribe to the input and start the inference worker (loads the model again if "
        "`deactivate` released it).",
        "- `deactivate`: unsubscribe, stop the worker and release the model (and its GPU memory).",
        "- `cleanup` / `shutdown`: drop the publishers and the model.",
        "",
        "With `autostart: true` the node runs `configure` and `activate` itself; a failure there (bad "
        "parameter, missing or foreign checkpoint) is one fatal line and exit status 2. With "
        "`autostart: false` it waits: `ros2 lifecycle set /perception_node configure`, then `activate`.",
        "",
        "## Diagnostics",
        "",
        "One `DiagnosticStatus` named `<node name>: perception` (`hardware_id` = the device) with the values:",
        "",
        *(f"- `{key}`" for key in diagnostics_keys()),
        "",
        "`<kind>` is one of `unsupported encoding`, `bad image` (truncated, empty, undecodable) and "
        "`inference failed` (the frame is skipped), or `size changed` (the stream's resolution changed; "
        "the frame is still processed). Input frames that arrive while the previous one is still being "
        "processed replace the waiting frame and count as `frames dropped` (the node never builds a backlog).",
        "",
        "## Launch arguments (`launch/perception.launch.py`)",
        "",
        *_table(["Argument", "Default", "Description"], launch_rows()),
        "",
        "`<share>` is the package's installed share folder, `$(ros2 pkg prefix mtl_perception)/share/mtl_perception`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUTPUT, help="file to write (default: docs/NODE.md)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date: run .venv/bin/python tools/gen_node_docs.py", file=sys.stderr)
            return 1
        return 0
    write_text(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
