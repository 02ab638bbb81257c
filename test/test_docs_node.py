# SPDX-License-Identifier: Apache-2.0
"""docs/NODE.md is the generator's output, and it documents everything the node really has."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from mtl_perception.ros import node
from mtl_perception.ros.params import PARAMETERS

REPO = Path(__file__).resolve().parents[1]
NODE_DOC = REPO / "docs" / "NODE.md"
CONFIG = REPO / "config" / "perception.yaml"
README = REPO / "README.md"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    """tools/gen_node_docs.py loaded as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "gen_node_docs", REPO / "tools" / "gen_node_docs.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def doc() -> str:
    return NODE_DOC.read_text(encoding="utf-8")


def _parameter_rows(text: str) -> dict[str, list[str]]:
    """``{name: [type, default, allowed, settable, description]}`` of NODE.md's parameter table."""
    section = text.split("## Parameters", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"^\| `(\w+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split(" | ")]
    return rows


def test_node_doc_and_params_file_are_the_generators_output(
    generator: ModuleType, doc: str
) -> None:
    assert doc == generator.render(), (
        "docs/NODE.md is stale: run .venv/bin/python tools/gen_node_docs.py"
    )
    assert CONFIG.read_text(encoding="utf-8") == generator.render_params_file(), (
        "config/perception.yaml is stale: run .venv/bin/python tools/gen_node_docs.py"
    )


def test_params_file_has_every_parameter_with_its_default_for_any_namespace() -> None:
    document = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert list(document) == ["/**"]  # a plain `perception_node:` key is ignored under a namespace
    params = document["/**"]["ros__parameters"]
    assert list(params) == [spec.name for spec in PARAMETERS]
    for spec in PARAMETERS:
        expected = [] if spec.default is None else spec.default
        assert params[spec.name] == expected and type(params[spec.name]) is type(expected), (
            spec.name
        )


def test_check_mode_detects_a_stale_file(generator: ModuleType, tmp_path: Path) -> None:
    stale, params = tmp_path / "NODE.md", tmp_path / "perception.yaml"
    stale.write_text(
        generator.render().replace("score_threshold", "score_thresh"), encoding="utf-8"
    )
    params.write_text(generator.render_params_file(), encoding="utf-8")
    outputs = ["--out", str(stale), "--params-out", str(params)]
    assert generator.main(["--check", *outputs]) == 1
    assert generator.main(outputs) == 0
    assert generator.main(["--check", *outputs]) == 0
    params.write_text(generator.render_params_file().replace("0.3", "0.4"), encoding="utf-8")
    assert generator.main(["--check", *outputs]) == 1
    assert (
        generator.main(
            ["--check", "--out", str(tmp_path / "missing.md"), "--params-out", str(params)]
        )
        == 1
    )


def test_every_parameter_of_the_yaml_is_documented_with_its_default(doc: str) -> None:
    values = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["/**"]["ros__parameters"]
    rows = _parameter_rows(doc)
    assert set(values) <= set(rows), f"undocumented: {sorted(set(values) - set(rows))}"
    for name, value in values.items():
        default = rows[name][1].strip("`")
        expected = (
            {True: "true", False: "false"}.get(value)
            if isinstance(value, bool)
            else (f'"{value}"' if isinstance(value, str) else str(value))
        )
        assert default == expected, (
            f"{name}: NODE.md says {default}, perception.yaml says {expected}"
        )


def test_every_declared_parameter_and_its_mutability_is_documented(doc: str) -> None:
    rows = _parameter_rows(doc)
    assert list(rows) == [spec.name for spec in PARAMETERS]
    for spec in PARAMETERS:
        assert rows[spec.name][3] == ("no (read-only)" if spec.read_only else "yes"), spec.name
        if spec.low is not None:
            assert f"{spec.low:g} .. {spec.high:g}" == rows[spec.name][2], spec.name


def test_topics_and_launch_arguments_are_documented(doc: str) -> None:
    for topic in (
        node.DETECTIONS_TOPIC,
        node.SEGMENTATION_TOPIC,
        node.COLOR_TOPIC,
        node.OVERLAY_TOPIC,
    ):
        assert f"| `{topic}` | " in doc
    assert "vision_msgs/msg/Detection2DArray" in doc and "sensor_msgs/msg/CompressedImage" in doc
    for argument in (
        "model",
        "image",
        "compressed",
        "params_file",
        "namespace",
        "device",
        "dds_profile",
        "log_level",
    ):
        assert f"| `{argument}` | " in doc, argument
    # Prose taken from the code must not contain raw tags that Markdown would swallow.
    assert "<image>/compressed (" not in doc


def test_launch_defaults_are_read_from_the_launch_file(
    generator: ModuleType, tmp_path: Path
) -> None:
    launch = tmp_path / "x.launch.py"
    launch.write_text(
        'DeclareLaunchArgument("a", default_value="", description="plain <b>")\n'
        'DeclareLaunchArgument("b", default_value=_share("config", "y.xml"))\n'
        "DeclareLaunchArgument('c', description='needed')\n",
        encoding="utf-8",
    )
    assert generator.launch_rows(launch) == [
        ["`a`", '`""`', "plain &lt;b&gt;"],
        ["`b`", "`<share>/config/y.xml`", ""],
        ["`c`", "(required)", "needed"],
    ]


def test_readme_points_to_the_node_reference_and_the_results() -> None:
    readme = README.read_text(encoding="utf-8")
    assert "docs/NODE.md" in readme and "docs/RESULTS.md" in readme
    results = (REPO / "docs" / "RESULTS.md").read_text(encoding="utf-8")
    assert results.index("<!-- BENCH-TABLE -->") < results.index("<!-- /BENCH-TABLE -->")
