#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Run every benchmark and print one table: name, figure, target, pass/fail.

Each bench script prints machine-readable lines ``RESULT <name>=<value>``; the targets are
the issues' targets and live here, in one place. Figures are ratios measured within one run
(this machine is noisy), never absolute times. A full run (not ``--quick``) also writes the
table, with the date and machine, into ``docs/RESULTS.md`` between its BENCH-TABLE markers.

    python bench/run_all.py            # everything
    python bench/run_all.py --quick    # smaller inputs, for a smoke check
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # run from a checkout without installing
from mtl_perception.core.atomic_io import write_text  # noqa: E402

RESULTS_FILE = BENCH_DIR.parent / "docs" / "RESULTS.md"
TABLE_START, TABLE_END = "<!-- BENCH-TABLE -->", "<!-- /BENCH-TABLE -->"
SCRIPTS = [
    "bench_prune.py",
    "bench_balancing.py",
    "bench_latency.py",
    "bench_node.py",
    "bench_node_latency.py",
]
RESULT_PAIR = re.compile(r"([\w.]+)=([-+0-9.eEnaif]+)")  # one or more per "RESULT ..." line


@dataclass(frozen=True)
class Target:
    """A target on one figure: ``figure <op> bound``."""

    op: str
    bound: float
    text: str

    def met(self, value: float) -> bool:
        return value >= self.bound if self.op == ">=" else value <= self.bound


# Figure name (regex) -> target, from the issues.
TARGETS: list[tuple[re.Pattern[str], Target]] = [
    (re.compile(r"prune_speedup_per_core"), Target(">=", 10.0, ">= 10x per core")),
    (re.compile(r"prune_agreement"), Target(">=", 0.98, ">= 98%")),
    (re.compile(r"step_time_ratio_.*"), Target("<=", 1.5, "<= 1.5x equal")),
    (re.compile(r"rep_step_time_ratio_.*"), Target("<=", 1.2, "<= 1.2x equal")),
    (re.compile(r"latency_ratio_.*"), Target("<=", 0.55, "<= 0.55x sum of single-task")),
    (re.compile(r"node_throughput_ratio"), Target(">=", 0.95, ">= 0.95x bare model")),
    (re.compile(r"overload_p99_over_model"), Target("<=", 2.0, "p99 <= 2x model latency")),
    (re.compile(r"overload_rss_growth"), Target("<=", 0.05, "RSS growth < 5%")),
    (
        re.compile(r"node_overhead_(cpu_)?ms"),
        Target("<=", 10.0, "<= 10 ms over the bare model (CPU)"),
    ),
]


def target_for(name: str) -> Target | None:
    return next((t for pattern, t in TARGETS if pattern.fullmatch(name)), None)


def run_script(script: str, quick: bool) -> tuple[list[tuple[str, float]], str]:
    """Run one bench script; return its RESULT figures and an error text ('' when fine)."""
    cmd = [sys.executable, str(BENCH_DIR / script)] + (["--quick"] if quick else [])
    print(f"== {script}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=BENCH_DIR.parent, check=False)
    sys.stdout.write(proc.stdout)
    results = [
        (name, float(value))
        for line in proc.stdout.splitlines()
        if line.startswith("RESULT ")
        for name, value in RESULT_PAIR.findall(line)
    ]
    error = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return results, error


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller inputs and fewer repetitions"
    )
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only these scripts (e.g. bench_prune.py)"
    )
    args = parser.parse_args()
    rows: list[tuple[str, str, str, str]] = []
    for script in args.only or SCRIPTS:
        results, error = run_script(script, args.quick)
        if error:
            rows.append((script, "error", "", error[:80]))
        for name, value in results:
            target = target_for(name)
            verdict = "" if target is None else ("pass" if target.met(value) else "FAIL")
            rows.append((name, f"{value:.3g}", target.text if target else "(info)", verdict))
    header = ("figure", "value", "target", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = [
        " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        "-+-".join("-" * w for w in widths),
    ]
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    print("\n".join(lines))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    md = [
        f"Measured {stamp} on {machine}{' (--quick)' if args.quick else ''}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * 4,
    ]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    if not args.quick and not args.only:
        _write_table(RESULTS_FILE, "\n".join(md))
    return 1 if any(r[3] in ("FAIL",) or r[1] == "error" for r in rows) else 0


def _write_table(path: Path, table: str) -> None:
    """Replace the text between the BENCH-TABLE markers of the results file."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    write_text(path, f"{text[:start]}\n{table}\n{text[end:]}")


if __name__ == "__main__":
    sys.exit(main())
