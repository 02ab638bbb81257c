"""launch/perception.launch.py and config/perception.yaml against what the node declares.

``launch`` and ``launch_ros`` cannot be installed here, so the launch file is checked twice:
statically (ast) for its argument and parameter names, and by running it against small
stand-ins of the launch API that record what it builds.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from rclpy.parameter import Parameter

from mtl_perception.ros.node import NODE_NAME
from mtl_perception.ros.params import PARAMETERS, SPECS

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "perception.launch.py"
CONFIG = REPO / "config" / "perception.yaml"
REQUIRED_ARGUMENTS = {"model", "image", "compressed", "params_file", "namespace", "device", "dds_profile"}


def _tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))


def _constant(name: str) -> Any:
    """A module-level constant of the launch file (literal values only)."""
    for statement in _tree().body:
        if isinstance(statement, ast.Assign) and any(getattr(t, "id", None) == name for t in statement.targets):
            return ast.literal_eval(statement.value)
    raise AssertionError(f"{name} not found in {LAUNCH_FILE}")


def _declared_arguments() -> set[str]:
    names = set()
    for call in ast.walk(_tree()):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "DeclareLaunchArgument":
            names.add(ast.literal_eval(call.args[0]))
    return names


def _used_configurations() -> set[str]:
    """Names passed literally to LaunchConfiguration (the loop over PARAMETER_ARGUMENTS is checked apart)."""
    return {call.args[0].value for call in ast.walk(_tree())
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "LaunchConfiguration"
            and isinstance(call.args[0], ast.Constant)}


def test_launch_arguments_and_parameters_match_the_node() -> None:
    declared = _declared_arguments()
    assert REQUIRED_ARGUMENTS <= declared
    assert _used_configurations() <= declared, "LaunchConfiguration of an undeclared argument"
    overrides = _constant("PARAMETER_ARGUMENTS")
    assert set(overrides) <= declared
    for argument, parameter in overrides.items():
        assert parameter in SPECS, f"launch argument {argument} sets unknown node parameter {parameter}"
    booleans = _constant("BOOLEAN_PARAMETERS")
    assert booleans == {p for p in overrides.values() if SPECS[p].type is Parameter.Type.BOOL}
    assert all(SPECS[p].type is Parameter.Type.STRING for p in set(overrides.values()) - booleans)


def test_launch_names_match_node_setup_and_config() -> None:
    assert _constant("NODE_NAME") == NODE_NAME
    assert _constant("PACKAGE") == "mtl_perception"
    entry = re.search(r'"(\w+) = mtl_perception\.ros\.node:main"', (REPO / "setup.py").read_text())
    assert entry is not None and entry.group(1) == _constant("EXECUTABLE")
    text = LAUNCH_FILE.read_text()
    assert "FASTRTPS_DEFAULT_PROFILES_FILE" in text
    for name in re.findall(r'_share\("config", "([^"]+)"\)', text):
        assert (REPO / "config" / name).is_file(), name


def test_yaml_lists_every_parameter_with_its_default() -> None:
    document = yaml.safe_load(CONFIG.read_text())
    assert list(document) == [NODE_NAME]
    params = document[NODE_NAME]["ros__parameters"]
    assert list(params) == [spec.name for spec in PARAMETERS], "same names, same order as params.PARAMETERS"
    for spec in PARAMETERS:
        expected = [] if spec.default is None else spec.default
        assert params[spec.name] == expected, spec.name
        assert type(params[spec.name]) is type(expected), spec.name
    # One comment line right above every parameter.
    lines = CONFIG.read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^    \w+:", line):
            assert lines[index - 1].strip().startswith("#"), f"no comment above {line.strip()}"


# ---------------------------------------------------------------- run against stand-ins
class _Recorded:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorded):
    def perform(self, context: Any) -> str:
        return context.launch_configurations[self.args[0]]


def _stub_modules(monkeypatch: pytest.MonkeyPatch, share: Path) -> None:
    names = {
        "launch": {"LaunchContext": object, "LaunchDescription": _Recorded},
        "launch.actions": {name: type(name, (_Recorded,), {}) for name in
                           ("DeclareLaunchArgument", "OpaqueFunction", "SetEnvironmentVariable")},
        "launch.substitutions": {"LaunchConfiguration": _LaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"Node": type("Node", (_Recorded,), {})},
        "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": lambda package: str(share / package)},
    }
    for name, attributes in names.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)


def _load_launch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> types.ModuleType:
    _stub_modules(monkeypatch, tmp_path)
    spec = importlib.util.spec_from_file_location("perception_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(module: types.ModuleType, **arguments: str) -> list[Any]:
    description = module.generate_launch_description()
    entities = description.args[0]
    defaults = {a.args[0]: a.kwargs["default_value"] for a in entities if type(a).__name__ == "DeclareLaunchArgument"}
    context = types.SimpleNamespace(launch_configurations={**defaults, **arguments})
    opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    assert len(opaque) == 1
    return opaque[0].kwargs["function"](context)


def test_launch_builds_the_node_with_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    module = _load_launch(monkeypatch, tmp_path)
    actions = _run(module)
    env = [a for a in actions if type(a).__name__ == "SetEnvironmentVariable"]
    assert env and env[0].args == ("FASTRTPS_DEFAULT_PROFILES_FILE", str(tmp_path / "mtl_perception" / "config" / "fastdds_large_images.xml"))
    node = next(a for a in actions if type(a).__name__ == "Node").kwargs
    assert (node["package"], node["executable"], node["name"]) == ("mtl_perception", "perception_node", NODE_NAME)
    params_file, overrides = node["parameters"]
    assert params_file.args == ("params_file",) and overrides == {}  # empty arguments keep the file's values
    assert [(source, target.args[0]) for source, target in node["remappings"]] == [("image", "image")]

    actions = _run(module, model="/models/best.pt", compressed="True", device="cuda:0", dds_profile="")
    assert not [a for a in actions if type(a).__name__ == "SetEnvironmentVariable"]
    node = next(a for a in actions if type(a).__name__ == "Node").kwargs
    assert node["parameters"][1] == {"model_path": "/models/best.pt", "device": "cuda:0", "compressed": True}
    with pytest.raises(ValueError, match="compressed"):
        _run(module, compressed="maybe")
