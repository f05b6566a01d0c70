"""Concept audit units: caption words match a concept word's inflections, never another word that shares
its lemma; image counts and misalignment count distinct images (sha256), text counts count caption rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from operators.concepts import IDS, ConceptMatcher, Concepts, english_forms
from pipelines.core.duck import connect, run_sql
from pipelines.verbs import audit as audit_module
from pipelines.verbs.audit import AuditOptions, audit_run

# ---------------------------------------------------------------- text: inflections, not lemmas


def test_concept_words_match_their_inflections_not_words_sharing_a_lemma():
    names = ("lighter", "eraser", "tights", "clogs", "moped", "dog", "hot dog", "teddy bear", "bear", "bus", "bush",
             "ski", "mouse", "knife", "person", "cactus", "skate")
    concepts = Concepts(names, tuple(() for _ in names))
    m = ConceptMatcher(concepts)

    def names_in(caption: str) -> set[str]:
        return {concepts.names[i] for i in m.match(caption)[0]}

    # simplemma lemmatizes each of these caption words to the concept's lemma; none is the concept
    assert names_in("Light") == set() and names_in("LED Lights") == set()
    assert names_in("Dry Erase Boards") == set() and names_in("erased") == set()
    assert names_in("a tight fit") == set()
    assert names_in("a clog") == set() and names_in("Non Clogging Pump") == set()
    assert names_in("do not mope") == set()
    # the concept words themselves and their plurals
    assert names_in("a lighter and two lighters") == {"lighter"}
    assert names_in("erasers") == {"eraser"} and names_in("black tights") == {"tights"}
    assert names_in("wooden clogs") == {"clogs"} and names_in("two mopeds") == {"moped"}
    # regular and irregular inflections of a concept word
    assert names_in("Two DOGS") == {"dog"}
    assert names_in("three buses") == {"bus"} and names_in("green bushes") == {"bush"}
    assert names_in("skiing in the alps") == {"ski"}   # an -ing form VERB_FORMS lists (issue 29)
    assert names_in("three mice") == {"mouse"} and names_in("kitchen knives") == {"knife"}
    assert names_in("people") == {"person"} and names_in("cacti") == {"cactus"} and names_in("skates") == {"skate"}
    # -ing/-ed forms it does not list are other words ("training"), or were never seen naming the concept
    assert names_in("she skied") == set() and names_in("skating") == set() and names_in("hot dogging") == set()
    # the phrase rule: a hot dog is no dog, a teddy bear no bear
    assert names_in("a hot dog with mustard") == {"hot dog"}
    assert names_in("my teddy bear") == {"teddy bear"} and names_in("teddy bears") == {"teddy bear"}
    assert names_in("a teddy bear and a real bear") == {"teddy bear", "bear"}


def test_english_forms_spelling_rules():
    def forms(word: str) -> set[str]:
        plurals, verbs = english_forms(word)
        return plurals | verbs

    assert {"buses", "busses"} <= forms("bus") and "bushes" not in forms("bus")
    assert {"puppies"} <= forms("puppy") and {"tomatoes", "tomatos"} <= forms("tomato")
    assert {"women"} <= forms("woman") and {"policemen"} <= forms("policeman") and "feet" in forms("foot")
    assert {"mopped", "mopping"} <= forms("mop") and "moped" not in forms("mop")   # one syllable: doubled only
    assert {"travelled", "traveled"} <= forms("travel")
    assert {"tying", "tied"} <= forms("tie") and {"carried", "carrying"} <= forms("carry")
    assert "bi" not in forms("bus") and forms("s") == {"s"} and forms("the") == {"the"}   # no "thing" for "the"
    assert forms("tv") == {"tv", "tvs"}


def test_other_languages_use_lemmas_on_both_sides():
    concepts = Concepts(("Hund",), ((),))
    assert ConceptMatcher(concepts, lang="de").match("Zwei Hunde im Park")[0] == [0]


# ---------------------------------------------------------------- counts: caption rows and distinct images

def _counts(tags: pa.Table, concepts: list[str]) -> tuple[dict[str, dict], dict]:
    con = connect()
    con.register("tags", tags)
    con.register("concepts", pa.table({"concept_id": pa.array(range(len(concepts)), pa.int32()),
                                       "concept": concepts}))
    con.register("variants", pa.table({"variant_id": pa.array(range(len(concepts)), pa.int32()),
                                       "concept_id": pa.array(range(len(concepts)), pa.int32()),
                                       "variant": concepts}))
    counts = run_sql(con, "audit_counts", frequency="image", tail_fraction=0.2, tail_floor=0).to_pylist()
    return {r["concept"]: r for r in counts}, run_sql(con, "audit_misalignment").to_pylist()[0]


def test_counts_sql_counts_each_image_once():
    """Image A has five caption rows (COCO style), image B sits under two keys, C has a null sha256."""
    dog, cat, car = 0, 1, 2
    rows = [  # key, status, sha256, text concepts, image concepts
        ("a1", "ok", "A", [dog], [dog]),
        ("a2", "ok", "A", [dog], [dog]),
        ("a3", "ok", "A", [], [dog]),
        ("a4", "ok", "A", [cat], [dog]),
        ("a5", "ok", "A", [dog, cat], [dog]),
        ("b1", "ok", "B", [cat], [car]),       # B: tagged car, captions say cat: misaligned once, not twice
        ("b2", "ok", "B", [], [car]),
        ("c1", "ok", None, [car], [car]),       # no hash: the key is the image
        ("d1", "ok", "D", [dog], []),           # no image tag
        ("e1", "decode_error", "E", [dog], None),
    ]
    tags = pa.table({"key": [r[0] for r in rows], "status": [r[1] for r in rows],
                     "sha256": pa.array([r[2] for r in rows], pa.string()),
                     "text_concepts": pa.array([r[3] for r in rows], IDS),
                     "text_concepts_bag": pa.array([r[3] for r in rows], IDS),
                     "text_variants": pa.array([r[3] for r in rows], IDS),
                     "image_concepts": pa.array([r[4] for r in rows], IDS)})
    counts, mis = _counts(tags, ["dog", "cat", "car"])
    assert {c: r["text_count"] for c, r in counts.items()} == {"dog": 4, "cat": 3, "car": 1}  # caption rows
    assert counts["dog"]["text_count_all"] == 5                                            # any status
    assert {c: r["text_image_count"] for c, r in counts.items()} == {"dog": 2, "cat": 2, "car": 1}  # A, D; A, B; C
    assert {c: r["image_count"] for c, r in counts.items()} == {"dog": 1, "cat": 0, "car": 2}       # A; B, C
    assert {c: r["matched_count"] for c, r in counts.items()} == {"dog": 1, "cat": 0, "car": 1}     # A; C
    assert counts["car"]["rank"] == 1 and counts["car"]["frequency"] == 2   # --frequency image: images
    assert mis["ok_rows"] == 9 and mis["ok_images"] == 4                    # A, B, C, D
    assert mis["images_tagged"] == 3 and mis["misaligned"] == 1             # B only
    assert mis["misalignment_rate"] == 1 / 3 and mis["both_tagged_disjoint"] == 1
    assert mis["caption_rows_tagged"] == 7


def test_audit_run_counts_a_coco_photo_once(tmp_path, monkeypatch):
    """End to end on a run whose ok rows hold one photo under five captions: one image, five caption rows."""
    captions = {"p1": ["A dog on a couch.", "Two dogs resting.", "A couch in a living room.", "A sleeping dog.",
                       "A brown dog lying down."],
                "p2": ["A red car.", "A car parked outside.", "Cars on a street.", "A parked vehicle.", "A car."],
                "p3": ["A cat on a car.", "A kitten.", "A cat.", "The cat sleeps.", "A cat sitting."]}
    tagged = {"p1": ["dog", "couch"], "p2": ["car"], "p3": ["dog"]}   # p3 is tagged wrongly: misaligned
    names = ["dog", "couch", "car", "cat"]
    basis = np.eye(len(names), 8, dtype=np.float32)
    run = tmp_path / "run"
    (run / "annotations").mkdir(parents=True)
    (run / "_done").mkdir()
    (run / "embeddings").mkdir()
    keys, rows, shas = [], [], []
    for photo, texts in captions.items():
        for i, text in enumerate(texts):
            keys.append(f"{photo}-{i}")
            rows.append(text)
            shas.append(f"sha-{photo}")
    pq.write_table(pa.table({"key": keys, "caption": rows, "status": ["ok"] * len(keys), "sha256": shas}),
                   run / "annotations" / "00000.parquet")
    (run / "_done" / "00000.json").write_text(json.dumps({"shard": "00000", "rows": len(keys)}))
    emb = []
    for key in keys:
        v = basis[[names.index(c) for c in tagged[key.split("-")[0]]]].sum(axis=0)
        emb.append(v / np.linalg.norm(v))
    flat = pa.array(np.concatenate(emb).astype(np.float16), pa.float16())
    pq.write_table(pa.table({"key": keys, "image_emb": pa.FixedSizeListArray.from_arrays(flat, 8)}),
                   run / "embeddings" / "00000.parquet")
    (run / "config.yaml").write_text(yaml.safe_dump({"embed": {"model": "oracle"}}))
    (tmp_path / "four.txt").write_text("\n".join(names) + "\n")
    monkeypatch.setattr(audit_module, "concept_embeddings", lambda concepts, model, options: basis)

    summary = audit_run(run, AuditOptions(concepts=str(tmp_path / "four.txt"), tagger="cosine", image_threshold=0.5),
                        report=False)
    counts = {r["concept"]: r for r in pq.read_table(Path(summary["out"]) / "counts.parquet").to_pylist()}
    assert {c: r["text_count"] for c, r in counts.items()} == {"dog": 4, "couch": 2, "car": 5, "cat": 4}
    assert {c: r["text_image_count"] for c, r in counts.items()} == {"dog": 1, "couch": 1, "car": 2, "cat": 1}
    assert {c: r["image_count"] for c, r in counts.items()} == {"dog": 2, "couch": 1, "car": 1, "cat": 0}
    assert {c: r["matched_count"] for c, r in counts.items()} == {"dog": 1, "couch": 1, "car": 1, "cat": 0}
    assert summary["ok_rows"] == 15 and summary["ok_images"] == 3
    m = summary["misalignment"]
    assert (m["images_tagged"], m["misaligned"], m["both_tagged_disjoint"]) == (3, 1, 1)  # not 15 and 5
    assert summary["units"]["text_count"].endswith("caption rows naming the concept")
    tags = pq.read_table(Path(summary["out"]) / "tags")
    assert set(tags.column("sha256").to_pylist()) == {"sha-p1", "sha-p2", "sha-p3"}
