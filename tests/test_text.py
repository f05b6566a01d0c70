"""The text stage's language model is kept built in tailor's cache folder, so a worker starts without
unpacking it; what the cache gives must be what py3langid gives."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
from helpers import shared_data

from operators import text


def _captions(n: int) -> list[str]:
    table = pq.read_table(shared_data() / "alt-text" / "alt_text_10k.parquet", columns=["TEXT"])
    return [c for c in table.column("TEXT").to_pylist()[:n] if c]


def test_cached_language_model_classifies_as_py3langid_does(tmp_path, monkeypatch):
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    monkeypatch.setenv("TAILOR_CACHE_DIR", str(tmp_path / "cache"))
    built = text._load_identifier()  # no cache yet: built from py3langid's file, then written
    written = list((tmp_path / "cache").iterdir())
    assert len(written) == 1 and written[0].name.startswith("py3langid-") and written[0].suffix == ".pickle"
    cached = text._load_identifier()  # read back
    fresh = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    captions = _captions(2000)
    assert len(captions) > 1500
    expected = [fresh.classify(c) for c in captions]
    assert [cached.classify(c) for c in captions] == expected
    assert [built.classify(c) for c in captions] == expected
    restricted = text.language_identifier.__wrapped__(("en", "de", "fr"))  # set_languages on its own copy
    assert {restricted.classify(c)[0] for c in captions} <= {"en", "de", "fr"}
    reloaded = text._load_identifier()
    assert {reloaded.classify(c)[0] for c in captions} - {"en", "de", "fr"}  # the cached model is untouched


def test_a_broken_or_unwritable_cache_costs_only_time(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TAILOR_CACHE_DIR", str(cache))
    text._load_identifier()
    [written] = cache.iterdir()
    written.write_bytes(written.read_bytes()[:1000])  # a partial file, as a killed writer would not leave
    assert text._load_identifier().classify("a dog on the beach")[0] == "en"
    assert written.stat().st_size > 1_000_000  # rebuilt and rewritten
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("TAILOR_CACHE_DIR", str(blocked / "cache"))
    assert text._load_identifier().classify("ein Hund am Strand")[0] == "de"
    assert sorted(os.listdir(tmp_path)) == ["cache", "file"]  # nothing half-written left behind
