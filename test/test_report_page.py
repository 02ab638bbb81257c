# SPDX-License-Identifier: Apache-2.0
"""The demo report: figures are drawn from data and the page shows them in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mtl_perception import figures
from mtl_perception.demo.html import Figure, Table, write_page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def report(tmp_path: Path) -> Path:
    steps = list(range(0, 50, 5))
    figures.training_curves(
        {
            "detection": (steps, [3.0 / (s + 1) for s in steps]),
            "segmentation": (steps, [1.0 / (s + 1) for s in steps]),
        },
        {"detection": (steps, [1.0] * len(steps)), "segmentation": (steps, [0.5] * len(steps))},
        tmp_path / "training_curves.png",
    )
    figures.per_class_bars(
        {"AP@.5": {"box": 0.8, "cone": None}, "IoU": {"background": 0.9, "floor": 0.7}},
        tmp_path / "per_class.png",
    )
    figures.latency_histogram(np.random.default_rng(0).gamma(5, 4, 200), tmp_path / "latency.png")
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[10:30, 10:40] = (255, 0, 0)
    figures.example_strip([frame, frame[::-1]], ["a", "b"], tmp_path / "examples.png")
    return write_page(
        tmp_path / "index.html",
        "Demo",
        "test",
        [Table("Summary", ["step", "status"], [["train", "ok"]])],
        [
            Figure("training_curves.png", "Training"),
            Figure("per_class.png", "Per class"),
            Figure("latency.png", "Latency"),
            Figure("examples.png", "Examples"),
        ],
    )


def test_figures_are_real_pngs(report: Path) -> None:
    import cv2

    for name in ("training_curves.png", "per_class.png", "latency.png", "examples.png"):
        image = cv2.imread(str(report.parent / name))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100, name
        assert image.std() > 5, f"{name} is blank"


def test_page_lists_tables_and_figures(report: Path) -> None:
    text = report.read_text()
    assert text.count("<figure>") == 4
    assert "<td>train</td>" in text


def _figures_loaded(report: Path, tmp_path: Path) -> tuple[int, int]:
    """Open the page in headless Chromium; return (figures loaded, figures on the page)."""
    browser = _chromium()
    if browser is None:
        pytest.skip(
            "no chromium browser on PATH: install one (e.g. `apt-get install chromium`; .ci/run "
            "does) to check that the page shows every figure"
        )
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    loaded = re.search(r'data-figures-loaded="(\d+)"', result.stdout)
    total = re.search(r'data-figures-total="(\d+)"', result.stdout)
    assert loaded and total, result.stderr[-2000:]
    return int(loaded.group(1)), int(total.group(1))


def test_page_shows_every_figure_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    assert _figures_loaded(report, tmp_path) == (4, 4)


def test_browser_check_notices_a_missing_figure(report: Path, tmp_path: Path) -> None:
    (report.parent / "latency.png").unlink()
    assert _figures_loaded(report, tmp_path) == (3, 4)
