"""Concept lists and caption-side concept matching: -ing/-ed forms count only where `VERB_FORMS` lists them
(issue 29: "training" is no train); a concept file with an error is one line naming the file and line."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.concepts import VERB_FORMS, ConceptMatcher, english_forms
from pipelines.concepts import load_concepts
from pipelines.core.config import ConfigError


def _names_in(list_name: str, **kwargs):
    concepts = load_concepts(list_name)
    matcher = ConceptMatcher(concepts, **kwargs)
    return lambda caption: {concepts.names[k] for k in matcher.match(caption)[0]}


def test_an_ing_form_of_a_noun_is_another_word():
    coco = _names_in("coco80")
    assert "train" not in coco("rugby player during a training session")
    assert "train" in coco("a train at the station") and "train" in coco("two trains")
    assert "boat" not in coco("Women Wool Cotton Blend Berets - Free Shipping") and "boat" in coco("a cargo ship")
    assert "bear" not in coco("Ball Bearings 5x8x2.5") and "tie" not in coco("tying shoes before a walk")
    assert "train" not in coco("trained in Paris")                     # -ed forms likewise
    imagenet = _names_in("imagenet1k")
    assert "fly" not in imagenet("a kite flying high in the sky") and "fly" in imagenet("a fly on a leaf")
    assert "plate" not in imagenet("Gold Plated Earrings")


def test_the_listed_forms_name_their_concept():
    coco = _names_in("coco80")
    assert "skis" in coco("A lone person skiing down a slope of fresh snow.")
    assert "skateboard" in coco("A boy skateboarding in an empty concrete swimming pool")
    assert "bicycle" in coco("MAI CHAU HALF DAY BIKING TOUR")
    assert _names_in("imagenet1k")("a man skiing") >= {"ski"}
    # the forms no caption showed to name the concept do not count either
    assert "skis" not in coco("she skied all day") and "bicycle" not in coco("people bicycling downtown")


def test_verb_forms_table_holds_forms_of_its_words():
    for word, forms in VERB_FORMS.items():
        assert set(forms) <= english_forms(word)[1], word
    # an explicit table replaces it: the old rule (every form simplemma reads as the word) for measuring it
    assert _names_in("coco80", verb_forms={"train": ("training",)})("a training session") == {"train"}
    assert _names_in("coco80", verb_forms={})("skiing") == set()


def test_concept_file_errors_are_one_line_with_the_line(tmp_path):
    cases = {
        "syntax.yaml": ("dog: [puppy\ncat: kitten\n", r"syntax\.yaml line 2, column 4: not valid YAML: expected"),
        "scalar.yaml": ("just a string\n", r"scalar\.yaml line 1: the file holds a single value"),
        "nested.yaml": ("dog: [puppy]\ncat: {a: b}\n", r"nested\.yaml line 2: synonyms must be a string or a list"),
        "item.yaml": ("- dog\n- {name: cat, extra: 1}\n", r"item\.yaml line 2: a list item must be a name or"),
        "twice.yaml": ("dog: []\ncat:\ndog: [puppy]\n", r"twice\.yaml line 3: concept 'dog' is listed twice \(first"),
        "twice.txt": ("dog\n\n# c\ndog\n", r"twice\.txt line 4: concept 'dog' is listed twice \(first on line 1\)"),
    }
    for name, (text, pattern) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=pattern) as err:
            load_concepts(str(tmp_path / name))
        assert "\n" not in str(err.value)
        if name.endswith(".yaml") and "twice" not in name:
            assert "expected a mapping `concept: [synonym, ...]`" in str(err.value)   # the shape it wants
    (tmp_path / "ok.yaml").write_text("dog: [puppy, doggo]\ncat: kitten\nbird:\n")
    assert load_concepts(str(tmp_path / "ok.yaml")).synonyms == (("puppy", "doggo"), ("kitten",), ())


def test_cli_audit_with_a_broken_concept_file_is_one_line_and_exit_2(tmp_path, capsys):
    from pipelines.cli import main

    run = tmp_path / "run"
    (run / "annotations").mkdir(parents=True)
    (run / "_done").mkdir()
    shard = pa.table({"key": ["a"], "caption": ["a dog"], "status": ["ok"]})
    pq.write_table(shard, run / "annotations" / "00000.parquet")
    (run / "_done" / "00000.json").write_text(json.dumps({"shard": "00000", "rows": 1}))
    (tmp_path / "bad.yaml").write_text("dog: [puppy\ncat: kitten\n")
    assert main(["audit", str(run), "--concepts", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.yaml line 2, column 4: not valid YAML" in err, err
    assert not (run / "audit").exists()
