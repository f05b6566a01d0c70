"""Concept-frequency audit: text counts against the demo web's truth, image tags, subsets, tail,
misalignment, real COCO captions, the log-linear analysis, the CLI."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import shared_data, write_manifest

from operators.concepts import ConceptMatcher, Concepts, ImageConceptTagger, SoftmaxTagger
from pipelines.concepts import BUILTIN, load_concepts
from pipelines.core.config import ConfigError
from pipelines.demo.web.world import CONCEPTS
from pipelines.verbs import audit as audit_module
from pipelines.verbs.audit import AuditOptions, audit_run, log_linear


def make_run(run: Path, rows: list[dict], image_emb: dict[str, np.ndarray] | None = None) -> Path:
    """A minimal finished run: one annotation shard (key, caption, status), optional embeddings."""
    (run / "annotations").mkdir(parents=True)
    (run / "_done").mkdir()
    pq.write_table(pa.table({"key": [r["key"] for r in rows], "caption": [r["caption"] for r in rows],
                             "status": [r["status"] for r in rows]}), run / "annotations" / "00000.parquet")
    (run / "_done" / "00000.json").write_text(json.dumps({"shard": "00000", "rows": len(rows)}))
    if image_emb:
        keys = sorted(image_emb)
        dim = len(next(iter(image_emb.values())))
        flat = pa.array(np.concatenate([image_emb[k] for k in keys]).astype(np.float16), pa.float16())
        (run / "embeddings").mkdir()
        pq.write_table(pa.table({"key": keys, "image_emb": pa.FixedSizeListArray.from_arrays(flat, dim)}),
                       run / "embeddings" / "00000.parquet")
        (run / "config.yaml").write_text(yaml.safe_dump({"embed": {"model": "oracle"}}))
    return run


def truth_counts(rows, field: str) -> Counter:
    return Counter(c for r in rows for c in set(r[field]))


def truth_images(rows, field: str = "concepts") -> Counter:
    """Per concept, distinct images (sha256) whose truth holds it: exact duplicates count once."""
    images: dict[str, set[str]] = {}
    for r in rows:
        images.setdefault(r["sha256"], set()).update(r[field])
    return Counter(c for concepts in images.values() for c in concepts)


def tail_rule(freq: dict[str, int], fraction: float = 0.2, floor: int = 0) -> set[str]:
    """The tail computed independently, among the mentioned concepts: fewer than ceil(fraction * mentioned)
    mentioned concepts are strictly rarer; a concept never mentioned is not tail."""
    mentioned = {c: f for c, f in freq.items() if f > 0}
    limit = math.ceil(fraction * len(mentioned))
    return {c for c, f in mentioned.items() if sum(g < f for g in mentioned.values()) + 1 <= limit or f < floor}


# ---------------------------------------------------------------- operators

def test_matcher_lemmas_bag_and_nested_rule():
    concepts = Concepts(("dog", "hot dog", "teddy bear", "bear", "mouse", "cell phone"),
                        ((), ("hotdog",), (), (), (), ("phone",)))
    m = ConceptMatcher(concepts)

    def names(caption, which=0):
        return {concepts.names[i] for i in m.match(caption)[which]}

    assert names("Two DOGS playing") == {"dog"}                      # inflection and case
    assert names("three mice on a desk") == {"mouse"}                # irregular plural
    assert names("a hotdog with mustard") == {"hot dog"}             # one token, a synonym; not dog
    assert names("a hot dog with mustard") == {"hot dog"}            # the phrase names the food only
    assert names("a hot dog with mustard", which=1) == {"dog", "hot dog"}   # the paper's pure bag rule
    assert names("a dog eats a hot dog") == {"dog", "hot dog"}       # dog is named on its own too
    assert names("a hot day for my dog") == {"dog", "hot dog"}       # bag of lemmas: not an exact phrase
    assert names("my teddy bears and a real bear") == {"teddy bear", "bear"}
    assert names("teddy bears") == {"teddy bear"}
    assert names("her cell phone") == {"cell phone"}
    assert names(None) == set() and names("") == set()
    variants = concepts.variants()
    assert [variants[v][1] for v in m.match("a hotdog")[2]] == ["hotdog"]


def test_image_tagger_softmax_threshold_and_nulls():
    emb = np.eye(3, 4, dtype=np.float32)
    tagger = ImageConceptTagger(emb, SoftmaxTagger(threshold=0.4, temperature=100.0))
    pair = (emb[0] + emb[1]) / np.sqrt(2)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate([emb[2], pair, np.zeros(4)]),
                                                         pa.float32()), 4, mask=pa.array([False, False, True]))
    out = tagger(pa.table({"image_emb": vectors}))
    assert out.column("image_concepts").to_pylist() == [[2], [0, 1], None]
    assert out.column("image_top").to_pylist()[:2] == [2, 0]


def test_concept_lists_builtin_and_files(tmp_path):
    imagenet = load_concepts("imagenet1k")
    assert len(imagenet) == 1000 and imagenet.names[0] == "tench" and imagenet.names[207] == "Golden Retriever"
    coco = load_concepts("coco80")
    instances = json.loads((shared_data() / "coco-mini" / "instances_train2017.json").read_text())
    assert list(coco.names) == [c["name"] for c in instances["categories"]]
    assert list(load_concepts("demo").names) == list(CONCEPTS)
    assert set(BUILTIN) == {"imagenet1k", "coco80", "demo"}

    (tmp_path / "a.txt").write_text("# comment\ndog\n\nhot dog\n")
    assert load_concepts(str(tmp_path / "a.txt")).names == ("dog", "hot dog")
    (tmp_path / "b.yaml").write_text("dog: [puppy, doggo]\ncat: kitten\nbird:\n")
    b = load_concepts(str(tmp_path / "b.yaml"))
    assert b.names == ("dog", "cat", "bird") and b.synonyms == (("puppy", "doggo"), ("kitten",), ())
    (tmp_path / "c.yaml").write_text("- dog\n- {name: cat, synonyms: [kitten]}\n")
    assert load_concepts(str(tmp_path / "c.yaml")).synonyms == ((), ("kitten",))
    (tmp_path / "d.txt").write_text("dog\ndog\n")
    with pytest.raises(ConfigError, match="twice"):
        load_concepts(str(tmp_path / "d.txt"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_concepts(str(tmp_path / "missing.txt"))


# ---------------------------------------------------------------- the demo web

@pytest.fixture(scope="module")
def demo_truth(demo_run):
    _, run, web = demo_run
    truth = {r["demo_id"]: r for r in pq.read_table(web / "truth.parquet").to_pylist()}
    rows = pq.read_table(run / "annotations", columns=["key", "demo_id", "caption", "status", "sha256"]).to_pylist()
    for r in rows:
        r.update({k: truth[r["demo_id"]][k] for k in ("concepts", "caption_concepts")})
    return rows


@pytest.fixture(scope="module")
def demo_audit(demo_run):
    _, run, _ = demo_run
    summary = audit_run(run, AuditOptions(concepts="demo"), report=False)
    counts = {r["concept"]: r for r in pq.read_table(Path(summary["out"]) / "counts.parquet").to_pylist()}
    return summary, counts


@pytest.mark.slow
def test_demo_text_counts_equal_truth(demo_truth, demo_audit):
    """Text counts equal the demo web's caption truth exactly: on ok rows, on all rows, and by the bag rule."""
    summary, counts = demo_audit
    ok = [r for r in demo_truth if r["status"] == "ok"]
    expected_ok, expected_all = truth_counts(ok, "caption_concepts"), truth_counts(demo_truth, "caption_concepts")
    # the paper's pure bag rule also counts "dog" wherever a caption names "hot dog"
    bag = Counter(expected_ok)
    bag["dog"] += sum("hot dog" in r["caption_concepts"] and "dog" not in r["caption_concepts"] for r in ok)
    assert {c: r["text_count"] for c, r in counts.items()} == {c: expected_ok.get(c, 0) for c in CONCEPTS}
    assert {c: r["text_count_all"] for c, r in counts.items()} == {c: expected_all.get(c, 0) for c in CONCEPTS}
    assert {c: r["text_count_bag"] for c, r in counts.items()} == {c: bag.get(c, 0) for c in CONCEPTS}
    assert expected_ok["hot dog"] > 0, "the demo web should hold a hot dog caption for the nested rule to matter"
    # rank 1 is the most frequent; the tail flag marks exactly the concepts the truth makes rare
    freq = {c: expected_ok.get(c, 0) for c in CONCEPTS}
    assert {c for c, r in counts.items() if r["tail"]} == tail_rule(freq)
    assert counts[max(freq, key=freq.get)]["rank"] == 1
    assert all(r["top_synonym"] == c for c, r in counts.items())  # no synonyms in the demo list


@pytest.mark.slow
def test_demo_clip_image_tags(demo_truth, demo_audit):
    """The demo CLIP zero-shot scores every ok image, and its head counts land near the truth.

    The 1.5M-parameter, 48 px demo CLIP is a 136-way zero-shot classifier with top-1 about 72% on the demo
    web; it confuses shapes of one colour (a lime triangle for the lime star). On this web its counts of the
    five most frequent concepts (distinct images; 370 ok rows hold 350) are off by 14 images of 200 in all:
    dog and cat within 5%, flower 8 over its 15. test_image_and_matched_counts_exact_with_oracle_embeddings
    checks the image path exactly.
    """
    summary, counts = demo_audit
    ok = [r for r in demo_truth if r["status"] == "ok"]
    truth = truth_images(ok)  # image counts are of distinct images: the web's exact duplicates count once
    assert summary["settings"]["image_threshold"] == 0.3
    assert summary["misalignment"]["ok_rows"] == len(ok)
    assert summary["misalignment"]["ok_images"] == len({r["sha256"] for r in ok}) < len(ok)
    heads = sorted(truth, key=lambda c: -truth[c])[:5]
    errors = {c: counts[c]["image_count"] - truth[c] for c in heads}
    print("head image counts minus truth:", errors)
    assert all(abs(errors[c]) <= 0.05 * truth[c] for c in heads[:2])  # the 5%, for the top two
    assert sum(map(abs, errors.values())) <= 0.15 * sum(truth[c] for c in heads)
    tags = pq.read_table(Path(summary["out"]) / "tags").to_pylist()
    assert all((r["image_top"] is not None) == (r["status"] == "ok") for r in tags)  # every ok image scored
    assert all(r["matched_count"] <= min(r["text_count"], r["image_count"]) for r in counts.values())


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="the demo CLIP mistakes same-colour shapes: flower is counted 23 times for 15 "
                                      "(see test_demo_clip_image_tags)")
def test_demo_clip_head_image_counts_within_5_percent(demo_truth, demo_audit):
    _, counts = demo_audit
    truth = truth_images([r for r in demo_truth if r["status"] == "ok"])
    for concept in sorted(truth, key=lambda c: -truth[c])[:5]:
        assert abs(counts[concept]["image_count"] - truth[concept]) <= 0.05 * truth[concept], concept


def test_image_and_matched_counts_exact_with_oracle_embeddings(demo_web, tmp_path, monkeypatch):
    """With image embeddings that encode the true concepts, image, matched and misalignment counts are exact."""
    _, web = demo_web
    truth = pq.read_table(web / "truth.parquet").to_pylist()
    captions = dict(zip(*pq.read_table(web / "urls.parquet", columns=["demo_id", "caption"]).to_pydict().values(),
                        strict=True))
    basis = np.linalg.qr(np.random.default_rng(0).normal(size=(160, len(CONCEPTS))))[0].T  # orthonormal rows
    index = {c: k for k, c in enumerate(CONCEPTS)}
    rows, emb = [], {}
    for r in truth:
        status = r["expected_status"]
        rows.append({"key": r["demo_id"], "caption": captions[r["demo_id"]], "status": status})
        if status == "ok" and r["concepts"]:
            v = basis[[index[c] for c in r["concepts"]]].sum(axis=0)
            emb[r["demo_id"]] = v / np.linalg.norm(v)
    run = make_run(tmp_path / "run", rows, emb)
    monkeypatch.setattr(audit_module, "concept_embeddings", lambda concepts, model, options: basis)
    summary = audit_run(run, AuditOptions(concepts="demo", image_threshold=0.4), report=False)
    counts = {r["concept"]: r for r in pq.read_table(Path(summary["out"]) / "counts.parquet").to_pylist()}
    ok = [r for r in truth if r["expected_status"] == "ok"]
    image = truth_counts(ok, "concepts")
    matched = Counter(c for r in ok for c in set(r["concepts"]) & set(r["caption_concepts"]))
    assert {c: r["image_count"] for c, r in counts.items()} == {c: image.get(c, 0) for c in CONCEPTS}
    assert {c: r["matched_count"] for c, r in counts.items()} == {c: matched.get(c, 0) for c in CONCEPTS}
    misaligned = sum(bool(r["concepts"]) and not set(r["concepts"]) & set(r["caption_concepts"]) for r in ok)
    assert summary["misalignment"]["misaligned"] == misaligned
    assert summary["misalignment"]["images_tagged"] == sum(bool(r["concepts"]) for r in ok)
    assert misaligned >= sum(r["mismatch"] or r["boilerplate"] for r in ok) * 0.9  # what the generator planted
    # ranked by the matched count instead: the tail follows the matched truth
    by_matched = audit_run(run, AuditOptions(concepts="demo", image_threshold=0.4, frequency="matched",
                                             tail_floor=2), report=False)
    counts = pq.read_table(Path(by_matched["out"]) / "counts.parquet").to_pylist()
    assert {r["concept"] for r in counts if r["tail"]} == tail_rule({c: matched.get(c, 0) for c in CONCEPTS},
                                                                   floor=2)


@pytest.mark.slow
def test_subset_coverage_delta(demo_run, demo_truth, demo_audit):
    """A subset that drops every caption naming a rare concept: the audit shows those tail concepts lost."""
    _, run, _ = demo_run
    ok = [r for r in demo_truth if r["status"] == "ok"]
    freq = truth_counts(ok, "caption_concepts")
    tail = tail_rule({c: freq.get(c, 0) for c in CONCEPTS}, floor=3)  # mentioned concepts only
    rare = set(tail)
    assert rare and all(freq.get(c, 0) > 0 for c in rare)
    kept = [r for r in demo_truth if not set(r["caption_concepts"]) & rare]
    write_manifest(run, "audit-no-tail", [r["key"] for r in kept])
    summary = audit_run(run, AuditOptions(concepts="demo", tail_floor=3), subset="audit-no-tail", report=False)
    delta = {r["concept"]: r for r in pq.read_table(Path(summary["out"]) / "subsets" / "audit-no-tail.parquet")
             .to_pylist()}
    expected = truth_counts([r for r in kept if r["status"] == "ok"], "caption_concepts")
    assert {c: r["subset_text_count"] for c, r in delta.items()} == {c: expected.get(c, 0) for c in CONCEPTS}
    assert {c for c, r in delta.items() if r["tail"]} == tail
    assert sorted(summary["subset"]["tail_concepts_lost"]) == sorted(rare)
    assert all(delta[c]["retained"] == 0.0 and delta[c]["lost"] for c in rare)
    assert summary["subset"]["tail_retained"] == 0.0 and 0 < summary["subset"]["head_retained"] < 1
    assert not any(delta[c]["subset_tail"] for c in rare)  # absent now: never mentioned in the subset, not tail


# ---------------------------------------------------------------- real captions

def test_coco_caption_counts_by_hand(tmp_path):
    """Caption-side counts on COCO's real captions: inflections count, "hotdog" and "hot dog" are not dogs."""
    captions = json.loads((shared_data() / "coco-mini" / "captions_train2017.json").read_text())["annotations"]
    rows = [{"key": str(a["id"]), "caption": a["caption"], "status": "ok"} for a in captions]
    summary = audit_run(make_run(tmp_path / "coco", rows), AuditOptions(concepts="coco80"), report=False)
    counts = {r["concept"]: r for r in pq.read_table(Path(summary["out"]) / "counts.parquet").to_pylist()}

    def by_hand(pattern: str, hide: str | None = None) -> int:
        word = re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE)
        return sum(bool(word.search(re.sub(hide, " ", a["caption"], flags=re.I) if hide else a["caption"]))
                   for a in captions)

    # established by reading the 400 captions: 23 mention "dog", one of them only inside "a hot dog";
    # "a hotdog" is another; "buses" (3 captions) counts for bus, "bushes" does not
    assert by_hand("dogs?") == 23 and by_hand("hot dog|hotdog") == 2 and by_hand("buses") == 3
    expected = {
        "dog": by_hand("dogs?", hide=r"hot dogs?"),               # 22
        "hot dog": by_hand("hot dogs?|hotdogs?"),                 # 2 (hotdog is a synonym in coco80)
        "bus": by_hand("bus|buses"),                              # 12
        "giraffe": by_hand("giraffes?"),
        "elephant": by_hand("elephants?"),
        "zebra": by_hand("zebras?"),
        "bear": by_hand("bears?", hide=r"teddy bears?"),
        "teddy bear": by_hand("teddy bears?|teddy|teddies"),
        "pizza": by_hand("pizzas?"),
    }
    assert expected["dog"] == 22 and expected["bus"] == 12
    assert {c: counts[c]["text_count"] for c in expected} == expected
    assert counts["dog"]["text_count_bag"] == 23  # the pure bag rule counts the hot dog caption as a dog
    assert counts["hot dog"]["top_synonym"] in {"hot dog", "hotdog"} and counts["hot dog"]["top_synonym_count"] == 1
    assert summary["misalignment"] is None  # no embeddings in this run: text counts only
    assert all(r["image_count"] == 0 for r in counts.values())
    assert counts["dog"]["text_image_count"] == 22  # ok rows: images exist (each key its own, without sha256)


# ---------------------------------------------------------------- log-linear analysis

def test_loglinear_matches_an_independent_computation():
    """Accuracy = 0.1 + 0.05 ln(count) + noise against the run's frequency: the paper's bins (12 linspace
    edges, digitize right=True), bin means and the correlation over bins 1..10 equal numpy's."""
    rng = np.random.default_rng(3)
    n = 300
    freq = np.concatenate([[0, 0, 1], np.round(np.exp(rng.uniform(0, 11, n - 3)))]).astype(np.int64)
    acc = np.clip(0.1 + 0.05 * np.log(np.maximum(freq, 1)) + rng.normal(0, 0.02, n), 0, 1)
    counts = pa.table({"concept_id": pa.array(range(n), pa.int32()), "concept": [f"c{i}" for i in range(n)],
                       "frequency": freq})
    accuracy = pa.table({"concept": [f"c{i}" for i in range(n)], "accuracy": acc})
    bins, fit, points = log_linear(counts, accuracy, bins=12)

    x = np.log(np.maximum(freq, 1))
    edges = np.linspace(x.min(), x.max(), num=12)
    which = np.digitize(x, edges, right=True)  # bin 0: x = min only; bin i: edges[i-1] < x <= edges[i]
    means = np.array([acc[which == b].mean() if (which == b).any() else np.nan for b in range(12)])
    assert np.allclose(bins.column("edge").to_numpy(), edges)
    assert np.allclose(bins.column("edge_count").to_numpy(), np.exp(edges))
    got = np.array([np.nan if v is None else v for v in bins.column("mean").to_pylist()])
    assert np.allclose(got, means, equal_nan=True)
    assert bins.column("rows").to_pylist() == np.bincount(which, minlength=12).tolist()
    used = ~np.isnan(means) & (np.arange(12) >= 1) & (np.arange(12) <= 10)
    r = np.corrcoef(edges[used], means[used])[0, 1]
    assert fit["pearson_r"] == pytest.approx(r, abs=1e-9) and r > 0.99
    assert fit["slope"] == pytest.approx(0.05, abs=0.005)  # the law it was drawn from
    assert points.num_rows == n


# ---------------------------------------------------------------- the command line

@pytest.mark.slow
def test_cli_audit_report(demo_run, demo_audit, tmp_path, capsys):
    from pipelines.cli import main

    _, run, _ = demo_run
    accuracy = tmp_path / "acc.csv"
    accuracy.write_text("concept,accuracy\n" + "".join(f"{c},{0.2 + 0.01 * i}\n" for i, c in enumerate(CONCEPTS)))
    assert main(["audit", str(run), "--concepts", "demo", "--accuracy", str(accuracy)]) == 0
    out = capsys.readouterr().out
    assert "head concept" in out and "log-linear: Pearson r" in out
    report = run / "audit" / "demo" / "report"
    assert {"index.html", "rank_frequency.png", "loglinear.png"} <= {p.name for p in report.iterdir()}
    page = (report / "index.html").read_text()
    assert "Log-linear analysis" in page and "Image tags: tagger softmax (threshold 0.3)" in page
    assert "Warning" not in page  # the demo CLIP on the demo web: its tags mean what they say
    assert main(["audit", str(run), "--concepts", str(tmp_path / "nope.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["audit", str(run), "--concepts", "demo", "--subset", "no-such-subset"]) == 2


@pytest.mark.slow
def test_ray_engine_gives_the_same_tags(demo_run, demo_audit, tmp_path):
    _, run, _ = demo_run
    copy = tmp_path / "demo_ray.txt"
    copy.write_text((BUILTIN["demo"]).read_text())
    summary = audit_run(run, AuditOptions(concepts=str(copy), engine="ray"), report=False)
    ray_tags = pq.read_table(Path(summary["out"]) / "tags").sort_by("key")
    local_tags = pq.read_table(Path(demo_audit[0]["out"]) / "tags").sort_by("key")
    assert ray_tags.column_names == local_tags.column_names and ray_tags.num_rows == local_tags.num_rows
    for name in ray_tags.column_names:
        ray_col, local_col = ray_tags.column(name), local_tags.column(name)
        if pa.types.is_floating(ray_col.type):  # engines batch differently: scores may differ in the last bits
            np.testing.assert_allclose(ray_col.to_numpy(zero_copy_only=False), local_col.to_numpy(zero_copy_only=False),
                                       rtol=1e-4, atol=1e-5, err_msg=name)
        else:
            assert ray_col.equals(local_col), name  # the tags themselves are exactly the same


# ---------------------------------------------------------------- issue 29: what a report may claim

def alt_text_pass(run: Path, rows: int = 2000) -> Path:
    """A text pass (annotate --text-only) of real alt-texts: every row not_fetched, no image, config text_only."""
    texts = pq.read_table(shared_data() / "alt-text" / "alt_text_10k.parquet", columns=["TEXT"]).column(0)
    make_run(run, [{"key": f"k{i:05d}", "caption": t, "status": "not_fetched"}
                   for i, t in enumerate(texts.to_pylist()[:rows])])
    (run / "config.yaml").write_text(yaml.safe_dump({"text_only": True}))
    return run


def test_text_pass_audit_speaks_of_caption_rows_and_the_tail_of_mentioned_concepts(tmp_path, capsys):
    """A text pass has no ok row and no image: the report says caption rows, no tagger, no image count, and
    text_image_count is null. ImageNet on alt-texts: most classes are never mentioned; they are counted on
    their own, and the tail is the bottom 20% of the mentioned ones, not every concept tied at zero."""
    from pipelines.cli import main

    run = alt_text_pass(tmp_path / "text")
    assert main(["audit", str(run), "--concepts", "imagenet1k", "--tail-fraction", "0.2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    page = (run / "audit" / "imagenet1k" / "report" / "index.html").read_text()
    assert "caption rows of a text pass" in page and "A text pass: caption rows only" in page
    for claim in ("ok rows", "ok images", "threshold None", "on None", "text_image_count", "image_count",
                  "Misalignment"):
        assert claim not in page, claim
    counts = pq.read_table(run / "audit" / "imagenet1k" / "counts.parquet").to_pylist()
    assert sum(r["text_count"] for r in counts) > 0
    assert all(r["text_image_count"] is None for r in counts)  # no image: not the caption count
    summary = json.loads((run / "audit" / "imagenet1k" / "_audit.json").read_text())["summary"]
    assert summary["caption_rows"] == 2000 and summary["ok_images"] is None and summary["misalignment"] is None
    assert "image_count" not in summary["units"]
    tail = summary["tail"]
    mentioned = {r["concept"]: r["frequency"] for r in counts if r["frequency"] > 0}
    assert tail["never_mentioned"] == 1000 - len(mentioned) > 500          # the ties at zero of the issue
    assert tail["mentioned"] == len(mentioned)
    assert {r["concept"] for r in counts if r["tail"]} == tail_rule(mentioned) and tail["concepts"] < len(mentioned)
    assert 0 < tail["share_of_mentions"] < 0.25
    assert f"{tail['never_mentioned']} concepts never mentioned" in page
    assert f"tail {tail['concepts']} of the {tail['mentioned']} mentioned concepts holding " \
        f"{tail['share_of_mentions']:.1%}" in out and f"never mentioned: {tail['never_mentioned']}" in out
    assert "images" not in out.split("head concept")[1].splitlines()[0]  # no image columns on a text pass


def test_demo_clip_on_other_photos_is_named_in_the_audit(tmp_path, monkeypatch, caplog):
    """A run embedded with the demo CLIP over photos that are not the demo web: its image tags and misalignment
    mean nothing; the audit says so (annotate's words) on the console, in _audit.json and in the report."""
    from pipelines.cli import main

    names = ["dog", "cat", "car"]
    basis = np.eye(len(names), 8, dtype=np.float32)
    rows = [{"key": f"k{i}", "caption": f"a {names[i % 3]}", "status": "ok"} for i in range(6)]
    run = make_run(tmp_path / "run", rows, {r["key"]: basis[(i + 1) % 3] for i, r in enumerate(rows)})
    monkeypatch.setattr(audit_module, "concept_embeddings", lambda concepts, model, options: basis)
    (tmp_path / "three.txt").write_text("\n".join(names) + "\n")
    web = tmp_path / "web"
    web.mkdir()
    (web / "truth.parquet").write_bytes(b"")
    text_pass = tmp_path / "text"  # `tailor fetch` from a text pass of the demo web: its input is under RUN
    text_pass.mkdir()
    (text_pass / "config.yaml").write_text(yaml.safe_dump({"input": {"path": str(web / "urls.parquet")}}))
    said = {}
    for where in ("photos", "web", "fetched"):  # photos: any table; web: a demo web (a folder with truth.parquet)
        if where == "fetched":
            (run / "fetched_from.json").write_text(json.dumps({"run": str(text_pass), "subset": "kept"}))
        source = tmp_path / where / "urls.parquet" if where != "fetched" else \
            text_pass / "fetch-inputs" / "kept-20261207T000000.parquet"  # what `tailor fetch` names its input
        (run / "config.yaml").write_text(yaml.safe_dump({"embed": {"model": "builtin:demo-clip"}, "output": str(run),
                                                         "input": {"path": str(source)}}))
        caplog.clear()
        assert main(["audit", str(run), "--concepts", str(tmp_path / "three.txt"), "--no-progress"]) == 0
        summary = json.loads((run / "audit" / "three" / "_audit.json").read_text())["summary"]
        page = (run / "audit" / "three" / "report" / "index.html").read_text()
        said[where] = (caplog.text, summary["warnings"], page, summary["misalignment"])
    log, warnings, page, misaligned = said["photos"]
    assert misaligned["misaligned"] == 6  # every image tagged another concept than its caption names
    assert "demo web's drawn shapes" in log and "demo web's drawn shapes" in warnings[0]
    assert "class='warning'>Warning: embed.model is builtin:demo-clip" in page
    for where in ("web", "fetched"):
        assert "drawn shapes" not in said[where][0] + " ".join(said[where][1]) + said[where][2], where


def test_a_failed_accuracy_file_leaves_the_summary_of_what_succeeded(tmp_path, capsys):
    """--accuracy fails after tagging (every run count is 0 or 1): exit 2 in one line, and _audit.json holds the
    counts' summary with the failure, the report says the analysis was not made."""
    from pipelines.cli import main

    run = make_run(tmp_path / "run", [{"key": f"k{i}", "caption": f"a {c}", "status": "ok"}
                                      for i, c in enumerate(CONCEPTS[:30])])
    accuracy = tmp_path / "acc.csv"
    accuracy.write_text("concept,accuracy\n" + "".join(f"{c},{0.01 * i}\n" for i, c in enumerate(CONCEPTS)))
    assert main(["audit", str(run), "--concepts", "demo", "--accuracy", str(accuracy), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tailor: --accuracy") and "_audit.json" in err and len(err.splitlines()) == 1
    summary = json.loads((run / "audit" / "demo" / "_audit.json").read_text())["summary"]
    assert summary is not None and summary["caption_rows"] == 30 and summary["tail"]["mentioned"] == 30
    assert summary["loglinear"]["error"].startswith("--accuracy")
    assert not (run / "audit" / "demo" / "loglinear.parquet").exists()
    assert "Not made: --accuracy" in (run / "audit" / "demo" / "report" / "index.html").read_text()
