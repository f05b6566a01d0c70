"""recaption: new captions from a vision-language model for a subset, rescored and audited; mixed at materialize."""

from __future__ import annotations

import collections
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiny_vlms
from helpers import run_with_truth, write_manifest
from PIL import Image

from operators.caption import Captioner, CaptionOptions
from pipelines.core.config import ConfigError
from pipelines.demo.web.world import find_concepts
from pipelines.verbs.materialize import MaterializeOptions, materialize, mix_captions
from pipelines.verbs.recaption import RecaptionConfig, recaption

pytestmark = pytest.mark.slow


def parts(run: Path, name: str) -> pa.Table:
    return pq.read_table(run / "captions" / name / "parts")


@pytest.fixture(scope="module")
def demo(demo_run):
    return run_with_truth(demo_run)


@pytest.fixture(scope="module")
def mismatched(demo):
    """The demo run's mismatched pairs (alt-text about another concept), recaptioned by the demo captioner."""
    run, rows, truth = demo
    keys = [r["key"] for r in rows if r["status"] == "ok" and truth[r["demo_id"]]["mismatch"]]
    write_manifest(run, "mismatched", keys)
    summary = recaption(str(run), "mismatched", RecaptionConfig(concepts="demo"), name="mismatched.demo")
    return keys, summary


def test_recaptioned_mismatched_pairs_score_above_the_matched_median(demo, mismatched):
    run, rows, truth = demo
    keys, summary = mismatched
    assert len(keys) >= 20
    table = parts(run, "mismatched.demo").to_pylist()
    assert sorted(r["key"] for r in table) == sorted(keys)
    assert all(r["status"] == "ok" and r["caption"] for r in table)
    matched = [r["clip_score"] for r in rows if r["status"] == "ok" and not truth[r["demo_id"]]["mismatch"]]
    new = [r["clip_score"] for r in table]
    old = [r["original_clip_score"] for r in table]
    print(f"mismatched pairs: CLIP score {np.mean(old):.3f} -> {np.mean(new):.3f}; matched median "
          f"{np.median(matched):.3f}")
    assert np.mean(new) > np.median(matched)
    assert summary["scores"]["new_mean"] == pytest.approx(np.mean(new), abs=1e-5)
    assert summary["scores"]["original_mean"] == pytest.approx(np.mean(old), abs=1e-5)


def test_recaptioned_text_concept_counts_move_toward_the_image_truth(demo, mismatched):
    run, rows, truth = demo
    by_key = {r["key"]: truth[r["demo_id"]] for r in rows}
    table = parts(run, "mismatched.demo").to_pylist()
    image, before, after = collections.Counter(), collections.Counter(), collections.Counter()
    right = {"before": 0, "after": 0}
    for r in table:
        shown = set(by_key[r["key"]]["concepts"])
        for side, text, counter in (("before", r["original_caption"], before), ("after", r["caption"], after)):
            named = set(find_concepts(text))
            counter.update(named)
            right[side] += bool(named) and named <= shown
        image.update(shown)
    distance = {name: sum(abs(c[k] - image[k]) for k in set(c) | set(image))
                for name, c in (("before", before), ("after", after))}
    print(f"L1 distance of caption concept counts to the image truth: {distance}; captions naming only "
          f"what the image shows: {right} of {len(table)}")
    # the demo captioner always gets the colour right and the shape about half the time (closing note of issue 7)
    assert distance["after"] < distance["before"]
    assert right["after"] >= right["before"] + 0.1 * len(table)
    audit = json.loads((run / "captions" / "mismatched.demo" / "_summary.json").read_text())["concepts"]
    assert audit["matched_after"] > audit["matched_before"]  # against the run's own image tags, too
    assert audit["tail_concepts_named_after"] >= audit["tail_concepts_named_before"]
    assert pq.read_table(run / "captions" / "mismatched.demo" / "concepts.parquet").num_rows == 136


def test_materialize_mixes_new_captions_per_key_deterministically(demo, mismatched, tmp_path):
    run, _, _ = demo
    keys, _ = mismatched
    new = {r["key"]: r["caption"] for r in parts(run, "mismatched.demo").to_pylist()}
    outs = []
    for attempt in ("a", "b"):
        s = materialize(str(run), "mismatched", str(tmp_path / attempt), progress=False,
                        options=MaterializeOptions(samples_per_shard=1000, captions="mismatched.demo", mix=0.8,
                                                   mix_seed=3))
        outs.append(tmp_path / attempt / "00000.tar")
    assert outs[0].read_bytes() == outs[1].read_bytes()
    samples: dict[str, dict] = collections.defaultdict(dict)
    with tarfile.open(outs[0]) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples[key][ext] = tar.extractfile(member).read()
    origins = collections.Counter()
    for key, sample in samples.items():
        meta = json.loads(sample["json"])
        text = sample["txt"].decode()
        origins[meta["caption_origin"]] += 1
        assert text == (new[key] if meta["caption_origin"] == "recaption" else meta["caption"])
    share = origins["recaption"] / len(samples)
    print(f"mix 0.8: {origins}")
    assert s["recaptioned_samples"] == origins["recaption"]
    assert 0.6 <= share <= 0.95
    # the same draw as the operator's: a pure function of (seed, key)
    chosen, _ = mix_captions(sorted(samples), ["old"] * len(samples), [new[k] for k in sorted(samples)], 0.8, 3)
    assert sum(c != "old" for c in chosen) == origins["recaption"]


def test_a_rerun_with_other_settings_is_refused(demo, mismatched):
    run, _, _ = demo
    config = RecaptionConfig(captions=CaptionOptions(generation={"num_beams": 2}))
    with pytest.raises(ConfigError, match=r"other settings \(generation.num_beams: 1 != 2; stored != now\)"):
        recaption(str(run), "mismatched", config, name="mismatched.demo")


def test_bad_requests_give_one_line_errors(demo, tmp_path):
    run, rows, _ = demo
    with pytest.raises(ConfigError, match="no subset 'nope'"):
        recaption(str(run), "nope")
    write_manifest(run, "few", [rows[0]["key"]])
    with pytest.raises(ConfigError, match="needs a chat model"):
        recaption(str(run), "few", RecaptionConfig(captions=CaptionOptions(prompt="altogether")))
    with pytest.raises(ValueError, match="prompt 'nope' is not defined"):
        CaptionOptions(prompt="nope")
    with pytest.raises(ConfigError, match="cannot load"):
        recaption(str(run), "few", RecaptionConfig(captions=CaptionOptions(model=str(tmp_path / "missing"))))
    bad = subprocess.run([sys.executable, "-m", "pipelines.cli", "recaption", str(run), "--subset", "few",
                          "--set", "captions.batch_size=0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "captions.batch_size" in bad.stderr and "Traceback" not in bad.stderr


def _jpeg(colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(out, "JPEG")
    return out.getvalue()


def test_broken_images_and_empty_alt_texts_get_a_status():
    from pipelines.models import resolve_model

    batch = pa.table({"key": ["ok", "broken", "none", "empty"],
                      "image": [_jpeg(), b"\xff\xd8 not a jpeg", None, _jpeg()],
                      "caption": ["a dog", "a dog", "a dog", "  "]})
    plain = Captioner(resolve_model("builtin:demo-captioner"), CaptionOptions())(batch).to_pylist()
    assert [r["status"] for r in plain] == ["ok", "decode_error", "no_image", "ok"]  # plain needs no alt-text
    assert all(r["error"] for r in plain[1:3])
    sheared = Captioner(resolve_model("builtin:demo-captioner"), CaptionOptions(prompt="sheared"))(batch).to_pylist()
    assert [r["status"] for r in sheared] == ["ok", "decode_error", "no_image", "no_alt_text"]
    assert len(sheared[0]["caption"].split()) <= 2  # cut to the alt-text's two words


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlms")
    return {"blip": tiny_vlms.build_blip(root / "blip"), "llava": tiny_vlms.build_llava(root / "llava")}


@pytest.mark.parametrize("kind,prompt", [("blip", "plain"), ("llava", "altogether")])
def test_random_standard_models_run_batched_through_the_same_path(demo, tiny_models, kind, prompt):
    run, rows, _ = demo
    ok = [r["key"] for r in rows if r["status"] == "ok"][:7]
    failed = next(r["key"] for r in rows if r["status"] != "ok")
    write_manifest(run, "tiny", [*ok, failed])
    config = RecaptionConfig(captions=CaptionOptions(
        model=str(tiny_models[kind]), prompt=prompt, batch_size=3,
        generation={"max_new_tokens": 6, "num_beams": 2}))
    summary = recaption(str(run), "tiny", config, name=f"tiny.{kind}")
    table = parts(run, f"tiny.{kind}").to_pylist()
    assert sorted(r["key"] for r in table) == sorted([*ok, failed])
    by_key = {r["key"]: r for r in table}
    assert by_key[failed]["status"] == "no_image" and by_key[failed]["caption"] is None
    for key in ok:
        row = by_key[key]
        assert row["status"] in ("ok", "empty_caption"), row["error"]
        assert row["model"] == str(tiny_models[kind]) and row["prompt_id"] == f"{prompt}@1"
        assert json.loads(row["generation"])["num_beams"] == 2 and json.loads(row["generation"])["max_new_tokens"] == 6
        if prompt == "altogether":
            assert " ".join(row["original_caption"].split()) in row["prompt"]
    assert sum(by_key[k]["status"] == "ok" for k in ok) >= 5
    assert summary["statuses"]["no_image"] == 1


def test_a_chat_model_captions_a_row_the_same_alone_or_in_a_left_padded_batch(tiny_models):
    captioner = Captioner(str(tiny_models["llava"]), CaptionOptions(
        prompt="altogether", batch_size=4, generation={"max_new_tokens": 5}))
    batch = pa.table({"key": list("abcd"), "image": [_jpeg((200, 30, 30)), _jpeg((20, 200, 30)),
                                                     _jpeg((20, 30, 200)), _jpeg((90, 90, 90))],
                      "caption": ["dog", "a big red car on the green", "cat", "a photo of a small blue cat"]})
    together = captioner(batch).column("caption").to_pylist()
    alone = [captioner(batch.slice(i, 1)).column("caption")[0].as_py() for i in range(4)]
    assert together == alone


def test_killed_recaption_resumes_and_captions_every_key_once(demo, tmp_path):
    run, rows, _ = demo
    keys = [r["key"] for r in rows if r["status"] == "ok"]
    write_manifest(run, "resume", keys)
    command = [sys.executable, "-m", "pipelines.cli", "recaption", str(run), "--subset", "resume", "--name",
               "resume", "--no-progress", "--set", "rows_per_task=16", "--set", "write_batch=8",
               "--set", "captions.batch_size=8", "--concepts", "demo"]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = run / "captions" / "resume" / "parts"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(folder.glob("*.parquet"))) < 3:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stable, seen = time.time(), len(list(folder.glob("*.parquet")))
    while time.time() - stable < 3:  # a Ray worker of the killed run may finish the part in its hands
        time.sleep(0.2)
        now = len(list(folder.glob("*.parquet")))
        stable, seen = (time.time(), now) if now != seen else (stable, seen)
    done = parts(run, "resume").num_rows
    assert 0 < done < len(keys), "the kill must land mid-run"
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{done} before" in rerun.stdout
    table = parts(run, "resume")
    counts = collections.Counter(table.column("key").to_pylist())
    assert sorted(counts) == sorted(keys) and set(counts.values()) == {1}
    # the demo captioner gets the colour right and the shape half the time: the CLIP score rises, yet the image tags
    # confirm fewer of the concepts its captions name than of the alt-texts' (the web's captions mostly name the
    # image's concepts); the console and the summary say so
    summary = json.loads((run / "captions" / "resume" / "_summary.json").read_text())
    c = summary["concepts"]
    assert c["matched_after"] < c["matched_before"]
    assert summary["scores"]["new_mean"] > summary["scores"]["original_mean"]
    assert c["confirmed_dropped"] is True and summary["warnings"][0].startswith("alignment dropped")
    assert "alignment dropped" in rerun.stderr and "although the CLIP score rose" in rerun.stderr


def test_recaption_concept_counts_count_each_image_once(demo, mismatched):
    """Two mismatched keys of the demo web hold one image (an exact duplicate): concepts.parquet counts it once,
    in images, as the audit does (distinct sha256), while text mentions stay caption rows."""
    run, rows, _ = demo
    keys, _ = mismatched
    tags = {r["key"]: r for r in pq.read_table(run / "audit" / "demo" / "tags").to_pylist() if r["key"] in keys}
    images: dict[int, set] = collections.defaultdict(set)
    tagged_rows = collections.Counter()
    for r in tags.values():
        for c in r["image_concepts"] or []:
            images[c].add(r["sha256"])
            tagged_rows[c] += 1
    per_concept = {r["concept_id"]: r for r in pq.read_table(run / "captions" / "mismatched.demo" / "concepts.parquet")
                   .to_pylist()}
    assert {c: r["image"] for c, r in per_concept.items() if r["image"]} == {c: len(s) for c, s in images.items()}
    assert sum(tagged_rows.values()) > sum(map(len, images.values()))  # the duplicate is there: rows would differ
    summary = json.loads((run / "captions" / "mismatched.demo" / "_summary.json").read_text())
    assert summary["concepts"]["images"] == len({r["sha256"] for r in tags.values()}) < summary["concepts"]["rows"]
    assert summary["concepts"]["confirmed_dropped"] is False and summary["warnings"] == []

