"""Drawing and encoding of demo-web images.

An image is a soft pastel gradient with 1-3 instances of each concept's shape in
the concept's colour. Everything is a pure function of a numpy Generator, so a
worker can re-render any item (e.g. the original of a near duplicate) exactly.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from pipelines.demo_web.world import COLOURS, SIGNATURES

EXIF_ORIENTATION_TAG = 0x0112
# Stored pixels are the displayed image rotated the opposite way, so that
# ImageOps.exif_transpose recovers the displayed orientation.
_STORE_TRANSPOSE = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}

Point = tuple[float, float]


def _regular_polygon(sides: int, angle: float, radius: float = 0.48) -> list[Point]:
    return [
        (
            0.5 + radius * math.cos(angle + 2 * math.pi * k / sides),
            0.5 + radius * math.sin(angle + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def _star(angle: float) -> list[Point]:
    points = []
    for k in range(10):
        radius = 0.48 if k % 2 == 0 else 0.2
        theta = angle + math.pi * k / 5
        points.append((0.5 + radius * math.cos(theta), 0.5 + radius * math.sin(theta)))
    return points


def _rotate(points: Sequence[Point], angle: float) -> list[Point]:
    cos, sin = math.cos(angle), math.sin(angle)
    return [
        (0.5 + (x - 0.5) * cos - (y - 0.5) * sin, 0.5 + (x - 0.5) * sin + (y - 0.5) * cos)
        for x, y in points
    ]


_CROSS = [
    (0.35, 0.05), (0.65, 0.05), (0.65, 0.35), (0.95, 0.35), (0.95, 0.65), (0.65, 0.65),
    (0.65, 0.95), (0.35, 0.95), (0.35, 0.65), (0.05, 0.65), (0.05, 0.35), (0.35, 0.35),
]  # fmt: skip
_ARROW = [(0.05, 0.38), (0.55, 0.38), (0.55, 0.12), (0.95, 0.5), (0.55, 0.88), (0.55, 0.62), (0.05, 0.62)]
_SQUARE = [(0.15, 0.15), (0.85, 0.15), (0.85, 0.85), (0.15, 0.85)]
_DIAMOND = [(0.5, 0.02), (0.82, 0.5), (0.5, 0.98), (0.18, 0.5)]


def _heart() -> list[Point]:
    points = []
    for k in range(48):
        t = 2 * math.pi * k / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        points.append((0.5 + x / 35, 0.47 - y / 35))
    return points


_HEART = _heart()


def _outline(shape: str, angle: float) -> list[Point] | None:
    """Unit-square polygon of a shape; None for the round ones drawn as ellipses."""
    polygons = {
        "square": lambda: _rotate(_SQUARE, angle),
        "triangle": lambda: _regular_polygon(3, angle),
        "star": lambda: _star(angle),
        "hexagon": lambda: _regular_polygon(6, angle),
        "pentagon": lambda: _regular_polygon(5, angle),
        "cross": lambda: _rotate(_CROSS, angle),
        "diamond": lambda: _rotate(_DIAMOND, angle / 4),
        "heart": lambda: _rotate(_HEART, angle / 6),
        "arrow": lambda: _rotate(_ARROW, angle),
    }
    make = polygons.get(shape)
    return make() if make else None


def shape_mask(shape: str, size: int, angle: float) -> Image.Image:
    """An L-mode mask (255 = shape) of one shape instance in a size x size box."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    full = (0, 0, size - 1, size - 1)
    polygon = _outline(shape, angle)
    if polygon is not None:
        draw.polygon([(x * (size - 1), y * (size - 1)) for x, y in polygon], fill=255)
    elif shape == "circle":
        draw.ellipse(full, fill=255)
    elif shape == "ring":
        draw.ellipse(full, fill=255)
        inset = size * 0.28
        draw.ellipse((inset, inset, size - 1 - inset, size - 1 - inset), fill=0)
    elif shape == "crescent":
        draw.ellipse(full, fill=255)
        shift = size * (0.3 if angle > 0 else -0.3)
        draw.ellipse((shift, -size * 0.1, size - 1 + shift, size * 0.9), fill=0)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _pastel(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(185, 250, size=3)


def background(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Smooth two-colour gradient: no noise, so PNGs stay small."""
    start, end = _pastel(rng), _pastel(rng)
    angle = rng.uniform(0, 2 * math.pi)
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32) * np.float32(math.cos(angle))
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32) * np.float32(math.sin(angle))
    level = xs[None, :] + ys[:, None]
    low, high = float(level.min()), float(level.max())
    level -= np.float32(low)
    level *= np.float32(255.0 / max(high - low, 1e-6))
    # Per-channel lookup tables over an 8-bit level map: far cheaper than
    # blending full float RGB arrays.
    levels = Image.fromarray(level.astype(np.uint8), "L")
    ramp = np.linspace(0.0, 1.0, 256)
    bands = [
        levels.point([int(round(s + (e - s) * r)) for r in ramp])
        for s, e in zip(start.tolist(), end.tolist(), strict=True)
    ]
    return Image.merge("RGB", bands)


def _place_instances(
    canvas: Image.Image, concept: str, rng: np.random.Generator
) -> None:
    shape, colour_name = SIGNATURES[concept]
    colour = COLOURS[colour_name]
    fill = colour + (255,) if canvas.mode == "RGBA" else colour
    width, height = canvas.size
    short = min(width, height)
    for _ in range(int(rng.integers(1, 4))):
        size = max(2, int(round(short * rng.uniform(0.15, 0.5))))
        x = int(rng.integers(0, width - size + 1))
        y = int(rng.integers(0, height - size + 1))
        angle = float(rng.uniform(-math.pi, math.pi))
        canvas.paste(fill, (x, y, x + size, y + size), shape_mask(shape, size, angle))


def render_image(
    concepts: Sequence[str],
    width: int,
    height: int,
    rng: np.random.Generator,
    transparent: bool = False,
) -> Image.Image:
    """Draw the concepts on a pastel gradient (or a transparent canvas)."""
    bg = background(width, height, rng)
    canvas = Image.new("RGBA", (width, height), (0, 0, 0, 0)) if transparent else bg
    for concept in concepts:
        _place_instances(canvas, concept, rng)
    return canvas


def flatten(image: Image.Image) -> Image.Image:
    """RGB version of an image; transparent pixels become white."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    white = Image.new("RGB", image.size, (255, 255, 255))
    white.paste(image, mask=image.getchannel("A"))
    return white


def encode(image: Image.Image, fmt: str, quality: int = 90, orientation: int = 0) -> bytes:
    """Serialize deterministically; `orientation` 6/8 stores rotated pixels + EXIF."""
    buffer = io.BytesIO()
    if fmt == "jpeg":
        rgb = flatten(image)
        if orientation:
            exif = Image.Exif()
            exif[EXIF_ORIENTATION_TAG] = orientation
            rgb = rgb.transpose(_STORE_TRANSPOSE[orientation])
            rgb.save(buffer, "JPEG", quality=quality, exif=exif.tobytes())
        else:
            rgb.save(buffer, "JPEG", quality=quality)
    elif fmt == "png":
        image.save(buffer, "PNG")
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=quality, method=4)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return buffer.getvalue()
