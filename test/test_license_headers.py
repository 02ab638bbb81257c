# SPDX-License-Identifier: Apache-2.0
"""Every source file says its licence (SPDX), and the LICENSE file is the one package.xml names."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPDX = "# SPDX-License-Identifier: Apache-2.0"


def _source_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "*.py", "*.sh", ".ci/run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if listed:
        return [REPO / name for name in listed if not name.startswith("ros_interfaces/")]
    # Not a git checkout (an exported tree): the same folders by walking them.
    folders = ("mtl_perception", "data_tools", "bench", "tools", "test", "launch")
    return [
        p for folder in folders for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".sh")
    ]


def test_every_source_file_has_the_spdx_line() -> None:
    missing = [
        str(path.relative_to(REPO))
        for path in _source_files()
        if path.is_file() and SPDX not in path.read_text(encoding="utf-8").splitlines()[:2]
    ]
    assert missing == []


def test_license_file_matches_package_xml() -> None:
    declared = ET.parse(REPO / "package.xml").getroot().findtext("license")
    assert declared == "Apache-2.0"
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a stub
