# SPDX-License-Identifier: Apache-2.0
"""Write a deterministic, labeled demo bag and its COCO ground truth.

The bag shows a moving camera over a textured floor and wall with boxes, cones and balls
standing on the floor.

The scene is a pinhole camera above a ground plane: objects stand on the floor at different
distances (so their scale varies and nearer ones occlude farther ones), a wall stands at the far
end of the floor and the camera pans, drives, tilts and pauses. Still stretches produce
near-duplicate frames (only sensor noise changes) for the pruning step; fast stretches move
several pixels per frame. Textures come from scikit-image's bundled photographs, so nothing is
downloaded. The same arguments always give the same bytes of ground truth and the same images.

Output (docs/CONTRACTS.md §3): ``<out>/synth_bag/`` (rosbag2, mcap or sqlite3) with the topic
``/camera/image_raw`` (``sensor_msgs/msg/Image``) or ``/camera/image_raw/compressed``
(``sensor_msgs/msg/CompressedImage``), and ``<out>/synth_coco.json``. Unless ``--no-depth``,
the bag also has ``/camera/aligned_depth_to_color/image_raw``: the same scene's depth as a
RealSense-like sensor reports it aligned to colour (``16UC1`` millimetres of z-depth, same size
and header stamps as the colour frames, 0 = no return), see ``sensor_depth_mm``. The floor's
depth grows towards the horizon; the wall faces the camera, so its z-depth is one value per
frame. Re-running with the same arguments is a no-op; other arguments over existing output
need ``--force``.

Classes: ``box``, ``cone``, ``ball`` (objects: box + visible-outline polygons) and ``floor``,
``wall`` (stuff: RLE of the visible region); the photos above the wall are background. The
default 300 frames last 10 s: build it with ``--window-s 1`` so the time-grouped split has
enough groups.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from skimage import data as skdata
from tqdm import tqdm

from mtl_perception.core import atomic_io
from mtl_perception.core.constants import (
    MIN_INPUT_SIDE,
    SYNTH_CAMERA_TOPIC,
    SYNTH_DEPTH_TOPIC,
    parse_hw,
)
from mtl_perception.core.errors import UserError
from mtl_perception.core.stamps import ns_to_sec_nanosec

if TYPE_CHECKING:  # rosbags defines its message protocol for type checkers only
    from rosbags.typesys.store import MsgType

OBJECT_CLASSES: tuple[str, ...] = ("box", "cone", "ball")
STUFF_CLASSES: tuple[str, ...] = ("floor", "wall")
CATEGORY_IDS: dict[str, int] = {
    name: i + 1 for i, name in enumerate(OBJECT_CLASSES + STUFF_CLASSES)
}
# Semantic ids of the rendered label map (``RenderedFrame.semantic``): 0 = background (the
# photo above the wall, and every object pixel), then the stuff classes in order.
FLOOR_ID, WALL_ID = 1, 2

OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {  # RGB, chosen far apart from the stuff
    "box": (235, 195, 40),  # yellow cardboard
    "cone": (245, 85, 15),  # traffic orange
    "ball": (35, 85, 225),  # blue
}
CAMERA_TOPIC = SYNTH_CAMERA_TOPIC
DEPTH_TOPIC = SYNTH_DEPTH_TOPIC
BAG_DIRNAME = "synth_bag"
COCO_NAME = "synth_coco.json"
MARKER_NAME = ".synth_complete"
START_STAMP_NS = 1_700_000_000_000_000_000
FRAME_RATE_HZ = 30.0
ENCODINGS = ("rgb8", "bgr8", "jpeg", "png")

# Scene geometry in metres (camera height, object sizes, wall distance and height).
CAMERA_HEIGHT = 1.0
WALL_DISTANCE = 12.0
WALL_HEIGHT = 2.6
OBJECT_SIZE = {"box": 1.0, "cone": 1.1, "ball": 1.0}
WORLD_HALF_WIDTH = 9.0  # objects spread over x in [-9, 9]; the camera pans over most of it
NEAR_PLANE = 1.2  # objects nearer than this are behind/under the camera and not drawn


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines the output; stored in the marker for the no-op check."""

    frames: int = 300
    width: int = 640
    height: int = 480
    encoding: str = "rgb8"
    storage: str = "mcap"
    seed: int = 0
    objects: int = 30
    depth: bool = True


@dataclass(frozen=True)
class CameraPose:
    """Camera position on the ground plane and the image row of the horizon (tilt)."""

    x: float
    z: float
    horizon_frac: float  # horizon row as a fraction of the image height


@dataclass(frozen=True)
class WorldObject:
    """An object standing on the floor at world position (x, z)."""

    kind: str
    x: float
    z: float
    size: float
    shade: float  # brightness factor, so instances of one class are not identical


@dataclass
class RenderedFrame:
    """One rendered frame and its exact ground truth at image resolution."""

    rgb: np.ndarray  # [H, W, 3] uint8
    semantic: np.ndarray  # [H, W] uint8: 0 background/objects, FLOOR_ID, WALL_ID
    instances: list[tuple[str, np.ndarray]]  # (class, visible bool mask) per visible object
    depth: np.ndarray  # [H, W] float32 z-depth in metres, exact; 0 = nothing (sky)


# --------------------------------------------------------------------------- scene


def _fit_height(image: np.ndarray, height: int) -> np.ndarray:
    """``image`` scaled to ``height`` rows, keeping its aspect ratio."""
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _tinted_texture(gray: np.ndarray, colour: tuple[int, int, int], contrast: float) -> np.ndarray:
    """A colour texture from a grey photo: ``colour`` modulated by the photo's local contrast."""
    g = gray.astype(np.float32) / 255.0
    g = 1.0 + contrast * (g - g.mean())
    tex = g[..., None] * np.asarray(colour, np.float32)[None, None, :]
    return np.clip(tex, 0, 255).astype(np.uint8)


class Scene:
    """Textures, objects and the camera trajectory of one synthetic sequence."""

    def __init__(self, config: SynthConfig) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        w, h = config.width, config.height
        self.focal = 0.9 * w  # ~58 degree horizontal field of view
        # Textures are tiled twice horizontally so a pan can wrap without seams in indexing.
        self.floor_tex = self._tile(_tinted_texture(skdata.gravel(), (110, 130, 95), 1.6), h)
        self.wall_tex = self._tile(_tinted_texture(skdata.brick(), (170, 165, 190), 1.2), h)
        # Above the wall: a panorama of bundled colour photos (background class), seed-ordered.
        photos = [skdata.coffee(), skdata.chelsea(), skdata.rocket(), skdata.astronaut()]
        order = rng.permutation(len(photos))
        self.sky_tex = self._tile(
            np.concatenate([_fit_height(photos[i], h) for i in order], axis=1), h
        )
        self.sky_offset = float(rng.uniform(0, self.sky_tex.shape[1] / 4))
        self.objects = self._place_objects(rng)
        self.poses = list(self._trajectory(rng))

    def _tile(self, tex: np.ndarray, height: int) -> np.ndarray:
        """Scale ``tex`` to ``height`` rows and repeat it so any window of the frame width fits."""
        tex = _fit_height(tex, height)
        reps = 2 + (2 * self.config.width) // tex.shape[1]
        return np.concatenate([tex] * reps, axis=1)

    def _place_objects(self, rng: np.random.Generator) -> list[WorldObject]:
        """Objects spread over the floor, in clusters so that some occlude others."""
        objects = []
        for i in range(self.config.objects):
            kind = OBJECT_CLASSES[i % len(OBJECT_CLASSES)]
            objects.append(
                WorldObject(
                    kind=kind,
                    x=float(rng.uniform(-WORLD_HALF_WIDTH, WORLD_HALF_WIDTH)),
                    z=float(rng.uniform(3.0, WALL_DISTANCE - 4.0)),
                    size=OBJECT_SIZE[kind] * float(rng.uniform(0.75, 1.3)),
                    shade=float(rng.uniform(0.75, 1.05)),
                )
            )
        return objects

    def _trajectory(self, rng: np.random.Generator) -> Iterator[CameraPose]:
        """Piecewise motion: still stretches (near-duplicates), slow and fast stretches."""
        x, z, tilt = 0.0, 0.0, 0.45
        vx = vz = vt = 0.0
        direction = (
            1.0  # pans keep their direction (sweeping the scene) until a bounce or a rare turn
        )
        left = 0
        for _ in range(self.config.frames):
            if left == 0:  # start a new stretch
                left = int(rng.integers(12, 40))
                mode = rng.choice(["still", "slow", "fast"], p=[0.3, 0.4, 0.3])
                speed = {"still": 0.0, "slow": 0.02, "fast": 0.15}[mode]
                direction = -direction if rng.random() < 0.2 else direction
                vx = speed * direction * float(rng.uniform(0.5, 1.0))
                vz = speed * float(rng.uniform(-1, 1))
                vt = speed * 0.05 * float(rng.uniform(-1, 1))
            left -= 1
            # Stay over the populated floor area, facing the wall; bounce at the limits.
            x, vx = _bounce(x + vx, vx, -WORLD_HALF_WIDTH + 2.0, WORLD_HALF_WIDTH - 2.0)
            direction = float(np.sign(vx)) or direction
            z, vz = _bounce(z + vz, vz, -1.5, 3.0)
            tilt, vt = _bounce(tilt + vt, vt, 0.3, 0.55)
            yield CameraPose(x=x, z=z, horizon_frac=tilt)

    # ----------------------------------------------------------------------- rendering

    def render(self, index: int) -> RenderedFrame:
        """Render frame ``index``: stuff first, then objects far to near (painter's order)."""
        pose = self.poses[index]
        w, h = self.config.width, self.config.height
        horizon = pose.horizon_frac * h
        wall_depth = WALL_DISTANCE - pose.z
        wall_bottom = round(horizon + self.focal * CAMERA_HEIGHT / wall_depth)
        wall_top = round(horizon - self.focal * (WALL_HEIGHT - CAMERA_HEIGHT) / wall_depth)
        wall_bottom = min(max(wall_bottom, 0), h)
        wall_top = min(max(wall_top, 0), wall_bottom)

        # Pan: each layer scrolls with its own parallax (far = slow).
        pan_px = pose.x * self.focal
        rgb = np.empty((h, w, 3), np.uint8)
        semantic = np.zeros((h, w), np.uint8)
        rgb[:wall_top] = self._window(self.sky_tex, self.sky_offset + pan_px / 8.0, w)[:wall_top]
        rgb[wall_top:wall_bottom] = self._window(self.wall_tex, pan_px / wall_depth, w)[
            wall_top:wall_bottom
        ]
        rgb[wall_bottom:] = self._window(self.floor_tex, pan_px / 4.0 + pose.z * 60.0, w)[
            wall_bottom:
        ]
        semantic[wall_top:wall_bottom] = WALL_ID
        semantic[wall_bottom:] = FLOOR_ID
        depth = self._stuff_depth(horizon, wall_depth, wall_top, wall_bottom)

        owner = np.full((h, w), -1, np.int32)  # index of the object that owns each pixel
        drawn: list[WorldObject] = []
        for obj in sorted(self.objects, key=lambda o: -(o.z - pose.z)):
            distance = obj.z - pose.z
            if distance < NEAR_PLANE:
                continue
            polygons = _object_polygons(obj, distance, pose.x, horizon, self.focal, w)
            xs = polygons[0][:, 0]
            if xs.max() < 0 or xs.min() >= w:  # out of view: skip the full-frame fill
                continue
            shape = _fill(polygons[:1], h, w)
            if not shape.any():
                continue
            self._paint(rgb, shape, obj, polygons)
            _paint_depth(
                depth,
                shape,
                obj,
                distance,
                _projection(obj, distance, pose.x, horizon, self.focal, w),
                self.focal,
            )
            owner[shape] = len(drawn)
            drawn.append(obj)
        semantic[owner >= 0] = 0

        instances = []
        for i, obj in enumerate(drawn):
            visible = owner == i
            if visible.any():
                instances.append((obj.kind, visible))
        return RenderedFrame(rgb=rgb, semantic=semantic, instances=instances, depth=depth)

    def _stuff_depth(
        self, horizon: float, wall_depth: float, wall_top: int, wall_bottom: int
    ) -> np.ndarray:
        """Z-depth of the wall (fronto-parallel: constant) and the floor (grows to the horizon).

        A floor pixel row ``v`` below the horizon sees the ground at
        ``z = f * height / (v - horizon)`` (the projection the objects' base lines use too); the
        region above the wall is beyond any sensor's range and stays 0.
        """
        h, w = self.config.height, self.config.width
        depth = np.zeros((h, w), np.float32)
        depth[wall_top:wall_bottom] = wall_depth
        rows = np.arange(wall_bottom, h, dtype=np.float64) + 0.5  # pixel centres
        floor = self.focal * CAMERA_HEIGHT / np.maximum(rows - horizon, 1e-6)
        depth[wall_bottom:] = np.minimum(floor, wall_depth).astype(np.float32)[:, None]
        return depth

    @staticmethod
    def _window(tex: np.ndarray, offset_px: float, width: int) -> np.ndarray:
        start = round(offset_px) % (tex.shape[1] - width)
        return tex[:, start : start + width]

    @staticmethod
    def _paint(
        rgb: np.ndarray, shape: np.ndarray, obj: WorldObject, polygons: list[np.ndarray]
    ) -> None:
        """Flat colour with simple shading so the shapes look like solids, not stickers.

        Works on the silhouette's bounding window only: boolean indexing of full frames per
        object would dominate the render time.
        """
        y0, y1 = _row_extent(shape)
        x0, x1 = _row_extent(shape.T)
        window = (slice(y0, y1 + 1), slice(x0, x1 + 1))
        pixels, inside = rgb[window], shape[window]  # views into the frame
        colour = np.asarray(OBJECT_COLOURS[obj.kind], np.float32) * obj.shade
        pixels[inside] = np.clip(colour, 0, 255).astype(np.uint8)
        rows = y1 + 1 - y0
        if obj.kind == "box" and len(polygons) > 1:  # lighter top face
            top = _fill(polygons[1:], *shape.shape)[window]
            pixels[top & inside] = np.clip(colour * 1.25, 0, 255).astype(np.uint8)
        elif obj.kind == "cone":  # white reflective band
            lo, hi = int(0.45 * rows), int(0.6 * rows) + 1
            pixels[lo:hi][inside[lo:hi]] = (240, 240, 240)
        elif obj.kind == "ball":  # darker lower half
            pixels[rows // 2 :][inside[rows // 2 :]] = np.clip(colour * 0.7, 0, 255).astype(
                np.uint8
            )


def _row_extent(mask: np.ndarray) -> tuple[int, int]:
    """First and last row that contain a pixel of a non-empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    return int(rows[0]), int(rows[-1])


def _bounce(value: float, velocity: float, low: float, high: float) -> tuple[float, float]:
    """Keep ``value`` in [low, high] by reflecting the velocity at the limits."""
    if value < low or value > high:
        return min(max(value, low), high), -velocity
    return value, velocity


def _projection(
    obj: WorldObject, depth: float, cam_x: float, horizon: float, focal: float, width: int
) -> tuple[float, float, float]:
    """Image centre column, base row and pixel size of an object ``depth`` metres ahead."""
    cx = width / 2 + focal * (obj.x - cam_x) / depth
    base_y = horizon + focal * CAMERA_HEIGHT / depth
    return cx, base_y, focal * obj.size / depth


def _object_polygons(
    obj: WorldObject, depth: float, cam_x: float, horizon: float, focal: float, width: int
) -> list[np.ndarray]:
    """Image-space polygons (float [K, 2] x,y) of one object; the first is its silhouette."""
    cx, base_y, s = _projection(obj, depth, cam_x, horizon, focal, width)
    if obj.kind == "box":
        lift = 0.25 * s  # the top face seen from above
        front = np.array(
            [
                [cx - s / 2, base_y],
                [cx + s / 2, base_y],
                [cx + s / 2, base_y - s],
                [cx + s / 2 - lift / 2, base_y - s - lift],
                [cx - s / 2 + lift / 2, base_y - s - lift],
                [cx - s / 2, base_y - s],
            ]
        )
        top = np.array(
            [
                [cx - s / 2, base_y - s],
                [cx + s / 2, base_y - s],
                [cx + s / 2 - lift / 2, base_y - s - lift],
                [cx - s / 2 + lift / 2, base_y - s - lift],
            ]
        )
        return [front, top]
    if obj.kind == "cone":
        return [
            np.array(
                [
                    [cx - 0.4 * s, base_y],
                    [cx + 0.4 * s, base_y],
                    [cx + 0.06 * s, base_y - s],
                    [cx - 0.06 * s, base_y - s],
                ]
            )
        ]
    angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    r = s / 2
    return [np.stack([cx + r * np.cos(angles), base_y - r + r * np.sin(angles)], axis=1)]


def _paint_depth(
    depth_map: np.ndarray,
    shape: np.ndarray,
    obj: WorldObject,
    distance: float,
    projection: tuple[float, float, float],
    focal: float,
) -> None:
    """Write the z-depth of an object's visible surface into ``depth_map`` where ``shape`` is set.

    ``distance`` is the z-depth of the object's front base line. Boxes: a fronto-parallel front
    face, the top face receding by the box size; balls: a sphere centred at ``distance``;
    cones: a tapering round surface. Like ``Scene._paint`` it works on the bounding window only.
    """
    cx, base_y, s = projection
    y0, y1 = _row_extent(shape)
    x0, x1 = _row_extent(shape.T)
    window = (slice(y0, y1 + 1), slice(x0, x1 + 1))
    v = np.arange(y0, y1 + 1, dtype=np.float64)[:, None] + 0.5
    u = np.arange(x0, x1 + 1, dtype=np.float64)[None, :] + 0.5
    metres_per_px = distance / focal
    if obj.kind == "box":
        lift = 0.25 * s
        recede = np.clip((base_y - s - v) / max(lift, 1e-6), 0.0, 1.0)  # 0 on the front face
        z = np.broadcast_to(distance + recede * obj.size, (v.size, u.size))
    elif obj.kind == "ball":
        r = s / 2
        rr = ((u - cx) / r) ** 2 + ((v - (base_y - r)) / r) ** 2
        z = distance - r * metres_per_px * np.sqrt(np.clip(1.0 - rr, 0.0, 1.0))
    else:  # cone: radius shrinks from 0.4 s at the base to 0.06 s at the top
        t = np.clip((base_y - v) / s, 0.0, 1.0)
        radius = (0.4 - 0.34 * t) * s
        z = distance - radius * metres_per_px * np.sqrt(
            np.clip(1.0 - ((u - cx) / radius) ** 2, 0.0, 1.0)
        )
    inside = shape[window]
    depth_map[window][inside] = z.astype(np.float32)[inside]


def sensor_depth_mm(depth_m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What an RGB-D camera would report for an exact depth map: uint16 millimetres, 0 = invalid.

    Like a stereo sensor (RealSense D4xx): noise grows with the square of the distance (1 mm at
    1 m, 10 cm at 10 m), no return where there is nothing (0 in ``depth_m``), a band of invalid
    columns on the left (the region only one imager sees) and ~0.5 % random dropouts.
    """
    h, w = depth_m.shape
    noisy = depth_m + rng.standard_normal((h, w), dtype=np.float32) * 0.001 * depth_m**2
    mm = np.clip(np.rint(noisy * 1000.0), 1, 65535).astype(np.uint16)
    mm[depth_m <= 0] = 0
    mm[:, : max(1, w // 80)] = 0
    mm[rng.random((h, w), dtype=np.float32) < 0.005] = 0
    return mm


def _fill(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Boolean mask of the union of ``polygons``, clipped to the image."""
    mask = np.zeros((height, width), np.uint8)
    pts = [np.round(p * 16).astype(np.int32) for p in polygons]  # 4 fractional bits of precision
    cv2.fillPoly(mask, pts, 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


# --------------------------------------------------------------------------- ground truth


def stamp_ns(index: int) -> int:
    """Header stamp of frame ``index`` at exactly 30 Hz (rounded to whole ns)."""
    return START_STAMP_NS + round(index * 1e9 / FRAME_RATE_HZ)


def _rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a boolean mask, JSON-ready."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": rle["counts"].decode("ascii"),
    }


def _mask_bbox(mask: np.ndarray) -> list[int]:
    """Tight COCO ``[x, y, w, h]`` box of a non-empty boolean mask, in whole pixels."""
    y0, y1 = _row_extent(mask)
    x0, x1 = _row_extent(mask.T)
    return [x0, y0, x1 + 1 - x0, y1 + 1 - y0]


def _visible_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a visible region as COCO polygons (flat x,y lists, >= 3 points)."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def frame_annotations(frame: RenderedFrame, image_id: int, first_ann_id: int) -> list[dict]:
    """COCO annotations of one rendered frame: visible objects, then the stuff regions."""
    anns = []
    for kind, visible in frame.instances:
        polygons = _visible_polygons(visible)
        if not polygons:  # a sliver too thin for a polygon: not annotatable, like a human labeler
            continue
        anns.append(
            {
                "category_id": CATEGORY_IDS[kind],
                "bbox": _mask_bbox(visible),
                "segmentation": polygons,
                "area": int(visible.sum()),
                "iscrowd": 0,
            }
        )
    for name, class_id in (("floor", FLOOR_ID), ("wall", WALL_ID)):
        region = frame.semantic == class_id
        if region.any():
            anns.append(
                {
                    "category_id": CATEGORY_IDS[name],
                    "bbox": _mask_bbox(region),
                    "segmentation": _rle(region),
                    "area": int(region.sum()),
                    "iscrowd": 0,
                }
            )
    for offset, ann in enumerate(anns):
        ann["id"] = first_ann_id + offset
        ann["image_id"] = image_id
    return anns


# --------------------------------------------------------------------------- bag writing


class _MessageFactory:
    """Serialises rendered frames as the requested Image / CompressedImage messages."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.typestore = get_typestore(Stores.ROS2_JAZZY)
        self.compressed = encoding in ("jpeg", "png")
        self.msgtype = (
            "sensor_msgs/msg/CompressedImage" if self.compressed else "sensor_msgs/msg/Image"
        )
        self.topic = f"{CAMERA_TOPIC}/compressed" if self.compressed else CAMERA_TOPIC

    def _header(self, stamp: int) -> MsgType:
        types = self.typestore.types
        sec, nanosec = ns_to_sec_nanosec(stamp)
        return types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
            frame_id="camera",
        )

    def serialize_depth(self, depth_mm: np.ndarray, stamp: int) -> bytes:
        """A ``16UC1`` little-endian ``sensor_msgs/Image`` (aligned depth: the colour frame id)."""
        h, w = depth_mm.shape
        msg = self.typestore.types["sensor_msgs/msg/Image"](
            header=self._header(stamp),
            height=h,
            width=w,
            encoding="16UC1",
            is_bigendian=0,
            step=2 * w,
            data=np.ascontiguousarray(depth_mm, dtype="<u2").view(np.uint8).reshape(-1),
        )
        return bytes(self.typestore.serialize_cdr(msg, "sensor_msgs/msg/Image"))

    def serialize(self, rgb: np.ndarray, stamp: int) -> bytes:
        types = self.typestore.types
        header = self._header(stamp)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if self.compressed:
            ok, buf = cv2.imencode(
                ".jpg" if self.encoding == "jpeg" else ".png",
                bgr,
                [cv2.IMWRITE_JPEG_QUALITY, 92] if self.encoding == "jpeg" else [],
            )
            assert ok, "OpenCV failed to encode a synthetic frame"
            msg = types[self.msgtype](header=header, format=self.encoding, data=buf.reshape(-1))
        else:
            pixels = rgb if self.encoding == "rgb8" else bgr
            h, w = pixels.shape[:2]
            msg = types[self.msgtype](
                header=header,
                height=h,
                width=w,
                encoding=self.encoding,
                is_bigendian=0,
                step=3 * w,
                data=np.ascontiguousarray(pixels).reshape(-1),
            )
        return bytes(self.typestore.serialize_cdr(msg, self.msgtype))


def synthesize(
    config: SynthConfig, out_dir: Path, show_progress: bool = True
) -> tuple[Path, Path]:
    """Write the bag and its COCO ground truth into ``out_dir``; return their paths.

    The bag is written into a temporary folder and renamed into place at the end, so an
    interrupted run never leaves a half bag where a reader expects a complete one.
    """
    scene = Scene(config)
    factory = _MessageFactory(config.encoding)
    out_dir.mkdir(parents=True, exist_ok=True)
    bag_dir = out_dir / BAG_DIRNAME
    coco: dict = {
        "info": {"description": "mtl_perception synthetic demo", "synth_config": asdict(config)},
        "images": [],
        "annotations": [],
        "categories": [
            {"id": i, "name": n, "supercategory": "object" if n in OBJECT_CLASSES else "stuff"}
            for n, i in CATEGORY_IDS.items()
        ],
    }
    storage = StoragePlugin.MCAP if config.storage == "mcap" else StoragePlugin.SQLITE3
    noise_rng = np.random.default_rng(config.seed + 1)
    depth_rng = np.random.default_rng(
        config.seed + 2
    )  # its own stream: colour bytes do not depend on depth
    with tempfile.TemporaryDirectory(prefix=".synth-", dir=out_dir) as tmp:
        tmp_bag = Path(tmp) / BAG_DIRNAME  # the storage file is named after this folder
        writer = Writer(tmp_bag, version=9, storage_plugin=storage)
        writer.open()
        try:
            conn = writer.add_connection(
                factory.topic, factory.msgtype, typestore=factory.typestore
            )
            depth_conn = (
                writer.add_connection(
                    DEPTH_TOPIC, "sensor_msgs/msg/Image", typestore=factory.typestore
                )
                if config.depth
                else None
            )
            for index in tqdm(
                range(config.frames), desc="synth", unit="frame", disable=not show_progress
            ):
                frame = scene.render(index)
                # Sensor noise: makes still stretches near- (not exact) duplicates.
                noise = noise_rng.integers(-3, 4, size=frame.rgb.shape, dtype=np.int16)
                rgb = np.clip(frame.rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)
                stamp = stamp_ns(index)
                writer.write(conn, stamp, factory.serialize(rgb, stamp))
                if depth_conn is not None:
                    writer.write(
                        depth_conn,
                        stamp,
                        factory.serialize_depth(sensor_depth_mm(frame.depth, depth_rng), stamp),
                    )
                image_id = index + 1
                coco["images"].append(
                    {
                        "id": image_id,
                        "file_name": f"{stamp}.png",
                        "width": config.width,
                        "height": config.height,
                        "stamp_ns": stamp,
                    }
                )
                coco["annotations"] += frame_annotations(
                    frame, image_id, len(coco["annotations"]) + 1
                )
        finally:
            writer.close()
        if bag_dir.exists():
            shutil.rmtree(bag_dir)
        tmp_bag.rename(bag_dir)
    coco_path = out_dir / COCO_NAME
    atomic_io.write_json(coco_path, coco, indent=None)
    return bag_dir, coco_path


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mtl-data synth``."""
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("data/synth"),
        help=f"output folder; receives {BAG_DIRNAME}/ and {COCO_NAME}",
    )
    parser.add_argument(
        "--frames", type=int, default=SynthConfig.frames, help="number of frames (30 Hz)"
    )
    parser.add_argument("--size", default="480x640", help="image size HEIGHTxWIDTH")
    parser.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="rgb8",
        help="rgb8/bgr8: sensor_msgs/Image; jpeg/png: sensor_msgs/CompressedImage",
    )
    parser.add_argument(
        "--storage", choices=("mcap", "db3"), default="mcap", help="rosbag2 storage plugin"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of scene and trajectory")
    parser.add_argument(
        "--objects", type=int, default=SynthConfig.objects, help="objects placed on the floor"
    )
    parser.add_argument(
        "--no-depth",
        dest="depth",
        action="store_false",
        help=f"leave out the aligned depth topic {DEPTH_TOPIC} (16UC1 millimetres)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing output")


def run(args: argparse.Namespace) -> int:
    """Run ``mtl-data synth``; returns the exit status (0: written, or already up to date).

    Raises:
        UserError: An option is out of range, or ``--out`` holds output of other settings or
            of another tool (and ``--force`` is not given).
    """
    if args.frames < 1:
        raise UserError(f"--frames {args.frames}: must be at least 1")
    if args.objects < 0:
        raise UserError(f"--objects {args.objects}: must not be negative")
    try:
        height, width = parse_hw(args.size, "--size", MIN_INPUT_SIDE)
    except ValueError as err:
        raise UserError(str(err)) from None
    config = SynthConfig(
        frames=args.frames,
        width=width,
        height=height,
        encoding=args.encoding,
        storage=args.storage,
        seed=args.seed,
        objects=args.objects,
        depth=args.depth,
    )
    out_dir: Path = args.out
    marker = out_dir / MARKER_NAME
    wanted = json.dumps(asdict(config), sort_keys=True)
    outputs = [out_dir / BAG_DIRNAME, out_dir / COCO_NAME]
    ours = marker.exists() and marker.read_text(encoding="utf-8").strip() == wanted
    if ours and all(p.exists() for p in outputs) and not args.force:
        print(f"synth: {out_dir} is up to date (use --force to rewrite)")
        return 0
    if any(p.exists() for p in outputs) and not (ours or args.force):
        raise UserError(
            f"{out_dir}: holds other synth output (or a foreign {BAG_DIRNAME}/); "
            "use --force to overwrite"
        )
    marker.unlink(missing_ok=True)
    bag_dir, coco_path = synthesize(config, out_dir)
    atomic_io.write_text(marker, wanted + "\n")
    depth = f" (+ depth on {DEPTH_TOPIC})" if config.depth else ""
    print(
        f"synth: wrote {config.frames} frames{depth} to {bag_dir} and ground truth to {coco_path}"
    )
    return 0
