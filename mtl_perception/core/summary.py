# SPDX-License-Identifier: Apache-2.0
"""Counting what a batch job did, so every command ends with the same kind of summary.

A long job never stops on one bad item: it records the failure (count + first example per
kind of problem), skips the item and goes on; the summary is printed at the end and the
exit status is non-zero when anything failed.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class JobSummary:
    """Counters of a batch job plus the first example of each kind of problem."""

    job: str
    counts: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    first_example: dict[str, str] = field(default_factory=dict)
    warnings: Counter[str] = field(default_factory=Counter)

    def add(self, counter: str, n: int = 1) -> None:
        """Increase a plain counter such as ``read``, ``written`` or ``skipped``."""
        self.counts[counter] += n

    def fail(self, kind: str, example: str) -> None:
        """Record one failed item: ``kind`` groups problems, ``example`` names the item."""
        self.counts["failed"] += 1
        self.problems[kind] += 1
        self.first_example.setdefault(kind, example)

    def warn(self, kind: str, example: str) -> None:
        """Record an item that was repaired or skipped by choice (e.g. a clipped box).

        It is reported like a problem but does not make the job fail (``--strict`` commands may
        refuse it).
        """
        self.warnings[kind] += 1
        self.first_example.setdefault(kind, example)

    def merge(self, other: JobSummary) -> None:
        """Fold the counters of a sub-job (e.g. one bag processed in a worker) into this one."""
        self.counts.update(other.counts)
        self.problems.update(other.problems)
        self.warnings.update(other.warnings)
        for kind, example in other.first_example.items():
            self.first_example.setdefault(kind, example)

    @property
    def failed(self) -> int:
        """Number of failed items."""
        return self.counts["failed"]

    def print(self, stream: TextIO | None = None) -> None:
        """Print one line of counters, then one line per kind of problem.

        Args:
            stream: Where to print; default ``sys.stderr`` looked up at call time, so a
                redirected or captured stderr is honoured.
        """
        stream = stream if stream is not None else sys.stderr
        order = ["read", "written", "kept", "dropped", "skipped", "failed"]
        keys = [k for k in order if k in self.counts] + sorted(
            k for k in self.counts if k not in order
        )
        parts = ", ".join(f"{k} {self.counts[k]}" for k in keys) or "nothing to do"
        print(f"{self.job}: {parts}", file=stream)
        for kind, n in self.problems.most_common():
            print(f"  {kind}: {n} (first: {self.first_example[kind]})", file=stream)
        for kind, n in self.warnings.most_common():
            print(f"  warning: {kind}: {n} (first: {self.first_example[kind]})", file=stream)

    def exit_code(self) -> int:
        """Process exit status of the job: 1 when any item failed, else 0."""
        return 1 if self.failed else 0
