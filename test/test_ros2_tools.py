# SPDX-License-Identifier: Apache-2.0
"""The package as a robot team installs and runs it, with the real ROS 2 tools (no stand-ins).

One ``colcon build --symlink-install`` per session in a temporary workspace; after sourcing its
``install/setup.bash``:

- ``ros2 pkg executables`` lists the executables; launch file and config are in the share folder;
- ``ros2 launch mtl_perception perception.launch.py namespace:=front image:=...
  params_file:=mine.yaml`` answers a frame on the remapped topic under ``/front/perception_node/``
  with the input header, the user's file values are in effect, and SIGINT ends launch and node
  cleanly;
- ``ros2 run`` with ``autostart:=false``, driven by ``ros2 lifecycle set`` (deactivate releases the
  model, activate reloads it and it answers again); ``ros2 param set`` accepts a good value and
  refuses a bad one with the reason;
- the launch_testing test test/launch/perception_node.test.py, run by ``launch_test``.

The three node processes start together (module fixture) so their start-up (torch import) overlaps.
Every wait ends at its event (an output line, a message, a process exit), with a generous limit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from package_sources import copy_package_sources
from rosnodes import ClientNode, cpu_node_args
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

from mtl_perception.checkpoint import inference_fields, save_checkpoint
from mtl_perception.nets import build_model

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]
# Every console script of setup.py (ros2 run looks for them in lib/mtl_perception).
EXECUTABLES = set(re.findall(r'"([\w-]+) = [\w.]+:\w+"', (REPO / "setup.py").read_text()))
LAUNCH_TEST = REPO / "test" / "launch" / "perception_node.test.py"
HEIGHT, WIDTH = 48, 64
TIMEOUT = 180.0  # upper bound for start-up on a loaded 2-core machine; waits end at their event
SIGINT_GRACE = 10.0  # "a few seconds": launch itself escalates to SIGTERM after 5 s


@pytest.fixture(scope="session")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, ros_domain: dict[str, str]
) -> dict[str, str]:
    """``colcon build --symlink-install`` of the package; the environment after sourcing it."""
    root = tmp_path_factory.mktemp("ros2_ws")
    src = root / "src" / "mtl_perception"
    src.mkdir(parents=True)
    copy_package_sources(src)
    # The venv's tools (colcon, ros2, launch_test) and ROS packages, activated or not.
    venv_bin = str(Path(sys.executable).parent)
    base = {
        **os.environ,
        "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")]),
        "AMENT_PREFIX_PATH": os.pathsep.join(
            p for p in [os.environ.get("AMENT_PREFIX_PATH", ""), sys.prefix] if p
        ),
    }
    build = subprocess.run(  # the status is asserted with the output
        ["colcon", "build", "--symlink-install", "--event-handlers", "console_direct-"],
        cwd=root,
        env=base,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    dump = subprocess.run(
        ["bash", "-c", "source install/setup.bash && env -0"],
        cwd=root,
        env=base,
        capture_output=True,
        timeout=60,
        check=True,
    )
    env = dict(item.split("=", 1) for item in dump.stdout.decode().split("\0") if "=" in item)
    # The installed package must be what runs, not this checkout through PYTHONPATH.
    python_path = [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO
    ]
    env["PYTHONPATH"] = os.pathsep.join(python_path)
    env.update(
        ros_domain, PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0", ROS_WORKSPACE=str(root)
    )
    return env


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model("ssdlite_deeplabv3", 3, 3, [HEIGHT, WIDTH])
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(
        path, inference_fields(model, ["box", "cone", "ball"], ["background", "floor", "wall"])
    )
    return path


class Process:
    """A subprocess whose output lines are collected by a thread, so tests can wait for a line."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.command = command
        self.lines: list[str] = []
        self._changed = threading.Condition()
        # Ctrl-C must reach the process as in a terminal: a suite started in the background
        # (`make test &`, a CI runner) inherits SIGINT ignored, and an ignored signal stays
        # ignored across exec, so give this process (and hence the child) a real handler.
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        self.popen = subprocess.Popen(
            command,
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """The first output line matching ``pattern``; fails if the process ends or time is up."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                if not self._reader.is_alive() or time.monotonic() > deadline:
                    pytest.fail(
                        f"no line matching {pattern!r} from {' '.join(self.command)}:\n"
                        f"{self.output()}"
                    )
                self._changed.wait(timeout=max(0.0, deadline - time.monotonic()))

    def finish(self, timeout: float) -> int:
        """Exit status after waiting up to ``timeout``; kills the whole group if still running."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
            pytest.fail(
                f"{' '.join(self.command)} still running after {timeout} s:\n{self.output()}"
            )
        finally:
            self._reader.join(timeout=10)

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


def ros2(
    env: dict[str, str], *args: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """One ``ros2`` CLI call (through the daemon of the ``started`` fixture: its graph cache finds
    nodes at once, where ``--no-daemon`` discovery in 0.5 s misses them on a loaded machine)."""
    return subprocess.run(
        ["ros2", *args], check=False, env=env, capture_output=True, text=True, timeout=timeout
    )


class Client(ClientNode):
    """Test-side rclpy node: publishes a frame until the answers with its stamp arrive."""

    def __init__(self) -> None:
        super().__init__("ros2_tools_test_client")

    def round_trip(
        self, camera: str, outputs: dict[str, type], sec: int, timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """Publish an rgb8 frame stamped ``sec`` on ``camera`` until every output answers it."""
        answers: dict[str, Any] = {}
        subscriptions = [
            self.node.create_subscription(
                msg_type, topic, lambda msg, t=topic: _keep(answers, t, msg, sec), 10
            )
            for topic, msg_type in outputs.items()
        ]
        publisher = self.node.create_publisher(Image, camera, 10)
        frame = Image(
            height=HEIGHT,
            width=WIDTH,
            encoding="rgb8",
            step=WIDTH * 3,
            data=bytes(range(256)) * 36,
        )
        frame.header.frame_id = f"camera_{sec}"
        frame.header.stamp.sec, frame.header.stamp.nanosec = sec, 777
        done: Callable[[], bool] = lambda: len(answers) == len(outputs)  # noqa: E731
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            publisher.publish(frame)  # again until matched: the node's input is best effort
            resend = time.monotonic() + 0.5
            while not done() and time.monotonic() < resend:
                self.executor.spin_once(timeout_sec=0.05)
        for subscription in subscriptions:
            self.node.destroy_subscription(subscription)
        self.node.destroy_publisher(publisher)
        return answers


def _keep(answers: dict[str, Any], topic: str, msg: Any, sec: int) -> None:
    if msg.header.stamp.sec == sec:
        answers.setdefault(topic, msg)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    ros = Client()
    yield ros
    ros.close()


@pytest.fixture(scope="module")
def started(
    workspace: dict[str, str],
    checkpoint: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Process]]:
    """`ros2 launch` (user params file, namespace, remap), `ros2 run` (inactive), launch_test."""
    folder = tmp_path_factory.mktemp("mine")
    share = (
        Path(ros2(workspace, "pkg", "prefix", "mtl_perception").stdout.strip())
        / "share"
        / "mtl_perception"
    )
    # A user's file: the package's config copied as is, some values edited.
    mine = yaml.safe_load((share / "config" / "perception.yaml").read_text())
    mine["/**"]["ros__parameters"].update(
        model_path=str(checkpoint),
        device="cpu",
        score_threshold=0.77,
        max_detections=7,
        warmup_iterations=0,
    )
    params_file = folder / "mine.yaml"
    params_file.write_text(yaml.safe_dump(mine))
    assert ros2(workspace, "daemon", "start").returncode == 0  # this test's ROS_DOMAIN_ID only
    processes = {
        "launch": Process(
            [
                "ros2",
                "launch",
                "mtl_perception",
                "perception.launch.py",
                "namespace:=front",
                "image:=/robot/front_camera/image",
                f"params_file:={params_file}",
            ],
            workspace,
        ),
        "run": Process(
            [
                "ros2",
                "run",
                "mtl_perception",
                "perception_node",
                "--ros-args",
                *cpu_node_args(checkpoint, "/run", "-r", "image:=/run/camera", autostart=False),
            ],
            workspace,
        ),
        "launch_test": Process(
            ["launch_test", str(LAUNCH_TEST), f"model:={checkpoint}"], workspace
        ),
    }
    yield processes
    for process in processes.values():
        if process.popen.poll() is None:
            process.popen.send_signal(signal.SIGINT)
    for process in processes.values():
        try:
            process.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    ros2(workspace, "daemon", "stop")


def test_colcon_install_has_executables_launch_file_and_config(workspace: dict[str, str]) -> None:
    listed = ros2(workspace, "pkg", "executables", "mtl_perception")
    assert listed.returncode == 0, listed.stderr
    assert {line.split()[1] for line in listed.stdout.splitlines()} == EXECUTABLES
    prefix = Path(ros2(workspace, "pkg", "prefix", "mtl_perception").stdout.strip())
    assert prefix == Path(workspace["ROS_WORKSPACE"]) / "install" / "mtl_perception"
    share = prefix / "share" / "mtl_perception"
    for name in (
        "launch/perception.launch.py",
        "config/perception.yaml",
        "config/fastdds_large_images.xml",
        "package.xml",
    ):
        assert (share / name).is_file(), name


def test_launch_answers_in_its_namespace_with_the_input_header(
    started: dict[str, Process], client: Client
) -> None:
    launch = started["launch"]
    launch.wait_for(r"\[front\.perception_node\]: active: listening on /robot/front_camera/image")
    outputs = {
        "/front/perception_node/detections": Detection2DArray,
        "/front/perception_node/segmentation": Image,
    }
    answers = client.round_trip("/robot/front_camera/image", outputs, sec=1001)
    assert set(answers) == set(outputs), launch.output()
    for msg in answers.values():
        assert (msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec) == (
            "camera_1001",
            1001,
            777,
        )
    mask = answers["/front/perception_node/segmentation"]
    assert (mask.encoding, mask.height, mask.width) == ("mono8", HEIGHT, WIDTH)


def test_launch_uses_the_users_params_file(
    started: dict[str, Process], workspace: dict[str, str]
) -> None:
    started["launch"].wait_for(r"active: listening")
    for name, expected in (
        ("score_threshold", "Double value is: 0.77"),
        ("max_detections", "Integer value is: 7"),
    ):
        got = ros2(workspace, "param", "get", "/front/perception_node", name)
        assert expected in got.stdout, (name, got.stdout, got.stderr)


def test_sigint_ends_launch_and_node_cleanly(started: dict[str, Process]) -> None:
    launch = started["launch"]
    launch.wait_for(r"active: listening")
    node_pid = int(
        launch.wait_for(r"\[perception_node-1\]: process started with pid \[(\d+)\]").group(1)
    )
    launch.popen.send_signal(signal.SIGINT)  # Ctrl-C in the terminal
    assert launch.finish(timeout=SIGINT_GRACE) == 0, launch.output()
    assert "process has finished cleanly" in launch.output()
    assert "escalating to 'SIGTERM'" not in launch.output()
    assert (
        not Path(f"/proc/{node_pid}").exists()
        or "zombie" in Path(f"/proc/{node_pid}/status").read_text()
    )


def test_ros2_lifecycle_drives_the_node(
    started: dict[str, Process], workspace: dict[str, str], client: Client
) -> None:
    run, node = started["run"], "/run/perception_node"
    outputs = {f"{node}/detections": Detection2DArray}

    def lifecycle(*args: str) -> str:
        result = ros2(workspace, "lifecycle", *args)
        assert result.returncode == 0, (args, result.stdout, result.stderr, run.output())
        return result.stdout

    run.wait_for(r"unconfigured: waiting for lifecycle transitions")
    assert lifecycle("get", node).startswith("unconfigured")
    assert "Transitioning successful" in lifecycle("set", node, "configure")
    run.wait_for(r"configured: model .* images decoded by builtin decoder")
    assert "Transitioning successful" in lifecycle("set", node, "activate")
    run.wait_for(r"active: listening on /run/camera")
    assert client.round_trip("/run/camera", outputs, sec=2001)
    assert "Transitioning successful" in lifecycle("set", node, "deactivate")
    run.wait_for(r"inactive: stopped listening, model released")
    assert lifecycle("get", node).startswith("inactive")
    assert "Transitioning successful" in lifecycle(
        "set", node, "activate"
    )  # loads the model again
    assert len(re.findall(r"active: listening on /run/camera", run.output())) == 2
    assert client.round_trip("/run/camera", outputs, sec=2002), run.output()


def test_ros2_param_set_accepts_good_and_refuses_bad_values(
    started: dict[str, Process], workspace: dict[str, str]
) -> None:
    node = "/run/perception_node"
    started["run"].wait_for(r"unconfigured: waiting for lifecycle transitions")
    if ros2(workspace, "lifecycle", "get", node).stdout.startswith(
        "unconfigured"
    ):  # run alone (-k)
        ros2(workspace, "lifecycle", "set", node, "configure")
    started["run"].wait_for(
        r"configured: model"
    )  # the model is loaded: class names can be checked
    good = ros2(workspace, "param", "set", node, "score_threshold", "0.55")
    assert "Set parameter successful" in good.stdout, good.stdout + good.stderr
    assert (
        "Double value is: 0.55" in ros2(workspace, "param", "get", node, "score_threshold").stdout
    )
    out_of_range = ros2(workspace, "param", "set", node, "score_threshold", "1.5")
    said = out_of_range.stdout + out_of_range.stderr
    assert "Setting parameter failed" in said, said
    assert "out of range Min: 0.0, Max: 1.0" in said, said
    unknown_class = ros2(workspace, "param", "set", node, "class_filter", "[cone, sheep]")
    said = unknown_class.stdout + unknown_class.stderr
    assert "Setting parameter failed" in said, said
    assert "['sheep'] not among the model's detection classes" in said, said
    assert (
        "Double value is: 0.55" in ros2(workspace, "param", "get", node, "score_threshold").stdout
    )


def test_launch_testing_test_passes(started: dict[str, Process]) -> None:
    """test/launch/perception_node.test.py through ``launch_test``, the ROS way of running it."""
    process = started["launch_test"]
    assert process.finish(timeout=2 * TIMEOUT) == 0, process.output()
    assert process.output().count("\nOK") == 2, (
        process.output()
    )  # the active and the post-shutdown tests


def test_python_executable_is_the_venvs(workspace: dict[str, str]) -> None:
    """colcon writes the interpreter it ran with into the entry points (here: the venv's)."""
    prefix = Path(ros2(workspace, "pkg", "prefix", "mtl_perception").stdout.strip())
    shebang = (prefix / "lib" / "mtl_perception" / "perception_node").read_text().splitlines()[0]
    assert Path(shebang.removeprefix("#!")).resolve() == Path(sys.executable).resolve()
