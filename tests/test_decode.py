"""Decode: img2dataset parity on real photos, and the checks that run before a full decode."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from helpers import shared_data
from PIL import Image

from operators import status as st
from operators.decode import DecodeOptions, Decoder, decode_image

COCO = sorted((shared_data() / "coco-mini" / "train2017").glob("*.jpg"))
MODES = ["no", "keep_ratio", "center_crop", "border", "keep_ratio_largest"]


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def _encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size,reduced,worst_allowed,mean_allowed", [(256, False, 0.5, 0.1), (128, True, 4.5, 2.5)])
def test_matches_img2dataset_resizer_on_real_photos(mode, size, reduced, worst_allowed, mean_allowed):
    """Same sizes always; same pixels with a full decode; within a few levels with a DCT-scaled decode."""
    from img2dataset.resizer import Resizer

    assert len(COCO) == 80
    reference = Resizer(image_size=size, resize_mode=mode, resize_only_if_bigger=False)
    options = DecodeOptions(resize_mode=mode, image_size=size, reduced_decode=reduced)
    diffs = []
    for path in COCO:
        data = path.read_bytes()
        ref, width, height, original_width, original_height, err = reference(io.BytesIO(data))
        assert err is None
        ours = decode_image(data, options)
        assert ours.status == st.OK, (path.name, ours.error)
        assert (ours.width, ours.height) == (width, height), path.name
        assert (ours.original_width, ours.original_height) == (original_width, original_height)
        diffs.append(float(np.abs(_pixels(ours.image) - _pixels(ref)).mean()))
    assert max(diffs) <= worst_allowed, f"{mode}: worst mean abs pixel difference {max(diffs):.2f}"
    assert np.mean(diffs) <= mean_allowed


@pytest.mark.parametrize("mode", MODES)
def test_resize_only_if_bigger_matches_img2dataset(mode):
    from img2dataset.resizer import Resizer

    reference = Resizer(image_size=500, resize_mode=mode, resize_only_if_bigger=True)
    options = DecodeOptions(resize_mode=mode, image_size=500, resize_only_if_bigger=True, reduced_decode=False)
    for path in COCO[:30]:
        data = path.read_bytes()
        ref, width, height, *_ = reference(io.BytesIO(data))
        ours = decode_image(data, options)
        assert (ours.width, ours.height) == (width, height), path.name
        assert np.abs(_pixels(ours.image) - _pixels(ref)).mean() < 0.1


def test_reduced_decode_is_used_and_close_for_large_jpegs():
    photo = Image.open(COCO[0]).convert("RGB").resize((2560, 1920))
    data = _encode(photo, quality=92)
    full = decode_image(data, DecodeOptions(image_size=128, reduced_decode=False))
    fast = decode_image(data, DecodeOptions(image_size=128, reduced_decode=True))
    assert (fast.width, fast.height) == (full.width, full.height) == (171, 128)
    assert np.abs(_pixels(fast.image) - _pixels(full.image)).mean() < 2.0
    assert fast.sha256 == full.sha256


def test_exif_orientation_is_applied():
    stored = Image.new("RGB", (300, 100), "red")  # stored landscape, displayed portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(_encode(stored, exif=exif.tobytes()), DecodeOptions(resize_mode="no"))
    assert (decoded.original_width, decoded.original_height) == (100, 300)
    assert (decoded.width, decoded.height) == (100, 300)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (64, 64), (0, 0, 255, 0))
    image.paste((255, 0, 0, 255), (0, 0, 32, 64))
    decoded = decode_image(_encode(image, "PNG"), DecodeOptions(resize_mode="no", encode_format="png"))
    pixels = _pixels(decoded.image)
    assert tuple(pixels[10, 50]) == (255, 255, 255)
    assert tuple(pixels[10, 10]) == (255, 0, 0)


def test_bomb_is_refused_from_the_header_without_decoding():
    bomb = _encode(Image.new("1", (12_000, 12_000)), "PNG")
    assert len(bomb) < 100_000
    decoded = decode_image(bomb, DecodeOptions())
    assert decoded.status == st.TOO_LARGE
    assert "12000x12000" in decoded.error
    assert decoded.image is None


@pytest.mark.parametrize(
    "data,status,words",
    [
        (b"<html><body>not an image</body></html>", st.NOT_IMAGE, "not a recognised image"),
        (np.random.default_rng(0).bytes(5000), st.NOT_IMAGE, "not a recognised image"),
    ],
)
def test_non_images(data, status, words):
    decoded = decode_image(data, DecodeOptions())
    assert decoded.status == status and words in decoded.error


def test_truncated_jpeg_is_a_decode_error():
    data = COCO[1].read_bytes()
    decoded = decode_image(data[: len(data) // 2], DecodeOptions())
    assert decoded.status == st.DECODE_ERROR
    assert "truncated" in decoded.error


def test_size_and_aspect_checks():
    tiny = decode_image(_encode(Image.new("RGB", (10, 12))), DecodeOptions(min_image_size=32))
    assert tiny.status == st.TOO_SMALL and "10x12" in tiny.error
    long = decode_image(_encode(Image.new("RGB", (1600, 100))), DecodeOptions(max_aspect_ratio=8))
    assert long.status == st.BAD_ASPECT_RATIO and "1600x100" in long.error


def test_hashes():
    data = COCO[2].read_bytes()
    a = decode_image(data, DecodeOptions())
    import hashlib

    assert a.sha256 == hashlib.sha256(data).hexdigest()
    # a re-encoded, resized copy keeps a near pHash; another photo does not
    copy = _encode(Image.open(COCO[2]).convert("RGB").resize((320, 240)), quality=60)
    b = decode_image(copy, DecodeOptions())
    other = decode_image(COCO[3].read_bytes(), DecodeOptions())
    assert bin(a.phash ^ b.phash).count("1") <= 6
    assert bin(a.phash ^ other.phash).count("1") > 12


def test_decoder_batch_passes_failed_rows_through():
    batch = pa.table({
        "key": ["a", "b", "c"],
        "status": ["ok", "http_error", "ok"],
        "error": [None, "HTTP 404 Not Found", None],
        "image": [COCO[0].read_bytes(), None, b"junk"],
    })
    out = Decoder(DecodeOptions())(batch)
    assert out.column("key").to_pylist() == ["a", "b", "c"]
    assert out.column("status").to_pylist() == ["ok", "http_error", "not_image"]
    assert out.column("error").to_pylist()[1] == "HTTP 404 Not Found"
    assert min(out.column("width")[0].as_py(), out.column("height")[0].as_py()) == 256
    assert out.column("image").to_pylist()[1:] == [None, None]


def test_alpha_matte_equals_img2dataset_formula_exactly():
    from operators.decode import _bgr_on_white

    rgba = np.random.default_rng(0).integers(0, 256, (300, 200, 4)).astype(np.uint8)
    alpha = rgba[:, :, 3:4]
    reference = np.rint((alpha / 255 * rgba[..., :3] + 255 - alpha).clip(0, 255)).astype(np.uint8)
    assert np.array_equal(_bgr_on_white(Image.fromarray(rgba, "RGBA"))[:, :, ::-1], reference)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_opencv_jpeg_path_equals_pillow_path_for_every_exif_orientation(orientation, monkeypatch):
    """The fast path (OpenCV decode, BGR throughout) and Pillow's path give the same image, hash and sizes."""
    from operators import decode as decode_module

    photo = Image.open(COCO[3]).convert("RGB").resize((1200, 700))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(photo, quality=90, exif=exif.tobytes())
    for options in (DecodeOptions(image_size=128), DecodeOptions(image_size=128, reduced_decode=False),
                    DecodeOptions(image_size=256, resize_mode="center_crop")):
        fast = decode_image(data, options)
        with monkeypatch.context() as m:
            m.setattr(decode_module, "_jpeg_with_opencv", lambda *a: None)
            slow = decode_image(data, options)
        assert fast.status == slow.status == st.OK
        assert (fast.width, fast.height, fast.original_width, fast.original_height) == \
            (slow.width, slow.height, slow.original_width, slow.original_height)
        assert np.abs(_pixels(fast.image) - _pixels(slow.image)).mean() < 1.0, (orientation, options)
        assert bin(fast.phash ^ slow.phash).count("1") <= 2


def test_a_truncated_jpeg_is_a_decode_error_not_a_padded_image():
    """OpenCV pads a truncated JPEG with grey and says nothing; the fast path leaves such files to Pillow."""
    data = _encode(Image.open(COCO[0]).convert("RGB"), quality=90)
    for cut in (len(data) // 2, len(data) - 100):
        result = decode_image(data[:cut], DecodeOptions())
        assert result.status == st.DECODE_ERROR and result.image is None, result.error


def test_phash_is_imagehash_phash_on_real_photos():
    import imagehash

    from operators.decode import phash64

    for path in COCO[:40]:
        rgb = np.asarray(Image.open(path).convert("RGB").resize((341, 256)))
        expected = int.from_bytes(np.packbits(imagehash.phash(Image.fromarray(rgb)).hash.flatten()).tobytes(), "big")
        assert bin(phash64(rgb) ^ expected).count("1") <= 1, path.name
        assert phash64(np.ascontiguousarray(rgb[:, :, ::-1]), bgr=True) == phash64(rgb)


def test_phash_resampling_is_pillows_lanczos_bit_for_bit():
    """pHash's 32x32 Lanczos step is Pillow's, reproduced with matrix products (a third of the cost): the same
    8-bit pixels for real photos at the sizes decode hashes, and for shapes that shrink or grow an axis.
    (Pillow 13 takes its vertical pass first for images taller than about 1.9x their width; ours keeps one
    order, so there a pixel may round differently.)"""
    from operators.decode import _pillow_lanczos

    def pillow(grey):
        return np.asarray(Image.fromarray(grey, "L").resize((32, 32), Image.Resampling.LANCZOS))

    for path in COCO[:20]:
        grey = np.asarray(Image.open(path).convert("L"))
        for size in (None, 256, 128):
            if size:
                scale = size / min(grey.shape)
                height, width = grey.shape
                grey = np.asarray(Image.fromarray(grey).resize((round(width * scale), round(height * scale))))
            assert np.array_equal(_pillow_lanczos(grey, 32), pillow(grey)), (path.name, grey.shape)
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (5, 9), (20, 31), (32, 32), (33, 40), (64, 64), (100, 700), (256, 341), (300, 480)]:
        grey = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(_pillow_lanczos(grey, 32), pillow(grey)), shape
