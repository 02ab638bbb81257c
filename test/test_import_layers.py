# SPDX-License-Identifier: Apache-2.0
"""The package's layers (docs/CONTRACTS.md, "Layers") hold: walk every import with ast.

A *unit* is a top-level package (``data_tools``, ``bench``, ``tools``, ``launch``) or a direct
child of ``mtl_perception`` (``mtl_perception.core``, ``mtl_perception.ros``, ...). Each unit
sits on a layer and may import only units on its own layer or below; no two units may import
each other (directly or through others); and a few edges are forbidden outright. Imports
inside functions and under ``TYPE_CHECKING`` count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("mtl_perception", "data_tools", "bench", "tools", "launch")
SCANNED = ("mtl_perception", "data_tools", "bench", "tools", "launch")

# Layer of each unit (lower = more basic).
LAYERS: dict[str, int] = {
    "mtl_perception": 1,  # the package root: only __version__
    "mtl_perception.core": 1,
    "data_tools": 2,
    "mtl_perception.nets": 3,
    "mtl_perception.balancing": 3,
    "mtl_perception.checkpoint": 3,
    "mtl_perception.predictor": 3,
    "mtl_perception.preprocessing": 3,
    "mtl_perception.device": 3,
    "mtl_perception.visualize": 3,
    "mtl_perception.figures": 3,
    "mtl_perception.train": 4,
    "mtl_perception.evaluation": 4,
    "mtl_perception.replay": 4,
    "mtl_perception.export": 4,
    "mtl_perception.ros": 5,
    "mtl_perception.demo": 6,
    "bench": 6,
    "tools": 6,
    "launch": 6,
}
# ROS client libraries and message packages: only the ROS layer (and tools on top) use them.
ROS_MODULES = frozenset(
    {
        "rclpy",
        "rcl_interfaces",
        "sensor_msgs",
        "std_msgs",
        "vision_msgs",
        "diagnostic_msgs",
        "builtin_interfaces",
        "lifecycle_msgs",
        "launch",
        "launch_ros",
        "launch_testing",
        "rosidl_runtime_py",
        "composition_interfaces",
        "ament_index_python",
        "cv_bridge",
    }
)
ROS_ALLOWED = frozenset({"mtl_perception.ros", "bench", "tools", "launch"})
TORCH_FREE = frozenset({"mtl_perception.core", "data_tools"})


@dataclass(frozen=True)
class Edge:
    """One import statement: which file, which line, from which unit to which module."""

    path: Path
    line: int
    source: str
    target: str  # the imported module's full dotted name

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} imports {self.target}"


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of a source file below ``root`` (``__init__`` names its package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str | None:
    """The unit a first-party module belongs to, ``None`` for third-party modules."""
    parts = module.split(".")
    if parts[0] not in FIRST_PARTY:
        return None
    if parts[0] == "mtl_perception" and len(parts) > 1:
        return f"mtl_perception.{parts[1]}"
    return parts[0]


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every module an AST imports, relative imports resolved."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            yield node.lineno, prefix
            # ``from pkg import sub`` may import a submodule: count ``pkg.sub`` as well.
            for alias in node.names:
                yield node.lineno, f"{prefix}.{alias.name}"


def walk_edges(root: Path, packages: tuple[str, ...] = SCANNED) -> list[Edge]:
    """Every import in the source files of ``packages`` below ``root``."""
    edges = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            source = unit_of(module)
            assert source is not None, path
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for line, target in imported_modules(tree, module, path.name == "__init__.py"):
                edges.append(Edge(path, line, source, target))
    return edges


def layer_problems(edges: list[Edge]) -> list[str]:
    """Every edge that breaks a layer rule, as ``file:line: message``."""
    problems = []
    for edge in edges:
        target_unit = unit_of(edge.target)
        top = edge.target.split(".")[0]
        if target_unit is not None and target_unit != edge.source:
            if target_unit not in LAYERS and target_unit.startswith("mtl_perception."):
                continue  # ``from mtl_perception import X`` for a name that is not a module
            if LAYERS[target_unit] > LAYERS[edge.source]:
                problems.append(
                    f"{edge}: layer {LAYERS[edge.source]} must not import layer "
                    f"{LAYERS[target_unit]}"
                )
            if edge.source.startswith("mtl_perception") and target_unit == "data_tools":
                problems.append(f"{edge}: the package never imports the data tooling")
            if edge.source == "data_tools" and target_unit not in (
                "mtl_perception.core",
                "data_tools",
            ):
                problems.append(f"{edge}: data_tools uses mtl_perception.core only")
        if top in ROS_MODULES and edge.source not in ROS_ALLOWED:
            problems.append(f"{edge}: only mtl_perception.ros uses ROS client code")
        if top in ("torch", "torchvision") and edge.source in TORCH_FREE:
            problems.append(f"{edge}: {edge.source} must not need torch")
    return sorted(set(problems))


def unit_graph(edges: list[Edge]) -> dict[str, set[str]]:
    """Unit -> units it imports (first-party, existing units only, no self-loops)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        target = unit_of(edge.target)
        if target is not None and target != edge.source and target in LAYERS:
            graph.setdefault(edge.source, set()).add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or ``None`` if it is acyclic."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return walk_edges(ROOT)


def test_every_unit_has_a_layer(edges: list[Edge]) -> None:
    units = {edge.source for edge in edges}
    assert {
        "mtl_perception.core",
        "mtl_perception.ros",
        "data_tools",
    } <= units  # the walk saw them
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS"


def test_no_forbidden_edge(edges: list[Edge]) -> None:
    assert layer_problems(edges) == []


def test_no_cycle_between_units(edges: list[Edge]) -> None:
    graph = unit_graph(edges)
    assert "mtl_perception.core" in graph["mtl_perception.ros"]  # the walk found real edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_checker_catches_a_cycle_and_a_forbidden_edge(tmp_path: Path) -> None:
    """The rules above can fail: plant a core -> ros import and a data_tools <-> package cycle."""
    (tmp_path / "mtl_perception" / "core").mkdir(parents=True)
    (tmp_path / "mtl_perception" / "ros").mkdir()
    (tmp_path / "data_tools").mkdir()
    (tmp_path / "mtl_perception" / "core" / "__init__.py").write_text("")
    (tmp_path / "mtl_perception" / "core" / "bad.py").write_text(
        "def f():\n    from ..ros import node\n    import torch\n"
    )
    (tmp_path / "mtl_perception" / "ros" / "node.py").write_text("from data_tools import x\n")
    (tmp_path / "data_tools" / "x.py").write_text("import mtl_perception.ros.node\n")
    planted = walk_edges(tmp_path, ("mtl_perception", "data_tools"))
    problems = layer_problems(planted)
    assert any(
        "core imports mtl_perception.ros" in p and "layer 1 must not import layer 5" in p
        for p in problems
    )
    assert any("never imports the data tooling" in p for p in problems)
    assert any("must not need torch" in p for p in problems)
    assert find_cycle(unit_graph(planted)) is not None
