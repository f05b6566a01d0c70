"""Curate before download: a text pass, text steps, fetch the kept keys, image steps.

A user story on the session's demo web (400 rows, every hostile kind): the same recipe of basic text
conditions + boilerplate + metaclip_balance + clip_score + exact_dedup, run text-first

    annotate --text-only -> select --steps text -> fetch -> select --steps image

and download-first (annotate everything -> select). Checks: the same final keys; the text pass sends no
request; the fetch requests only the kept rows' URLs; a rerun of the fetch requests nothing; image steps on
a text pass, an image audit of it and materializing it are refused with one line that says what to do.
The real alt-texts (hosts that do not resolve here) make a text pass under the suite's socket guard.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
import yaml
from helpers import demo_config, shared_data

from pipelines.cli import main as cli
from pipelines.core.config import ConfigError, load_config
from pipelines.demo.web.world import CONCEPTS
from pipelines.verbs.annotate import annotate
from pipelines.verbs.fetch_subset import fetch_subset
from pipelines.verbs.select import load_recipe, select

pytestmark = pytest.mark.slow

RECIPE = {
    "description": "text steps, then image steps",
    "steps": [
        {"step": "basic", "language": None, "min_words": 2, "min_chars": 5, "min_side": None, "max_aspect": None},
        {"step": "boilerplate", "max_images": 10},
        {"step": "metaclip_balance", "t": 8, "seed": 1},
        {"step": "clip_score", "min_score": 0.31},
        {"step": "exact_dedup"},
    ],
}


def keys(path) -> list[str]:
    return pq.read_table(path, columns=["key"]).column("key").to_pylist()


def requested(server, before: dict[str, int]) -> dict[str, int]:
    """Requests per path the server has had since `before`."""
    now = server.request_counts()
    return {p: n - before.get(p, 0) for p, n in now.items() if n > before.get(p, 0)}


@pytest.fixture(scope="module")
def world(ray_local, demo_web, tmp_path_factory):
    """Both ways over the same web and recipe; the requests each text-first step sent."""
    server, web = demo_web
    root = tmp_path_factory.mktemp("text-first")
    concepts = root / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    recipe_path = root / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    recipe = load_recipe(recipe_path)
    settings = ["input.rows_per_shard=120", f"match.metadata={concepts}"]

    full = root / "full"
    annotate(demo_config(web / "urls.parquet", full, *settings), progress=False)
    select(str(full), recipe, "final")

    text, fetched = root / "text", root / "fetched"
    before = server.request_counts()
    annotate(demo_config(web / "urls.parquet", text, *settings, "text_only=true"), progress=False)
    text_requests = requested(server, before)
    select(str(text), recipe, "kept", phase="text")
    before = server.request_counts()
    fetch_subset(str(text), "kept", str(fetched), progress=False)
    fetch_requests = requested(server, before)
    select(str(fetched), recipe, "final", phase="image")
    return {"full": full, "text": text, "fetched": fetched, "web": web, "server": server, "recipe": recipe_path,
            "text_requests": text_requests, "fetch_requests": fetch_requests}


def test_text_first_keeps_exactly_the_keys_of_download_first(world):
    final = keys(world["fetched"] / "subsets" / "final" / "manifest.parquet")
    assert final == keys(world["full"] / "subsets" / "final" / "manifest.parquet")
    assert 0 < len(final) < len(keys(world["text"] / "subsets" / "kept" / "manifest.parquet"))
    # the text steps decided the same on both runs, row by row (their decisions name the same step and reason)
    full = {r["key"]: r for r in pq.read_table(world["full"] / "subsets" / "final" / "decisions.parquet").to_pylist()}
    text = pq.read_table(world["text"] / "subsets" / "kept" / "decisions.parquet").to_pylist()
    assert len(text) == len(full) == 400
    for row in text:
        if not row["kept"]:
            assert (full[row["key"]]["step"], full[row["key"]]["reason"]) == (row["step"], row["reason"])
    stats = json.loads((world["full"] / "subsets" / "final" / "stats.json").read_text())
    assert [(s["name"], s["phase"]) for s in stats["steps"]] == [
        ("basic", "text"), ("boilerplate", "text"), ("metaclip_balance", "text"), ("status", "image"),
        ("clip_score", "image"), ("exact_dedup", "image")]
    assert all(s["dropped"] for s in stats["steps"])  # every step had work to do on this web


def test_text_pass_sends_no_request_and_has_the_full_runs_text_columns(world):
    assert world["text_requests"] == {}
    text = pq.read_table(world["text"] / "annotations").sort_by("key")
    full = pq.read_table(world["full"] / "annotations").sort_by("key")
    assert text.num_rows == full.num_rows == 400
    assert set(text.column("status").to_pylist()) == {"not_fetched"}
    assert text.column("sha256").null_count == text.num_rows
    for column in ("key", "url", "caption", "caption_words", "caption_chars", "metaclip_entries"):
        assert text.column(column).to_pylist() == full.column(column).to_pylist(), column
    summary = json.loads((world["text"] / "run.json").read_text())
    assert summary["text_only"] is True and summary["status_counts"] == {"not_fetched": 400}


def test_fetch_requests_only_the_kept_rows(world):
    kept = set(keys(world["text"] / "subsets" / "kept" / "manifest.parquet"))
    server = urlsplit(world["server"].base_url).netloc
    urls = {r["key"]: urlsplit(r["url"])
            for r in pq.read_table(world["text"] / "annotations", columns=["key", "url"]).to_pylist()}
    served = {k: u.path for k, u in urls.items() if u.netloc == server}  # not: invalid, refused, private hosts
    kept_paths = {served[k] for k in kept if k in served}
    other_paths = set(served.values()) - kept_paths
    asked = set(world["fetch_requests"])
    assert not asked & other_paths  # nothing the text steps dropped was requested
    assert kept_paths - asked == set()  # and every kept row of this server was
    fetched = pq.read_table(world["fetched"] / "annotations", columns=["key", "status"])
    assert sorted(fetched.column("key").to_pylist()) == sorted(kept)
    assert "not_fetched" not in fetched.column("status").to_pylist()
    origin = json.loads((world["fetched"] / "fetched_from.json").read_text())
    assert origin["subset"] == "kept" and origin["rows"] == len(kept)
    assert [s["step"] for s in origin["recipe"]["steps"]] == ["basic", "boilerplate", "metaclip_balance",
                                                             "clip_score", "exact_dedup"]


def test_fetch_reruns_resume_without_requests(world, capsys):
    """A finished fetch run again, --no-retry: nothing requested (by default the demo web's slow and refused pages,
    transient failures, would be fetched again: tests/test_crawl_runs.py)."""
    before = world["server"].request_counts()
    assert cli(["fetch", str(world["text"]), "--subset", "kept", "--out", str(world["fetched"]), "--no-progress",
                "--no-retry"]) == 0
    assert requested(world["server"], before) == {}
    assert "nothing left to do: 2 of 2 shards done already" in capsys.readouterr().out


def test_a_shipped_recipe_whose_basic_step_checks_captions_and_images_runs_in_two_passes(world, tmp_path):
    """datacomp-basic's one step checks the caption (language, words, characters) and the image (side,
    aspect): its caption checks run on the text pass, its image checks on the run fetched from that subset,
    and together they keep exactly what the whole step keeps on the download-first run."""
    recipe = load_recipe("datacomp-basic")
    text = select(str(world["text"]), recipe, "dc-text", phase="text")
    assert [(s["name"], s["phase"]) for s in text["steps"]] == [("basic", "text")]
    assert set(text["by_reason"]) <= {"caption_language", "caption_too_few_words", "caption_too_short"}
    fetched = tmp_path / "fetched-dc"
    fetch_subset(str(world["text"]), "dc-text", str(fetched), progress=False)
    image = select(str(fetched), recipe, "dc", phase="image")
    assert [s["name"] for s in image["steps"]] == ["status", "basic"]
    assert set(image["steps"][1]["by_reason"]) <= {"image_too_small", "image_aspect_ratio"}
    whole = select(str(world["full"]), recipe, "dc")
    assert [s["name"] for s in whole["steps"]] == ["status", "basic"]  # one pass: the step as written
    final = keys(fetched / "subsets" / "dc" / "manifest.parquet")
    assert final == keys(world["full"] / "subsets" / "dc" / "manifest.parquet") and final
    # --steps image on a run whose caption checks did not run before: the whole step, caption checks too
    again = select(str(world["full"]), recipe, "dc-image", phase="image")
    assert keys(world["full"] / "subsets" / "dc-image" / "manifest.parquet") == final
    assert again["steps"][1]["by_reason"] == whole["steps"][1]["by_reason"]


def test_steps_text_names_each_step_it_leaves_to_the_fetched_run_and_the_commands(world, capsys, tmp_path):
    """basic with an image check, then a balance, then exact dedup: on the text pass only basic's caption checks
    can run; the summary names the rest (the balance too: it comes after an image step) and what runs them."""
    recipe = tmp_path / "deferred.yaml"
    recipe.write_text(yaml.safe_dump({"steps": [
        {"step": "basic", "language": None, "min_words": 2, "min_chars": 5, "min_side": 200},
        {"step": "metaclip_balance", "t": 8, "seed": 1}, {"step": "exact_dedup"}]}))
    text = str(world["text"])
    assert cli(["select", text, "--recipe", str(recipe), "--name", "deferred", "--steps", "text"]) == 0
    said = capsys.readouterr().out
    deferred = [line for line in said.splitlines() if line.startswith("not run here")]
    assert len(deferred) == 1, said
    assert "basic's image checks (reads original_height, original_width)" in deferred[0]
    assert "metaclip_balance (a text step after an image step" in deferred[0]
    assert "exact_dedup (reads sha256)" in deferred[0]
    assert f"tailor fetch {text} --subset deferred --out FETCHED" in said and "--steps image" in said
    stats = json.loads((world["text"] / "subsets" / "deferred" / "stats.json").read_text())
    assert [d["step"] for d in stats["deferred"]] == ["basic's image checks", "metaclip_balance", "exact_dedup"]
    assert [s["name"] for s in stats["steps"]] == ["basic"]


def test_a_pass_over_a_run_shows_tailors_progress_line_not_ray_datas_bars(world, tmp_path):
    """`tailor match` with stdout and stderr not a terminal (a log, a scheduler): tailor's line of shards
    done, the summary, and none of Ray Data's bars or Ray's own lines."""
    run = tmp_path / "text"
    shutil.copytree(world["text"], run)
    command = [str(Path(sys.executable).parent / "tailor"), "match", str(run), "--metadata",
               str(world["recipe"].parent / "concepts.txt")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shards 4/4 (100%)" in done.stderr, done.stderr[-3000:]
    for noise in ("Running Dataset", "MapBatches", "ActorPool", "(raylet)", "pid=", "Execution plan"):
        assert noise not in done.stderr + done.stdout, noise


def test_image_steps_on_a_text_pass_are_refused_with_what_to_do(world, capsys):
    text = str(world["text"])
    assert cli(["select", text, "--recipe", str(world["recipe"]), "--name", "all"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "text pass" in err and "clip_score" in err and "--steps text" in err and "tailor fetch" in err
    assert not (world["text"] / "subsets" / "all").exists()
    assert cli(["select", text, "--recipe", str(world["recipe"]), "--name", "img", "--steps", "image"]) == 2
    assert "is a text pass" in capsys.readouterr().err and not (world["text"] / "subsets" / "img").exists()
    # a recipe without text steps keeps every row of a text pass: refused, or fetch would download them all
    assert cli(["select", text, "--recipe", "datacomp-clip-top30", "--name", "top", "--steps", "text"]) == 2
    assert "no text steps" in capsys.readouterr().err and not (world["text"] / "subsets" / "top").exists()
    assert cli(["audit", text, "--concepts", "demo", "--frequency", "image", "--no-progress"]) == 2
    assert "--frequency text" in capsys.readouterr().err
    assert cli(["materialize", text, "kept", "--out", str(world["text"].parent / "wds")]) == 2
    assert "tailor fetch" in capsys.readouterr().err
    # the fetched run ran the text steps already (through its text pass): running them again is refused
    with pytest.raises(ConfigError, match="--steps image"):
        select(str(world["fetched"]), load_recipe(world["recipe"]), "again")


def test_text_audit_counts_caption_rows_before_anything_is_downloaded(world, capsys, tmp_path):
    assert cli(["audit", str(world["text"]), "--concepts", "demo", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "text pass: 400 caption rows" in said and "not finished" not in said
    # a run still annotating (one shard of four not committed): counted over what is there, and said so
    running = tmp_path / "running"
    shutil.copytree(world["text"], running, ignore=shutil.ignore_patterns("audit", "subsets"))
    (running / "_done" / sorted(p.name for p in (running / "_done").glob("*.json"))[-1]).unlink()
    assert cli(["audit", str(running), "--concepts", "demo", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert f"note: {running} is not finished (3/4 shards committed)" in said, said
    assert cli(["audit", str(world["full"]), "--concepts", "demo", "--no-progress"]) == 0
    text = pq.read_table(world["text"] / "audit" / "demo" / "counts.parquet").to_pylist()
    full = pq.read_table(world["full"] / "audit" / "demo" / "counts.parquet").to_pylist()
    assert sum(r["text_count"] for r in text) > 0
    # before download, a concept's caption rows are all its rows: what the full run counts in any status
    assert [r["text_count"] for r in text] == [r["text_count_all"] for r in full]
    # a reader that leaves early (`| head -1`) ends the command quietly, not with a BrokenPipeError traceback
    tailor = Path(sys.executable).parent / "tailor"
    piped = subprocess.run(f"'{tailor}' audit '{world['text']}' --concepts demo --no-progress | head -1", shell=True,
                           capture_output=True, text=True, executable="/bin/bash")
    assert piped.stdout.startswith("136 concepts (demo)") and "Traceback" not in piped.stderr, piped.stderr
    # browse: a text pass's concept filter reads captions; the image-tag modes say why they cannot answer
    from pipelines.browse.views import BrowseError, Browser, GridQuery

    browser = Browser(str(world["text"]))
    top = max(text, key=lambda r: r["text_count"])
    named = browser.grid(GridQuery(audit="demo", concept=top["concept"], limit=500))["items"]
    assert len(named) == top["text_count"] > 0
    with pytest.raises(BrowseError, match="text pass .*use concept_mode=caption"):
        browser.grid(GridQuery(audit="demo", concept=top["concept"], concept_mode="misaligned"))


def test_text_pass_of_real_alt_texts_under_the_socket_guard(ray_local, tmp_path):
    """10k real web alt-texts whose hosts do not resolve here: a text pass reads every row, matches it against
    MetaCLIP's default metadata and opens no connection (the suite's guard would fail the test)."""
    source = shared_data() / "alt-text" / "alt_text_10k.parquet"  # LAION's URL and TEXT columns
    config = load_config(overrides=[f"input.path={source}", "input.url_column=URL", "input.caption_column=TEXT",
                                    f"output={tmp_path / 'run'}",
                                    "text_only=true", "match.metadata=default", "input.rows_per_shard=5000"])
    summary = annotate(config, progress=False)
    assert summary["status_counts"] == {"not_fetched": pq.read_metadata(source).num_rows}
    matched = pq.read_table(tmp_path / "run" / "annotations", columns=["metaclip_entries"]).column(0).to_pylist()
    assert sum(bool(m) for m in matched) > len(matched) // 2  # most real alt-texts name some metadata entry


def test_reselecting_the_subset_a_run_was_fetched_from_keeps_that_run_whole_and_says_why_it_will_not_resume(
        world, capsys):
    """Last of the world's tests: it selects the text pass's subset `kept` again. The fetched run's input (its
    config names it) survives, and fetching into that run again is refused in one line naming both selections."""
    fetched = world["fetched"]
    input_path = Path(load_config(fetched / "config.yaml").input.path)
    assert input_path.exists()
    made_at = json.loads((world["text"] / "subsets" / "kept" / "stats.json").read_text())["made_at"]
    while made_at == datetime.now(UTC).isoformat(timespec="seconds"):  # made_at has whole seconds: the new
        time.sleep(0.05)                                                 # selection is made in another second
    select(str(world["text"]), load_recipe(world["recipe"]), "kept", phase="text", overwrite=True)
    assert input_path.exists()  # the fetched run's input was not deleted with the old subset
    before = world["server"].request_counts()
    assert cli(["fetch", str(world["text"]), "--subset", "kept", "--out", str(fetched), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "selected again" in err and str(input_path) in err and "--overwrite" in err
    assert requested(world["server"], before) == {}
