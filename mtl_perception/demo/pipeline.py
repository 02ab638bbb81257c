# SPDX-License-Identifier: Apache-2.0
"""The demo's steps: the same commands a user types, run one after another.

Each step is a command line of one of the package's tools (``mtl-data``, ``mtl-train``,
``mtl-eval``, ``mtl-replay``) built from ``config/demo.yaml``, so the demo doubles as a worked
example: it prints every command before running it. The tools are idempotent themselves (an
existing output is reused), so a second ``make demo`` only redoes what is missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mtl_perception.core.constants import SYNTH_CAMERA_TOPIC, SYNTH_DEPTH_TOPIC
from mtl_perception.core.errors import UserError

_PROGRESS_BAR = re.compile(r"\d+%\|")
# The demo's settings; the demo runs from a source checkout (make demo), where this file is.
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SynthSettings(_Strict):
    """``synth:``: the synthetic bag (``mtl-data synth`` options)."""

    frames: int
    size: str  # HEIGHTxWIDTH
    seed: int
    storage: str
    encoding: str


class PruneSettings(_Strict):
    """``prune:``: ``mtl-data prune`` options."""

    threshold: float


class BuildSettings(_Strict):
    """``build:``: the dataset (``mtl-data build`` options)."""

    name: str
    det_classes: list[str]
    seg_classes: list[str]
    split: list[float]
    group_by: str
    window_s: float


class ReplaySettings(_Strict):
    """``replay:``: ``mtl-replay`` options."""

    lockstep: bool
    max_frames: int = 0  # 0 = every frame; not a demo setting, a knob for quick runs


class DemoConfig(_Strict):
    """``config/demo.yaml``: what the demo runs and where it writes.

    No defaults here: the file is the one place of the demo's settings; another ``--config``
    file overrides it.
    """

    workdir: Path
    run_dir: Path
    report_dir: Path
    synth: SynthSettings
    prune: PruneSettings
    build: BuildSettings
    train_config: Path
    train_overrides: list[str] = []
    replay: ReplaySettings

    @property
    def synth_dir(self) -> Path:
        """Where ``mtl-data synth`` writes the bag and its ground truth."""
        return self.workdir / "synth"

    @property
    def bag(self) -> Path:
        """The synthetic rosbag2 folder."""
        return self.synth_dir / "synth_bag"

    @property
    def coco(self) -> Path:
        """The synthetic bag's COCO ground truth."""
        return self.synth_dir / "synth_coco.json"

    @property
    def dataset(self) -> Path:
        """The dataset ``mtl-data build`` writes."""
        return self.workdir / "processed" / self.build.name

    @property
    def metrics_json(self) -> Path:
        """``mtl-eval``'s metrics of the trained model."""
        return self.report_dir / "metrics.json"

    @property
    def replay_dir(self) -> Path:
        """``mtl-replay``'s output folder."""
        return self.report_dir / "replay"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise UserError(f"demo config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise UserError(f"demo config {path} is not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise UserError(f"demo config {path}: expected a mapping of settings")
    return raw


def _overlay(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied; nested mappings are merged key by key."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_demo_config(path: Path, defaults: Path = DEFAULT_CONFIG) -> DemoConfig:
    """Read and validate a demo config laid over ``config/demo.yaml``.

    Raises:
        UserError: A file is unreadable or not YAML, or a setting is unknown, missing or of the
            wrong type (the message names the first such setting).
    """
    raw = _read_yaml(path)
    if path.resolve() != defaults.resolve():
        raw = _overlay(_read_yaml(defaults), raw)
    try:
        return DemoConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"demo config {path}: {where}: {first['msg']}") from None


@dataclass
class Step:
    """One command of the demo and what it produced."""

    name: str
    argv: list[str]
    # The step's result file and what it is computed from: when the result is newer than its
    # source, a second demo run reuses it instead of running the step again.
    result: Path | None = None
    source: Path | None = None
    status: str = "pending"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _tool(module: str, *args: object) -> list[str]:
    """Command line of one of our tools, run with this interpreter (no PATH lookup needed)."""
    return [sys.executable, "-m", module, *(str(a) for a in args)]


def plan(config: DemoConfig) -> list[Step]:
    """The demo's commands, in order."""
    work, build = config.workdir, config.build
    camera_topic = (
        f"{SYNTH_CAMERA_TOPIC}/compressed"
        if config.synth.encoding in ("jpeg", "png")
        else SYNTH_CAMERA_TOPIC
    )
    train_name = config.run_dir.name
    return [
        Step(
            "synth",
            _tool(
                "data_tools.cli",
                "synth",
                "--out",
                config.synth_dir,
                "--frames",
                config.synth.frames,
                "--size",
                config.synth.size,
                "--seed",
                config.synth.seed,
                "--storage",
                config.synth.storage,
                "--encoding",
                config.synth.encoding,
            ),
        ),
        Step("unpack", _tool("data_tools.cli", "unpack", config.bag, "--out", work / "raw")),
        Step(
            "prune",
            _tool(
                "data_tools.cli",
                "prune",
                "--raw",
                work / "raw",
                "--out",
                work / "interim",
                "--threshold",
                config.prune.threshold,
            ),
        ),
        Step(
            "build",
            _tool(
                "data_tools.cli",
                "build",
                "--frames",
                work / "interim",
                "--labels",
                config.coco,
                "--name",
                build.name,
                "--out",
                work / "processed",
                "--det-classes",
                ",".join(build.det_classes),
                "--seg-classes",
                ",".join(build.seg_classes),
                "--split",
                ",".join(str(f) for f in build.split),
                "--group-by",
                build.group_by,
                "--window-s",
                build.window_s,
                "--depth-topic",
                SYNTH_DEPTH_TOPIC,
            ),
        ),
        Step(
            "train",
            _tool(
                "mtl_perception.train",
                "--config",
                config.train_config,
                f"data.root={config.dataset}",
                f"output_dir={config.run_dir.parent}",
                f"name={train_name}",
                *config.train_overrides,
            ),
        ),
        Step(
            "eval",
            _tool(
                "mtl_perception.evaluation.cli",
                "--checkpoint",
                config.run_dir / "best.pt",
                "--data",
                config.dataset,
                "--split",
                "val",
                "--out",
                config.metrics_json,
            ),
            result=config.metrics_json,
            source=config.run_dir / "best.pt",
        ),
        Step(
            "replay",
            _tool(
                "mtl_perception.ros.replay",
                config.bag,
                "--topic",
                camera_topic,
                "--model",
                config.run_dir / "best.pt",
                "--ground-truth",
                config.dataset,
                "--depth-topic",
                SYNTH_DEPTH_TOPIC,
                "--out",
                config.replay_dir,
                *(["--lockstep"] if config.replay.lockstep else []),
                *(["--max-frames", config.replay.max_frames] if config.replay.max_frames else []),
            ),
            result=config.replay_dir / "report.json",
            source=config.run_dir / "best.pt",
        ),
    ]


def is_up_to_date(step: Step) -> bool:
    """True when the step's result exists and is newer than what it was computed from."""
    if (
        step.result is None
        or step.source is None
        or not step.result.is_file()
        or not step.source.is_file()
    ):
        return False
    return step.result.stat().st_mtime >= step.source.stat().st_mtime


def run_step(step: Step, log_dir: Path) -> bool:
    """Run one step, echoing its command; its full output goes to ``<log_dir>/<name>.log``."""
    print(f"\n[{step.name}] $ {' '.join(_shell_words(step.argv))}", flush=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log_dir / f"{step.name}.log", "w", encoding="utf-8") as log:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # stream the child's lines as they come
        proc = subprocess.Popen(
            step.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if line.strip() and not _PROGRESS_BAR.search(line):  # bars only in the log file
                sys.stdout.write(f"  {line}")
        code = proc.wait()
    step.seconds = time.monotonic() - start
    step.status = "ok" if code == 0 else f"failed (exit {code})"
    return code == 0


def _shell_words(argv: list[str]) -> list[str]:
    """The command as a user would type it: our console scripts instead of ``python -m``."""
    names = {
        "data_tools.cli": "mtl-data",
        "mtl_perception.train": "mtl-train",
        "mtl_perception.evaluation.cli": "mtl-eval",
        "mtl_perception.ros.replay": "mtl-replay",
    }
    if len(argv) > 2 and argv[1] == "-m" and argv[2] in names:
        argv = [names[argv[2]], *argv[3:]]
    return [a if a and " " not in a else repr(a) for a in argv]
