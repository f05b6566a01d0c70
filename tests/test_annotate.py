"""annotate end to end on the demo web: every row accounted for, every status as the ground truth says."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import DEMO_CONFIG, demo_config
from PIL import Image

from pipelines.cli import main as cli
from pipelines.demo.score import check_run, roc_auc
from pipelines.verbs.annotate import annotate

pytestmark = pytest.mark.slow


def test_rows_in_equal_rows_out_and_statuses_match_ground_truth(demo_run):
    summary, run, web = demo_run
    annotations = pq.read_table(run / "annotations").to_pylist()
    truth = {r["demo_id"]: r for r in pq.read_table(web / "truth.parquet").to_pylist()}
    assert len(annotations) == len(truth) == summary["rows_in"] == summary["rows_out"]
    assert len({r["key"] for r in annotations}) == len(annotations)
    assert {r["demo_id"] for r in annotations} == set(truth)
    wrong = [(r["demo_id"], truth[r["demo_id"]]["hostile"], truth[r["demo_id"]]["expected_status"],
              r["status"], r["error"]) for r in annotations if r["status"] != truth[r["demo_id"]]["expected_status"]]
    assert not wrong, wrong
    hostile_kinds = {t["hostile"] for t in truth.values() if t["hostile"]}
    assert len(hostile_kinds) >= 17  # the demo web holds every hostile kind
    for row in annotations:
        if row["status"] != "ok":
            assert row["error"], row  # a failure always says what happened


def test_ok_rows_carry_sizes_hashes_and_passthrough(demo_run):
    _, run, web = demo_run
    truth = {r["demo_id"]: r for r in pq.read_table(web / "truth.parquet").to_pylist()}
    urls = {r["demo_id"]: r for r in pq.read_table(web / "urls.parquet").to_pylist()}
    for row in pq.read_table(run / "annotations").to_pylist():
        assert row["url"] == urls[row["demo_id"]]["url"] and row["caption"] == urls[row["demo_id"]]["caption"]
        assert row["source"] == urls[row["demo_id"]]["source"]  # extra input columns pass through
        if row["status"] != "ok":
            continue
        t = truth[row["demo_id"]]
        assert (row["original_width"], row["original_height"]) == (t["width"], t["height"]), row["demo_id"]
        assert min(row["width"], row["height"]) == 256  # keep_ratio, image_size 256
        assert len(row["sha256"]) == 64 and row["phash"] is not None and row["http_status"] == 200


def test_exact_duplicates_share_sha256_and_near_duplicates_are_phash_close(demo_run):
    _, run, web = demo_run
    truth = {r["demo_id"]: r for r in pq.read_table(web / "truth.parquet").to_pylist()}
    rows = {r["demo_id"]: r for r in pq.read_table(run / "annotations").to_pylist() if r["status"] == "ok"}
    exact = near = 0
    for demo_id, row in rows.items():
        t = truth[demo_id]
        original = rows.get(t["dup_group"]) if t["dup_group"] else None
        if original is None or t["dup_kind"] not in ("exact", "near"):
            continue
        if t["dup_kind"] == "exact":
            assert row["sha256"] == original["sha256"]
            exact += 1
        else:
            assert row["sha256"] != original["sha256"]
            near += bin(row["phash"] ^ original["phash"]).count("1") <= 10
    assert exact >= 5 and near >= 5


def test_images_are_stored_once_and_retrievable_by_key(demo_run):
    _, run, _ = demo_run
    annotations = pq.read_table(run / "annotations").to_pylist()
    images = pq.read_table(run / "images")
    ok = {r["key"]: r for r in annotations if r["status"] == "ok"}
    assert sorted(images.column("key").to_pylist()) == sorted(ok)
    key = sorted(ok)[len(ok) // 2]
    stored = pq.read_table(run / "images", filters=[("key", "=", key)]).to_pylist()
    assert len(stored) == 1
    image = Image.open(io.BytesIO(stored[0]["image"]))
    assert image.format == "JPEG" and image.size == (ok[key]["width"], ok[key]["height"])


def test_run_summary_accounts_per_status_and_stage(demo_run):
    summary, run, web = demo_run
    on_disk = json.loads((run / "run.json").read_text())
    assert on_disk["status_counts"] == summary["status_counts"]
    truth = pq.read_table(web / "truth.parquet").column("expected_status").to_pylist()
    assert summary["status_counts"] == {s: truth.count(s) for s in set(truth)}
    download, decode = summary["stages"]["download"], summary["stages"]["decode"]
    assert download["rows_in"] == summary["rows_in"]
    assert download["rows_ok"] == decode["rows_in"] == download["rows_in"] - sum(download["failed"].values())
    assert decode["rows_ok"] == summary["status_counts"]["ok"]
    assert decode["failed"]["too_large"] >= 1 and download["failed"]["too_large"] >= 1  # bomb vs byte cap
    assert summary["shards"]["total"] == summary["shards"]["done"] == 4
    assert summary["config_hash"] and summary["wall_time_s"] > 0


def test_clip_score_separates_matched_from_mismatched_captions(demo_run):
    """The demo CLIP was trained on renders from another seed; this web is new to it.

    With ~40 mismatched pairs on this 400-page web the AUC swings by several points between seeds
    (0.92-0.99 over seeds 7-19; 0.977 on the 1,000-page seed-0 demo), so this end-to-end check uses a
    lower bar; test_embed.py checks the issue's >= 0.95 on 1,200 fresh pairs. (The figures `tailor demo` prints.)"""
    _, run, web = demo_run
    clip = check_run(run, web)["clip"]
    assert clip is not None and clip["mismatched_rows"] >= 25
    assert clip["roc_auc"] >= 0.9


def test_embeddings_table_holds_ok_rows_and_probes_score_images(demo_run):
    _, run, web = demo_run
    annotations = pq.read_table(run / "annotations").to_pylist()
    embeddings = pq.read_table(run / "embeddings")
    ok = sorted(r["key"] for r in annotations if r["status"] == "ok")
    assert sorted(embeddings.column("key").to_pylist()) == ok
    assert embeddings.schema.field("image_emb").type == pa.list_(pa.float16(), 128)
    assert set(embeddings.column("clip_model").to_pylist()) == {"builtin:demo-clip"}
    assert all(r["clip_score"] is None for r in annotations if r["status"] != "ok")
    truth = {r["demo_id"]: r for r in pq.read_table(web / "truth.parquet").to_pylist()}
    animals = {"dog", "cat", "horse", "bird", "cow"}
    ok_rows = [r for r in annotations if r["status"] == "ok"]
    shown = [r["probe_animal"] for r in ok_rows if animals & set(truth[r["demo_id"]]["concepts"])]
    others = [r["probe_animal"] for r in ok_rows if not animals & set(truth[r["demo_id"]]["concepts"])]
    assert len(shown) >= 10 and roc_auc(shown, others) >= 0.8


def test_rerun_of_a_finished_run_retries_only_what_failed_for_a_moment(demo_run, demo_web, tmp_path):
    """The same command again fetches the rows whose failure may pass (the demo web's slow, stalled and refused
    pages: they fail again, the same way) and nothing else; with retry_transient off it redoes nothing."""
    _, shared, web = demo_run
    run = tmp_path / "run"  # a copy: the session's run (its logs and run.json) is other tests' to read
    shutil.copytree(shared, run)
    before = pq.read_table(run / "annotations").sort_by("key")
    transient = [r["key"] for r in before.to_pylist() if r["transient"]]
    assert transient and all(r["status"] in ("timeout", "connection_error", "http_error", "rate_limited")
                             for r in before.to_pylist() if r["transient"])
    again = annotate(demo_config(web / "urls.parquet", run, "input.rows_per_shard=120"), progress=False)
    assert again["shards"]["skipped_already_done"] == 4
    assert again["retried"]["rows"] == again["rows_processed_this_run"] == len(transient)
    after = pq.read_table(run / "annotations").sort_by("key")
    same = ["key", "status", "http_status", "transient", "sha256", "phash"]
    assert after.num_rows == before.num_rows and after.select(same).equals(before.select(same))
    # settings of speed only (threads, model batch and replicas) change nothing written: the run resumes
    figures = (run / "run.json").read_text()
    faster = annotate(demo_config(web / "urls.parquet", run, "input.rows_per_shard=120", "download.threads=4",
                                  "embed.batch_size=8", "embed.num_actors=2"), progress=False, retry_transient=False)
    assert faster["shards"]["skipped_already_done"] == 4 and faster["rows_processed_this_run"] == 0
    assert "retried" not in faster
    assert pq.read_table(run / "annotations").sort_by("key").equals(after)
    # nothing left to do: run.json keeps the figures of the run that did the work (not wall 0.0, no stages)
    assert (run / "run.json").read_text() == figures
    assert faster["seconds"]["pipeline"] > 0 and faster["stage_throughput"] and faster["nothing_to_do"]
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        assert cli(["annotate", "--config", str(DEMO_CONFIG), "--input", str(web / "urls.parquet"), "--output",
                    str(run), "--set", "input.rows_per_shard=120", "--no-retry", "--no-progress"]) == 0
    assert "nothing left to do: 4 of 4 shards done already" in said.getvalue()
    assert "wall 0.0" not in said.getvalue() and (run / "run.json").read_text() == figures


def test_changed_settings_refuse_to_mix_into_an_existing_run(demo_run, demo_web):
    _, run, web = demo_run
    from pipelines.core.config import ConfigError

    with pytest.raises(ConfigError, match="different input or settings"):
        annotate(demo_config(web / "urls.parquet", run, "decode.image_size=128"), progress=False)


def test_every_row_gets_caption_language_and_lengths(demo_run):
    _, run, web = demo_run
    truth = {r["demo_id"]: r for r in pq.read_table(web / "truth.parquet").to_pylist()}
    rows = pq.read_table(run / "annotations").to_pylist()
    for r in rows:  # failed downloads too: the text stage needs no image
        text = (r["caption"] or "").strip()
        assert r["caption_words"] == len(text.split()) and r["caption_chars"] == len(text)
        assert (r["caption_lang"] is None) == (text == "")
    english = [r["caption_lang"] == "en" for r in rows
               if truth[r["demo_id"]]["caption_lang"] == "en" and r["caption_words"] >= 3]
    foreign = [r["caption_lang"] != "en" for r in rows if truth[r["demo_id"]]["caption_lang"] not in ("en", "und")]
    print(f"language ID: {np.mean(english):.3f} of English captions (3+ words) found English, "
          f"{np.mean(foreign):.3f} of foreign ones not English")
    assert np.mean(english) >= 0.8 and np.mean(foreign) >= 0.8


@pytest.mark.slow
def test_demo_again_keeps_its_run_and_what_was_made_from_it(ray_local, tmp_path, capsys):
    """`make demo` twice: the second leaves the finished run as it is (nothing fetched again) and keeps its
    subsets; `tailor demo --overwrite` and an unfinished run annotate anew and name what goes."""
    from pipelines.cli import main as cli

    demo = ["demo", "--out", str(tmp_path), "--n", "60", "--set", "embed=null", "--no-progress"]
    assert cli(demo) == 0
    assert cli(["select", str(tmp_path / "run"), "--recipe", "raw", "--name", "raw"]) == 0
    capsys.readouterr()
    assert cli(demo) == 0
    said = capsys.readouterr().out
    assert "nothing left to do: 1 of 1 shards done already" in said and "status as expected for 60/60 rows" \
        in said, said
    assert (tmp_path / "run" / "subsets" / "raw" / "stats.json").exists()

    assert cli([*demo, "--overwrite"]) == 0
    said = capsys.readouterr().out
    assert "annotating" in said and "anew (--overwrite); removing what was made from it: subsets/" in said, said
    assert "(0 were already done)" in said and not (tmp_path / "run" / "subsets").exists()

    # an interrupted demo run: its planned URLs name the port of the server that served it then, so it is
    # annotated anew against this server (resumed, its last shards would fetch from a closed port)
    for marker in (tmp_path / "run" / "_done").glob("*.json"):
        marker.unlink()
    assert cli(demo) == 0
    said = capsys.readouterr().out
    assert "anew (an unfinished run" in said and "status as expected for 60/60 rows" in said, said
