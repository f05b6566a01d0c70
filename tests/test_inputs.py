"""Input formats: every URL-table format and img2dataset's own output give the same annotations."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from helpers import demo_config, served_demo_web

from pipelines.core.sources import InputError
from pipelines.verbs.annotate import annotate

pytestmark = pytest.mark.slow

COMPARED = ["key", "demo_id", "url", "caption", "source", "status", "http_status", "n_bytes", "original_width",
            "original_height", "width", "height", "sha256", "phash"]


@pytest.fixture(scope="module")
def small_web(tmp_path_factory):
    with served_demo_web(tmp_path_factory.mktemp("small-web"), n=120, seed=3) as served:
        yield served


def _annotations(run) -> pa.Table:
    return pq.read_table(run / "annotations").sort_by("key")


@pytest.fixture(scope="module")
def parquet_run(ray_local, small_web, tmp_path_factory):
    _, web = small_web
    run = tmp_path_factory.mktemp("parquet-run")
    annotate(demo_config(web / "urls.parquet", run, "input.rows_per_shard=50"), progress=False)
    return _annotations(run)


@pytest.mark.parametrize("name", ["urls.csv", "urls.tsv", "urls.jsonl", "urls.jsonl.gz"])
def test_text_formats_equal_parquet(parquet_run, small_web, tmp_path, name):
    _, web = small_web
    annotate(demo_config(web / name, tmp_path / "run", "input.rows_per_shard=50"), progress=False)
    ours = _annotations(tmp_path / "run")
    assert ours.num_rows == parquet_run.num_rows == 120
    assert ours.select(COMPARED).to_pylist() == parquet_run.select(COMPARED).to_pylist()


def test_custom_column_names_and_key_column(parquet_run, small_web, tmp_path):
    _, web = small_web
    table = pq.read_table(web / "urls.parquet").rename_columns(["id", "URL", "TEXT", "source"])
    pacsv.write_csv(table, tmp_path / "renamed.csv")
    run = tmp_path / "run"
    annotate(demo_config(tmp_path / "renamed.csv", run, "input.url_column=URL", "input.caption_column=TEXT",
                         "input.key_column=id", "input.rows_per_shard=50"), progress=False)
    ours = _annotations(run)
    assert ours.column("key").to_pylist() == sorted(parquet_run.column("demo_id").to_pylist())
    by_id = {r["demo_id"]: r for r in parquet_run.to_pylist()}
    for row in ours.to_pylist():
        ref = by_id[row["key"]]
        assert (row["url"], row["caption"], row["status"], row["sha256"]) == \
               (ref["url"], ref["caption"], ref["status"], ref["sha256"])


def test_missing_columns_and_unreadable_files_are_clear_errors(ray_local, small_web, tmp_path):
    _, web = small_web
    with pytest.raises(InputError, match="no url column 'link'"):
        annotate(demo_config(web / "urls.parquet", tmp_path / "a", "input.url_column=link"), progress=False)
    for column in ("clip_score", "probe_nsfw"):  # a later stage's output would silently overwrite it
        clashing = pq.read_table(web / "urls.parquet").append_column(column, pa.array([0.5] * 120))
        pq.write_table(clashing, tmp_path / f"{column}.parquet")
        with pytest.raises(InputError, match=f"{column}.*collide with annotation columns"):
            annotate(demo_config(tmp_path / f"{column}.parquet", tmp_path / column), progress=False)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"this is not parquet")
    with pytest.raises(InputError, match="cannot read .*junk.parquet"):
        annotate(demo_config(junk, tmp_path / "b"), progress=False)
    with pytest.raises(InputError, match="input not found"):
        annotate(demo_config(tmp_path / "nope.parquet", tmp_path / "c"), progress=False)


# img2dataset is run only on pages that cannot send it off loopback (no private redirects) and
# that answer promptly; it keeps the original bytes so hashes are comparable.
I2D_SAFE_KINDS = {None, "not_found", "html", "random_bytes", "truncated", "tiny", "extreme_aspect", "noai"}


def test_img2dataset_shards_as_input_equal_downloading(parquet_run, small_web, tmp_path):
    from img2dataset import download

    _, web = small_web
    truth = {r["demo_id"]: r["hostile"] for r in pq.read_table(web / "truth.parquet").to_pylist()}
    urls = pq.read_table(web / "urls.parquet")
    safe = urls.filter(pa.array([truth[d] in I2D_SAFE_KINDS for d in urls.column("demo_id").to_pylist()]))
    pq.write_table(safe, tmp_path / "safe.parquet")
    download(url_list=str(tmp_path / "safe.parquet"), input_format="parquet", url_col="url", caption_col="caption",
             save_additional_columns=["demo_id", "source"], output_format="webdataset",
             output_folder=str(tmp_path / "i2d"), processes_count=1, thread_count=8, number_sample_per_shard=40,
             resize_mode="no", disable_all_reencoding=True, timeout=5, retries=0, enable_wandb=False,
             distributor="multiprocessing")
    run = tmp_path / "run"
    annotate(demo_config(tmp_path / "i2d", run, "input.format=img2dataset"), progress=False)
    ours = {r["demo_id"]: r for r in _annotations(run).to_pylist()}
    assert len(ours) == safe.num_rows  # img2dataset's failures are rows too
    statuses = {r["status"] for r in ours.values()}
    assert sum(r["status"] == "ok" for r in ours.values()) > 80
    assert {"http_error", "not_image", "too_small", "bad_aspect_ratio", "opted_out"} <= statuses
    reference = {r["demo_id"]: r for r in parquet_run.to_pylist()}
    same = ["url", "caption", "source", "status", "original_width", "original_height", "width", "height",
            "sha256", "phash"]
    for demo_id, row in ours.items():
        ref = reference[demo_id]
        assert {c: row[c] for c in same} == {c: ref[c] for c in same}, (demo_id, truth[demo_id], row["error"])
