# SPDX-License-Identifier: Apache-2.0
"""What a package build (colcon, a wheel) needs of the checkout, copied aside for the build."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_SOURCES = (
    "setup.py",
    "setup.cfg",
    "package.xml",
    "resource",
    "launch",
    "config",
    "mtl_perception",
    "data_tools",
)


def copy_package_sources(dest: Path) -> None:
    """Copy the package's sources into ``dest`` (a build must not litter the checkout)."""
    for name in PACKAGE_SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, dest / name)
