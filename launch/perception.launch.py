# SPDX-License-Identifier: Apache-2.0
"""Launch the mtl_perception perception node.

    ros2 launch mtl_perception perception.launch.py model:=models/<name>/model.pt \
        image:=/camera/image_raw [compressed:=true] [device:=cuda] [namespace:=front] \
        [params_file:=my_perception.yaml] [use_sim_time:=true] [autostart:=false] [dds_profile:=]

Parameters come from ``params_file`` (default: the package's ``config/perception.yaml``);
the ``model``, ``device``, ``compressed`` and ``autostart`` arguments override it only when
given (their empty default keeps the file's value). ``autostart:=false`` starts the node
unconfigured, for a lifecycle manager (or ``ros2 lifecycle set``) to drive it;
``use_sim_time:=true`` follows ``/clock`` (``ros2 bag play --clock``). The node subscribes to
``image`` (or ``<image>/compressed`` with compressed input, the image_transport naming),
remapped here to the ``image`` argument. ``dds_profile`` points Fast DDS at a profile with a
large shared-memory segment (big images are otherwise fragmented and lost); set it empty to keep
the environment's DDS settings.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchContext, LaunchDescription

PACKAGE = "mtl_perception"
EXECUTABLE = "perception_node"
NODE_NAME = "perception_node"

# Launch argument -> node parameter it overrides unless empty (test/test_ros2_tools.py runs them).
PARAMETER_ARGUMENTS = {
    "model": "model_path",
    "device": "device",
    "compressed": "compressed",
    "autostart": "autostart",
    "use_sim_time": "use_sim_time",
}
BOOLEAN_PARAMETERS = {"compressed", "autostart", "use_sim_time"}


def _share(*parts: str) -> str:
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def _arguments() -> list[DeclareLaunchArgument]:
    return [
        DeclareLaunchArgument(
            "model",
            default_value="",
            description="Checkpoint, e.g. models/<name>/model.pt (mtl-export); "
            "empty = model_path from params_file.",
        ),
        DeclareLaunchArgument(
            "image", default_value="/camera/image_raw", description="Input image topic (raw)."
        ),
        DeclareLaunchArgument(
            "compressed",
            default_value="",
            description="true: subscribe to <image>/compressed; empty = from params_file.",
        ),
        DeclareLaunchArgument(
            "params_file",
            default_value=_share("config", "perception.yaml"),
            description=(
                "Node parameters: a copy of config/perception.yaml (key /**: any namespace)."
            ),
        ),
        DeclareLaunchArgument(
            "namespace", default_value="", description="Namespace of the node and its outputs."
        ),
        DeclareLaunchArgument(
            "device",
            default_value="",
            description="auto, cpu, cuda or cuda:N; empty = from params_file.",
        ),
        DeclareLaunchArgument(
            "autostart",
            default_value="",
            description=(
                "false: start unconfigured, for a lifecycle manager; empty = from params_file."
            ),
        ),
        DeclareLaunchArgument(
            "use_sim_time",
            default_value="",
            description=(
                "true: use /clock (ros2 bag play --clock); empty = from params_file (false)."
            ),
        ),
        DeclareLaunchArgument(
            "dds_profile",
            default_value=_share("config", "fastdds_large_images.xml"),
            description=(
                "Fast DDS profile XML (FASTRTPS_DEFAULT_PROFILES_FILE); empty = leave unset."
            ),
        ),
        DeclareLaunchArgument("log_level", default_value="info", description="Node log level."),
    ]


def _parameter_overrides(context: LaunchContext) -> dict[str, str | bool]:
    """Node parameters set by non-empty launch arguments."""
    overrides: dict[str, str | bool] = {}
    for argument, parameter in PARAMETER_ARGUMENTS.items():
        value = LaunchConfiguration(argument).perform(context).strip()
        if not value:
            continue
        if parameter in BOOLEAN_PARAMETERS:
            if value.lower() not in ("true", "false"):
                raise ValueError(f"launch argument {argument}:={value!r} must be true or false")
            overrides[parameter] = value.lower() == "true"
        else:
            overrides[parameter] = value
    return overrides


def _launch_setup(context: LaunchContext) -> list:
    actions = []
    dds_profile = LaunchConfiguration("dds_profile").perform(context).strip()
    if dds_profile:
        actions.append(SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", dds_profile))
    actions.append(
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name=NODE_NAME,
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file"), _parameter_overrides(context)],
            remappings=[("image", LaunchConfiguration("image"))],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
            output="screen",
            emulate_tty=True,
        )
    )
    return actions


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([*_arguments(), OpaqueFunction(function=_launch_setup)])
