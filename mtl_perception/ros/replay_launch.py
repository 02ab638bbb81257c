# SPDX-License-Identifier: Apache-2.0
"""Starting the perception node as a subprocess for a replay (or a benchmark) and stopping it.

The node runs as ``python -m mtl_perception.ros.node`` with ``autostart`` and the input topic
remapped, in the same DDS domain, with the Fast DDS large-image profile. Its output goes to a
log file so that a failed start can be explained with the node's own last lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import mtl_perception

__all__ = ["FASTDDS_PROFILE", "NodeProcess", "dds_environment"]

PACKAGE_ROOT = Path(mtl_perception.__file__).resolve().parents[1]
PROFILE_NAME = "fastdds_large_images.xml"
PROFILE_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"


def _find_profile() -> Path:
    """The profile in a source checkout, else where an install puts it.

    That is ``share/mtl_perception/config`` under the installation prefix.
    """
    checkout = PACKAGE_ROOT / "config" / PROFILE_NAME
    installed = Path(sys.prefix) / "share" / "mtl_perception" / "config" / PROFILE_NAME
    return checkout if checkout.is_file() or not installed.is_file() else installed


FASTDDS_PROFILE = _find_profile()


def dds_environment(profile: Path | None = FASTDDS_PROFILE) -> dict[str, str]:
    """Environment additions for ROS processes: the large-image profile unless one is set."""
    env: dict[str, str] = {}
    if profile is not None and profile.is_file() and not os.environ.get(PROFILE_ENV):
        env[PROFILE_ENV] = str(profile)
    return env


class NodeProcess:
    """``python -m mtl_perception.ros.node`` as a child process (context manager).

    ``image_topic`` is the topic the node should listen on (its ``image`` or, with
    ``compressed``, ``image/compressed`` is remapped to it); ``parameters`` are extra
    ``name:=value`` settings; ``params_file`` a ROS parameters YAML.
    """

    def __init__(
        self,
        model_path: Path,
        image_topic: str,
        log_path: Path,
        *,
        compressed: bool = False,
        parameters: Sequence[str] = (),
        params_file: Path | None = None,
        node_name: str = "perception_node",
        python: str = sys.executable,
    ) -> None:
        self.log_path = log_path
        self.node_name = node_name
        input_name = "image/compressed" if compressed else "image"
        args = [
            python,
            "-m",
            "mtl_perception.ros.node",
            "--ros-args",
            "-r",
            f"__node:={node_name}",
            "-r",
            f"{input_name}:={image_topic}",
            "-p",
            f"model_path:={model_path}",
            "-p",
            "autostart:=true",
            "-p",
            f"compressed:={'true' if compressed else 'false'}",
        ]
        for setting in parameters:
            args += ["-p", setting]
        if params_file is not None:
            args += ["--params-file", str(params_file)]
        self.args = args
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def namespace(self) -> str:
        """The node's private namespace (its outputs are ``<namespace>/detections`` etc.)."""
        return f"/{self.node_name}"

    def start(self) -> NodeProcess:
        """Start the node (its output goes to ``log_path``); returns ``self``."""
        env = {**os.environ, **dds_environment()}
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")])
        )
        env.pop("ROS_PYTHON_CHECK_FIELDS", None)  # makes Image.data assignment ~1000x slower
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:  # the child keeps its own handle
            self._process = subprocess.Popen(
                self.args, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    @property
    def pid(self) -> int | None:
        """The node's process id; None before ``start``."""
        return self._process.pid if self._process is not None else None

    def exit_code(self) -> int | None:
        """None while running, else the exit status."""
        return None if self._process is None else self._process.poll()

    def log_tail(self, lines: int = 5) -> str:
        """The last lines the node printed (for error messages)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT (clean rclpy shutdown), then SIGKILL after ``timeout`` seconds."""
        process = self._process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=timeout)

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
