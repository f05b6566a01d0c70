"""Decode, check, hash and resize downloaded images, with img2dataset's resize semantics.

Columns in: `status`, `image` (raw bytes; rows whose status is not ok pass through).
Columns added: `original_width`, `original_height` (as displayed, after EXIF orientation),
`width`, `height` (of the stored image), `sha256` (hex, of the original bytes), `phash`
(uint64 DCT perceptual hash of the decoded image). `image` is replaced by the re-encoded
resized image; `status`/`error` are set for images that fail a check.

img2dataset's Resizer is the reference for sizes, interpolation, crop and border semantics.
Where we differ, on purpose:
- checks use the header before a full decode (a decompression bomb is refused unread);
- large JPEGs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling) when the output is
  smaller anyway — most of the CPU of a full decode is skipped;
- EXIF orientation is applied (img2dataset's IMREAD_UNCHANGED ignores it).

Speed: Pillow reads only the header (format, size, EXIF) for the checks. A complete RGB or
greyscale JPEG (the web's usual image) is then decoded by OpenCV straight into a BGR array,
DCT-scaled where it can be, and stays BGR through resize and encode (no RGB copies, no channel
flip before encoding); anything else (PNG, WebP, GIF, CMYK, alpha, a JPEG without its end
marker, which OpenCV would pad silently where Pillow reports the truncation) takes Pillow's path.
Both paths give the same sizes, and the same pixels within a level (tests/test_decode.py).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import pyarrow as pa
import threadpoolctl
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import Field

from operators import status as st
from operators.options import Options
from operators.table import replace_columns, require_columns

ResizeMode = Literal["no", "keep_ratio", "center_crop", "border", "keep_ratio_largest"]
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that transpose width and height
_DRAFT_MARGIN = 2
_PHASH_INPUT = 512
_ENCODE_PARAMS = {"jpg": cv2.IMWRITE_JPEG_QUALITY, "webp": cv2.IMWRITE_WEBP_QUALITY, "png": cv2.IMWRITE_PNG_COMPRESSION}


class DecodeOptions(Options):
    resize_mode: ResizeMode = "keep_ratio"
    image_size: int = Field(256, gt=0)
    resize_only_if_bigger: bool = False
    min_image_size: int = Field(0, ge=0)
    max_aspect_ratio: float = Field(math.inf, gt=0)
    max_pixels: int = Field(100_000_000, gt=0, description="refuse images whose header claims more pixels")
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=0, le=100, description="JPEG/WebP quality; PNG compression 0-9")
    reduced_decode: bool = Field(True, description="decode large JPEGs at reduced scale when the output is smaller")


@dataclass
class Decoded:
    status: str
    error: str | None = None
    original_width: int | None = None
    original_height: int | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    phash: int | None = None
    image: bytes | None = None


def target_size(width: int, height: int, options: DecodeOptions) -> tuple[int, int, bool]:
    """Size after the resize step (before crop/border) and whether it is a downscale, as img2dataset."""
    mode = options.resize_mode
    if mode == "no":
        return width, height, False
    side = min(width, height) if mode in ("keep_ratio", "center_crop") else max(width, height)
    downscale = side > options.image_size
    if options.resize_only_if_bigger and not downscale:
        return width, height, False
    scale = options.image_size / side
    # albumentations' Smallest/LongestMaxSize: Python round (half to even), at least 1 px
    return max(1, round(width * scale)), max(1, round(height * scale)), downscale


def _bgr_on_white(image: Image.Image) -> np.ndarray:
    """BGR array (OpenCV's order); transparent pixels matted onto white exactly as img2dataset does."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    rgba = np.asarray(image.convert("RGBA")).astype(np.uint32)
    alpha = rgba[:, :, 3:4]
    # img2dataset: rint(alpha / 255 * rgb + 255 - alpha), in integers (no ties can occur, so it is exact)
    matted = (2 * rgba[:, :, :3] * alpha + 255) // 510 + 255 - alpha
    return np.ascontiguousarray(matted.astype(np.uint8)[:, :, ::-1])


_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation applied to an array, as PIL.ImageOps.exif_transpose does to an image."""
    if orientation == 2:
        pixels = pixels[:, ::-1]
    elif orientation == 3:
        pixels = pixels[::-1, ::-1]
    elif orientation == 4:
        pixels = pixels[::-1]
    elif orientation == 5:
        pixels = pixels.transpose(1, 0, 2)
    elif orientation == 6:
        pixels = pixels.transpose(1, 0, 2)[:, ::-1]
    elif orientation == 7:
        pixels = pixels[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:
        pixels = pixels.transpose(1, 0, 2)[::-1]
    return np.ascontiguousarray(pixels)


def _jpeg_with_opencv(data: bytes, image: Image.Image, orientation: int, want: tuple[int, int] | None
                      ) -> np.ndarray | None:
    """A whole RGB/greyscale JPEG decoded by OpenCV (BGR), at the smallest DCT scale that still gives at
    least `want` (displayed width, height; None: full size); None where Pillow's path must decode it."""
    if image.format != "JPEG" or image.mode not in ("RGB", "L") or not data.rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):
        return None
    factor = 1
    if want is not None:
        raw_w, raw_h = image.size
        want_w, want_h = (want[1], want[0]) if orientation in _SWAPS_AXES else want
        while factor < 8 and -(-raw_w // (2 * factor)) >= want_w and -(-raw_h // (2 * factor)) >= want_h:
            factor *= 2
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[factor] | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None or pixels.ndim != 3:
        return None
    return _orient(pixels, orientation)


def _scale(pixels: np.ndarray, width: int, height: int, downscale: bool) -> np.ndarray:
    if (pixels.shape[1], pixels.shape[0]) == (width, height):
        return pixels
    interpolation = cv2.INTER_AREA if downscale else cv2.INTER_LANCZOS4
    return cv2.resize(pixels, (width, height), interpolation=interpolation)


def _frame(pixels: np.ndarray, options: DecodeOptions) -> np.ndarray:
    """center_crop / border after scaling, as img2dataset (CenterCrop, PadIfNeeded with white)."""
    height, width = pixels.shape[:2]
    size = options.image_size
    if options.resize_mode == "center_crop" and (width > size or height > size):
        top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
        pixels = pixels[top:top + size, left:left + size]
    elif options.resize_mode == "border" and (width < size or height < size):
        pad_h, pad_w = max(0, size - height), max(0, size - width)
        pixels = cv2.copyMakeBorder(pixels, pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2,
                                    cv2.BORDER_CONSTANT, value=(255, 255, 255))
    return pixels


def _encode(pixels: np.ndarray, options: DecodeOptions) -> bytes:
    """Encode a BGR array."""
    ok, buf = cv2.imencode(f".{options.encode_format}", pixels,
                           [_ENCODE_PARAMS[options.encode_format], options.encode_quality])
    if not ok:
        raise ValueError(f"cannot encode as {options.encode_format}")
    return buf.tobytes()


_PHASH_SIDE = 32  # imagehash.phash: hash_size 8 x highfreq_factor 4
# scipy.fftpack.dct (type II, unnormalised) as a matrix, its 8 lowest frequencies only: imagehash's DCT of a
# 32x32 image is DCT @ X @ DCT.T, of which the hash reads the top-left 8x8
_DCT8 = 2 * np.cos(np.pi * (2 * np.arange(_PHASH_SIDE)[None, :] + 1) * np.arange(8)[:, None] / (2 * _PHASH_SIDE))
_PRECISION_BITS = 22  # Pillow's 8-bit resampling: coefficients in 22-bit fixed point (libImaging/Resample.c)


@functools.lru_cache(maxsize=_PHASH_INPUT)  # pHash's input sides are at most 512: at most ~34 MB held
def _lanczos_matrix(in_size: int, out_size: int = _PHASH_SIDE) -> np.ndarray:
    """Pillow's Lanczos (antialiased) resampling of one axis as an (in_size, out_size) matrix of its integer
    fixed-point coefficients, built as Pillow builds them (precompute_coeffs, normalize_coeffs_8bpc)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    center = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(0, np.trunc(center - support + 0.5)).astype(np.int64)
    xmax = np.minimum(in_size, np.trunc(center + support + 0.5)).astype(np.int64)
    x = xmin[:, None] + np.arange(int((xmax - xmin).max(initial=0)))[None, :]  # (out, taps) source pixels
    t = (x - center[:, None] + 0.5) / filterscale
    weights = np.where((x < xmax[:, None]) & (t >= -3) & (t < 3), np.sinc(t) * np.sinc(t / 3), 0.0)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=weights, where=total != 0) * (1 << _PRECISION_BITS)
    weights = np.where(weights < 0, np.trunc(weights - 0.5), np.trunc(weights + 0.5))
    matrix = np.zeros((in_size, out_size))
    valid = x < xmax[:, None]
    matrix[x[valid], np.nonzero(valid)[0]] = weights[valid]
    return matrix


def _pillow_lanczos(grey: np.ndarray, side: int) -> np.ndarray:
    """`Image.fromarray(grey).resize((side, side), LANCZOS)` as two matrix products: Pillow's horizontal pass,
    its rounding to 8 bits, then its vertical pass, bit for bit (every product and sum is an integer below
    2**53, so float64 holds them exactly). Pillow 13 itself takes the vertical pass first for tall images
    (height above about 1.9x the width), where the two orders can round a pixel differently; here the order
    is always the same, so a hash does not depend on the Pillow version installed."""
    half, one = float(1 << (_PRECISION_BITS - 1)), float(1 << _PRECISION_BITS)
    height, width = grey.shape
    rows = np.clip(np.floor((grey.astype(np.float64) @ _lanczos_matrix(width, side) + half) / one), 0, 255)
    return np.clip(np.floor((_lanczos_matrix(height, side).T @ rows + half) / one), 0, 255)


def phash64(pixels: np.ndarray, bgr: bool = False) -> int:
    """64-bit DCT perceptual hash (imagehash.phash) of an RGB (or, with bgr, BGR) array, as an unsigned integer.

    imagehash's steps, without its per-call overheads: greyscale, Lanczos to 32x32 (Pillow's, reproduced by
    `_pillow_lanczos` at a third of its cost), the DCT of both axes (the 8 lowest frequencies of
    each), bits = those 8x8 above their median. An INTER_AREA step to at most 512 px first gives the same
    hash (within 2 of 64 bits on COCO photos) at a fraction of the cost on large images; OpenCV's greyscale
    gave bit-identical hashes to Pillow's on 200 of 200 photos (tests/test_decode.py checks against
    imagehash itself).
    """
    height, width = pixels.shape[:2]
    if max(width, height) > _PHASH_INPUT:
        scale = _PHASH_INPUT / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)
    low = (_DCT8 @ _pillow_lanczos(grey, _PHASH_SIDE) @ _DCT8.T).ravel()
    ordered = np.sort(low)
    bits = low > (ordered[31] + ordered[32]) / 2  # numpy's median of 64 values
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def decode_image(data: bytes, options: DecodeOptions) -> Decoded:
    """Check, decode, hash, resize and re-encode one image."""
    sha = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        return Decoded(st.TOO_LARGE, str(err), sha256=sha)
    except UnidentifiedImageError:
        return Decoded(st.NOT_IMAGE, f"not a recognised image format (starts with {data[:16]!r})", sha256=sha)
    except Exception as err:
        return Decoded(st.DECODE_ERROR, f"cannot read image header: {err}", sha256=sha)

    raw_w, raw_h = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is not a broken image
        orientation = 1
    width, height = (raw_h, raw_w) if orientation in _SWAPS_AXES else (raw_w, raw_h)
    result = Decoded(st.OK, original_width=width, original_height=height, sha256=sha)
    if width * height > options.max_pixels:
        result.status, result.error = st.TOO_LARGE, (
            f"header claims {width}x{height} = {width * height / 1e6:.1f} MP > max_pixels "
            f"{options.max_pixels / 1e6:.1f} MP; not decoded")
        return result
    if min(width, height) < options.min_image_size:
        result.status, result.error = st.TOO_SMALL, (
            f"{width}x{height} is smaller than min_image_size {options.min_image_size}")
        return result
    if max(width, height) / max(1, min(width, height)) > options.max_aspect_ratio:
        result.status, result.error = st.BAD_ASPECT_RATIO, (
            f"{width}x{height} has aspect ratio above max_aspect_ratio {options.max_aspect_ratio:g}")
        return result

    out_w, out_h, downscale = target_size(width, height, options)
    # the largest DCT scale (1/2, 1/4, 1/8) that still gives 2x the output: the final INTER_AREA step
    # then has enough pixels to match a full decode (mean abs diff < 1 level on COCO photos, vs ~2-3
    # when decoding right down to size)
    want = (_DRAFT_MARGIN * out_w, _DRAFT_MARGIN * out_h) if options.reduced_decode and downscale else None
    try:
        pixels = _jpeg_with_opencv(data, image, orientation, want)
        if pixels is None:
            if want is not None and image.format == "JPEG":
                image.draft("RGB", (want[1], want[0]) if orientation in _SWAPS_AXES else want)
            image.load()
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            pixels = _bgr_on_white(image)
        scaled = _scale(pixels, out_w, out_h, downscale)
        # hash whichever full-content version is smaller: the decoded image or its scaled copy
        result.phash = phash64(scaled if scaled.size < pixels.size else pixels, bgr=True)
        # img2dataset crops / pads only when it resized (resize_only_if_bigger may skip both)
        resized = _frame(scaled, options) if downscale or not options.resize_only_if_bigger else scaled
        result.image = _encode(np.ascontiguousarray(resized), options)
    except Exception as err:
        result.status, result.error = st.DECODE_ERROR, f"cannot decode {image.format or 'image'}: {err}"
        return result
    result.height, result.width = resized.shape[:2]
    return result


@functools.cache  # Decoder is built per batch (pipelines/verbs/annotate.py: decode_batch); the limits need setting once
def prepare_decoder() -> None:
    """Once per process: parallelism comes from the engine's tasks and threads, not from OpenCV's or BLAS's own.
    (pHash's matrix products are big enough for OpenBLAS to start its threads, which then spin between
    calls: without the limit a decoded image cost twice its CPU time.)"""
    cv2.setNumThreads(1)
    threadpoolctl.threadpool_limits(1, user_api="blas")


def decode_columns(rows: list[Decoded]) -> dict[str, pa.Array]:
    """The decode stage's columns for these rows (`image`: the re-encoded image)."""
    return {
        "status": pa.array([r.status for r in rows], pa.string()),
        "error": pa.array([r.error for r in rows], pa.string()),
        "original_width": pa.array([r.original_width for r in rows], pa.int32()),
        "original_height": pa.array([r.original_height for r in rows], pa.int32()),
        "width": pa.array([r.width for r in rows], pa.int32()),
        "height": pa.array([r.height for r in rows], pa.int32()),
        "sha256": pa.array([r.sha256 for r in rows], pa.string()),
        "phash": pa.array([r.phash for r in rows], pa.uint64()),
        "image": pa.array([r.image for r in rows], pa.binary()),
    }


class Decoder:
    """Batch operator: decodes every row whose status is ok; other rows pass through unchanged."""

    def __init__(self, options: DecodeOptions):
        self.options = options
        prepare_decoder()

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, ("status", "error", "image"), "decode")
        statuses = batch.column("status").to_pylist()
        errors = batch.column("error").to_pylist()
        images = batch.column("image").to_pylist()
        rows: list[Decoded] = []
        for status, error, data in zip(statuses, errors, images, strict=True):
            if status != st.OK:
                rows.append(Decoded(status, error))
            elif data is None:
                rows.append(Decoded(st.DECODE_ERROR, "no image bytes"))
            else:
                rows.append(decode_image(data, self.options))
        return replace_columns(batch, decode_columns(rows))
