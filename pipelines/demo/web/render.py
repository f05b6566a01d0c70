"""Drawing and encoding of demo-web images.

An image is a smooth random pastel field with 1-3 instances of each concept's shape in
the concept's colour. Everything is a pure function of a numpy Generator, so a
worker can re-render any item (e.g. the original of a near duplicate) exactly.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from pipelines.demo.web.world import COLOURS, SIGNATURES

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
        if size - 1 - 2 * inset >= 0:  # a ring a pixel or two wide (tiny images) is a dot
            draw.ellipse((inset, inset, size - 1 - inset, size - 1 - inset), fill=0)
    elif shape == "crescent":
        draw.ellipse(full, fill=255)
        shift = size * (0.3 if angle > 0 else -0.3)
        draw.ellipse((shift, -size * 0.1, size - 1 + shift, size * 0.9), fill=0)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


FIELD_CELLS = 8  # control points of the background along the longer side


def background(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A smooth random pastel field: a few control colours per side, bicubically interpolated.

    Like the low-frequency content of a photo, it differs from image to image, so perceptual hashes
    of different pages differ as they do on the web (a flat gradient behind one small shape made
    unrelated images hash alike). It stays smooth, so PNGs stay small.
    """
    if width >= height:
        cells = (FIELD_CELLS, max(2, round(FIELD_CELLS * height / width)))
    else:
        cells = (max(2, round(FIELD_CELLS * width / height)), FIELD_CELLS)
    field = rng.uniform(185, 250, size=(cells[1], cells[0], 3)).astype(np.uint8)
    return Image.fromarray(field, "RGB").resize((width, height), Image.Resampling.BICUBIC)


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
    """Draw the concepts on a pastel field (or a transparent canvas)."""
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
