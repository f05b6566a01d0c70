"""MetaCLIP matching, operator level: the rule on hand-made cases, random cases against MetaCLIP's
own loop, the column contract, and the metadata files it reads."""

from __future__ import annotations

import gzip
import json
import random

import fsspec
import pyarrow as pa
import pytest
from match_oracle import SpanOracle, metaclip_substr_matching, spaced_entries, spacing

from operators.match import MetaclipMatcher, padded_entry, spaced_text
from pipelines.metadata import MetadataError, load_metadata

ENTRIES = ["dog", "hot dog", "Dog", "St. Louis", "Vol", "8", "a", "ice cream", "café", "東京", "x  y",
           "tab\there", "!", "hot dog", "St . Louis", "e.g", "New York City", "York"]


def ids_of(names: list[str]) -> list[int]:
    return sorted({i for i, e in enumerate(ENTRIES) if e in names})


@pytest.mark.parametrize("caption,faithful,fixed", [
    ("a hot dog", ["a", "hot dog", "dog"], None),
    ("hot dogs and Dogs", [], None),                       # whole padded entries only, case-sensitive
    ("DOG", [], None),
    ("my dog!!", ["dog", "!"], None),                        # punctuation gets spaced off the word
    ("dog,hot dog.", ["dog", "hot dog"], None),
    ("Classical Masterpieces: Vol. 8", ["Vol", "8"], None),
    ("St. Louis", [], ["St. Louis"]),                         # the known quirk, and its fix
    ("St . Louis", [], ["St . Louis"]),                       # " St  .  Louis ": two spaces each side
    ("e.g. this", [], ["e.g"]),
    ("x  y", ["x  y"], None),                                 # repeated spaces are not collapsed
    ("x y", [], None),
    ("x\ty", [], None),                                        # a tab is one space: "x y", not "x  y"
    ("x\t y", ["x  y"], None),
    ("tab\there", [], ["tab\there"]),                         # entries keep their tab unless fixed
    ("a café in 東京", ["a", "café", "東京"], None),
    ("New York City", ["New York City", "York"], None),       # overlapping entries all match
    ("ice\ncream", ["ice cream"], None),
    ("", [], None),
    ("   ", [], None),
])
def test_rule_on_hand_made_cases(caption, faithful, fixed):
    for mode, names in (("faithful", faithful), ("fixed", fixed if fixed is not None else faithful)):
        matcher = MetaclipMatcher(ENTRIES, mode)
        got = matcher.match([caption]).to_pylist()[0]
        assert got == ids_of(names), (mode, caption, [ENTRIES[i] for i in got])
        assert got == metaclip_substr_matching(caption, spaced_entries(ENTRIES, fixed=mode == "fixed"))


def test_duplicate_entries_match_together():
    matcher = MetaclipMatcher(ENTRIES)
    assert matcher.match(["hot dog"]).to_pylist() == [[0, 1, 13]]  # both "hot dog" ids, as MetaCLIP's loop
    fixed = MetaclipMatcher(["St. Louis", "St . Louis", "St.\tLouis"], "fixed")
    # in fixed mode "St. Louis" and "St.<tab>Louis" pad to the same form
    assert fixed.match(["St. Louis", "St . Louis"]).to_pylist() == [[0, 2], [1]]


def test_spacing_helpers_follow_metaclip():
    for text in ["a,b", "x.y;z:w?v!u`t", "\ttab\nnew\rret", "  two  ", "", "St. Louis"]:
        assert spaced_text(text) == spacing(text)
    assert padded_entry("St. Louis") == " St. Louis "
    assert padded_entry("St. Louis", "fixed") == " St .  Louis "


def test_random_cases_agree_with_metaclip_loop():
    rng = random.Random(5)
    alphabet = ["a", "b", "ab", "ba", "A", "é", "ß", "😀", ",", ".", ";", ":", "?", "!", "`", " ", "  ", "\t", "\n",
                "\r", "-", "'", '"']
    words = ["a", "b", "ab", "ba", "A", "é", "a.b", "a,", "b!", "a b", "b  a", "ab ab", "a\tb", " a", "b ", "😀"]
    for _ in range(40):
        entries = rng.sample(words, rng.randint(1, len(words)))
        captions = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25))) for _ in range(200)]
        captions += [None, ""]
        for mode in ("faithful", "fixed"):
            got = MetaclipMatcher(entries, mode).match(captions).to_pylist()
            spaced = spaced_entries(entries, fixed=mode == "fixed")
            oracle = SpanOracle(spaced)
            for caption, ids in zip(captions, got, strict=True):
                assert ids == metaclip_substr_matching(caption, spaced) == oracle(caption), (mode, caption, entries)


def test_operator_adds_sorted_unique_int32_lists_and_keeps_other_columns():
    batch = pa.table({"key": ["k0", "k1", "k2", "k3"], "caption": ["dog dog a dog", None, "", "nothing here"],
                      "extra": [1, 2, 3, 4]})
    out = MetaclipMatcher(ENTRIES)(batch)
    assert out.column_names == ["key", "caption", "extra", "metaclip_entries"]
    assert out.schema.field("metaclip_entries").type == pa.list_(pa.int32())
    assert out.column("metaclip_entries").to_pylist() == [[0, 6], [], [], []]
    assert out.column("key").to_pylist() == batch.column("key").to_pylist()
    assert MetaclipMatcher(ENTRIES)(batch.slice(0, 0)).column("metaclip_entries").to_pylist() == []
    chunked = pa.chunked_array([["hot dog"], [None, "a"]])
    assert MetaclipMatcher(ENTRIES).match(chunked).to_pylist() == [[0, 1, 13], [], [6]]
    with pytest.raises(KeyError, match="caption"):
        MetaclipMatcher(ENTRIES)(pa.table({"text": ["dog"]}))


def test_load_metadata_formats(tmp_path):
    entries = ["dog", "hot dog", "St. Louis", "東京", "  spaced  "]
    (tmp_path / "metadata.json").write_text(json.dumps(entries))
    (tmp_path / "list.txt").write_text("dog\r\nhot dog\n\nSt. Louis\n東京\n  spaced  \n")
    with gzip.open(tmp_path / "list.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(entries) + "\n")
    with fsspec.open("memory://meta/metadata.json", "w") as f:
        f.write(json.dumps(entries))
    loaded = [load_metadata(tmp_path / "metadata.json"), load_metadata(tmp_path / "list.txt"),
              load_metadata(tmp_path / "list.txt.gz"), load_metadata("memory://meta/metadata.json")]
    for metadata in loaded:
        assert metadata.entries == entries
        assert metadata.id == loaded[0].id
    assert load_metadata(tmp_path / "list.txt").table().column("entry_id").to_pylist() == [0, 1, 2, 3, 4]
    (tmp_path / "dict.json").write_text('{"a": 1}')
    (tmp_path / "broken.json").write_text('["a", ')
    (tmp_path / "empty.txt").write_text("\n\n")
    for name, words in [("nope.json", "not found"), ("dict.json", "JSON list of strings"),
                        ("broken.json", "does not parse"), ("empty.txt", "no entries")]:
        with pytest.raises(MetadataError, match=words) as err:
            load_metadata(tmp_path / name)
        assert name in str(err.value)


def test_default_metadata_is_shipped_and_sane():
    metadata = load_metadata()
    entries = metadata.entries
    assert 150_000 < len(entries) < 500_000
    assert len(set(entries)) == len(entries)
    assert {"dog", "ice cream", "traffic light", "the", "0", "42", "99"} <= set(entries)
    assert all(entry and "\n" not in entry for entry in entries)
    assert load_metadata("default").id == metadata.id
    matcher = MetaclipMatcher(entries)
    found = matcher.match(["a photo of a dog and ice cream", "Classical Masterpieces: Vol. 8 by Various Artists"])
    words = [{entries[i] for i in ids} for ids in found.to_pylist()]
    assert {"photo", "dog", "ice cream", "ice", "cream", "a", "of"} <= words[0]
    assert {"8", "by"} <= words[1]
