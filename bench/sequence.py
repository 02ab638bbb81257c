# SPDX-License-Identifier: Apache-2.0
"""A realistic camera sequence for benchmarking the prune step, in the unpack layout.

A virtual 480x640 camera looks at scikit-image's bundled photographs (astronaut, coffee,
chelsea, rocket, ...) through a crop window that stands still, pans slowly, or moves and
zooms fast, with occasional cuts to another photograph. Every frame gets a little sensor
noise and is JPEG-encoded, so "still" frames are near-duplicates, not exact copies — the case
the prune threshold is meant for. The output is ``<root>/<bag>/<topic_dir>/`` with
``<stamp_ns>.jpg`` files and a ``manifest.csv`` as written by ``mtl-data unpack``
(docs/CONTRACTS.md §1).

Run as a script to write one: ``python -m bench.sequence OUT_DIR --frames 300``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from skimage import data as skdata

from mtl_perception.core.atomic_io import write_bytes, write_csv
from mtl_perception.core.constants import MANIFEST_COLUMNS, MANIFEST_NAME

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
)
FRAME_PERIOD_NS = 33_333_333  # 30 fps
START_NS = 1_700_000_000_000_000_000

# Motion kinds: (frames min, frames max, pan speed px/frame min, max, zoom step max per frame).
MOTIONS: dict[str, tuple[int, int, float, float, float]] = {
    "still": (15, 45, 0.0, 0.0, 0.0),
    "slow": (15, 40, 0.3, 2.5, 0.002),
    "fast": (5, 20, 12.0, 45.0, 0.02),
}


@dataclass
class Camera:
    """The crop window on the current photograph: centre, scale (source px per output px)."""

    photo: np.ndarray
    cx: float
    cy: float
    scale: float

    def clamp(self, width: int, height: int) -> None:
        """Keep the window inside the photograph (a real camera does not see past the scene)."""
        ph, pw = self.photo.shape[:2]
        self.scale = float(np.clip(self.scale, 0.35, min(pw / width, ph / height)))
        half_w, half_h = width * self.scale / 2, height * self.scale / 2
        self.cx = float(np.clip(self.cx, half_w, pw - half_w))
        self.cy = float(np.clip(self.cy, half_h, ph - half_h))

    def render(self, width: int, height: int) -> np.ndarray:
        """The RGB view through the window, with sub-pixel interpolation."""
        s = self.scale
        to_source = np.array(
            [[s, 0.0, self.cx - s * width / 2], [0.0, s, self.cy - s * height / 2]]
        )
        return cv2.warpAffine(
            self.photo,
            to_source,
            (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )


def load_photos() -> list[np.ndarray]:
    """The bundled colour photographs (no download), RGB uint8."""
    return [np.ascontiguousarray(getattr(skdata, name)()[..., :3]) for name in PHOTOS]


def camera_frames(
    count: int, seed: int = 0, width: int = 640, height: int = 480, noise_sigma: float = 1.5
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(motion kind, RGB frame)`` for ``count`` frames of a deterministic sequence."""
    rng = np.random.default_rng(seed)
    photos = load_photos()
    camera = Camera(photos[0], 0.0, 0.0, 1.0)
    produced = 0
    while produced < count:
        if rng.random() < 0.2 or produced == 0:  # a cut to another scene
            photo = photos[int(rng.integers(len(photos)))]
            camera = Camera(
                photo, photo.shape[1] / 2, photo.shape[0] / 2, float(rng.uniform(0.5, 1.0))
            )
        kind = str(rng.choice(list(MOTIONS), p=[0.45, 0.35, 0.2]))
        n_min, n_max, v_min, v_max, zoom = MOTIONS[kind]
        angle = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(v_min, v_max)
        zoom_step = 1.0 + rng.uniform(-zoom, zoom)
        for _ in range(min(int(rng.integers(n_min, n_max + 1)), count - produced)):
            camera.cx += speed * camera.scale * np.cos(angle)
            camera.cy += speed * camera.scale * np.sin(angle)
            camera.scale *= zoom_step
            camera.clamp(width, height)
            view = camera.render(width, height).astype(np.float32)
            view += rng.normal(0.0, noise_sigma, view.shape).astype(np.float32)  # sensor noise
            yield kind, np.clip(view, 0, 255).astype(np.uint8)
            produced += 1


def write_sequence(
    root: Path,
    count: int,
    seed: int = 0,
    bag: str = "bench_bag",
    topic_dir: str = "camera__image_raw",
    width: int = 640,
    height: int = 480,
    jpeg_quality: int = 90,
) -> Path:
    """Write ``count`` JPEG frames + manifest to ``root/bag/topic_dir``; return that folder."""
    folder = root / bag / topic_dir
    rows = []
    for index, (_, rgb) in enumerate(camera_frames(count, seed, width, height)):
        stamp = START_NS + index * FRAME_PERIOD_NS
        ok, encoded = cv2.imencode(
            ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
        )
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        write_bytes(folder / f"{stamp}.jpg", encoded.tobytes())
        rows.append(
            {
                "index": index,
                "stamp_ns": stamp,
                "bag_time_ns": stamp + 1_000_000,
                "frame_id": "camera",
                "encoding": "jpeg",
                "width": width,
                "height": height,
                "bag": bag,
                "file": f"{stamp}.jpg",
            }
        )
    write_csv(folder / MANIFEST_NAME, MANIFEST_COLUMNS, rows)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out", type=Path, help="root folder (the sequence goes to OUT/<bag>/<topic_dir>/)"
    )
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_sequence(args.out, args.frames, args.seed))


if __name__ == "__main__":
    main()
