"""evaluate: the same proxy CLIP trained on each subset, zero-shot accuracy per concept on a held-out set."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.config import ConfigError
from pipelines.demo_web.evalset import build_eval_set
from pipelines.evaluate import evaluate
from pipelines.proxy import ProxyConfig

pytestmark = pytest.mark.slow

SMALL = ProxyConfig(samples_seen=512, batch_size=64, seeds=[0])


def write_manifest(run: Path, name: str, keys: list[str]) -> None:
    folder = run / "subsets" / name
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"key": pa.array(keys, pa.string())}), folder / "manifest.parquet")


@pytest.fixture(scope="module")
def pool(demo_run, tmp_path_factory):
    _, run, _ = demo_run
    rows = pq.read_table(run / "annotations", columns=["key", "status"]).to_pylist()
    write_manifest(run, "eval-raw", [r["key"] for r in rows if r["status"] == "ok"])
    eval_set = tmp_path_factory.mktemp("eval") / "set"
    build_eval_set(eval_set, per_concept=2, seed=5)
    return run, eval_set


def test_same_seed_and_subset_give_the_same_accuracies(pool):
    run, eval_set = pool
    first = evaluate(str(run), ["eval-raw"], str(eval_set), SMALL, name="det-a")
    second = evaluate(str(run), ["eval-raw"], str(eval_set), SMALL, name="det-b")
    a = pq.read_table(Path(first["out"]) / "per_concept.parquet").to_pylist()
    b = pq.read_table(Path(second["out"]) / "per_concept.parquet").to_pylist()
    assert a == b
    runs = pq.read_table(Path(first["out"]) / "runs.parquet").to_pylist()
    assert runs[0]["samples_seen"] == 512 and runs[0]["steps"] == 8
    assert first["subsets"]["eval-raw"]["samples"] == len(pq.read_table(run / "subsets" / "eval-raw"))
    assert len(a) == 136 and {r["eval_images"] for r in a} == {2}
    assert (Path(first["out"]) / "comparison.png").stat().st_size > 0


def test_bad_inputs_give_one_line_errors(pool, tmp_path):
    run, eval_set = pool
    write_manifest(run, "eval-empty", [])
    with pytest.raises(ConfigError, match="subset 'eval-empty' is empty"):
        evaluate(str(run), ["eval-empty"], str(eval_set), SMALL)
    with pytest.raises(ConfigError, match="no subset 'nope'"):
        evaluate(str(run), ["nope"], str(eval_set), SMALL)
    unknown = tmp_path / "unknown"
    for label in ("dog", "spaceship"):
        (unknown / label).mkdir(parents=True)
        Image.new("RGB", (64, 64), (200, 20, 20)).save(unknown / label / "0.jpg")
    with pytest.raises(ConfigError, match="not in the concept list.*'spaceship'"):
        evaluate(str(run), ["eval-raw"], str(unknown), SMALL)
    tiny = tmp_path / "tiny.parquet"
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3)).save(buffer, "PNG")
    pq.write_table(pa.table({"image": [buffer.getvalue()], "label": ["dog"]}), tiny)
    with pytest.raises(ConfigError, match="row 0 .* is 4x3"):
        evaluate(str(run), ["eval-raw"], str(tiny), SMALL)
    broken = tmp_path / "broken.parquet"
    pq.write_table(pa.table({"image": [b"not an image"], "label": ["dog"]}), broken)
    with pytest.raises(ConfigError, match="cannot be decoded"):
        evaluate(str(run), ["eval-raw"], str(broken), SMALL)
    bad = subprocess.run([sys.executable, "-m", "pipelines.cli", "evaluate", str(run), "--subsets", "eval-raw",
                          "--eval", str(eval_set), "--set", "samples_seen=0"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "samples_seen" in bad.stderr and "Traceback" not in bad.stderr


LIT = ProxyConfig(image_tower="builtin:demo-clip", samples_seen=8000, seeds=[0, 1, 2])


@pytest.fixture(scope="module")
def directions(pool):
    """Same proxy (locked demo-CLIP image tower, fresh text tower) and budget, only the data differs:
    the raw pool, its CLIP-filtered subset, a MetaCLIP-balanced subset of that, and a random subset of the
    CLIP-filtered one of the same size. Three seeds each; the margins are printed."""
    import numpy as np

    from operators.match import MatchOptions
    from pipelines.match import match_run
    from pipelines.select import parse_recipe, select

    run, eval_set = pool
    clip_step = {"step": "clip_score", "min_score": 0.3}
    select(str(run), parse_recipe({"steps": [clip_step]}), "eval-clip", overwrite=True)
    match_run(str(run), MatchOptions(metadata=str(Path("pipelines/concepts/demo.txt").resolve())), progress=False)
    select(str(run), parse_recipe({"steps": [clip_step, {"step": "metaclip_balance", "t": 4, "seed": 0}]}),
           "eval-balanced", overwrite=True)
    balanced = pq.read_table(run / "subsets" / "eval-balanced" / "manifest.parquet").column("key").to_pylist()
    clip = pq.read_table(run / "subsets" / "eval-clip" / "manifest.parquet").column("key").to_pylist()
    rng = np.random.default_rng(0)
    write_manifest(run, "eval-random", sorted(rng.choice(clip, size=len(balanced), replace=False).tolist()))
    s = evaluate(str(run), ["eval-raw", "eval-clip", "eval-balanced", "eval-random"], str(eval_set), LIT,
                 name="directions")["subsets"]
    for name, r in s.items():
        print(f"{name:<14} samples {r['samples']:>4}  overall {r['overall_accuracy']:.3f} ± "
              f"{r['overall_accuracy_std']:.3f}  tail {r['tail_accuracy']:.3f} ± {r['tail_accuracy_std']:.3f}")
    return s


def test_a_clip_filtered_subset_beats_the_raw_pool_at_equal_samples_seen(directions):
    """The mismatched pairs of the raw pool teach wrong names."""
    assert directions["eval-clip"]["overall_accuracy"] > directions["eval-raw"]["overall_accuracy"]


@pytest.mark.xfail(strict=True, reason="the 400-page test web holds almost no tail examples: tail accuracy is 0 for "
                   "both subsets. On the 1,000-page demo web (t=8, 20k samples, 3 seeds) balanced beats random on "
                   "the tail, 0.053 vs 0.023 (closing note of issue 9)")
def test_a_balanced_subset_beats_a_random_one_of_the_same_size_on_the_tail(directions):
    assert directions["eval-balanced"]["tail_accuracy"] > directions["eval-random"]["tail_accuracy"]
