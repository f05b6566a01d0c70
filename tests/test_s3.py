"""s3:// input and output go through the same code as local paths, against a real S3 API server on loopback."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from helpers import DEMO_CONFIG

pytestmark = pytest.mark.slow


@pytest.fixture
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    yield env
    server.stop()


def test_annotate_reads_and_writes_s3(demo_web, s3_server, tmp_path, monkeypatch):
    import s3fs

    _, web = demo_web
    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    fs.mkdir("tailor-test")
    fs.put(str(web / "urls.jsonl.gz"), "tailor-test/in/urls.jsonl.gz")
    env = {**os.environ, **s3_server}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "annotate", "--config", str(DEMO_CONFIG),
         "--input", "s3://tailor-test/in/", "--output", "s3://tailor-test/runs/demo", "--no-progress",
         "--set", "input.rows_per_shard=100"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fs.invalidate_cache()
    assert fs.exists("tailor-test/runs/demo/run.json")
    assert len(fs.ls("tailor-test/runs/demo/_done")) == 4
    with fs.open("tailor-test/runs/demo/annotations/00000_00000.parquet", "rb") as f:
        first = pq.read_table(f)
    assert first.num_rows == 100
    truth = {r["demo_id"]: r["expected_status"] for r in pq.read_table(web / "truth.parquet").to_pylist()}
    assert all(truth[r["demo_id"]] == r["status"] for r in first.to_pylist())
    assert not fs.exists("tailor-test/runs/demo/_staging")

    # DuckDB reads the run's tables from S3 through the run's fsspec filesystem (no httpfs extension)
    from pipelines.core import duck
    from pipelines.core.storage import RunPaths

    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance cached for another endpoint must not be reused
    paths = RunPaths("s3://tailor-test/runs/demo")
    files = paths.list("annotations", ".parquet")
    assert len(files) == 4
    con = duck.connect(threads=1)
    by_status = dict(duck.scan(con, paths, files).aggregate("status, count(*)", "status").fetchall())
    expected = collections.Counter(truth.values())
    assert by_status == dict(expected) and sum(by_status.values()) == 400
    images = duck.scan(con, paths, paths.list("images", ".parquet"))
    assert images.aggregate("count(*)").fetchall() == [(expected["ok"],)]
