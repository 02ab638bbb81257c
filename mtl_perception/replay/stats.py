# SPDX-License-Identifier: Apache-2.0
"""Frame accounting for a replay: what was sent, what was answered, how long it took.

Frames are keyed by header stamp (the node copies the input header onto every output), so
a frame counts as answered when an output with its stamp arrives. Latency is end to end:
from just before ``publish`` to the moment the replay process receives the answer, both on
the same monotonic clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ReplayStats", "latency_summary"]

PERCENTILES = (50, 95, 99)
MAX_LISTED_DROPS = 50  # report.json lists the first dropped stamps, not all of a long run's


def latency_summary(latencies_ms: list[float] | np.ndarray) -> dict[str, float | None]:
    """``mean``, ``p50``, ``p95``, ``p99``, ``max`` and ``min`` in ms (None when empty)."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    if values.size == 0:
        return {"mean": None, "min": None, **{f"p{p}": None for p in PERCENTILES}, "max": None}
    result: dict[str, float | None] = {"mean": float(values.mean()), "min": float(values.min())}
    for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
        result[f"p{p}"] = float(v)
    result["max"] = float(values.max())
    return result


@dataclass
class ReplayStats:
    """Counts and timings of one replay run (times in seconds of ``time.monotonic``)."""

    sent_at: dict[int, float] = field(default_factory=dict)
    answered_at: dict[int, float] = field(default_factory=dict)
    outputs_per_topic: dict[str, int] = field(default_factory=dict)
    unexpected_outputs: int = 0
    duplicate_stamps: int = 0
    bag_frames: int = 0
    first_sent: float | None = None
    last_answer: float | None = None

    def sent(self, stamp_ns: int, at: float) -> bool:
        """Record a published frame; False (and counted) if its stamp was already used."""
        if stamp_ns in self.sent_at:
            self.duplicate_stamps += 1
            return False
        self.sent_at[stamp_ns] = at
        if self.first_sent is None:
            self.first_sent = at
        return True

    def output(self, topic: str, stamp_ns: int, at: float, answers: bool) -> None:
        """Record one output message; ``answers`` marks the topic that defines "answered"."""
        self.outputs_per_topic[topic] = self.outputs_per_topic.get(topic, 0) + 1
        if stamp_ns not in self.sent_at:
            self.unexpected_outputs += 1
            return
        if answers and stamp_ns not in self.answered_at:
            self.answered_at[stamp_ns] = at
            self.last_answer = at

    def is_answered(self, stamp_ns: int) -> bool:
        """Whether the frame sent with this stamp got its answer."""
        return stamp_ns in self.answered_at

    def latencies_ms(self) -> list[float]:
        """End-to-end latency of every answered frame, in send order."""
        return [
            (self.answered_at[s] - t) * 1000.0
            for s, t in self.sent_at.items()
            if s in self.answered_at
        ]

    def dropped_stamps(self) -> list[int]:
        """Stamps sent but never answered."""
        return [s for s in self.sent_at if s not in self.answered_at]

    def summary(self, wall_time_s: float) -> dict[str, Any]:
        """JSON-ready summary: frames in/out/dropped, latency distribution, throughput."""
        sent, answered = len(self.sent_at), len(self.answered_at)
        span = (
            (self.last_answer - self.first_sent)
            if self.first_sent is not None and self.last_answer is not None
            else 0.0
        )
        return {
            "frames_in_bag": self.bag_frames,
            "frames_sent": sent,
            "frames_answered": answered,
            "frames_dropped": sent - answered,
            "drop_rate": (sent - answered) / sent if sent else math.nan,
            "dropped_stamps": self.dropped_stamps()[:MAX_LISTED_DROPS],
            "duplicate_stamps_skipped": self.duplicate_stamps,
            "unexpected_outputs": self.unexpected_outputs,
            "outputs_per_topic": dict(sorted(self.outputs_per_topic.items())),
            "latency_ms": latency_summary(self.latencies_ms()),
            "throughput_fps": answered / span if span > 0 else None,
            "wall_time_s": wall_time_s,
        }
