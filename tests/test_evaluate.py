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
