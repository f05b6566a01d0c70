"""The operator contract (operators/__init__.py), checked on every operator in operators/: a pa.Table in, a
pa.Table out with one row per input row in the same order, the input's other columns untouched and its new
columns added; a row that fails is a status, never an exception; an empty batch is an empty batch; a batch
without a column the operator reads is a KeyError naming that column and the columns present.

Offline and fast: the download operators get URLs the address guard refuses before any connection, the
model operators the demo checkpoints shipped in pipelines/models/.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import operators
from operators import status as st

PASSENGER = "passenger"  # a column no operator reads: it must come out as it went in


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    image = Image.new("RGB", size, colour)
    image.paste((255 - colour[0], 255 - colour[1], 255 - colour[2]), (8, 8, size[0] // 2, size[1] // 2))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _rows(columns: dict[str, list]) -> pa.Table:
    """A batch of these columns plus a key and a passenger column."""
    n = len(next(iter(columns.values())))
    return pa.table({"key": [f"k{i}" for i in range(n)], **columns, PASSENGER: list(range(100, 100 + n))})


# a decodable JPEG, bytes that are no image, a row an earlier stage failed
IMAGES = [_jpeg((200, 30, 30)), b"not an image", None, _jpeg((20, 160, 40))]
STATUSES = [st.OK, st.OK, st.TIMEOUT, st.OK]
CAPTIONS = ["a red dog on a sofa", "a cat", None, "two dogs and a hot dog"]
URLS = ["http://127.0.0.1:9/x.jpg", "not a url", None, "http://10.0.0.1/y.jpg"]  # refused before any connection


def _download_options():
    from operators.download import DownloadOptions

    return DownloadOptions(threads=2, timeout=1, retries=0)


def _decode_options():
    from operators.decode import DecodeOptions

    return DecodeOptions(image_size=64, min_image_size=32, max_aspect_ratio=8)


def _demo_model(name: str) -> str:
    from pipelines.models import resolve_model

    return resolve_model(f"builtin:{name}")


@cache
def operator(name: str):
    """Each operator built once (the model ones load a demo checkpoint)."""
    if name == "Downloader":
        from operators.download import Downloader

        return Downloader(_download_options())
    if name == "Fetcher":
        from operators.fetch import Fetcher

        return Fetcher(_download_options(), _decode_options())
    if name == "Decoder":
        from operators.decode import Decoder

        return Decoder(_decode_options())
    if name == "CaptionText":
        from operators.text import CaptionText, TextOptions

        return CaptionText(TextOptions(language_id=False))
    if name == "MetaclipMatcher":
        from operators.match import MetaclipMatcher

        return MetaclipMatcher(["dog", "red dog", "sofa"])
    if name == "WorldwideMatcher":
        from operators.match import WorldwideMatcher

        lists = {"en": ["dog", "red dog", "sofa"], "ja": ["犬"], "other": ["chien"]}
        return WorldwideMatcher(lists, lists.__getitem__)
    if name == "ConceptMatcher":
        from operators.concepts import ConceptMatcher, Concepts

        return ConceptMatcher(Concepts(("dog", "hot dog", "cat"), ((), ("hotdog",), ("kitten",))))
    if name == "ImageConceptTagger":
        from operators.concepts import ImageConceptTagger, SoftmaxTagger

        return ImageConceptTagger(np.eye(3, 4, dtype=np.float32), SoftmaxTagger(threshold=0.4))
    if name == "ClipPreprocessor":
        from operators.embed import ClipPreprocessor

        return ClipPreprocessor(_demo_model("demo-clip"))
    if name == "ClipEmbedder":
        from operators.embed import ClipEmbedder, EmbedOptions

        options = EmbedOptions(model="demo", device="cpu", batch_size=2, probes={"dog": {"positive": ["a dog"]}})
        return ClipEmbedder(_demo_model("demo-clip"), options)
    if name == "Captioner":
        from operators.caption import Captioner, CaptionOptions

        return Captioner(_demo_model("demo-captioner"),
                         CaptionOptions(device="cpu", batch_size=2, generation={"max_new_tokens": 8}))
    raise KeyError(name)


def _embeddings() -> pa.Table:
    vectors = np.array([[0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), 4,
                                               mask=pa.array([False, False, True, False]))
    return _rows({"image_emb": column})


def _model_inputs() -> pa.Table:
    """What ClipPreprocessor hands ClipEmbedder (the undecodable image's row marked failed first)."""
    from operators.embed import MODEL_INPUTS

    status = [st.OK, st.NOT_IMAGE, st.TIMEOUT, st.OK]
    batch = operator("ClipPreprocessor")(_rows({"status": status, "image": IMAGES, "caption": CAPTIONS}))
    return batch.select(["key", "status", *MODEL_INPUTS, PASSENGER])


@dataclass(frozen=True)
class Case:
    name: str
    batch: Callable[[], pa.Table]
    reads: tuple[str, ...]           # every column it reads: each one missing is a KeyError naming it
    adds: tuple[str, ...]            # columns it adds (or replaces)
    consumes: tuple[str, ...] = ()   # columns it drops on purpose (ClipEmbedder: the model inputs)
    failed: tuple[int, ...] = ()     # rows of its batch that fail in it: a status and an error, no exception
    caption_set: bool = False        # Captioner: a caption-set table out, not the input with columns added


CASES = [
    Case("Downloader", lambda: _rows({"url": URLS}), ("url",), ("status", "error", "http_status", "image"),
         failed=(0, 1, 2, 3)),
    Case("Fetcher", lambda: _rows({"url": URLS}), ("url",),
         ("status", "error", "image", "width", "height", "sha256", "phash"), failed=(0, 1, 2, 3)),
    Case("Decoder", lambda: _rows({"status": STATUSES, "error": [None, None, "timed out", None], "image": IMAGES}),
         ("status", "error", "image"), ("status", "error", "image", "width", "height", "sha256", "phash"),
         failed=(1,)),
    Case("CaptionText", lambda: _rows({"caption": CAPTIONS}), ("caption",),
         ("caption_lang", "caption_lang_score", "caption_words", "caption_chars")),
    Case("MetaclipMatcher", lambda: _rows({"caption": CAPTIONS}), ("caption",), ("metaclip_entries",)),
    Case("WorldwideMatcher", lambda: _rows({"caption": CAPTIONS, "caption_lang": ["en", "ja", None, "fr"]}),
         ("caption", "caption_lang"), ("match_lang", "metaclip_entries")),
    Case("ConceptMatcher", lambda: _rows({"caption": CAPTIONS}), ("caption",),
         ("text_concepts", "text_concepts_bag", "text_variants")),
    Case("ImageConceptTagger", _embeddings, ("image_emb",), ("image_concepts", "image_top", "image_top_score")),
    Case("ClipPreprocessor",
         lambda: _rows({"status": [st.OK, st.NOT_IMAGE, st.TIMEOUT, st.OK], "image": IMAGES, "caption": CAPTIONS}),
         ("status", "image", "caption"), ("pixel_values", "input_ids", "attention_mask")),
    Case("ClipEmbedder", _model_inputs, ("status", "pixel_values", "input_ids", "attention_mask"),
         ("image_emb", "text_emb", "clip_score", "clip_model", "probe_dog"),
         consumes=("pixel_values", "input_ids", "attention_mask")),
    Case("Captioner", lambda: _rows({"image": IMAGES, "caption": CAPTIONS}), ("key", "image", "caption"),
         ("status", "error", "caption", "original_caption"), failed=(1, 2), caption_set=True),
]
BY_NAME = {case.name: case for case in CASES}


def _row_operator_classes() -> set[str]:
    """Every class in operators/ called with a batch: `__call__(self, batch, ...)`."""
    found = set()
    for module in pkgutil.iter_modules(operators.__path__):
        loaded = importlib.import_module(f"operators.{module.name}")
        for name, cls in inspect.getmembers(loaded, inspect.isclass):
            call = cls.__dict__.get("__call__")
            if cls.__module__ == loaded.__name__ and call is not None:
                if list(inspect.signature(call).parameters)[1:2] == ["batch"]:
                    found.add(name)
    return found


def test_every_operator_in_operators_is_covered_and_named_in_the_contract():
    assert _row_operator_classes() == set(BY_NAME)
    for name in BY_NAME:
        assert f"`{name}`" in operators.__doc__, name


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_batch_in_batch_out_one_row_per_row_in_order(case):
    batch = case.batch()
    out = operator(case.name)(batch)
    assert isinstance(out, pa.Table)
    assert out.num_rows == batch.num_rows
    assert out.column("key").to_pylist() == batch.column("key").to_pylist()  # same rows, same order
    for i in case.failed:
        row = out.slice(i, 1).to_pylist()[0]
        assert row["status"] != st.OK and row["error"], (case.name, i, row)
    if case.caption_set:
        from operators.caption import CAPTION_SCHEMA

        assert out.schema.names == CAPTION_SCHEMA.names
        assert out.column("original_caption").to_pylist() == batch.column("caption").to_pylist()
        return
    kept = [c for c in batch.column_names if c not in case.consumes]
    assert out.column_names[:len(kept)] == kept  # the input's columns first, in place
    assert set(case.adds) <= set(out.column_names)
    assert not set(case.consumes) & set(out.column_names)
    for column in kept:
        if column not in case.reads and column not in case.adds:
            assert out.column(column).equals(batch.column(column)), (case.name, column)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_an_empty_batch_gives_an_empty_batch(case):
    out = operator(case.name)(case.batch().slice(0, 0))
    assert isinstance(out, pa.Table) and out.num_rows == 0
    assert set(case.adds) <= set(out.column_names)


@pytest.mark.parametrize("case, column", [
    pytest.param(case, column, id=f"{case.name}-{column}")
    for case in CASES for column in case.reads])
def test_a_missing_column_is_an_error_naming_it_and_the_columns_present(case, column):
    batch = case.batch().drop_columns([column])
    present = re.escape("(columns: " + ", ".join(batch.column_names) + ")")
    with pytest.raises(KeyError, match=rf"\b{column}\b.*{present}"):
        operator(case.name)(batch)
