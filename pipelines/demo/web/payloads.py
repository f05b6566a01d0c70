"""Bytes of the files a demo-web row serves; runs inside build worker processes."""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.demo.web.plan import BOMB_SIDE, FORMAT_EXT, ImageSpec, Row
from pipelines.demo.web.render import encode, render_image

# Stream ids appended to [seed, index]; [seed, index] itself belongs to planning.
_RENDER_STREAM = 1
_BYTES_STREAM = 2

# Roles whose page serves the planned image exactly as planned.
ENCODED_AS_PLANNED = frozenset(
    {"normal", "error_then_ok", "slow", "stall", "noai", "tiny", "extreme_aspect"}
)


@dataclass(frozen=True)
class Job:
    """One row to materialise; `original` is the source image of a near duplicate."""

    seed: int
    row: Row
    original: ImageSpec | None
    site: Path


def page_path(row: Row) -> str | None:
    """URL path of a row's page (None when its URL is given verbatim)."""
    if row.role in ("malformed_url", "refused"):
        return None
    if row.role == "bomb":
        return f"/img/{row.demo_id}.png"
    fmt = image_format(row)
    ext = FORMAT_EXT[fmt] if fmt else "jpg"
    return f"/img/{row.demo_id}.{ext}"


def image_format(row: Row) -> str | None:
    """Format of the image file behind a row, if it has one."""
    if row.near is not None:
        return row.near.fmt
    if row.role in ENCODED_AS_PLANNED or row.role in ("exact", "redirect_chain", "truncated"):
        return row.image.fmt
    return "png" if row.role == "bomb" else None


def final_path(row: Row) -> str:
    """Where a redirect chain ends."""
    return f"/img/final/{row.demo_id}.{FORMAT_EXT[row.image.fmt]}"


def render_spec(seed: int, spec: ImageSpec) -> Image.Image:
    rng = np.random.default_rng([seed, spec.seed_index, _RENDER_STREAM])
    return render_image(spec.concepts, spec.width, spec.height, rng, spec.transparent)


def encode_spec(seed: int, spec: ImageSpec) -> bytes:
    return encode(render_spec(seed, spec), spec.fmt, spec.quality, spec.orientation)


def near_duplicate_bytes(seed: int, row: Row, original: ImageSpec) -> bytes:
    near = row.near
    assert near is not None
    image = render_spec(seed, original)
    if near.transform == "resize":
        image = image.resize((near.width, near.height), Image.Resampling.LANCZOS)
    elif near.transform == "crop":
        assert near.crop_box is not None
        image = image.crop(near.crop_box)
    return encode(image, near.fmt, near.quality)


@functools.lru_cache(maxsize=2)
def bomb_bytes(mode: str) -> bytes:
    """A one-colour PNG that is tiny on the wire and huge once decoded."""
    buffer = io.BytesIO()
    Image.new(mode, (BOMB_SIDE, BOMB_SIDE), 1 if mode == "1" else 200).save(buffer, "PNG")
    return buffer.getvalue()


def html_bytes(row: Row) -> bytes:
    words = " ".join(row.caption.concepts) or "gallery"
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{words} - {row.source}</title></head>\n"
        f"<body><h1>{words}</h1><p>This page moved. <a href=\"/\">Home</a></p>"
        f"<img src=\"/img/{row.demo_id}.jpg\" alt=\"{words}\"></body></html>\n"
    )
    return page.encode("utf-8")


def _hostile_body(seed: int, row: Row) -> bytes | None:
    kind = row.role
    if kind == "truncated":
        data = encode_spec(seed, row.image)
        return data[: int(len(data) * float(row.params["keep_fraction"]))]
    if kind == "random_bytes":
        return np.random.default_rng([seed, row.index, _BYTES_STREAM]).bytes(int(row.params["n_bytes"]))
    if kind == "html":
        return html_bytes(row)
    if kind == "bomb":
        return bomb_bytes(str(row.params["mode"]))
    return None


def row_files(job: Job) -> dict[str, bytes]:
    """Site-relative URL path -> bytes, for everything this row stores on disk."""
    row = job.row
    if row.role == "near":
        assert job.original is not None
        return {str(page_path(row)): near_duplicate_bytes(job.seed, row, job.original)}
    if row.role == "redirect_chain":
        return {final_path(row): encode_spec(job.seed, row.image)}
    if row.role in ENCODED_AS_PLANNED:
        return {str(page_path(row)): encode_spec(job.seed, row.image)}
    # Exact duplicates are copied from the original's file once that exists.
    body = _hostile_body(job.seed, row)
    return {} if body is None else {str(page_path(row)): body}


def run_job(job: Job) -> tuple[int, dict[str, int]]:
    """Write a row's files under the site folder; report their sizes."""
    sizes = {}
    for url_path, data in row_files(job).items():
        target = job.site / url_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        sizes[url_path] = len(data)
    return job.row.index, sizes
