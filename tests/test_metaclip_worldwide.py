"""Worldwide (MetaCLIP 2) balancing on hand-made runs (no Ray): per-language thresholds derived from English's
tail proportion (t_to_p, p_to_t against numpy written here, zeros and ties included), one matched text per image,
English alone equal to MetaCLIP v1, kept rows per language within 4 sd of their expectation over many seeds,
the same subset for the same seed, and `tailor metaclip-balance` writing the per-language figures to stats.json.

The rows carry what worldwide matching writes (the contract with the matcher): `match_lang` (the metadata
language a caption was matched in) and `metaclip_entries` (ids within that language's list); RUN/metadata/ID.parquet
holds entry_id, entry, lang.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from match_oracle import reference_decisions, reference_worldwide

from pipelines.cli import main as cli
from pipelines.core.config import ConfigError
from pipelines.core.duck import run_sql
from pipelines.verbs.metaclip import (
    MetaclipBalanceOptions,
    balance,
    balance_subset,
    entry_counts,
    find_matches,
    language_thresholds,
    p_to_t,
    t_to_p,
    worldwide_decisions,
    worldwide_thresholds,
)
from pipelines.verbs.select import parse_recipe, select

SIZES = {"en": 40, "zh": 25, "other": 12}  # entries in each language's list


# ---------------------------------------------------------------- numpy references, written here

def numpy_t_to_p(counts, t) -> float:
    counts = np.asarray(counts)
    return float(np.sum(np.where(counts < t, counts, 0)) / np.sum(counts))


def numpy_p_to_t(counts, p):
    ordered = np.sort(np.asarray(counts))
    share = np.cumsum(ordered) / ordered.sum()
    return ordered[np.argmin(np.abs(share - p))]


# ---------------------------------------------------------------- hand-made worldwide runs

def entries_of(sizes: dict[str, int] = SIZES) -> dict[str, list[str]]:
    # the same word in two lists on purpose: ids are per language, and so are the draws' counts
    return {lang: ["dog" if i == 0 else f"{lang}-{i}" for i in range(n)] for lang, n in sizes.items()}


def make_rows(n_images: int, seed: int, langs: dict[str, float], sizes: dict[str, int] = SIZES,
              max_texts: int = 3) -> list[dict]:
    """Images with 1..max_texts alt-texts each; a text's language drawn from `langs`, its entries Zipf-like."""
    rng = np.random.default_rng(seed)
    names, shares = list(langs), list(langs.values())
    rows = []
    for image in range(n_images):
        for _ in range(int(rng.integers(1, max_texts + 1))):
            lang = str(rng.choice(names, p=shares))
            ids = sorted({int(e) - 1 for e in rng.zipf(1.5, int(rng.integers(0, 4))) if e <= sizes[lang]})
            rows.append({"key": f"k{len(rows):06d}", "url": f"https://example.org/{image}.jpg",
                         "sha256": f"sha-{image}", "status": "ok", "match_lang": lang, "metaclip_entries": ids})
    return rows


def write_run(folder, rows: list[dict], sizes: dict[str, int] = SIZES, shards: int = 1, worldwide: bool = True,
              text_pass: bool = False) -> str:
    """A finished run whose annotations carry worldwide match lists (or, worldwide=False, v1 lists: no
    match_lang, metadata without lang)."""
    entries = entries_of(sizes)
    (folder / "annotations").mkdir(parents=True)
    (folder / "metadata").mkdir()
    metadata = {"entry_id": pa.array([i for lang in sizes for i in range(sizes[lang])], pa.int32()),
                "entry": [e for lang in sizes for e in entries[lang]]}
    if worldwide:
        metadata["lang"] = [lang for lang in sizes for _ in range(sizes[lang])]
    pq.write_table(pa.table(metadata), folder / "metadata" / "ww.parquet")
    table = pa.table({
        "key": [r["key"] for r in rows], "url": [r["url"] for r in rows],
        "sha256": [None if text_pass else r["sha256"] for r in rows],
        "status": ["not_fetched" if text_pass else r["status"] for r in rows],
        "clip_score": [None if text_pass else 0.3 for _ in rows],
        **({"match_lang": [r["match_lang"] for r in rows]} if worldwide else {}),
        "metaclip_entries": pa.array([r["metaclip_entries"] for r in rows], pa.list_(pa.int32())),
        "metadata_id": ["ww"] * len(rows)})
    step = -(-len(rows) // shards)
    for s in range(shards):
        pq.write_table(table.slice(s * step, step), folder / "annotations" / f"{s:05d}.parquet")
    if text_pass:
        (folder / "config.yaml").write_text("text_only: true\n")
    return str(folder)


def lists_of(rows):
    return {r["key"]: r["metaclip_entries"] for r in rows}


def decided(table: pa.Table) -> dict[str, str]:
    return dict(zip(table.column("key").to_pylist(), table.column("reason").to_pylist(), strict=True))


def counts_by_lang(rows, sizes=SIZES) -> dict[str, np.ndarray]:
    counts = {lang: np.zeros(n, np.int64) for lang, n in sizes.items() if any(r["match_lang"] == lang for r in rows)}
    for r in rows:
        for i in set(r["metaclip_entries"]):
            counts[r["match_lang"]][i] += 1
    return counts


# ---------------------------------------------------------------- t_to_p and p_to_t

T_TO_P_CASES = [
    ([5, 10, 20], 10),          # an entry counted exactly t is head: not in the tail
    ([5, 10, 20], 10.5),
    ([0, 0, 3, 0, 7], 4),       # zero counts add nothing
    ([0, 0, 3, 0, 7], 1),       # no entry below t: p = 0
    ([0, 0, 3, 0, 7], 100),     # every entry below t: p = 1
    ([2, 2, 2, 2], 2),          # ties at t
    ([1], 0.5),
]


@pytest.mark.parametrize("counts, t", T_TO_P_CASES)
def test_t_to_p_equals_numpy(counts, t):
    assert t_to_p(np.array(counts), t) == numpy_t_to_p(counts, t)


def test_t_to_p_random_and_undefined():
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.zipf(1.3, int(rng.integers(1, 300))) * (rng.random(1)[0] < 0.5 or rng.integers(0, 2, 1)[0])
        counts = np.where(rng.random(counts.size) < 0.3, 0, counts)
        if counts.sum() == 0:
            continue
        t = float(rng.choice([*counts, 0.5, 1e9]))
        assert t_to_p(counts, t) == numpy_t_to_p(counts, t)
    assert t_to_p([0, 0, 3, 0, 7], 4) == 0.3 and t_to_p([5, 10, 20], 10) == 5 / 35
    with pytest.raises(ValueError, match="no matches"):
        t_to_p(np.zeros(4, np.int64), 3)


P_TO_T_CASES = [
    ([1, 3], 0.625, 1),          # |0.25 - p| == |1 - p|: a tie, the first (smaller) count wins
    ([3, 1], 0.625, 1),          # sorted ascending first
    ([0, 0, 2, 2], 0.5, 2),
    ([0, 0, 2, 2], 0.1, 0),      # nearest is the zero counts' share, 0: a threshold of 0
    ([4, 6], 0.0, 4),            # no zero count: the smallest count
    ([0, 5, 1, 9, 3], 1.0, 9),   # p = 1: the largest count, everything is tail
    ([2, 2, 2, 2], 0.5, 2),      # tied counts
    ([7], 0.3, 7),
]


@pytest.mark.parametrize("counts, p, expected", P_TO_T_CASES)
def test_p_to_t_equals_numpy(counts, p, expected):
    assert p_to_t(np.array(counts), p) == numpy_p_to_t(counts, p) == expected


def test_p_to_t_random_zero_counts_and_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(300):
        counts = rng.zipf(1.4, int(rng.integers(1, 400)))
        counts = np.where(rng.random(counts.size) < 0.4, 0, counts)
        if counts.sum() == 0:
            continue
        p = float(rng.choice([rng.random(), 0.0, 1.0, numpy_t_to_p(counts, rng.choice(counts) + 0.5)]))
        assert p_to_t(counts, p) == numpy_p_to_t(counts, p)
        assert isinstance(p_to_t(counts, p), int)
    assert p_to_t(np.zeros(5, np.int64), 0.3) is None  # a language nothing matched in needs no threshold
    assert p_to_t(np.array([], np.int64), 0.3) is None


def test_language_thresholds_follow_english():
    counts = {"en": np.array([0, 1, 2, 5, 9, 30, 100]), "zh": np.array([0, 0, 4, 4, 8, 50]),
              "fr": np.array([3, 3, 3]), "xx": np.zeros(3, np.int64)}
    p, t = language_thresholds(counts, 9)
    assert p == numpy_t_to_p(counts["en"], 9) == 8 / 147
    assert t == {"en": 9, "zh": numpy_p_to_t(counts["zh"], p), "fr": 3, "xx": None}
    with pytest.raises(ConfigError, match="no English caption"):
        language_thresholds({"zh": counts["zh"]}, 9)
    with pytest.raises(ConfigError, match="no English caption"):
        language_thresholds({"en": np.zeros(3, np.int64), "zh": counts["zh"]}, 9)


# ---------------------------------------------------------------- balancing a run

def test_worldwide_decisions_equal_the_rule(tmp_path):
    rows = make_rows(300, seed=2, langs={"en": 0.5, "zh": 0.35, "other": 0.15})
    run = write_run(tmp_path / "run", rows, shards=3)
    matches = find_matches(run)
    assert matches.worldwide and matches.kind == "annotations"
    langs = {r["key"]: r["match_lang"] for r in rows}
    images = {r["key"]: r["sha256"] for r in rows}
    counts = {(r["lang"], r["entry"]): r["count"] for r in entry_counts(run).to_pylist()}
    expected = counts_by_lang(rows)
    assert counts == {(lang, entries_of()[lang][i]): int(c) for lang, v in expected.items() for i, c in enumerate(v)}
    for t, seed in [(4, 0), (9, 1), (2, 2), (1000, 3)]:
        result = decided(balance(run, t=t, seed=seed))
        assert result == reference_worldwide(lists_of(rows), langs, entries_of(), t, seed, images), (t, seed)
        reasons = set(result.values())
        assert reasons <= {"kept", "balanced_out", "other_text", "no_match"} and "other_text" in reasons
        picked = defaultdict(int)
        for key, reason in result.items():
            picked[images[key]] += reason in ("kept", "balanced_out")
        assert max(picked.values()) == 1  # one text per image


def test_english_alone_equals_metaclip_v1(tmp_path):
    """English only, one text per image: the same decisions as today's v1 balance, per caption or per image."""
    english = {"en": SIZES["en"]}  # v1 metadata: one list, its ids unique
    rows = make_rows(400, seed=3, langs={"en": 1.0}, max_texts=1)
    ww = write_run(tmp_path / "ww", rows, english)
    v1 = write_run(tmp_path / "v1", rows, english, worldwide=False)
    assert find_matches(ww).worldwide and not find_matches(v1).worldwide
    for t, seed in [(3, 0), (8, 1), (0.5, 2)]:
        worldwide = balance(ww, t=t, seed=seed)
        assert worldwide == balance(v1, t=t, seed=seed)
        assert worldwide == balance(v1, t=t, seed=seed, group_by="sha256")
        assert decided(worldwide) == reference_decisions(lists_of(rows), entries_of()["en"], t, seed)
        assert balance(ww, t=t, seed=seed, text_only=True) == balance(v1, t=t, seed=seed, text_only=True)
    # with several texts per image, English alone is v1's MetaCLIP 2 variant (--group-by)
    rows = make_rows(300, seed=4, langs={"en": 1.0})
    ww = write_run(tmp_path / "ww2", rows, english)
    v1 = write_run(tmp_path / "v12", rows, english, worldwide=False)
    assert balance(ww, t=5, seed=7) == balance(v1, t=5, seed=7, group_by="sha256")
    assert balance(ww, t=5, seed=7, text_only=True) == balance(v1, t=5, seed=7, group_by="url", text_only=True)


def test_kept_per_language_within_4_sd_of_its_expectation_over_many_seeds():
    """The SQL over many seeds, against each language's expected kept count computed here from the
    probabilities: per image, each matched text is picked with probability 1/m and kept with
    1 - prod(1 - t/max(count, t)); images are independent."""
    rows = make_rows(1500, seed=5, langs={"en": 0.55, "zh": 0.3, "other": 0.15})
    t_en = 20
    counts = counts_by_lang(rows)
    p = numpy_t_to_p(counts["en"], t_en)
    t = {lang: (t_en if lang == "en" else int(numpy_p_to_t(c, p))) for lang, c in counts.items()}
    assert 0.05 < p < 0.95 and all(v > 0 for v in t.values())
    by_image = defaultdict(list)
    for r in rows:
        if r["metaclip_entries"]:
            by_image[r["sha256"]].append(r)
    mean, var = defaultdict(float), defaultdict(float)
    for texts in by_image.values():
        share = defaultdict(float)  # probability that this image is kept through a text of each language
        for r in texts:
            c, lang = counts[r["match_lang"]], r["match_lang"]
            q = 1 - math.prod(1 - t[lang] / max(c[i], t[lang]) for i in set(r["metaclip_entries"]))
            share[lang] += q / len(texts)
        for lang, a in share.items():
            mean[lang] += a
            var[lang] += a * (1 - a)

    con = duckdb.connect()
    con.register("matches", pa.table({
        "key": [r["key"] for r in rows], "image": [r["sha256"] for r in rows],
        "lang": [r["match_lang"] for r in rows],
        "metaclip_entries": pa.array([r["metaclip_entries"] for r in rows], pa.list_(pa.int32()))}))
    entries = entries_of()
    con.register("entries", pa.table({"entry_id": pa.array([i for lang in SIZES for i in range(SIZES[lang])],
                                                           pa.int32()),
                                      "entry": [e for lang in SIZES for e in entries[lang]],
                                      "lang": [lang for lang in SIZES for _ in range(SIZES[lang])]}))
    con.register("entry_counts", run_sql(con, "metaclip_ww_entry_counts"))
    got_p, got_t = worldwide_thresholds(con, t_en)
    assert got_p == p and got_t == t
    seeds = 100
    kept = defaultdict(list)
    for seed in range(seeds):
        result = worldwide_decisions(con, seed)
        per_lang = defaultdict(int)
        for lang, ok in zip(result.column("lang").to_pylist(), result.column("kept").to_pylist(), strict=True):
            per_lang[lang] += ok
        for lang in t:
            kept[lang].append(per_lang[lang])
    for lang in t:
        sd = math.sqrt(var[lang])
        assert sd > 3, (lang, sd)  # the check means something
        assert all(abs(k - mean[lang]) <= 4 * sd for k in kept[lang]), (lang, mean[lang], sd, kept[lang])
        assert abs(np.mean(kept[lang]) - mean[lang]) <= 4 * sd / math.sqrt(seeds), (lang, mean[lang], sd)
    assert kept["en"] != kept["en"][::-1]  # the seeds draw different subsets


def test_same_seed_same_subset_on_any_layout(tmp_path):
    rows = make_rows(300, seed=6, langs={"en": 0.6, "zh": 0.4})
    one = write_run(tmp_path / "one", rows, shards=1)
    three = write_run(tmp_path / "three", rows, shards=3)
    first = balance(one, t=6, seed=11)
    assert first == balance(one, t=6, seed=11)
    assert first == balance(three, t=6, seed=11, threads=1) == balance(three, t=6, seed=11, threads=2)
    assert first != balance(one, t=6, seed=12)
    assert first.schema.names == ["key", "kept", "reason"]


def test_images_are_sha256_after_download_and_url_before(tmp_path):
    """After download an image is its sha256 (failed rows are no_image); on a text pass (status not_fetched) its
    url. Here two urls serve the same bytes: one image after download, two before."""
    rows = make_rows(200, seed=7, langs={"en": 0.7, "zh": 0.3}, max_texts=2)
    for r in rows:  # pairs of urls serve the same bytes
        r["sha256"] = "sha-" + str(int(r["url"].rsplit("/", 1)[1].split(".")[0]) // 2)
    rows[0]["status"], rows[1]["status"] = "http_error", "http_error"
    fetched = write_run(tmp_path / "fetched", rows)
    text = write_run(tmp_path / "text", rows, text_pass=True)
    langs = {r["key"]: r["match_lang"] for r in rows}
    ok = [r for r in rows if r["status"] == "ok"]
    by_sha = reference_worldwide(lists_of(ok), langs, entries_of(), 5, 0, {r["key"]: r["sha256"] for r in ok})
    result = decided(balance(fetched, t=5, seed=0))
    assert {k: v for k, v in result.items() if v != "no_image"} == by_sha
    assert {k for k, v in result.items() if v == "no_image"} == {rows[0]["key"], rows[1]["key"]}
    by_url = reference_worldwide(lists_of(rows), langs, entries_of(), 5, 0, {r["key"]: r["url"] for r in rows})
    assert decided(balance(fetched, t=5, seed=0, text_only=True)) == by_url
    stats = balance_subset(text, "t", MetaclipBalanceOptions(t=5, seed=0), plot=False)  # a text pass: text only
    assert stats["recipe"]["group_by"] == "url" and stats["worldwide"]["image"] == "url"
    assert stats["recipe"]["rows"] == "all captions (text only)"
    kept = set(pq.read_table(tmp_path / "text" / "subsets" / "t" / "manifest.parquet").column("key").to_pylist())
    assert kept == {k for k, v in by_url.items() if v == "kept"}


def test_select_step_balances_worldwide_like_the_verb(tmp_path):
    """In a recipe the step is a text step: images are urls, every caption of the pool is counted (the status step
    comes after), so it keeps what `metaclip-balance --text-only` keeps; a text pass decides the same."""
    rows = make_rows(250, seed=8, langs={"en": 0.5, "zh": 0.3, "other": 0.2})
    rows[3]["status"] = "timeout"
    run = write_run(tmp_path / "run", rows)
    text = write_run(tmp_path / "text", rows, text_pass=True)
    recipe = parse_recipe({"steps": [{"step": "metaclip_balance", "t": 7, "seed": 4}]})
    stats = select(run, recipe, "mc")
    select(text, recipe, "mc", phase="text")
    reference = decided(balance(run, t=7, seed=4, text_only=True))
    # the subset's stats.json keeps the step's per-language thresholds
    figures = stats["steps"][0]["figures"]["worldwide"]
    assert figures["t_en"] == 7 and figures["t"]["en"] == 7 and 0 < figures["p"] < 1 and figures["image"] == "url"
    assert set(figures["t"]) == {"en", "zh", "other"}
    for folder in (tmp_path / "run", tmp_path / "text"):
        table = pq.read_table(folder / "subsets" / "mc" / "decisions.parquet").to_pylist()
        got = {r["key"]: r["reason"] for r in table}
        expected = dict(reference)
        if folder.name == "run" and expected[rows[3]["key"]] == "kept":
            expected[rows[3]["key"]] = "status_timeout"
        assert got == expected, folder.name
    # after an image step the image is the sha256, and only fetched rows are left: as the verb's default
    select(run, parse_recipe({"steps": [{"step": "clip_score", "min_score": -1},
                                        {"step": "metaclip_balance", "t": 7, "seed": 4}]}), "after")
    got = {r["key"]: r["reason"] for r in pq.read_table(tmp_path / "run" / "subsets" / "after" /
                                                       "decisions.parquet").to_pylist()}
    expected = decided(balance(run, t=7, seed=4))
    assert expected[rows[3]["key"]] == "no_image" and got[rows[3]["key"]] == "status_timeout"
    assert {k: v for k, v in got.items() if k != rows[3]["key"]} == \
        {k: v for k, v in expected.items() if k != rows[3]["key"]}


def test_bad_worldwide_inputs_name_the_problem(tmp_path):
    rows = make_rows(50, seed=9, langs={"zh": 1.0})
    run = write_run(tmp_path / "zh", rows)
    with pytest.raises(ConfigError, match="no English caption .* languages matched: zh"):
        balance(run, t=4, seed=0)
    rows = make_rows(50, seed=9, langs={"en": 1.0})
    rows[0]["metaclip_entries"] = [SIZES["en"] + 5]
    with pytest.raises(ConfigError, match=r"\('en', 45\)"):
        balance(write_run(tmp_path / "unknown", rows), t=4, seed=0)
    run = write_run(tmp_path / "nolang", make_rows(50, seed=9, langs={"en": 1.0}))
    pq.write_table(pq.read_table(tmp_path / "nolang" / "metadata" / "ww.parquet").drop_columns(["lang"]),
                   tmp_path / "nolang" / "metadata" / "ww.parquet")
    with pytest.raises(ConfigError, match="no lang column"):
        balance(run, t=4, seed=0)


# ---------------------------------------------------------------- the command

def test_metaclip_balance_cli_writes_per_language_stats(tmp_path, capsys):
    rows = make_rows(400, seed=10, langs={"en": 0.5, "zh": 0.3, "other": 0.2})
    rows[5]["status"] = "http_error"
    run = write_run(tmp_path / "run", rows, shards=2)
    assert cli(["metaclip-balance", run, "--t", "8", "--seed", "0", "--name", "ww"]) == 0
    said = capsys.readouterr().out
    assert "kept" in said and "worldwide: t_en 8 gives English's tail proportion p" in said
    folder = tmp_path / "run" / "subsets" / "ww"
    stats = json.loads((folder / "stats.json").read_text())
    ok = [r for r in rows if r["status"] == "ok"]
    counts = counts_by_lang(ok)
    p = numpy_t_to_p(counts["en"], 8)
    t = {lang: (8 if lang == "en" else int(numpy_p_to_t(c, p))) for lang, c in counts.items()}
    worldwide = stats["worldwide"]
    assert worldwide["t_en"] == 8 and worldwide["p"] == round(p, 9) and worldwide["image"] == "sha256"
    assert stats["recipe"]["step"] == "metaclip2_balance" and stats["recipe"]["group_by"] == "sha256"
    decisions = pq.read_table(folder / "decisions.parquet").to_pylist()
    reason = {r["key"]: r["reason"] for r in decisions}
    assert reason[rows[5]["key"]] == "no_image"
    assert reason == {**reference_worldwide(lists_of(ok), {r["key"]: r["match_lang"] for r in rows}, entries_of(), 8,
                                            0, {r["key"]: r["sha256"] for r in ok}), rows[5]["key"]: "no_image"}
    assert list(worldwide["languages"]) == sorted(t)
    for lang, figures in worldwide["languages"].items():  # each language's t on the console
        assert re.search(rf"\n  {lang} +t +{figures['t']:g} +kept +{figures['kept']} / {figures['picked']} ", said)
    for lang, figures in worldwide["languages"].items():
        mine = [r for r in ok if r["match_lang"] == lang]
        c = counts[lang]
        assert figures == {
            "t": t[lang], "p": round(numpy_t_to_p(c, t[lang]), 9), "entries": SIZES[lang],
            "entries_matched": int(np.count_nonzero(c)), "head_entries": int(np.count_nonzero(c > t[lang])),
            "matches": int(c.sum()),
            "matches_kept": sum(len(set(r["metaclip_entries"])) for r in mine if reason[r["key"]] == "kept"),
            "captions": len(mine), "captions_matched": sum(bool(r["metaclip_entries"]) for r in mine),
            "picked": sum(reason[r["key"]] in ("kept", "balanced_out") for r in mine),
            "kept": sum(reason[r["key"]] == "kept" for r in mine)}, lang
    assert worldwide["languages"]["en"]["p"] == worldwide["p"]
    assert sum(f["kept"] for f in worldwide["languages"].values()) == stats["kept"] == stats["captions"]["kept"]
    kept = set(pq.read_table(folder / "manifest.parquet").column("key").to_pylist())
    assert kept == {k for k, v in reason.items() if v == "kept"} and len(kept) == stats["kept"]
    per_entry = pq.read_table(folder / "entry_stats.parquet")
    assert per_entry.schema.names == ["lang", "entry_id", "entry", "count", "kept_count", "t", "head", "p"]
    assert per_entry.num_rows == sum(SIZES.values())
    assert stats["entries"]["head"] == sum(f["head_entries"] for f in worldwide["languages"].values())
    assert {e["lang"] for e in stats["before"]["top_entries"]} <= set(SIZES)
    assert [s["name"] for s in stats["steps"]] == ["status", "metaclip2_balance"]
    assert (folder / "entry_counts.png").read_bytes()[:4] == b"\x89PNG"


def test_match_pass_outputs_give_the_same_balance(tmp_path):
    """RUN/match/shards and its stored entry_counts.parquet (every language of the metadata, as `tailor match`
    writes it) balance as the annotations' lists do."""
    rows = make_rows(200, seed=11, langs={"en": 0.6, "zh": 0.4})
    sizes = {**SIZES, "fr": 5}  # a language of the metadata no row was matched in
    run = write_run(tmp_path / "run", rows, sizes)
    match = tmp_path / "run" / "match"
    (match / "shards").mkdir(parents=True)
    pq.write_table(pq.read_table(tmp_path / "run" / "annotations").select(
        ["key", "match_lang", "metaclip_entries", "metadata_id"]), match / "shards" / "00000.parquet")
    counts = counts_by_lang(rows, sizes)
    entries = entries_of(sizes)
    pq.write_table(pa.table({
        "lang": [lang for lang in sizes for _ in range(sizes[lang])],
        "entry_id": pa.array([i for lang in sizes for i in range(sizes[lang])], pa.int32()),
        "entry": [e for lang in sizes for e in entries[lang]],
        "count": [int(counts[lang][i]) if lang in counts else 0 for lang in sizes for i in range(sizes[lang])]}),
        match / "entry_counts.parquet")
    (match / "_match.json").write_text(json.dumps({"summary": {"rows": len(rows)}, "settings": {"metadata_id": "ww"}}))
    assert find_matches(run).kind == "match" and find_matches(run).worldwide
    options = {"t": 6, "seed": 2, "text_only": True}
    assert balance(run, **options) == balance(run, source="annotations", **options)
    from_match = balance_subset(run, "m", MetaclipBalanceOptions(**options), plot=False)
    from_annotations = balance_subset(run, "a", MetaclipBalanceOptions(source="annotations", **options), plot=False)
    assert from_match["worldwide"] == from_annotations["worldwide"]
    assert set(from_match["worldwide"]["languages"]) == {"en", "zh"}
    assert from_match["entries"] == from_annotations["entries"]
