# SPDX-License-Identifier: Apache-2.0
"""A one-slot mailbox between the subscription callback and the inference worker.

A perception node must answer for the newest frame: when inference is slower than the
camera, queued frames only add latency. ``put`` therefore replaces an unread item (the
caller counts it as dropped) instead of queueing, and ``take`` blocks until an item arrives
or the mailbox is closed. Hand-written because ``queue.Queue(maxsize=1)`` cannot replace
its item atomically.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Holds at most one item; newer items replace older unread ones."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False

    def put(self, item: T) -> bool:
        """Store ``item``; returns True when it replaced an unread item (a dropped frame)."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item (removing it); ``None`` on close or when ``timeout`` expires."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            if self._closed:
                return None
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake every waiting ``take`` with ``None`` and discard the unread item."""
        with self._cond:
            self._closed = True
            self._item = None
            self._cond.notify_all()

    def reopen(self) -> None:
        """Accept items again after ``close`` (lifecycle re-activation)."""
        with self._cond:
            self._closed = False
