"""MetaCLIP curation end to end: match inside annotate and as its own pass, count, balance.

A user story: annotate the demo web with a `match:` section (the demo's concept names as metadata),
run `tailor match` over the same run, then `tailor metaclip-balance`. Checks: the match lists agree
between the two paths and with the demo's ground truth; every decision equals an independent
recomputation of MetaCLIP's rule from md5 draws; head entries keep about t captions (within 3 sigma
of their exact expectation), tail entries keep all; the same seed gives the same subset whatever
the number of matcher actors or DuckDB threads. A larger text-only run (30k captions from the demo
world's caption generator) makes the head/tail check sharp.

Counting note: "hot dog" captions also match "dog" (" dog " is in " a hot dog "), and a caption
naming two concepts is kept if either draw succeeds; expectations are therefore computed per caption
from its full match list, not from the ground-truth concept of the caption.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import demo_config
from match_oracle import metaclip_substr_matching, reference_decisions, spaced_entries

from operators.match import MatchOptions
from pipelines.cli import main as cli
from pipelines.core.config import AnnotateConfig, ConfigError
from pipelines.demo.web.world import CONCEPTS, make_caption, sample_concept
from pipelines.verbs.annotate import annotate
from pipelines.verbs.match import match_run
from pipelines.verbs.metaclip import MetaclipBalanceOptions, balance, balance_subset, entry_counts

pytestmark = pytest.mark.slow

NO_EMBED = ["embed=null"] if "embed" in AnnotateConfig.model_fields else []


# ---------------------------------------------------------------- expectations

def check_head_and_tail(lists: dict[str, list[int]], decided: dict[str, str], t: float) -> int:
    """Head entries keep their exact expectation within 3 sigma; tail entries keep every caption."""
    counts: dict[int, int] = defaultdict(int)
    for ids in lists.values():
        for i in ids:
            counts[i] += 1
    p = {i: t / max(c, t) for i, c in counts.items()}
    q = {k: 1 - math.prod(1 - p[i] for i in ids) for k, ids in lists.items()}
    by_entry: dict[int, list[str]] = defaultdict(list)
    for key, ids in lists.items():
        for i in ids:
            by_entry[i].append(key)
    heads = 0
    for i, keys in by_entry.items():
        kept = sum(decided[k] == "kept" for k in keys)
        if counts[i] <= t:
            assert kept == counts[i], i
            continue
        heads += 1
        mean = sum(q[k] for k in keys)  # t, plus what captions that also hold other entries add
        sigma = math.sqrt(sum(q[k] * (1 - q[k]) for k in keys))
        assert abs(kept - mean) <= 3 * sigma, (i, counts[i], kept, mean, sigma)
        alone = [k for k in keys if len(lists[k]) == 1]  # these are kept with probability t / count exactly
        n, p_alone = len(alone), p[i]
        kept_alone = sum(decided[k] == "kept" for k in alone)
        assert abs(kept_alone - n * p_alone) <= 3 * math.sqrt(n * p_alone * (1 - p_alone)), (i, n, kept_alone)
    return heads


def match_lists(folder) -> dict[str, list[int]]:
    table = pq.read_table(folder, columns=["key", "metaclip_entries"])
    return dict(zip(table.column("key").to_pylist(), table.column("metaclip_entries").to_pylist(), strict=True))


# ---------------------------------------------------------------- the demo web

@pytest.fixture(scope="module")
def concepts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("metadata") / "concepts.txt"
    path.write_text("\n".join(CONCEPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def demo_matched(ray_local, demo_web, concepts_file, tmp_path_factory):
    """The demo web annotated with the match stage, then `tailor match` over the same run."""
    _, web = demo_web
    run = tmp_path_factory.mktemp("metaclip-run")
    config = demo_config(web / "urls.parquet", run, "input.rows_per_shard=120", f"match.metadata={concepts_file}",
                         *NO_EMBED)
    summary = annotate(config, progress=False)
    assert cli(["match", str(run), "--metadata", str(concepts_file), "--no-progress"]) == 0
    return run, web, summary


def test_annotate_match_stage_agrees_with_standalone_pass_and_ground_truth(demo_matched, concepts_file):
    run, web, summary = demo_matched
    annotations = pq.read_table(run / "annotations").to_pylist()
    assert len(annotations) == summary["rows_in"] == summary["rows_out"] == 400
    assert len({r["metadata_id"] for r in annotations}) == 1
    inline = {r["key"]: r["metaclip_entries"] for r in annotations}
    assert match_lists(run / "match" / "shards") == inline  # same lists, both ways

    spaced = spaced_entries(list(CONCEPTS))
    truth = {r["demo_id"]: r["caption_concepts"] for r in pq.read_table(web / "truth.parquet").to_pylist()}
    checked = 0
    for row in annotations:
        assert row["metaclip_entries"] == metaclip_substr_matching(row["caption"], spaced)
        names = {CONCEPTS[i] for i in row["metaclip_entries"]}
        caption = row["caption"] or ""
        if caption == caption.lower() and '"' not in caption:  # the rule is case-sensitive; quotes glue
            assert set(truth[row["demo_id"]]) <= names, (caption, truth[row["demo_id"]])
            checked += 1
    assert checked > 200

    counts = pq.read_table(run / "match" / "entry_counts.parquet").to_pylist()
    assert [c["entry"] for c in counts] == list(CONCEPTS)
    by_name = {c["entry"]: c["count"] for c in counts}
    assert by_name["dog"] >= by_name["hot dog"] > 0 and by_name["dog"] > 40
    expected = defaultdict(int)
    for ids in inline.values():
        for i in ids:
            expected[CONCEPTS[i]] += 1
    assert by_name == {c: expected.get(c, 0) for c in CONCEPTS}
    info = json.loads((run / "match" / "_match.json").read_text())
    assert info["summary"]["rows"] == 400 and info["settings"]["punctuation"] == "faithful"
    assert entry_counts(str(run), source="annotations") == entry_counts(str(run), source="match")


def test_balancing_on_demo_web(demo_matched):
    run, _, _ = demo_matched
    lists = match_lists(run / "match" / "shards")
    t, seed = 8, 3
    # text only: every caption, as MetaCLIP curates before downloading
    decisions = balance(str(run), t=t, seed=seed, text_only=True)
    decided = dict(zip(decisions.column("key").to_pylist(), decisions.column("reason").to_pylist(), strict=True))
    assert decided == reference_decisions(lists, list(CONCEPTS), t, seed)
    assert decisions.column("kept").to_pylist() == [r == "kept" for r in decisions.column("reason").to_pylist()]
    assert check_head_and_tail(lists, decided, t) >= 5
    assert balance(str(run), t=t, seed=seed, source="annotations", text_only=True) == decisions
    assert balance(str(run), t=t, seed=seed, text_only=True) != balance(str(run), t=t, seed=seed + 1, text_only=True)

    # the default balances only rows whose image downloaded: counts and draws over them alone
    status = {r["key"]: r["status"] for r in pq.read_table(run / "annotations", columns=["key", "status"]).to_pylist()}
    failed = {k for k, s in status.items() if s != "ok"}
    assert 10 < len(failed) < 100
    decisions = balance(str(run), t=t, seed=seed)
    decided = dict(zip(decisions.column("key").to_pylist(), decisions.column("reason").to_pylist(), strict=True))
    assert decisions.num_rows == len(status)  # every caption decided once
    assert {k for k, r in decided.items() if r == "no_image"} == failed
    ok_lists = {k: ids for k, ids in lists.items() if k not in failed}
    assert {k: r for k, r in decided.items() if k not in failed} == reference_decisions(ok_lists, list(CONCEPTS),
                                                                                         t, seed)
    assert balance(str(run), t=t, seed=seed, source="annotations") == decisions
    assert balance(str(run), t=t, seed=seed, threads=1) == balance(str(run), t=t, seed=seed, threads=2) == decisions


def test_metaclip_balance_cli_writes_subset_and_stats(demo_matched):
    run, _, _ = demo_matched
    assert cli(["metaclip-balance", str(run), "--t", "8", "--seed", "3", "--name", "mc8"]) == 0
    folder = run / "subsets" / "mc8"
    written = pq.read_table(folder / "decisions.parquet")
    decisions = written.select(["key", "kept", "reason"])
    assert decisions == balance(str(run), t=8, seed=3)
    # select's decision columns too: the step that dropped a row (browse shows it), no detail
    assert {(r["reason"], r["step"], r["detail"]) for r in written.to_pylist()} == {
        ("kept", None, None), ("balanced_out", "metaclip_balance", None), ("no_match", "metaclip_balance", None),
        ("no_image", "status", None)}
    kept = {k for k, ok in zip(decisions.column("key").to_pylist(), decisions.column("kept").to_pylist(),
                               strict=True) if ok}
    assert set(pq.read_table(folder / "manifest.parquet").column("key").to_pylist()) == kept
    annotations = pq.read_table(run / "annotations", columns=["key", "status"]).to_pylist()
    statuses = {r["key"]: r["status"] for r in annotations}
    assert kept and all(statuses[k] == "ok" for k in kept)  # materialize can write every kept key
    stats = json.loads((folder / "stats.json").read_text())
    per_entry = pq.read_table(folder / "entry_stats.parquet").to_pylist()
    assert stats["captions"]["kept"] == len(kept) and stats["captions"]["total"] == 400
    assert stats["entries"]["head"] == sum(e["count"] > 8 for e in per_entry) >= 5
    assert stats["before"]["tail_share_of_matches"] < stats["after"]["tail_share_of_matches"]
    assert stats["after"]["max_count"] < stats["before"]["max_count"]
    assert sum(stats["before"]["count_distribution"].values()) == len(CONCEPTS)
    assert stats["recipe"] == {"step": "metaclip_balance", "t": 8, "seed": 3, "group_by": None, "source": "match",
                               "metadata_id": stats["recipe"]["metadata_id"], "rows": "ok rows (image downloaded)"}
    assert stats["captions"]["by_reason"]["no_image"] == sum(s != "ok" for s in statuses.values())
    assert (folder / "entry_counts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from pipelines.browse.export import export
    from pipelines.browse.views import Browser

    dropped = next(r["key"] for r in written.to_pylist() if r["reason"] == "balanced_out")
    browser = Browser(str(run))
    assert browser.sample(dropped, neighbours=0)["decisions"]["mc8"] == {
        "kept": False, "reason": "balanced_out", "step": "metaclip_balance", "detail": None}
    # the page's "dropped by step" and "reason" lists come from stats.json, as for a select subset
    listed = next(s for s in browser.meta()["subsets"] if s["name"] == "mc8")
    assert listed["steps"] == ["status", "metaclip_balance"] and listed["kept"] == len(kept)
    assert {r: v["step"] for r, v in listed["reasons"].items()} == {
        "no_image": "status", "balanced_out": "metaclip_balance", "no_match": "metaclip_balance"}
    assert [s["rows_out"] for s in stats["steps"]][-1] == len(kept) == stats["rows"] - stats["dropped"]
    assert export(str(run), run / "browse-copy", limit=20, groups=2, neighbours=0)["samples"] == 20
    out = run / "shards-mc8"
    assert cli(["materialize", str(run), "mc8", "--out", str(out), "--no-progress"]) == 0  # no --skip-missing
    assert len(list(out.glob("*.tar"))) >= 1

    assert cli(["metaclip-balance", str(run), "--t", "8", "--seed", "3", "--name", "mc8-text", "--text-only"]) == 0
    text = json.loads((run / "subsets" / "mc8-text" / "stats.json").read_text())
    assert text["recipe"]["rows"] == "all captions (text only)" and "no_image" not in text["captions"]["by_reason"]
    assert [s["name"] for s in text["steps"]] == ["metaclip_balance"]


def test_metaclip2_one_text_per_image(demo_matched):
    run, _, _ = demo_matched
    lists = match_lists(run / "match" / "shards")
    rows = pq.read_table(run / "annotations", columns=["key", "sha256"]).to_pylist()
    images = {r["key"]: r["sha256"] for r in rows}
    assert len(set(images.values())) < len(rows) - 20  # exact duplicates share an image (and failures have none)
    decisions = balance(str(run), t=8, seed=3, group_by="sha256", text_only=True)
    decided = dict(zip(decisions.column("key").to_pylist(), decisions.column("reason").to_pylist(), strict=True))
    assert decided == reference_decisions(lists, list(CONCEPTS), 8, 3, images=images)
    picked = defaultdict(int)
    for key, reason in decided.items():
        if reason in ("kept", "balanced_out"):
            picked[images[key] or key] += 1
    assert set(picked.values()) == {1} and "other_text" in decided.values()
    with pytest.raises(ConfigError, match="group_by"):
        balance(str(run), t=8, seed=3, group_by="no_such_column")


def test_match_pass_resumes_refuses_other_settings_and_redoes_on_overwrite(demo_matched, concepts_file, capsys):
    run, _, _ = demo_matched
    before = match_lists(run / "match" / "shards")
    shard = sorted((run / "match" / "shards").iterdir())[0]
    shard.unlink()  # as if killed before this shard was written
    summary = match_run(str(run), MatchOptions(metadata=str(concepts_file)), progress=False)
    assert summary["shards"] == {"total": 4, "skipped_already_done": 3}
    assert match_lists(run / "match" / "shards") == before
    with pytest.raises(ConfigError, match="other settings \\(punctuation: faithful != fixed; stored != now\\)"):
        match_run(str(run), MatchOptions(metadata=str(concepts_file), punctuation="fixed"), progress=False)
    assert cli(["match", str(run), "--metadata", str(run / "nope.txt")]) == 2
    assert "metadata file not found" in capsys.readouterr().err
    summary = match_run(str(run), MatchOptions(metadata=str(concepts_file), punctuation="fixed"), actors=1,
                        overwrite=True, progress=False)
    assert summary["shards"]["skipped_already_done"] == 0
    assert match_lists(run / "match" / "shards") == before  # no concept holds punctuation


# ---------------------------------------------------------------- a larger text-only run

def make_text_run(folder, captions: list[str], rows_per_shard: int) -> None:
    """A run folder as annotate leaves it, text columns only: annotations/SHARD.parquet + _done markers."""
    (folder / "annotations").mkdir(parents=True)
    (folder / "_done").mkdir()
    for start in range(0, len(captions), rows_per_shard):
        shard = f"{start // rows_per_shard:05d}"
        part = captions[start:start + rows_per_shard]
        keys = [f"{shard}{i:07d}" for i in range(len(part))]
        pq.write_table(pa.table({"key": keys, "caption": part}), folder / "annotations" / f"{shard}.parquet")
        (folder / "_done" / f"{shard}.json").write_text(json.dumps({"shard": shard, "rows": len(part)}))


@pytest.fixture(scope="module")
def world_run(ray_local, concepts_file, tmp_path_factory):
    rng = np.random.default_rng(11)
    captions = []
    for _ in range(30_000):
        first = sample_concept(rng)
        pair = [first, sample_concept(rng, exclude=[first])] if rng.random() < 0.2 else [first]
        captions.append(make_caption(rng, pair).text)
    one, two = tmp_path_factory.mktemp("world-1"), tmp_path_factory.mktemp("world-2")
    make_text_run(one, captions, 4000)
    shutil.copytree(one, two, dirs_exist_ok=True)
    options = MatchOptions(metadata=str(concepts_file))
    match_run(str(one), options, actors=1, progress=False)
    match_run(str(two), options, actors=2, progress=False)
    return one, two


def test_head_entries_keep_about_t_and_workers_do_not_change_the_subset(world_run):
    one, two = world_run
    lists = match_lists(one / "match" / "shards")
    assert lists == match_lists(two / "match" / "shards")  # 1 and 2 matcher actors
    t, seed = 300, 0
    decisions = balance(str(one), t=t, seed=seed, threads=1, text_only=True)
    assert decisions == balance(str(two), t=t, seed=seed, threads=2, text_only=True)
    with pytest.raises(ConfigError, match="no status column .* --text-only"):
        balance(str(one), t=t, seed=seed)  # nothing was fetched: balancing images needs the flag
    decided = dict(zip(decisions.column("key").to_pylist(), decisions.column("reason").to_pylist(), strict=True))
    assert decided == reference_decisions(lists, list(CONCEPTS), t, seed)
    assert check_head_and_tail(lists, decided, t) >= 8
    stats = balance_subset(str(one), "t300", MetaclipBalanceOptions(t=t, seed=seed, text_only=True), plot=False)
    assert stats["captions"]["kept"] == sum(r == "kept" for r in decided.values())
    assert stats["after"]["max_count"] < stats["before"]["max_count"] / 3
    assert stats["before"]["tail_share_of_matches"] < stats["after"]["tail_share_of_matches"]
