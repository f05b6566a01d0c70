"""Decontamination on the demo run: evaluation images copied from the demo web flag exactly the pool
rows that show them (and their copies), unrelated evaluation images flag nothing."""

from __future__ import annotations

import shutil
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import shared_data

from operators.decontam import EvalIndex
from pipelines.core.config import ConfigError


def test_eval_index_flags_by_either_criterion():
    index = EvalIndex(["a.png", "b.png"], np.eye(2, 3, dtype=np.float32), np.array([0, 2**64 - 1], dtype=np.uint64))
    vectors = np.array([[1, 0, 0], [0, 0.6, 0.8], [0, 0, 1], [0, 0, 1]], dtype=np.float32)
    hashes = np.array([2**63, 0b111, 2**64 - 2, 12345], dtype=np.uint64)
    table = index.flag(["k0", "k1", "k2", "k3"], vectors, hashes, np.array([True, True, True, False]),
                       np.array([True, True, True, True]), max_cosine=0.9, max_hamming=3).to_pylist()
    assert table == [
        {"key": "k0", "eval_image": "a.png", "cosine": 1.0, "hamming": 1, "by": "both"},
        {"key": "k1", "eval_image": "a.png", "cosine": pytest.approx(0.6), "hamming": 3, "by": "phash"},
        {"key": "k2", "eval_image": "b.png", "cosine": 0.0, "hamming": 1, "by": "phash"},
    ]
    assert index.flag(["k0"], vectors[:1], hashes[:1], np.array([True]), np.array([True]), 0.9, None).column(
        "hamming").null_count == 1


@pytest.fixture(scope="module")
def eval_case(demo_run, tmp_path_factory):
    """An evaluation folder: the original files of a few demo pages (some with duplicates, some
    without), nested one level, plus unrelated COCO photos and one broken file; and the pool keys
    expected to be flagged (the pages shown and every page of their duplicate groups)."""
    _, run, web = demo_run
    annotations = pq.read_table(run / "annotations", columns=["key", "demo_id", "status", "url"]).to_pandas()
    truth = pq.read_table(web / "truth.parquet").to_pandas()
    rows = annotations.merge(truth, on="demo_id")
    ok = rows[rows.status == "ok"]
    plain = ok[ok.hostile.isna()]  # served at the URL's own path (no redirect), so the file is site/PATH
    originals = plain[plain.dup_kind == "original"].head(6)
    singles = plain[plain.dup_group.isna()].head(4)
    folder = tmp_path_factory.mktemp("eval")
    (folder / "nested").mkdir()
    names = {}
    for i, row in enumerate([*originals.itertuples(), *singles.itertuples()]):
        source = web / "site" / urllib.parse.urlparse(row.url).path.lstrip("/")
        name = f"{'nested/' if i % 2 else ''}{source.name}"
        shutil.copy(source, folder / name)
        names[row.demo_id] = name
    coco = sorted((shared_data() / "coco-mini" / "train2017").glob("*.jpg"))[:4]
    unrelated = tmp_path_factory.mktemp("unrelated")
    for photo in coco:
        shutil.copy(photo, folder / f"coco-{photo.name}")
        shutil.copy(photo, unrelated / photo.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    shown = set(originals.dup_group) | set(singles.demo_id)
    expected = ok[ok.dup_group.isin(shown) | ok.demo_id.isin(shown)]
    return run, folder, unrelated, expected, ok, names


@pytest.mark.slow
def test_decontaminate_flags_the_shown_pages_and_their_copies(eval_case):
    from pipelines.verbs.decontam import DecontamOptions, decontaminate

    run, folder, _, expected, ok, names = eval_case
    # the demo CLIP is tiny: unrelated demo images reach cosine 0.99+, so only a tight cosine is precise here
    for max_cosine, max_hamming in [(0.9995, None), (None, 0), (0.9995, 0)]:
        options = DecontamOptions(eval_path=str(folder), max_cosine=max_cosine, max_hamming=max_hamming)
        path = decontaminate(str(run), options)
        assert Path(path).parent == run / "dedup" and Path(path).name.startswith("decontam-")
        flagged = pq.read_table(path).to_pandas().merge(ok[["key", "demo_id", "dup_group", "dup_kind",
                                                             "near_transform"]], on="key")
        assert set(flagged.key) <= set(expected.key)  # precision 1
        # every pool row holding the very bytes of an evaluation image, and every exact copy, is found
        must = expected[expected.dup_kind.isin(["original", "exact"]) | expected.dup_group.isna()]
        assert set(must.key) <= set(flagged.key)
        # near duplicates: re-encoded and resized copies are found; crops may move a pHash / embedding too far
        near = expected[expected.dup_kind == "near"]
        missed = near[~near.key.isin(flagged.key)]
        assert set(missed.near_transform) <= {"crop"}
        same_page = flagged[flagged.demo_id.isin(names)]
        assert (same_page.eval_image == same_page.demo_id.map(names)).all()
        allowed = {(0.9995, None): {"embedding"}, (None, 0): {"phash"}, (0.9995, 0): {"embedding", "phash", "both"}}
        assert set(flagged.by) <= allowed[(max_cosine, max_hamming)]
        if max_cosine and max_hamming is not None:
            assert (flagged.by == "both").sum() >= len(must)  # identical pixels: both criteria agree
    info = (run / "dedup" / (Path(path).stem + ".json")).read_text()
    assert "broken.jpg" in info  # skipped, and said so


@pytest.mark.slow
def test_decontaminate_unrelated_images_flag_nothing(eval_case):
    from pipelines.verbs.decontam import DecontamOptions, decontaminate

    run, _, unrelated, _, _, _ = eval_case
    path = decontaminate(str(run), DecontamOptions(eval_path=str(unrelated), max_cosine=0.9995, max_hamming=4))
    assert pq.read_table(path).num_rows == 0


@pytest.mark.slow
def test_decontaminate_parquet_eval_set_equals_folder(eval_case, tmp_path):
    from pipelines.verbs.decontam import DecontamOptions, decontaminate

    run, folder, _, _, _, _ = eval_case
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    table = pa.table({"name": [str(p.relative_to(folder)) for p in files],
                      "image": pa.array([p.read_bytes() for p in files], pa.binary())})
    pq.write_table(table, tmp_path / "eval.parquet")
    options = DecontamOptions(eval_path=str(folder), max_cosine=0.9995, max_hamming=0)
    from_folder = pq.read_table(decontaminate(str(run), options))
    table_options = DecontamOptions(eval_path=str(tmp_path / "eval.parquet"), max_cosine=0.9995, max_hamming=0)
    from_table = pq.read_table(decontaminate(str(run), table_options))
    assert from_table.equals(from_folder)


@pytest.mark.slow
def test_decontaminate_errors(eval_case, tmp_path):
    from pipelines.verbs.decontam import DecontamOptions, decontaminate

    run, folder, _, _, _, _ = eval_case
    with pytest.raises(ConfigError, match="does not exist"):
        decontaminate(str(run), DecontamOptions(eval_path=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match="holds no images"):
        decontaminate(str(run), DecontamOptions(eval_path=str(tmp_path / "empty")))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="none of the 1 evaluation images"):
        decontaminate(str(run), DecontamOptions(eval_path=str(tmp_path / "bad")))
    with pytest.raises(ValueError, match="set max_cosine, max_hamming or both"):
        decontaminate(str(run), DecontamOptions(eval_path=str(folder), max_cosine=None, max_hamming=None))
    # a run without embeddings: pHash only, or a clear error
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copytree(run / "annotations", bare / "annotations")
    config = (run / "config.yaml").read_text()
    (bare / "config.yaml").write_text(config.split("\nembed:")[0] + "\n" if "\nembed:" in config else config)
    with pytest.raises(ConfigError, match="no image embeddings"):
        decontaminate(str(bare), DecontamOptions(eval_path=str(folder), max_cosine=0.95))
    phash_only = DecontamOptions(eval_path=str(folder), max_cosine=None, max_hamming=0)
    assert pq.read_table(decontaminate(str(bare), phash_only)).num_rows > 0
