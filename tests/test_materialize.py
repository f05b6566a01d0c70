"""materialize: a subset of the demo run becomes WebDataset tar shards that `webdataset` reads back whole."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import write_manifest

from pipelines.verbs.materialize import MaterializeError, MaterializeOptions, materialize

pytestmark = pytest.mark.slow  # every test here reads the session's annotated demo run

PER_SHARD = 40


def stored(run: Path) -> tuple[dict, dict]:
    """The run's annotation rows and stored image bytes, by key."""
    annotations = {r["key"]: r for r in pq.read_table(run / "annotations").to_pylist()}
    images = pq.read_table(run / "images", columns=["key", "image"])
    return annotations, dict(zip(images.column("key").to_pylist(), images.column("image").to_pylist(), strict=True))


def read_webdataset(urls: list[str]) -> list[dict]:
    import webdataset as wds

    def raise_on_error(exn):
        raise exn

    return list(wds.WebDataset(urls, shardshuffle=False, handler=raise_on_error, empty_check=True))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def subset(demo_run):
    """Subset mat-test: every ok key of the demo run, in shuffled order, one of them listed twice."""
    _, run, _ = demo_run
    annotations = pq.read_table(run / "annotations", columns=["key", "status"])
    ok = sorted(annotations.filter(pc.equal(annotations.column("status"), "ok")).column("key").to_pylist())
    shuffled = sorted(ok, key=lambda k: hashlib.md5(k.encode()).hexdigest())
    write_manifest(run, "mat-test", [*shuffled, shuffled[0]])
    return run, ok


@pytest.fixture(scope="module")
def materialized(subset, tmp_path_factory):
    run, ok = subset
    out = tmp_path_factory.mktemp("mat") / "shards"
    summary = materialize(str(run), "mat-test", str(out), MaterializeOptions(samples_per_shard=PER_SHARD),
                          progress=False)
    return summary, out, run, ok


def test_webdataset_reads_back_every_kept_sample_once(materialized):
    summary, out, run, ok = materialized
    annotations, images = stored(run)
    tars = sorted(str(p) for p in out.glob("*.tar"))
    samples = read_webdataset(tars)
    keys = [s["__key__"] for s in samples]
    assert keys == ok  # every kept key exactly once, in key order, nothing else
    assert summary["samples"] == len(ok) and summary["duplicated_keys"] == 1 and summary["skipped"]["keys"] == 0
    for sample in samples:
        key = sample["__key__"]
        assert sample["jpg"] == images[key]  # the stored bytes, unchanged
        assert sample["txt"].decode("utf-8") == annotations[key]["caption"]
        meta = json.loads(sample["json"])
        row = annotations[key]
        assert meta == {k: row[k] for k in meta}
        for field in ("key", "url", "caption", "width", "height", "sha256", "clip_score", "phash", "demo_id"):
            assert meta[field] == row[field], field
        assert {k for k in sample if not k.startswith("__")} == {"jpg", "txt", "json"}


def test_shard_sizes_index_and_parquet_copy(materialized):
    summary, out, run, ok = materialized
    index = json.loads((out / "index.json").read_text())
    tars = sorted(out.glob("*.tar"))
    n = -(-len(ok) // PER_SHARD)
    assert [t.name for t in tars] == [f"{i:05d}.tar" for i in range(n)]
    assert [s["name"] for s in index["shards"]] == [t.name for t in tars]
    assert [s["samples"] for s in index["shards"]] == [PER_SHARD] * (n - 1) + [len(ok) - PER_SHARD * (n - 1)]
    for entry, tar in zip(index["shards"], tars, strict=True):
        keys = [s["__key__"] for s in read_webdataset([str(tar)])]
        assert (len(keys), keys[0], keys[-1]) == (entry["samples"], entry["first_key"], entry["last_key"])
        assert entry["bytes"] == tar.stat().st_size
    assert index["samples"] == index["train_num_samples"] == len(ok) == summary["train_num_samples"]
    assert (index["run"], index["subset"]) == (str(run), "mat-test")
    assert (out / "_SUCCESS").exists()

    parquet = pq.read_table(out / "parquet")
    _, images = stored(run)
    assert parquet.column("key").to_pylist() == ok
    assert all(images[k] == b for k, b in zip(ok, parquet.column("image").to_pylist(), strict=True))
    assert set(parquet.column("image_format").to_pylist()) == {"jpg"}
    assert sorted(p.name for p in (out / "parquet").iterdir()) == [f"{i:05d}.parquet" for i in range(n)]


def test_openclip_brace_pattern_lists_exactly_the_tars(materialized):
    from braceexpand import braceexpand

    _, out, _, _ = materialized
    index = json.loads((out / "index.json").read_text())
    assert index["train_data"] == f"{out}/{{00000..{len(index['shards']) - 1:05d}}}.tar"
    urls = list(braceexpand(index["train_data"]))
    assert urls == sorted(str(p) for p in out.glob("*.tar"))
    # OpenCLIP's own sample pipeline: decode to RGB PIL images, pick the image and text by extension
    import webdataset as wds

    pairs = list(wds.WebDataset(urls[:1], shardshuffle=False, empty_check=True).decode("pilrgb")
                 .to_tuple("jpg;png;jpeg;webp", "txt"))
    assert len(pairs) == index["shards"][0]["samples"]
    assert all(image.mode == "RGB" and image.size[0] > 0 and isinstance(text, str) for image, text in pairs)


def test_rerun_is_byte_identical_and_needs_overwrite(materialized):
    _, out, run, _ = materialized
    before = {p.name: sha(p) for p in out.glob("*.tar")}
    with pytest.raises(MaterializeError, match="not empty.*--overwrite"):
        materialize(str(run), "mat-test", str(out), MaterializeOptions(samples_per_shard=PER_SHARD), progress=False)
    materialize(str(run), "mat-test", str(out), MaterializeOptions(samples_per_shard=PER_SHARD), overwrite=True,
                progress=False)
    assert {p.name: sha(p) for p in out.glob("*.tar")} == before
    assert (out / "_SUCCESS").exists() and not list(out.glob(".tmp-*"))


def test_missing_subset_is_one_clear_line(subset, tmp_path, capsys):
    from pipelines import cli

    run, _ = subset
    with pytest.raises(MaterializeError, match=r"has no subset 'nope' \(subsets: .*mat-test"):
        materialize(str(run), "nope", str(tmp_path / "out"), progress=False)
    assert cli.main(["materialize", str(run), "nope", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no subset 'nope'" in err and len(err.splitlines()) == 1


def test_keys_without_an_image_fail_or_are_skipped_and_counted(demo_run, tmp_path):
    _, run, _ = demo_run
    annotations = pq.read_table(run / "annotations", columns=["key", "status"]).to_pylist()
    ok = sorted(r["key"] for r in annotations if r["status"] == "ok")[:30]
    failed = sorted(r["key"] for r in annotations if r["status"] != "ok")[:3]
    write_manifest(run, "mat-missing", [*ok, *failed, "no-such-key"])
    with pytest.raises(MaterializeError, match=r"4 of its 34 keys have no stored image .*not in the run 1"):
        materialize(str(run), "mat-missing", str(tmp_path / "a"), MaterializeOptions(samples_per_shard=PER_SHARD),
                    progress=False)
    assert not (tmp_path / "a").exists()  # refused before writing anything

    summary = materialize(str(run), "mat-missing", str(tmp_path / "b"),
                          MaterializeOptions(samples_per_shard=PER_SHARD, skip_missing=True), progress=False)
    assert summary["samples"] == 30 and summary["skipped"]["keys"] == 4
    assert sum(summary["skipped"]["by_reason"].values()) == 4 and summary["skipped"]["by_reason"]["not in the run"] == 1
    assert [s["__key__"] for s in read_webdataset([str(tmp_path / "b" / "00000.tar")])] == ok


def test_caption_source_picks_the_text_column_and_bad_keys_are_refused(subset, tmp_path):
    run, ok = subset
    annotations, _ = stored(run)
    write_manifest(run, "mat-url", ok[:10])
    materialize(str(run), "mat-url", str(tmp_path / "u"), MaterializeOptions(caption_source="url"), progress=False)
    samples = read_webdataset([str(tmp_path / "u" / "00000.tar")])
    assert [s["txt"].decode() for s in samples] == [annotations[k]["url"] for k in ok[:10]]
    assert [json.loads(s["json"])["caption"] for s in samples] == [annotations[k]["caption"] for k in ok[:10]]
    copy = pq.read_table(tmp_path / "u" / "parquet")
    assert copy.column("original_caption").to_pylist() == [annotations[k]["caption"] for k in ok[:10]]
    with pytest.raises(MaterializeError, match="caption_source: no column 'recaption'"):
        materialize(str(run), "mat-url", str(tmp_path / "v"), MaterializeOptions(caption_source="recaption"),
                    progress=False)

    write_manifest(run, "mat-dots", [*ok[:3], "has.dot"])
    with pytest.raises(MaterializeError, match=r"1 keys of the subset cannot be WebDataset keys .*has\.dot"):
        materialize(str(run), "mat-dots", str(tmp_path / "w"), progress=False)


@pytest.mark.slow
def test_cli_reads_and_writes_s3_through_moto(materialized, tmp_path):
    import s3fs
    from moto.server import ThreadedMotoServer

    _, local_out, run, ok = materialized
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
        fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=aws["AWS_ENDPOINT_URL"])
        fs.mkdir("tailor-mat")
        for part in ("annotations", "images", "subsets/mat-test"):
            fs.put(str(run / part), f"tailor-mat/run/{part}", recursive=True)
        fs.put(str(run / "config.yaml"), "tailor-mat/run/config.yaml")
        proc = subprocess.run(  # an s3:// run to an s3:// output
            [sys.executable, "-m", "pipelines.cli", "materialize", "s3://tailor-mat/run", "mat-test",
             "--out", "s3://tailor-mat/out",
             "--samples-per-shard", str(PER_SHARD), "--no-progress"],
            env={**os.environ, **aws}, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"--train-num-samples {len(ok)}" in proc.stdout
        fs.invalidate_cache()
        fs.get("tailor-mat/out/", str(tmp_path / "s3"), recursive=True)
    finally:
        server.stop()
    got = tmp_path / "s3"
    index = json.loads((got / "index.json").read_text())
    assert index["train_data"].startswith("s3://tailor-mat/out/{00000..")
    assert (got / "_SUCCESS").exists()
    assert [s["__key__"] for s in read_webdataset(sorted(str(p) for p in got.glob("*.tar")))] == ok
    assert {p.name: sha(p) for p in got.glob("*.tar")} == {p.name: sha(p) for p in local_out.glob("*.tar")}
    assert pq.read_table(got / "parquet").column("key").to_pylist() == ok
