"""Planning of a demo web: every random decision, made up front and serially.

The plan fixes each row's role, caption, image parameters and hostile
behaviour, so that rendering can run in any number of worker processes and
still give byte-identical output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from pipelines.demo.web.world import (
    FOREIGN_LANGS,
    Caption,
    boilerplate_caption,
    make_caption,
    sample_concept,
    sample_other_concept,
)

HOSTILE_KINDS: tuple[str, ...] = (
    "not_found",
    "error_then_ok",
    "slow",
    "stall",
    "redirect_chain",
    "redirect_loop",
    "redirect_private",
    "truncated",
    "random_bytes",
    "html",
    "bomb",
    "tiny",
    "extreme_aspect",
    "oversize",
    "noai",
    "malformed_url",
    "refused",
)

EXPECTED_STATUS: dict[str, str] = {
    "not_found": "http_error",
    "error_then_ok": "ok",
    "slow": "timeout",
    "stall": "timeout",
    "redirect_chain": "ok",
    "redirect_loop": "redirect_error",
    "redirect_private": "blocked_address",
    "truncated": "decode_error",
    "random_bytes": "not_image",
    "html": "not_image",
    "bomb": "too_large",
    "tiny": "too_small",
    "extreme_aspect": "bad_aspect_ratio",
    "oversize": "too_large",
    "noai": "opted_out",
    "malformed_url": "invalid_url",
    "refused": "connection_error",
}

# The pipeline settings under which EXPECTED_STATUS holds.
PIPELINE_THRESHOLDS: dict[str, object] = {
    "timeout_s": 2.0,
    "max_bytes": 8_000_000,
    "max_redirects": 5,
    "min_image_size": 32,
    "max_aspect_ratio": 8.0,
    "max_pixels": 100_000_000,
    "disallowed_x_robots_tags": ["noai", "noimageai", "noindex", "noimageindex"],
    "block_private_networks": True,
    "allowed_networks": ["127.0.0.0/8"],
}

# Hostile kinds whose body, once fully delivered, is a decodable image with the
# planned concepts (a stalled body is never fully delivered).
IMAGE_HOSTILE = frozenset({"error_then_ok", "slow", "redirect_chain", "noai", "tiny", "extreme_aspect"})

SOURCES: tuple[str, ...] = (
    "shop.example",
    "blog.example",
    "news.example",
    "photos.example",
    "forum.example",
    "wiki.example",
    "cdn.example",
    "recipes.example",
    "travel.example",
    "kids.example",
)

MALFORMED_URLS: tuple[str, ...] = (
    "htp:/broken",
    "not a url",
    "",
    "http://",
    "ftp://127.0.0.1/x.jpg",
    "http://[::1",
    "javascript:alert(1)",
)
PRIVATE_TARGETS: tuple[str, ...] = (
    "http://10.0.0.1/private.jpg",
    "http://169.254.169.254/latest/meta-data/",
)
NOAI_HEADERS: tuple[str, ...] = ("noai", "noimageai", "noai, noimageai", "noindex, noimageindex")
REFUSED_URL = "http://127.0.0.1:1/refused.jpg"
BOMB_SIDE = 12_000
OVERSIZE_BYTES = 20 * 1024 * 1024

FORMAT_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}

EXACT_FRACTION = 0.05
NEAR_FRACTION = 0.05
MISMATCH_FRACTION = 0.10
BOILERPLATE_FRACTION = 0.03
FOREIGN_FRACTION = 0.05
EXIF_FRACTION = 0.02
SECONDARY_PROBABILITY = 0.25
MAX_ASPECT = 3.0
# Keeps the planning stream clear of the per-row streams [seed, i].
_GLOBAL_STREAM = 2**40


@dataclass(frozen=True)
class ImageSpec:
    """How to draw one image; `seed_index` names the row whose render stream is used."""

    seed_index: int
    concepts: tuple[str, ...]
    width: int
    height: int
    fmt: str
    quality: int
    transparent: bool = False
    orientation: int = 0


@dataclass(frozen=True)
class NearSpec:
    """How a near duplicate derives from its original's rendering."""

    transform: str
    width: int
    height: int
    fmt: str
    quality: int
    crop_box: tuple[int, int, int, int] | None = None


@dataclass
class Row:
    index: int
    source: str
    role: str  # "normal", "exact", "near" or a hostile kind
    image: ImageSpec
    caption: Caption = field(default_factory=lambda: Caption("", (), "und"))
    mismatch: bool = False
    boilerplate: bool = False
    original: int | None = None
    near: NearSpec | None = None
    params: dict[str, object] = field(default_factory=dict)

    @property
    def demo_id(self) -> str:
        return demo_id(self.index)

    @property
    def hostile(self) -> str | None:
        return self.role if self.role in EXPECTED_STATUS else None


def demo_id(index: int) -> str:
    return f"d{index:06d}"


def hostile_count(n: int) -> int:
    """Rows per hostile kind: >= 2 from n=200 on, ~3 per thousand for large n."""
    if n >= 200:
        return max(2, round(n * 0.003))
    return 1 if n >= 100 else 0


def sample_size(rng: np.random.Generator, low: int, high: int) -> tuple[int, int]:
    """Log-uniform sides (most web images are small) with aspect ratio <= 3."""
    log_low, log_high = math.log(low), math.log(high)
    for _ in range(64):
        width, height = (int(round(math.exp(rng.uniform(log_low, log_high)))) for _ in range(2))
        width, height = min(max(width, low), high), min(max(height, low), high)
        if max(width, height) <= MAX_ASPECT * min(width, height):
            return width, height
    return width, width


def _base_image(rng: np.random.Generator, index: int, low: int, high: int) -> ImageSpec:
    primary = sample_concept(rng)
    concepts = (primary,)
    if rng.random() < SECONDARY_PROBABILITY:
        concepts = (primary, sample_concept(rng, exclude=concepts))
    width, height = sample_size(rng, low, high)
    fmt = str(rng.choice(["jpeg", "png", "webp"], p=[0.6, 0.2, 0.2]))
    quality = int(rng.integers(75, 96)) if fmt == "jpeg" else int(rng.integers(70, 91))
    transparent = fmt == "png" and rng.random() < 0.3
    return ImageSpec(index, concepts, width, height, fmt, quality, transparent)


def _assign_roles(n: int, g: np.random.Generator) -> list[str]:
    roles = [kind for kind in HOSTILE_KINDS for _ in range(hostile_count(n))]
    roles += ["exact"] * round(n * EXACT_FRACTION) + ["near"] * round(n * NEAR_FRACTION)
    if len(roles) > n:
        raise ValueError(f"n={n} is too small for the demo web composition")
    roles += ["normal"] * (n - len(roles))
    roles = [roles[k] for k in g.permutation(n)]
    _ensure_originals_come_first(roles)
    return roles


def _ensure_originals_come_first(roles: list[str]) -> None:
    """A duplicate needs an earlier normal row: swap leading duplicates away."""
    for i, role in enumerate(roles):
        if role == "normal":
            return
        if role in ("exact", "near"):
            j = roles.index("normal", i + 1)
            roles[i], roles[j] = roles[j], roles[i]
            return


def _pick(g: np.random.Generator, pool: list[int], count: int) -> set[int]:
    count = min(count, len(pool))
    return {pool[k] for k in g.choice(len(pool), size=count, replace=False)}


@dataclass(frozen=True)
class CaptionAssignment:
    boilerplate: frozenset[int]
    mismatch: frozenset[int]
    foreign: frozenset[int]


def _assign_captions(n: int, roles: list[str], g: np.random.Generator) -> CaptionAssignment:
    eligible = [i for i, role in enumerate(roles) if role not in EXPECTED_STATUS]
    boiler = _pick(g, eligible, round(n * BOILERPLATE_FRACTION))
    rest = [i for i in eligible if i not in boiler]
    mismatch = _pick(g, rest, round(n * MISMATCH_FRACTION))
    foreign = _pick(g, rest, round(n * FOREIGN_FRACTION))
    return CaptionAssignment(frozenset(boiler), frozenset(mismatch), frozenset(foreign))


def _assign_exif(n: int, rows: list[Row], g: np.random.Generator) -> None:
    """EXIF-rotated JPEGs: a fixed share of normal JPEGs, at least one for n >= 100."""
    jpegs = [row.index for row in rows if row.role == "normal" and row.image.fmt == "jpeg"]
    count = round(len(jpegs) * EXIF_FRACTION)
    if n >= 100:
        count = max(count, 1)
    for index in sorted(_pick(g, jpegs, count)):
        orientation = int(g.choice([6, 8]))
        rows[index].image = replace(rows[index].image, orientation=orientation)


def _plan_caption(row: Row, rng: np.random.Generator, assigned: CaptionAssignment) -> None:
    if row.index in assigned.boilerplate:
        row.caption, row.boilerplate = boilerplate_caption(rng), True
        return
    lang = "en"
    if row.index in assigned.foreign:
        lang = FOREIGN_LANGS[int(rng.integers(len(FOREIGN_LANGS)))]
    concepts = row.image.concepts
    if row.index in assigned.mismatch:
        row.caption = make_caption(rng, [sample_other_concept(rng, exclude=concepts)], lang)
        row.mismatch = True
        return
    if len(concepts) > 1 and rng.random() < 0.5:
        concepts = concepts[:1]
    row.caption = make_caption(rng, concepts, lang)


def _plan_near(rng: np.random.Generator, original: ImageSpec, min_size: int) -> NearSpec:
    transform = str(rng.choice(["reencode", "resize", "crop"]))
    width, height = original.width, original.height
    if transform == "resize":
        smallest = max(0.5, min_size / min(width, height))
        if smallest <= 0.85:
            factor = rng.uniform(smallest, 0.85)
            size = (max(min_size, round(width * factor)), max(min_size, round(height * factor)))
            return NearSpec("resize", *size, original.fmt, _requality(rng, original))
    if transform == "crop":
        box = _crop_box(rng, width, height, min_size)
        if box is not None:
            size = (box[2] - box[0], box[3] - box[1])
            return NearSpec("crop", *size, original.fmt, _requality(rng, original), box)
    return _plan_reencode(rng, original)


def _requality(rng: np.random.Generator, original: ImageSpec) -> int:
    return int(rng.integers(70, 96)) if original.fmt != "png" else 90


def _crop_box(
    rng: np.random.Generator, width: int, height: int, min_size: int
) -> tuple[int, int, int, int] | None:
    # a border trim of 0.5-1.5% per axis, as re-hosting sites do; pHash does not survive larger crops
    # (a 4% crop keeps under half within 4 bits), so they would not be near duplicates by its measure
    cut_w = int(round(width * rng.uniform(0.005, 0.015)))
    cut_h = int(round(height * rng.uniform(0.005, 0.015)))
    if width - cut_w < min_size or height - cut_h < min_size or cut_w + cut_h == 0:
        return None
    left, top = int(rng.integers(0, cut_w + 1)), int(rng.integers(0, cut_h + 1))
    return left, top, left + width - cut_w, top + height - cut_h


def _plan_reencode(rng: np.random.Generator, original: ImageSpec) -> NearSpec:
    # Re-saving a PNG as PNG would be byte-identical, i.e. an exact duplicate.
    choices = ["jpeg", "webp"] if original.fmt == "png" else ["jpeg", "png", "webp"]
    fmt = str(rng.choice(choices))
    quality = int(rng.integers(60, 96))
    if fmt == original.fmt and abs(quality - original.quality) < 8:
        quality = original.quality - 12 if original.quality > 80 else original.quality + 12
    return NearSpec("reencode", original.width, original.height, fmt, quality)


def _plan_duplicate(row: Row, rng: np.random.Generator, normals: list[int], rows: list[Row], min_size: int) -> None:
    row.original = normals[int(rng.integers(len(normals)))]
    # A copy shows the original's pixels (near ones transformed per row.near).
    row.image = rows[row.original].image
    if row.role == "near":
        row.near = _plan_near(rng, row.image, min_size)


def _plan_hostile(row: Row, rng: np.random.Generator, occurrence: int) -> None:
    kind = row.role
    spec = row.image
    if kind == "tiny":
        row.image = replace(spec, width=int(rng.integers(4, 17)), height=int(rng.integers(4, 17)), orientation=0)
    elif kind == "extreme_aspect":
        short = int(rng.integers(40, 150))
        long = int(round(short * rng.uniform(8.6, 14.0)))
        size = (long, short) if rng.random() < 0.5 else (short, long)
        row.image = replace(spec, width=size[0], height=size[1], orientation=0)
    elif kind in ("truncated", "stall"):
        # Big enough that cutting it removes real scan data, not just headers.
        row.image = replace(spec, width=max(spec.width, 160), height=max(spec.height, 160), fmt="jpeg", quality=85)
    row.params = _hostile_params(kind, rng, occurrence)


def _hostile_params(kind: str, rng: np.random.Generator, occurrence: int) -> dict[str, object]:
    if kind == "redirect_private":
        return {"location": PRIVATE_TARGETS[occurrence % len(PRIVATE_TARGETS)]}
    if kind == "noai":
        return {"x_robots_tag": NOAI_HEADERS[occurrence % len(NOAI_HEADERS)]}
    if kind == "oversize":
        return {"size": OVERSIZE_BYTES, "content_length": occurrence % 2 == 0}
    if kind == "malformed_url":
        return {"raw_url": MALFORMED_URLS[occurrence % len(MALFORMED_URLS)]}
    if kind == "refused":
        return {"raw_url": REFUSED_URL}
    if kind == "truncated":
        return {"keep_fraction": float(rng.uniform(0.4, 0.6))}
    if kind == "random_bytes":
        return {"n_bytes": int(rng.integers(1_000, 50_000))}
    if kind == "bomb":
        return {"mode": "1" if occurrence % 2 == 0 else "L"}
    return {}


def plan_rows(n: int, seed: int, min_size: int = 64, max_size: int = 1600) -> list[Row]:
    """Every decision for a demo web of n rows, deterministic in the arguments."""
    if not 1 <= min_size <= max_size:
        raise ValueError("need 1 <= min_size <= max_size")
    rngs = [np.random.default_rng([seed, i]) for i in range(n)]
    g = np.random.default_rng([seed, _GLOBAL_STREAM])
    roles = _assign_roles(n, g)
    rows = [
        Row(i, SOURCES[int(rng.integers(len(SOURCES)))], roles[i], _base_image(rng, i, min_size, max_size))
        for i, rng in enumerate(rngs)
    ]
    assigned = _assign_captions(n, roles, g)
    _assign_exif(n, rows, g)
    normals: list[int] = []
    occurrences: dict[str, int] = {}
    for row, rng in zip(rows, rngs, strict=True):
        if row.role == "normal":
            normals.append(row.index)
        elif row.role in ("exact", "near"):
            _plan_duplicate(row, rng, normals, rows, min_size)
        else:
            occurrence = occurrences.get(row.role, 0)
            occurrences[row.role] = occurrence + 1
            _plan_hostile(row, rng, occurrence)
            row.caption = make_caption(rng, row.image.concepts[:1] if rng.random() < 0.5 else row.image.concepts)
            continue
        _plan_caption(row, rng, assigned)
    return rows
