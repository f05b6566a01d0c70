"""select: recipes of SQL steps give the subsets the demo web's ground truth says they should."""

from __future__ import annotations

import collections
import itertools
import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import run_with_truth

from pipelines.core.config import ConfigError
from pipelines.core.duck import DuckOptions
from pipelines.verbs.select import RECIPES, load_recipe, near_masks, parse_recipe, select


def recipe(*steps: dict):
    return parse_recipe({"steps": list(steps)})


def decisions(run, name) -> dict[str, dict]:
    return {r["key"]: r for r in pq.read_table(run / "subsets" / name / "decisions.parquet").to_pylist()}


def fake_run(folder, **columns) -> str:
    """A run folder holding only annotations (every row ok unless `status` is given)."""
    n = len(next(iter(columns.values())))
    table = {"key": [f"{i:015d}" for i in range(n)], "status": ["ok"] * n} | columns
    (folder / "annotations").mkdir(parents=True)
    pq.write_table(pa.table(table), folder / "annotations" / "00000.parquet")
    return str(folder)


# ---------------------------------------------------------------- the demo web's ground truth

@pytest.fixture(scope="module")
def truth_rows(demo_run):
    return run_with_truth(demo_run)


@pytest.mark.slow
def test_exact_and_near_duplicates_match_the_injected_ones(truth_rows):
    run, rows, truth = truth_rows
    select(str(run), recipe({"step": "exact_dedup"}, {"step": "near_dedup", "max_hamming": 4}), "dedup")
    decided = decisions(run, "dedup")
    ok = [r for r in rows if r["status"] == "ok"]
    group = {r["key"]: truth[r["demo_id"]]["dup_group"] or r["demo_id"] for r in ok}

    # exact: of every set of byte-identical copies exactly one survives the exact step (recall 1.0)
    by_sha = collections.defaultdict(list)
    for r in ok:
        by_sha[r["sha256"]].append(r["key"])
    injected_exact = [r for r in ok if truth[r["demo_id"]]["dup_kind"] == "exact"]
    assert injected_exact
    for copies in by_sha.values():
        assert sum(decided[k]["reason"] != "exact_duplicate" for k in copies) == 1
    for r in injected_exact:
        assert any(decided[k]["reason"] == "exact_duplicate" for k in by_sha[r["sha256"]])

    # near: distinct images of one injected group that should go, against what the near step dropped
    distinct = collections.defaultdict(set)
    for r in ok:
        if decided[r["key"]]["reason"] != "exact_duplicate":
            distinct[group[r["key"]]].add(r["key"])
    expected = sum(len(keys) - 1 for keys in distinct.values())
    near = [d for d in decided.values() if d["reason"] == "near_duplicate"]
    right = [d for d in near if group[d["key"]] == group[d["detail"]]]
    precision, recall = len(right) / len(near), len(right) / expected
    print(f"near duplicates: {len(near)} dropped, {len(right)} right, {expected} injected; "
          f"precision {precision:.3f} recall {recall:.3f}")
    assert expected >= 10
    assert precision >= 0.99 and recall >= 0.95


@pytest.mark.slow
def test_boilerplate_captions_are_dropped(truth_rows):
    run, rows, truth = truth_rows
    select(str(run), recipe({"step": "boilerplate"}), "boilerplate")
    decided = decisions(run, "boilerplate")
    ok = [r for r in rows if r["status"] == "ok"]
    boiler = [r for r in ok if truth[r["demo_id"]]["boilerplate"]]
    assert boiler
    assert all(decided[r["key"]]["reason"].startswith("caption_") for r in boiler)
    others = [r for r in ok if not truth[r["demo_id"]]["boilerplate"]]
    false = [r["caption"] for r in others if decided[r["key"]]["reason"] != "kept"]
    print(f"boilerplate: {len(boiler)} dropped; {len(false)} other captions dropped as shared: {false[:5]}")
    assert all(decided[r["key"]]["reason"] == "caption_shared" for r in others if decided[r["key"]]["reason"] != "kept")


def clip_step_rates(truth_rows, name):
    run, rows, truth = truth_rows
    demo = load_recipe("demo")
    threshold = next(s for s in demo.steps if s.name == "clip_score")
    select(str(run), recipe({"step": "clip_score", **threshold.model_dump()}), name)
    decided = decisions(run, name)
    ok = [r for r in rows if r["status"] == "ok" and not truth[r["demo_id"]]["boilerplate"]]
    matched = np.mean([decided[r["key"]]["kept"] for r in ok if not truth[r["demo_id"]]["mismatch"]])
    mismatched = np.mean([not decided[r["key"]]["kept"] for r in ok if truth[r["demo_id"]]["mismatch"]])
    print(f"clip_score {threshold.min_score}: kept {matched:.3f} of matched, dropped {mismatched:.3f} of mismatched")
    return matched, mismatched


@pytest.mark.slow
def test_clip_score_step_keeps_matched_and_drops_mismatched_pairs(truth_rows):
    # What the 1.5M-parameter, 48 px demo CLIP achieves at the demo recipe's threshold (0.99 / 0.75 on this
    # 400-page web, 0.99 / 0.85 on the 1,000-page demo): its misses are captions naming a concept of the same
    # colour as one the image shows (a "dress" on a red circle "dog") and alt-text noise ("IMG_1234 - ...").
    matched, mismatched = clip_step_rates(truth_rows, "clip")
    assert matched >= 0.95 and mismatched >= 0.75


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="the issue's target (>= 0.90 of mismatched dropped) needs a stronger demo CLIP")
def test_clip_score_step_meets_the_issue_target(truth_rows):
    matched, mismatched = clip_step_rates(truth_rows, "clip-target")
    assert matched >= 0.95 and mismatched >= 0.90


@pytest.mark.slow
def test_demo_recipe_accounts_for_every_row_and_reruns_identically(truth_rows):
    run, rows, _ = truth_rows
    stats = select(str(run), load_recipe("demo"), "demo", DuckOptions(threads=1))
    decided = decisions(run, "demo")
    assert sorted(decided) == sorted(r["key"] for r in rows)
    manifest = pq.read_table(run / "subsets" / "demo" / "manifest.parquet").column("key").to_pylist()
    assert manifest == sorted(k for k, d in decided.items() if d["kept"])
    assert stats["kept"] == len(manifest) and stats["rows"] == len(rows)
    assert sum(s["dropped"] for s in stats["steps"]) == len(rows) - len(manifest)
    for step in stats["steps"]:
        assert step["rows_out"] == step["rows_in"] - step["dropped"]
    assert all(d["kept"] == (d["reason"] == "kept") for d in decided.values())
    # failed rows carry their status as the reason
    statuses = collections.Counter(r["status"] for r in rows if r["status"] != "ok")
    assert {f"status_{s}": n for s, n in statuses.items()} == stats["steps"][0]["by_reason"]

    # the resolved recipe.yaml is a recipe: running it (with other threads) gives the same subset
    resolved = run / "subsets" / "demo" / "recipe.yaml"
    again = select(str(run), load_recipe(resolved), "demo-again", DuckOptions(threads=2))
    assert again["kept"] == stats["kept"]
    assert pq.read_table(run / "subsets" / "demo-again" / "decisions.parquet").equals(
        pq.read_table(run / "subsets" / "demo" / "decisions.parquet"))
    with pytest.raises(ConfigError, match="exists"):
        select(str(run), load_recipe("demo"), "demo")


@pytest.mark.slow
def test_cli_select_prints_steps_and_refuses_a_bad_recipe(truth_rows, tmp_path):
    run, _, _ = truth_rows
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "select", str(run), "--recipe", "datacomp-basic",
                           "--name", "cli-basic"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "basic" in done.stdout and "kept" in done.stdout
    stats = json.loads((run / "subsets" / "cli-basic" / "stats.json").read_text())
    assert stats["steps"][1]["name"] == "basic" and stats["steps"][1]["rows_in"] > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"steps": [{"step": "clip_score", "min_score": "high"}]}))
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "select", str(run), "--recipe", str(bad),
                           "--name", "bad"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "step 1 (clip_score): min_score" in done.stderr


# ---------------------------------------------------------------- steps against independent references

def test_near_dedup_finds_every_pair_within_the_distance_like_all_pairs(tmp_path):
    rng = np.random.default_rng(3)
    bases = rng.integers(0, 2**63, size=300, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 300, np.uint64)
    hashes = list(bases)
    for base in bases[:120]:  # plant neighbours 1-6 bits away, some chained
        for _ in range(int(rng.integers(1, 4))):
            flips = rng.choice(64, size=int(rng.integers(1, 7)), replace=False)
            hashes.append(base ^ np.uint64(sum(1 << int(b) for b in flips)))
    hashes += hashes[:5]  # identical hashes
    n = len(hashes)
    run = fake_run(tmp_path / "run", phash=pa.array(hashes, pa.uint64()),
                   clip_score=pa.array(rng.uniform(0, 1, n), pa.float64()))
    for k in (0, 2, 4, 6):
        select(run, recipe({"step": "near_dedup", "max_hamming": k}), f"k{k}", overwrite=True)
        decided = decisions(tmp_path / "run", f"k{k}")
        # reference: all pairs, union-find, keep the best (score, key) of each component
        parent = list(range(n))

        def find(i, parent=parent):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i, j in itertools.combinations(range(n), 2):
            if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= k:
                parent[find(i)] = find(j)
        scores = pq.read_table(tmp_path / "run" / "annotations").column("clip_score").to_pylist()
        keys = [f"{i:015d}" for i in range(n)]
        best = {}
        for i in range(n):
            root = find(i)
            if root not in best or (-scores[i], keys[i]) < (-scores[best[root]], keys[best[root]]):
                best[root] = i
        kept = {keys[i] for i in best.values()}
        assert {k_ for k_, d in decided.items() if d["kept"]} == kept, f"max_hamming={k}"


def test_multi_index_masks_cover_every_pair_of_blocks():
    for k in range(0, 9):
        masks = near_masks(k).column("mask").to_pylist()
        assert len(masks) == (k + 2) * (k + 1) // 2
        # any k flipped bits leave at least one mask untouched (the pigeonhole the SQL relies on)
        rng = np.random.default_rng(k)
        for _ in range(200):
            flipped = sum(1 << int(b) for b in rng.choice(64, size=k, replace=False)) if k else 0
            assert any(m & flipped == 0 for m in masks)


def test_top_fraction_threshold_is_datacomps(tmp_path):
    rng = np.random.default_rng(0)
    scores = np.round(rng.uniform(-0.1, 0.5, 1000), 3)  # ties included
    scores_with_missing = list(scores) + [None] * 7
    run = fake_run(tmp_path / "run", clip_score=pa.array(scores_with_missing, pa.float64()))
    for fraction in (0.3, 0.05, 1.0):
        select(run, recipe({"step": "clip_score", "top_fraction": fraction}), "top", overwrite=True)
        decided = decisions(tmp_path / "run", "top")
        threshold = -np.sort(-scores)[min(int(len(scores) * fraction), len(scores) - 1)]
        expected = {f"{i:015d}" for i, s in enumerate(scores) if s >= threshold}
        assert {k for k, d in decided.items() if d["kept"]} == expected
        assert sum(d["reason"] == "no_clip_score" for d in decided.values()) == 7


def test_basic_filter_applies_datacomps_conditions_in_order(tmp_path):
    run = fake_run(
        tmp_path / "run",
        caption=["a red dog on grass", "une photo de chien", "two words", "a b c", "a dog on a bed", "wide one here",
                 "a cat on a mat", None],
        caption_lang=["en", "fr", "en", "en", "en", "en", "en", None],
        caption_lang_score=[0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.2, None],
        caption_words=[5, 4, 2, 3, 5, 3, 4, 0],
        caption_chars=[18, 18, 9, 5, 14, 13, 14, 0],
        original_width=[400, 400, 400, 400, 150, 1000, 400, 400],
        original_height=[300, 300, 300, 300, 800, 300, 300, 300],
    )
    select(run, recipe({"step": "basic"}), "basic")
    reasons = [d["reason"] for _, d in sorted(decisions(tmp_path / "run", "basic").items())]
    assert reasons == ["kept", "caption_language", "caption_too_few_words", "caption_too_short", "image_too_small",
                       "image_aspect_ratio", "kept", "caption_language"]
    select(run, recipe({"step": "basic", "min_lang_score": 0.5}), "confident")
    assert decisions(tmp_path / "run", "confident")["000000000000006"]["reason"] == "caption_language"


def test_exact_dedup_keeps_the_best_scored_then_smallest_key(tmp_path):
    run = fake_run(tmp_path / "run", sha256=["a", "a", "a", "b", "b", "c"],
                   clip_score=pa.array([0.1, 0.3, 0.3, None, 0.2, None], pa.float64()))
    select(run, recipe({"step": "exact_dedup"}), "x")
    kept = sorted(k for k, d in decisions(tmp_path / "run", "x").items() if d["kept"])
    assert kept == ["000000000000001", "000000000000004", "000000000000005"]


def test_metaclip_step_equals_metaclip_balance_over_the_same_pool(tmp_path):
    from pipelines.verbs.metaclip import balance

    rng = np.random.default_rng(1)
    n = 400
    entries = [sorted({int(e) for e in rng.zipf(1.5, int(rng.integers(0, 4))) if e < 50}) for _ in range(n)]
    run = fake_run(tmp_path / "run", metaclip_entries=pa.array(entries, pa.list_(pa.int32())),
                   metadata_id=["m1"] * n)
    (tmp_path / "run" / "metadata").mkdir()
    pq.write_table(pa.table({"entry_id": pa.array(range(50), pa.int32()), "entry": [f"e{i}" for i in range(50)]}),
                   tmp_path / "run" / "metadata" / "m1.parquet")
    select(run, recipe({"step": "metaclip_balance", "t": 10, "seed": 3}), "mc")
    decided = decisions(tmp_path / "run", "mc")
    reference = {r["key"]: r for r in balance(run, t=10, seed=3).to_pylist()}
    assert {k for k, d in decided.items() if d["kept"]} == {k for k, r in reference.items() if r["kept"]}
    # the step names its drops as `tailor metaclip-balance` does, key by key
    assert {k: d["reason"] for k, d in decided.items() if not d["kept"]} == \
        {k: r["reason"] for k, r in reference.items() if not r["kept"]}
    assert {d["reason"] for d in decided.values()} == {"kept", "balanced_out", "no_match"}


# ---------------------------------------------------------------- bad recipes and hostile values

def test_injection_attempts_are_rejected_or_bound_as_plain_values(tmp_path):
    with pytest.raises(ConfigError, match=r"step 1 \(clip_score\): min_score: .*DROP TABLE"):
        parse_recipe({"steps": [{"step": "clip_score", "min_score": "0.3; DROP TABLE annotations"}]})
    run = fake_run(tmp_path / "run", caption=["a dog on a bed"] * 3, caption_lang=["en"] * 3,
                   caption_lang_score=[0.9] * 3, caption_words=[5] * 3, caption_chars=[14] * 3,
                   original_width=[300] * 3, original_height=[300] * 3)
    hostile = "en'; DROP TABLE pool; --"
    stats = select(run, recipe({"step": "basic", "language": hostile}), "hostile")
    assert stats["by_reason"] == {"caption_language": 3}  # compared as a string, matched nothing
    assert pq.read_table(tmp_path / "run" / "annotations").num_rows == 3
    stats = select(run, recipe({"step": "basic", "language": "en"}), "plain")
    assert stats["kept"] == 3


@pytest.mark.parametrize("steps, message", [
    ([{"step": "dedupe"}], "step 1: unknown step 'dedupe'"),
    ([{"step": "exact_dedup"}, {"step": "near_dedup", "max_hamming": "four"}], "step 2 (near_dedup): max_hamming"),
    ([{"step": "clip_score"}], "step 1 (clip_score): give exactly one of min_score and top_fraction"),
    ([{"step": "clip_score", "min_score": 0.2, "top_fraction": 0.3}], "exactly one"),
    ([{"step": "boilerplate", "max_imges": 3}], "step 1 (boilerplate): max_imges: Extra inputs"),
    ([{"step": "boilerplate", "patterns": ["(unclosed"]}], "is not a regular expression"),
    ([{"step": "metaclip_balance"}], "step 1 (metaclip_balance): t: Field required"),
    ([{"min_score": 0.3}], "expected a mapping with a 'step' name"),
    ("exact_dedup", "'steps' must be a list of steps"),
])
def test_bad_recipes_get_one_line_naming_the_step_and_field(steps, message):
    with pytest.raises(ConfigError) as err:
        parse_recipe({"steps": steps})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_step_needing_a_column_the_run_lacks_is_refused_before_running(tmp_path, capsys):
    run = fake_run(tmp_path / "run", caption=["a dog"], original_width=[300], original_height=[300])
    with pytest.raises(ConfigError, match=r"step 1 \(basic\): needs column\(s\) \['caption_lang'"):
        select(run, recipe({"step": "basic"}), "x")
    with pytest.raises(ConfigError, match=r"step 2 \(near_dedup\): needs column\(s\) \['phash'\]"):
        select(run, recipe({"step": "boilerplate", "max_images": 3}, {"step": "near_dedup"}), "x")
    assert not (tmp_path / "run" / "subsets" / "x" / "stats.json").exists()
    # real photos annotated with embed: null, as the README advises without a checkpoint: the shipped CLIP
    # recipes are refused in one line that says what to set
    from pipelines.cli import main as cli

    photos = fake_run(tmp_path / "photos", caption=["a dog on a beach"], caption_lang=["en"],
                      caption_lang_score=[0.9], caption_words=[5], caption_chars=[16], original_width=[300],
                      original_height=[300], sha256=["ab"], phash=pa.array([1], pa.uint64()))
    for shipped in ("laion-style", "datacomp-clip-top30", "demo"):
        assert cli(["select", photos, "--recipe", shipped, "--name", "x"]) == 2
        said = capsys.readouterr().err.strip()
        assert len(said.splitlines()) == 1 and "['clip_score']" in said and "embed.model" in said, said
    with pytest.raises(ConfigError, match="not a valid subset name"):
        select(run, recipe({"step": "exact_dedup"}), "../escape")


def test_shipped_recipes_parse():
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    assert {"laion-style", "datacomp-basic", "datacomp-clip-top30", "metaclip-balanced", "demo", "raw"} <= set(names)
    for name in names:
        assert load_recipe(name).steps or name == "raw"  # raw: no step but the implicit status step


@pytest.mark.slow
def test_every_shipped_recipe_runs_on_the_demo_run_and_accounts_for_every_row(truth_rows, tmp_path):
    from operators.match import MatchOptions
    from pipelines.verbs.match import match_run

    run, rows, _ = truth_rows
    copy = tmp_path / "run"  # the session's run stays as annotate left it (no match/ folder)
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("subsets"))
    match_run(str(copy), MatchOptions(), progress=False)  # metaclip-balanced needs match lists
    keys = sorted(r["key"] for r in rows)
    for name in sorted(p.stem for p in RECIPES.glob("*.yaml")):
        stats = select(str(copy), load_recipe(name), name)
        decided = decisions(copy, name)
        assert sorted(decided) == keys, name
        manifest = pq.read_table(copy / "subsets" / name / "manifest.parquet").column("key").to_pylist()
        assert manifest == sorted(k for k, d in decided.items() if d["kept"]), name
        assert stats["rows"] == len(rows) and stats["kept"] == len(manifest), name
        assert sum(s["dropped"] for s in stats["steps"]) == len(rows) - len(manifest), name
        assert 0 < stats["kept"] < len(rows), name  # every recipe keeps some rows and drops the failed ones
    ok = pq.read_table(copy / "annotations", columns=["key", "status"], filters=[("status", "=", "ok")])
    assert pq.read_table(copy / "subsets" / "raw" / "manifest.parquet").column("key").to_pylist() == sorted(
        ok.column("key").to_pylist())  # raw: exactly the rows whose image came through


def test_a_recipe_name_is_a_shipped_recipe_whatever_the_folder_holds(tmp_path, monkeypatch):
    """`tailor demo` leaves a demo/ folder; `--recipe demo` still means the shipped recipe."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "run").mkdir()
    assert load_recipe("demo").source == str(RECIPES / "demo.yaml")
    mine = tmp_path / "demo.yaml"
    mine.write_text(yaml.safe_dump({"steps": [{"step": "exact_dedup"}]}))
    assert [s.name for s in load_recipe("./demo.yaml").steps] == ["exact_dedup"]  # a path is a path
    assert [s.name for s in load_recipe(str(mine)).steps] == ["exact_dedup"]
    with pytest.raises(ConfigError, match="no shipped recipe of that name .*shipped: .*laion-style"):
        load_recipe("no-such-recipe")
    with pytest.raises(ConfigError, match="no such file"):
        load_recipe("demo/run")
    run = fake_run(tmp_path / "demo" / "run", caption=["a dog", "a cat"], sha256=["a", "a"], clip_score=[0.5, 0.4],
                   phash=[1, 1])
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "select", run, "--recipe", "demo", "--name", "d"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "Traceback" not in done.stderr and "IsADirectoryError" not in done.stderr
    assert done.returncode == 0, done.stderr


def test_language_null_needs_no_language_column(tmp_path):
    """laion-style's basic step has language: null; a run without caption_lang still selects."""
    run = fake_run(tmp_path / "run", caption=["a dog on grass", "cat"], caption_words=[4, 1], caption_chars=[14, 3],
                   original_width=[300, 300], original_height=[300, 300])
    stats = select(run, recipe({"step": "basic", "language": None, "min_words": 1, "min_chars": 5}), "x")
    assert stats["kept"] == 1 and stats["by_reason"] == {"caption_too_short": 1}


@pytest.mark.slow
def test_select_reads_and_writes_a_run_on_s3(tmp_path, monkeypatch):
    """DuckDB reads the run's Parquet on S3 through the run's fsspec filesystem (no httpfs extension)."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
            monkeypatch.setenv(name, value)
        rng = np.random.default_rng(0)
        n = 500
        local = fake_run(tmp_path / "run", sha256=[f"h{i % 420}" for i in range(n)],
                         clip_score=pa.array(rng.uniform(0, 0.5, n), pa.float64()),
                         phash=pa.array(rng.integers(0, 2**63, n, dtype=np.uint64), pa.uint64()))
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem(endpoint_url=f"http://{host}:{port}")
        fs.mkdir("select-test")
        fs.put(str(tmp_path / "run" / "annotations" / "00000.parquet"), "select-test/run/annotations/00000.parquet")
        steps = recipe({"step": "clip_score", "top_fraction": 0.5}, {"step": "exact_dedup"}, {"step": "near_dedup"})
        stats = select("s3://select-test/run", steps, "s3-subset")
        select(local, steps, "local-subset")
        fs.invalidate_cache()
        with fs.open("select-test/run/subsets/s3-subset/decisions.parquet", "rb") as f:
            remote = pq.read_table(f)
        local_table = pq.read_table(tmp_path / "run" / "subsets" / "local-subset" / "decisions.parquet")
        assert remote.to_pylist() == local_table.to_pylist()
        assert fs.exists("select-test/run/subsets/s3-subset/stats.json") and stats["kept"] > 0
    finally:
        server.stop()


@pytest.mark.slow
def test_semdedup_and_decontaminate_steps_drop_what_their_tables_name(truth_rows, tmp_path):
    run, rows, truth = truth_rows
    ok = [r for r in rows if r["status"] == "ok"]
    # SemDeDup at a tiny eps: byte-identical copies embed identically, so of each set one survives
    select(str(run), recipe({"step": "semdedup", "eps": 0.0005}), "semdedup")
    decided = decisions(run, "semdedup")
    by_sha = collections.defaultdict(list)
    for r in ok:
        by_sha[r["sha256"]].append(r["key"])
    for copies in by_sha.values():
        assert sum(decided[k]["kept"] for k in copies) <= 1
        assert any(decided[k]["kept"] for k in copies) or all(
            decided[k]["reason"] == "semantic_duplicate" and decided[decided[k]["detail"]]["kept"] for k in copies)
    dropped = [d for d in decided.values() if d["reason"] == "semantic_duplicate"]
    assert len(dropped) >= sum(len(c) - 1 for c in by_sha.values())
    assert all(decided[d["detail"]]["kept"] for d in dropped)  # folded into a row that stays

    # decontamination by pHash: evaluation images that are (resized) copies of pool images
    images = {r["key"]: r["image"] for r in pq.read_table(run / "images").to_pylist()}
    originals = sorted(r["key"] for r in ok if truth[r["demo_id"]]["dup_kind"] == "original")[:6]
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    for key in originals:
        (eval_dir / f"{key}.jpg").write_bytes(images[key])
    select(str(run), recipe({"step": "decontaminate", "eval_path": str(eval_dir), "max_cosine": None,
                             "max_hamming": 4}), "decontaminated")
    decided = decisions(run, "decontaminated")
    group = {r["key"]: truth[r["demo_id"]]["dup_group"] for r in ok}
    contaminated = {k for k, d in decided.items() if d["reason"] == "contaminated"}
    assert set(originals) <= contaminated
    assert {group[k] for k in contaminated} == {group[k] for k in originals}


# ---------------------------------------------------------------- DuckDB's memory limit and spill folder

def test_a_small_memory_limit_spills_to_the_folder_and_gives_the_same_subset(tmp_path, monkeypatch):
    import pipelines.verbs.select

    rng = np.random.default_rng(7)
    n = 1_000_000  # pool and decisions: about 190 MB in DuckDB, twice the limit below
    run = fake_run(tmp_path / "run", sha256=[f"{h:064x}" for h in rng.integers(0, n // 3, n)],
                   clip_score=pa.array(np.round(rng.uniform(0, 0.5, n), 3), pa.float64()))
    steps = recipe({"step": "clip_score", "min_score": 0.1}, {"step": "exact_dedup"})
    select(run, steps, "unbounded", DuckOptions(memory_limit="4GB"))
    spill = tmp_path / "spill"
    spilled = []
    write_query = pipelines.verbs.select.write_query

    def watch(*args):  # at the end, the spilled pool and decisions are files of the connection's own folder
        spilled.extend(p for folder in spill.iterdir() for p in folder.iterdir())
        write_query(*args)

    monkeypatch.setattr(pipelines.verbs.select, "write_query", watch)
    select(run, steps, "bounded", DuckOptions(memory_limit="100MB", threads=2, temp_directory=str(spill)))
    assert spilled
    assert list(spill.iterdir()) == []  # DuckDB removes its files and the connection's folder on close
    for table in ("manifest", "decisions"):
        assert pq.read_table(tmp_path / "run" / "subsets" / "bounded" / f"{table}.parquet").equals(
            pq.read_table(tmp_path / "run" / "subsets" / "unbounded" / f"{table}.parquet"))


@pytest.mark.parametrize("limit, message", [("lots", "a size such as 500MB"), ("100", "a size such as 500MB"),
                                            ("150%", "a share such as 25%"), ("1kb", "at least 32MB")])
def test_a_bad_memory_limit_is_one_line_before_the_run_is_read(tmp_path, capsys, limit, message):
    from pipelines.cli import main

    assert main(["select", str(tmp_path / "no-run"), "--recipe", "raw", "--name", "s", "--memory-limit", limit]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--memory-limit" in err and message in err, err
    with pytest.raises(ValueError, match=message):
        DuckOptions(memory_limit=limit)


def test_duckdb_running_out_of_its_limit_is_one_config_error():
    import duckdb

    from pipelines.core.duck import within_memory

    # what cannot spill (how much that is depends on DuckDB's version): its error, raised as DuckDB does
    with pytest.raises(ConfigError, match=r"^DuckDB ran out of its memory limit \(64MB\): Out of Memory Error: "
                                          r"failed to pin block; raise --memory-limit, or lower --threads$"):
        with within_memory(DuckOptions(memory_limit="64MB")):
            raise duckdb.OutOfMemoryException("Out of Memory Error: failed to pin block\n\nPossible solutions: ...")
