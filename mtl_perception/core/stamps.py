# SPDX-License-Identifier: Apache-2.0
"""Header stamps as integer nanoseconds.

The stamp links a bag frame, the node's answer and its label, so it is kept exact: integer
arithmetic, never float seconds (which lose nanoseconds for epoch times).
"""

from __future__ import annotations

from typing import Any

NS_PER_S = 1_000_000_000


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` (rosbags or rclpy message, any ``sec``/``nanosec``) -> ns."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_sec_nanosec(stamp_ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> ``(sec, nanosec)`` for a ``builtin_interfaces/Time``."""
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    return sec, nanosec
