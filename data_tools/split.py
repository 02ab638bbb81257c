# SPDX-License-Identifier: Apache-2.0
"""Deterministic train/val/test split that keeps neighbouring frames together.

Consecutive frames of a robot camera are near-duplicates; splitting single frames at random
puts copies of training frames into validation and inflates every metric. So frames are
first grouped -- by bag, or by consecutive time windows within a bag -- and whole groups
are assigned to splits. Groups are shuffled with the seed and handed out greedily, each to the
split where it most reduces the relative distance of the frame counts to the target fractions;
when only as many groups are left as wanted splits are still empty, they go to those, so every
split with a positive fraction is non-empty whenever there are enough groups.

Frames on either side of a time-window boundary are neighbours in different groups; after
``prune`` they differ at least by its SSIM threshold, so they are no longer near-duplicates.
Frames without a stamp (hand-labeled stills) each form their own group.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

from mtl_perception.core.errors import UserError

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
GroupBy = Literal["bag", "time"]


@dataclass(frozen=True)
class SplitItem:
    """What the splitter needs to know about one frame."""

    key: int  # the caller's id (e.g. COCO image id)
    bag: str
    stamp_ns: int | None  # None for stills without a time stamp: each is its own group
    name: str  # tie-breaker for a stable order


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> train/val/test fractions (non-negative, summing to 1)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--split {text!r}: expected three numbers like 0.8,0.1,0.1") from None
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6 or values[0] == 0:
        raise UserError(f"--split {text!r}: need train,val,test >= 0 summing to 1 with train > 0")
    return values


def group_items(
    items: Sequence[SplitItem], group_by: GroupBy, window_s: float
) -> dict[Hashable, list[SplitItem]]:
    """Groups of frames that must stay in one split.

    ``time``: within each bag, frames sorted by stamp; a group starts at a frame and takes every
    following frame until ``window_s`` seconds have passed since the group's first frame.
    """
    groups: dict[Hashable, list[SplitItem]] = {}
    if group_by == "bag":
        for item in items:
            groups.setdefault(("bag", item.bag), []).append(item)
        return groups
    window_ns = int(window_s * 1e9)
    by_bag: dict[str, list[SplitItem]] = {}
    for item in items:
        by_bag.setdefault(item.bag, []).append(item)
    for bag, bag_items in by_bag.items():
        timed = sorted(
            ((i.stamp_ns, i.name, i) for i in bag_items if i.stamp_ns is not None),
            key=lambda t: (t[0], t[1]),
        )
        start: int | None = None
        for stamp_ns, _, item in timed:
            if start is None or stamp_ns - start >= window_ns:
                start = stamp_ns
            groups.setdefault(("time", bag, start), []).append(item)
        for item in bag_items:
            if item.stamp_ns is None:
                groups.setdefault(("still", bag, item.name), []).append(item)
    return groups


def _error_change(missing: float, size: int) -> float:
    """Change of ``|target - filled|`` of a split missing ``missing`` frames that gets ``size``."""
    return abs(missing - size) - abs(missing)


def assign_splits(
    items: Sequence[SplitItem],
    fractions: Sequence[float],
    group_by: GroupBy,
    window_s: float,
    seed: int,
) -> tuple[dict[str, list[int]], int]:
    """Split ``items`` by groups; return ``{split: sorted keys}`` and the number of groups."""
    groups = group_items(items, group_by, window_s)
    order = sorted(groups, key=repr)  # independent of input order and hash seed
    random.Random(seed).shuffle(order)
    total = sum(len(g) for g in groups.values())
    target = {name: frac * total for name, frac in zip(SPLIT_NAMES, fractions, strict=True)}
    wanted = [name for name in SPLIT_NAMES if target[name] > 0]
    filled = dict.fromkeys(SPLIT_NAMES, 0)
    splits: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for index, group_key in enumerate(order):
        members = groups[group_key]
        empty = [n for n in wanted if not filled[n]]
        # Just enough groups left: one per empty split.
        choices = empty if len(order) - index <= len(empty) else wanted
        # Relative error: one frame missing from a 10 % split weighs 8x one extra in an 80 % one.
        name = min(
            choices,
            key=lambda n: (
                _error_change(target[n] - filled[n], len(members)) / target[n],
                -(target[n] - filled[n]),
            ),
        )
        splits[name].extend(item.key for item in members)
        filled[name] += len(members)
    return {name: sorted(keys) for name, keys in splits.items()}, len(groups)
