# SPDX-License-Identifier: Apache-2.0
"""Frame statistics for the node's ``/diagnostics``: rates, drops, latency per stage, error counts.

Pure Python (no rclpy) so it can be tested without ROS; the node turns ``FrameStats.report()``
into a ``diagnostic_msgs/DiagnosticStatus``. Thread-safe: the subscription callback, the
inference worker and the diagnostics timer run on different threads.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

OK, WARN, ERROR = 0, 1, 2  # same values as diagnostic_msgs/DiagnosticStatus levels
# A frame's way through the node, in order (seconds each; "wait": arrival to the worker taking it).
STAGES = (
    "wait",
    "deserialise",
    "decode",
    "preprocess",
    "model",
    "postprocess",
    "messages",
    "publish",
)


@dataclass(frozen=True)
class StatsReport:
    """One snapshot of the statistics, ready to publish."""

    input_rate_hz: float
    processed_rate_hz: float
    received: int
    processed: int
    dropped: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    errors: dict[str, int] = field(default_factory=dict)
    new_errors: int = 0
    new_processed: int = 0
    stage_p50_ms: dict[str, float] = field(default_factory=dict)

    @property
    def level(self) -> int:
        """ERROR while every frame fails, WARN while some do, else OK.

        The node reports ERROR itself while it is not running.
        """
        if not self.new_errors:
            return OK
        return ERROR if not self.new_processed else WARN

    def key_values(self) -> list[tuple[str, str]]:
        """``(key, value)`` pairs in a stable order for ``DiagnosticStatus.values``."""

        def ms(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.1f}"

        pairs = [
            ("input rate (Hz)", f"{self.input_rate_hz:.2f}"),
            ("processed rate (Hz)", f"{self.processed_rate_hz:.2f}"),
            ("frames received", str(self.received)),
            ("frames processed", str(self.processed)),
            ("frames dropped", str(self.dropped)),
            ("latency p50 (ms)", ms(self.latency_p50_ms)),
            ("latency p95 (ms)", ms(self.latency_p95_ms)),
            ("errors", str(sum(self.errors.values()))),
        ]
        pairs += [(f"errors: {kind}", str(count)) for kind, count in sorted(self.errors.items())]
        pairs += [
            (f"stage p50 (ms): {stage}", ms(self.stage_p50_ms.get(stage))) for stage in STAGES
        ]
        return pairs


class FrameStats:
    """Counts frames and keeps a sliding window of arrival times and latencies.

    Rates are measured over the last ``window_sec`` seconds; latency percentiles over the
    last ``latency_samples`` processed frames (receive -> published).
    """

    def __init__(
        self,
        window_sec: float = 5.0,
        latency_samples: int = 200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window_sec = window_sec
        self._clock = clock
        self._lock = threading.Lock()
        self._arrivals: deque[float] = deque()
        self._completions: deque[float] = deque()
        self._latencies: deque[float] = deque(maxlen=latency_samples)
        self._stages: dict[str, deque[float]] = {
            stage: deque(maxlen=latency_samples) for stage in STAGES
        }
        self._counts: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._errors_reported = 0
        self._processed_reported = 0

    def received(self) -> None:
        """A frame arrived from the subscription."""
        with self._lock:
            self._counts["received"] += 1
            self._arrivals.append(self._clock())

    def dropped(self, n: int = 1) -> None:
        """``n`` frames were replaced by a newer one before inference reached them."""
        with self._lock:
            self._counts["dropped"] += n

    def processed(self, latency_sec: float, stages: Mapping[str, float] | None = None) -> None:
        """A frame was processed and its results published ``latency_sec`` after arrival.

        ``stages`` maps names of ``STAGES`` to the seconds each took.
        """
        with self._lock:
            self._counts["processed"] += 1
            self._completions.append(self._clock())
            self._latencies.append(latency_sec)
            for stage, seconds in (stages or {}).items():
                self._stages[stage].append(seconds)

    def error(self, kind: str) -> None:
        """A frame failed (``kind`` e.g. ``unsupported encoding``, ``truncated image``)."""
        with self._lock:
            self._errors[kind] += 1

    def reset(self) -> None:
        """Forget everything (e.g. on lifecycle cleanup)."""
        with self._lock:
            for samples in (
                self._arrivals,
                self._completions,
                self._latencies,
                *self._stages.values(),
            ):
                samples.clear()
            self._counts.clear()
            self._errors.clear()
            self._errors_reported = self._processed_reported = 0

    def report(self) -> StatsReport:
        """Snapshot of the statistics.

        ``new_errors`` and ``new_processed`` count since the previous report.
        """
        with self._lock:
            now = self._clock()
            total_errors = sum(self._errors.values())
            new_errors, self._errors_reported = total_errors - self._errors_reported, total_errors
            processed = self._counts["processed"]
            new_processed, self._processed_reported = (
                processed - self._processed_reported,
                processed,
            )
            p50, p95 = _percentiles(list(self._latencies))
            stage_p50 = {
                stage: statistics.median(times) * 1000.0
                for stage, times in self._stages.items()
                if times
            }
            return StatsReport(
                input_rate_hz=self._rate(self._arrivals, now),
                processed_rate_hz=self._rate(self._completions, now),
                received=self._counts["received"],
                processed=self._counts["processed"],
                dropped=self._counts["dropped"],
                latency_p50_ms=None if p50 is None else p50 * 1000.0,
                latency_p95_ms=None if p95 is None else p95 * 1000.0,
                errors=dict(self._errors),
                new_errors=new_errors,
                new_processed=new_processed,
                stage_p50_ms=stage_p50,
            )

    def _rate(self, times: deque[float], now: float) -> float:
        """Events per second within the window (drops older entries as a side effect)."""
        while times and times[0] < now - self._window_sec:
            times.popleft()
        if len(times) < 2:
            return 0.0
        span = max(now - times[0], times[-1] - times[0])
        return (len(times) - 1) / span if span > 0 else 0.0


def _percentiles(samples: list[float]) -> tuple[float | None, float | None]:
    """(p50, p95) of ``samples``; ``None`` when empty."""
    if not samples:
        return None, None
    if len(samples) == 1:
        return samples[0], samples[0]
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[94]
