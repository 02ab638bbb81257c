# SPDX-License-Identifier: Apache-2.0
"""Input QoS for the camera subscription, built from the node's parameters.

The default matches ``rclpy.qos.qos_profile_sensor_data`` (best effort, keep last) with a
depth of 1: a perception node wants the newest frame, never a backlog. A best-effort
subscription matches both best-effort and reliable publishers; ``reliable`` is for runs where
every frame should arrive (e.g. replaying a bag for evaluation) at the cost of latency.
"""

from __future__ import annotations

from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

RELIABILITY = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
}


def input_qos(reliability: str = "best_effort", depth: int = 1) -> QoSProfile:
    """Sensor-data QoS with the given reliability (``best_effort``/``reliable``) and depth."""
    if reliability not in RELIABILITY:
        raise ValueError(f"reliability {reliability!r} is not one of {', '.join(RELIABILITY)}")
    if depth < 1:
        raise ValueError(f"depth {depth} must be >= 1")
    return QoSProfile(
        history=qos_profile_sensor_data.history,
        depth=depth,
        reliability=RELIABILITY[reliability],
        durability=qos_profile_sensor_data.durability,
    )
