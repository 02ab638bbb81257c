# SPDX-License-Identifier: Apache-2.0
"""The package installs like an ament_python package: wheel contents and entry points."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml
from package_sources import copy_package_sources

ROOT = Path(__file__).resolve().parents[1]
EXECUTABLES = {
    "mtl-data",
    "mtl-train",
    "mtl-eval",
    "mtl-export",
    "mtl-replay",
    "mtl-demo",
    "perception_node",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """Build a wheel from a copy of the sources (the build must not litter the checkout)."""
    src = tmp_path_factory.mktemp("src")
    copy_package_sources(src)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("mtl_perception-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_installs_ament_files(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    data = "mtl_perception-0.1.0.data/data/"
    assert f"{data}share/ament_index/resource_index/packages/mtl_perception" in names
    assert f"{data}share/mtl_perception/package.xml" in names
    launch_files = sorted(p.name for p in (ROOT / "launch").glob("*.launch.py"))
    assert launch_files, "no launch files in launch/"
    for name in launch_files:
        assert f"{data}share/mtl_perception/launch/{name}" in names
    config_files = [p for p in (ROOT / "config").rglob("*") if p.is_file()]
    assert config_files
    for path in config_files:
        assert f"{data}share/mtl_perception/{path.relative_to(ROOT)}" in names


def test_wheel_has_console_scripts_and_packages(wheel: zipfile.ZipFile) -> None:
    entry_points = wheel.read("mtl_perception-0.1.0.dist-info/entry_points.txt").decode()
    declared = {line.split("=")[0].strip() for line in entry_points.splitlines() if "=" in line}
    assert declared >= EXECUTABLES
    names = wheel.namelist()
    assert "mtl_perception/ros/node.py" in names
    assert "data_tools/cli.py" in names


def test_package_xml_is_format3_ament_python() -> None:
    root = ElementTree.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "mtl_perception"
    assert root.find("export/build_type").text == "ament_python"
    depends = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "vision_msgs", "diagnostic_msgs"} <= depends


def test_console_scripts_resolve_to_callables() -> None:
    """Every entry point names an importable module with a ``main`` (catches renames)."""
    import importlib
    import re

    text = (ROOT / "setup.py").read_text()
    targets = re.findall(r'"[\w-]+ = ([\w.]+):(\w+)"', text)
    assert len(targets) == len(EXECUTABLES)
    for module_name, func in targets:
        module = importlib.import_module(module_name)
        assert callable(getattr(module, func)), f"{module_name}:{func}"


def _rosdistro_keys(shared: Path) -> tuple[set[str], set[str]]:
    """(rosdep keys of rosdep/*.yaml, package names of jazzy/distribution.yaml)."""
    rosdistro = shared / "rosdistro"
    keys: set[str] = set()
    for path in sorted((rosdistro / "rosdep").glob("*.yaml")):
        keys |= set(yaml.safe_load(path.read_text(encoding="utf-8")))
    distribution = yaml.safe_load(
        (rosdistro / "jazzy" / "distribution.yaml").read_text(encoding="utf-8")
    )
    packages: set[str] = set()
    for name, repository in distribution["repositories"].items():
        release = repository.get("release") or {}
        packages |= set(release.get("packages") or ([name] if release else []))
    return keys, packages


def test_every_package_xml_key_resolves_with_rosdep(shared: Path) -> None:
    """`rosdep install --from-paths src` fails on the robot for a key rosdistro does not know."""
    keys, packages = _rosdistro_keys(shared)
    assert {"python3-numpy", "python3-rosbags-pip"} <= keys and {
        "rclpy",
        "vision_msgs",
    } <= packages  # parsed right
    root = ElementTree.parse(ROOT / "package.xml").getroot()
    depends = [e.text.strip() for e in root if e.tag.endswith("depend") and e.text]
    assert depends
    unknown = sorted(key for key in depends if key not in keys and key not in packages)
    assert not unknown, f"package.xml keys rosdep cannot resolve: {unknown}"


def test_the_node_runs_without_the_pip_only_packages() -> None:
    """What rosdep cannot install (package.xml says so) must not be needed to decode and infer."""
    script = """
import importlib.abc, sys
PIP_ONLY = ("rosbags", "pycocotools", "torchmetrics", "torchjd", "data_tools")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in PIP_ONLY:
            raise ImportError(f"{name} is blocked")
sys.meta_path.insert(0, Block())
import numpy as np
from sensor_msgs.msg import Image
import mtl_perception.ros.node
import mtl_perception.predictor
from mtl_perception.ros.conversions import UnsupportedEncoding, make_decoder, to_network_rgb
decoder = make_decoder("builtin")
for encoding, channels in (("rgb8", 3), ("bgr8", 3), ("mono8", 1)):
    data = bytes(range(6 * channels))
    msg = Image(height=2, width=3, encoding=encoding, step=3 * channels, data=data)
    assert to_network_rgb(decoder, msg, False).shape == (2, 3, 3)
bayer = Image(height=2, width=2, encoding="bayer_rggb8", step=2, data=bytes(4))
try:
    to_network_rgb(decoder, bayer, False)
except UnsupportedEncoding as err:
    assert "pip install rosbags-image" in str(err), err
else:
    raise AssertionError("bayer decoded without rosbags-image")
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
