"""Whole annotate runs against a multi-host loopback web (tests/host_web.py): the run's host budget holds across
fetch processes, opt-outs and throttling show in run.json, a rerun fetches again only what failed for a moment,
and a SIGKILL while rows wait on a throttled host loses nothing."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import DEMO_CONFIG, demo_config, wait_until_gone
from host_web import DISALLOW_IMG, HostSpec, HostWeb

from operators import status as st

pytestmark = pytest.mark.slow

FAST = ["embed=null", "download.allow_networks=[\"127.0.0.0/8\"]", "download.timeout=5"]


def _images() -> list[bytes]:
    out = []
    for i in range(6):
        buf = io.BytesIO()
        PIL.Image.new("RGB", (96, 80), (30 * i, 120, 250 - 35 * i)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def _table(path, urls: list[str]) -> str:
    pq.write_table(pa.table({"url": urls, "caption": [f"photo {i}" for i in range(len(urls))]}), path)
    return str(path)


def _images_requested(web: HostWeb, address: str) -> list[str]:
    return [r.path for r in web.log(address) if r.path.startswith("/img/")]


def test_a_run_keeps_every_host_within_its_budget_and_reports_hosts(ray_local, tmp_path):
    from pipelines.verbs.annotate import annotate

    specs = [HostSpec("127.0.0.20", latency=0.03), HostSpec("127.0.0.21", concurrency=2, rate=8),
             HostSpec("127.0.0.22", robots=DISALLOW_IMG), HostSpec("127.0.0.23", tdm_header=True)]
    with HostWeb(specs, _images()) as web:
        hosts = ["127.0.0.20"] * 60 + ["127.0.0.21"] * 40 + ["127.0.0.22"] * 10 + ["127.0.0.23"] * 10
        urls = _table(tmp_path / "urls.parquet", web.urls_for(hosts))
        run = tmp_path / "run"
        summary = annotate(demo_config(urls, run, *FAST, "download.host_concurrency=2", "ray.batch_size=15",
                                       "input.rows_per_shard=40", "download.max_wait=120"), progress=False)
        # two fetch processes at a time (2 CPUs), 15-row pieces: the budget is the run's, not a process's
        assert web.max_inflight("127.0.0.20") <= 2
        assert not _images_requested(web, "127.0.0.22")

    rows = {r["url"]: r for r in pq.read_table(run / "annotations").to_pylist()}
    by_host = {h: [rows[u]["status"] for u, hh in zip(web.urls_for(hosts), hosts, strict=True) if hh == h]
               for h in set(hosts)}
    assert set(by_host["127.0.0.20"]) == set(by_host["127.0.0.21"]) == {st.OK}
    assert set(by_host["127.0.0.22"]) == set(by_host["127.0.0.23"]) == {st.OPTED_OUT}
    figures = summary["hosts"]
    assert figures["opted_out"] == {"robots_txt": 10, "tdm_rep": 10}
    assert figures["hosts"] == 4 and figures["requests_per_connection"] > 2
    busiest = {h["host"]: h for h in figures["busiest"]}
    assert busiest[f"http://127.0.0.20:{web.port}"]["rows"] == 60
    assert json.loads((run / "run.json").read_text())["hosts"]["opted_out"]["robots_txt"] == 10
    assert (run / "hosts.json").exists()
    status = subprocess.run([sys.executable, "-m", "pipelines.cli", "status", str(run)], capture_output=True,
                            text=True, timeout=60).stdout
    assert "rows waiting on hosts" in status


def test_a_rerun_after_an_outage_fetches_only_the_rows_that_failed(ray_local, tmp_path):
    """Host .31 goes down mid-run: its later rows end connection_error (transient). Back up, the same command
    again requests exactly those rows, and every row is ok; a third run requests nothing."""
    from pipelines.verbs.annotate import annotate

    specs = [HostSpec("127.0.0.30", latency=0.01), HostSpec("127.0.0.31", latency=0.05)]
    with HostWeb(specs, _images()) as web:
        hosts = ["127.0.0.30", "127.0.0.31"] * 60
        urls = _table(tmp_path / "urls.parquet", web.urls_for(hosts))
        config = demo_config(urls, tmp_path / "run", *FAST, "download.host_concurrency=2",
                             "download.backoff=0.2", "input.rows_per_shard=60")
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(annotate(config, progress=False)))
        thread.start()
        deadline = time.time() + 120
        while len(_images_requested(web, "127.0.0.31")) < 10 and time.time() < deadline:
            time.sleep(0.01)
        web.stop("127.0.0.31")
        thread.join(timeout=300)
        first = pq.read_table(tmp_path / "run" / "annotations").to_pylist()
        failed = [r for r in first if r["status"] != st.OK]
        assert failed and {r["status"] for r in failed} == {st.CONNECTION_ERROR}
        assert all(r["transient"] for r in failed) and all("127.0.0.31" in r["url"] for r in failed)
        assert "hint" in result

        web.start("127.0.0.31")
        web.reset()
        again = annotate(config, progress=False)
        assert sorted(_images_requested(web, "127.0.0.31")) == sorted(
            r["url"].split(str(web.port), 1)[1] for r in failed)
        assert not _images_requested(web, "127.0.0.30")
        assert again["retried"]["rows"] == len(failed) and again["retried"]["now_ok"] == len(failed)
        table = pq.read_table(tmp_path / "run" / "annotations")
        assert table.num_rows == 120 and len(set(table.column("key").to_pylist())) == 120
        assert set(table.column("status").to_pylist()) == {st.OK}
        images = pq.read_table(tmp_path / "run" / "images")
        assert sorted(images.column("key").to_pylist()) == sorted(table.column("key").to_pylist())

        web.reset()
        third = annotate(config, progress=False)
        assert "retried" not in third and not web.log("127.0.0.31") and not web.log("127.0.0.30")


def test_sigkill_while_rows_wait_on_a_throttled_host_loses_no_row(tmp_path):
    specs = [HostSpec("127.0.0.40", concurrency=1, rate=4), HostSpec("127.0.0.41")]
    with HostWeb(specs, _images()) as web:
        hosts = ["127.0.0.40"] * 30 + ["127.0.0.41"] * 30
        urls = _table(tmp_path / "urls.parquet", web.urls_for(hosts))
        run = tmp_path / "run"
        command = [sys.executable, "-m", "pipelines.cli", "annotate", "--config", str(DEMO_CONFIG), "--input", urls,
                   "--output", str(run), "--no-progress", "--set", "input.rows_per_shard=20",
                   *[x for s in FAST for x in ("--set", s)]]
        proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while time.time() < deadline and web.refused("127.0.0.40") + len(_images_requested(web, "127.0.0.40")) < 12:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        wait_until_gone(session=proc.pid)  # its Ray workers die a moment later: a wait, not a check
        assert len(list((run / "_done").glob("*.json"))) < 3, "the kill must land mid-run"
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    table = pq.read_table(run / "annotations")
    assert table.num_rows == 60 and len(set(table.column("key").to_pylist())) == 60
    assert set(table.column("status").to_pylist()) == {st.OK}
