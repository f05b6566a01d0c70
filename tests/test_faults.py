"""The faults clusters have, on loopback and bounded in time.

- a Ray worker process killed mid-run: its tasks are retried; every row is written once.
- the driver killed mid-run on s3:// and the same command run again: equal to a clean run (the local case
  is tests/test_resume.py).
- S3 answering 503 SlowDown / 500 InternalError for a while: retried by botocore, the run succeeds.
- an output that cannot be written (before or during the run): one clear line, exit 2, and nothing that
  looks complete (no shard marker, no run.json).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import DEMO_CONFIG, wait_until_gone
from s3_faults import FaultyS3Proxy, moto_s3, s3fs_for

pytestmark = pytest.mark.slow

ROWS = 160
COMPARED = ["key", "demo_id", "url", "caption", "status", "http_status", "n_bytes", "original_width",
            "original_height", "width", "height", "sha256", "phash"]
# no embed stage: these tests are about the plumbing, and the model would only add minutes of CPU
NO_EMBED = ["--set", "embed=null", "--set", "input.rows_per_shard=40", "--no-progress"]


def _annotate(urls, output, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "annotate", "--config", str(DEMO_CONFIG), "--input", str(urls),
            "--output", str(output), *NO_EMBED, *extra]


@pytest.fixture(scope="module")
def urls(demo_web, tmp_path_factory):
    """The first ROWS rows of the session's demo web (every hostile kind among them is served as usual)."""
    _, web = demo_web
    path = tmp_path_factory.mktemp("fault-input") / "urls.parquet"
    pq.write_table(pq.read_table(web / "urls.parquet").slice(0, ROWS), path)
    return path


@pytest.fixture(scope="module")
def truth(demo_web, urls):
    _, web = demo_web
    ids = set(pq.read_table(urls).column("demo_id").to_pylist())
    return {r["demo_id"]: r["expected_status"] for r in pq.read_table(web / "truth.parquet").to_pylist()
            if r["demo_id"] in ids}


def _check_complete(annotations, truth) -> None:
    keys = annotations.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == ROWS, "every row exactly once"
    assert {r["demo_id"]: r["status"] for r in annotations.to_pylist()} == truth


def _ray_task_workers(driver: int, stage: str) -> list[int]:
    """Ray worker processes under this driver that are running a task of `stage` right now (by proctitle)."""
    children: dict[int, list[int]] = {}
    titles: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                titles[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [driver]
    while todo:
        for pid in children.get(todo.pop(), []):
            todo.append(pid)
            if titles[pid].startswith("ray::") and stage in titles[pid]:
                found.append(pid)
    return found


def test_killed_ray_workers_are_retried_without_duplicates(urls, truth, tmp_path):
    run = tmp_path / "run"
    driver = subprocess.Popen(_annotate(urls, run, "--set", "ray.max_fetch_tasks=2"), start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed: list[int] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(killed) < 2 and driver.poll() is None:
            for pid in _ray_task_workers(driver.pid, "fetch_batch")[:1]:
                if pid not in killed:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)  # mid-task, as when an OOM killer or a preemption strikes
                        killed.append(pid)
            time.sleep(0.05)
        out, err = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert len(killed) == 2, f"could not catch fetch tasks to kill (exit {driver.returncode}): {err[-2000:]}"
    assert driver.returncode == 0, err[-3000:]
    _check_complete(pq.read_table(run / "annotations"), truth)
    summary = json.loads((run / "run.json").read_text())
    assert summary["rows_out"] == ROWS and summary["shards"]["done"] == 4
    assert len(pq.read_table(run / "images")) == summary["status_counts"]["ok"]
    assert not (run / "_staging").exists()
    assert {"load", "fetch", "write"} <= set(summary["stage_throughput"])
    for stage in summary["stage_throughput"].values():
        assert stage["rows"] > 0 and stage["rows_per_s"] > 0


@pytest.fixture
def s3():
    """(AWS environment, s3fs) of a moto server holding an empty bucket `faults` (moto's state is per process:
    the bucket is emptied, not created twice)."""
    with moto_s3() as env:
        fs = s3fs_for(env)
        if fs.exists("faults"):
            fs.rm("faults", recursive=True)
        fs.mkdir("faults")
        yield env, fs


def _env(s3_env: dict, endpoint: str | None = None) -> dict:
    env = {**os.environ, **s3_env}
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


def test_s3_throttling_and_500s_are_retried(urls, truth, s3):
    env, fs = s3
    fs.put(str(urls), "faults/in/urls.parquet")
    with FaultyS3Proxy(env["AWS_ENDPOINT_URL"], failures=16, attempts_failed=2) as proxy:
        proc = subprocess.run(_annotate("s3://faults/in/urls.parquet", "s3://faults/runs/flaky"),
                              env=_env(env, proxy.endpoint), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proxy.failed) == 16 and {status for _, _, status in proxy.failed} == {500, 503}
    fs.invalidate_cache()
    with fs.open("faults/runs/flaky/run.json") as f:
        assert json.load(f)["rows_out"] == ROWS
    tables = []
    for path in fs.ls("faults/runs/flaky/annotations"):
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    _check_complete(pa.concat_tables(tables), truth)


def test_s3_writes_refused_mid_run_leave_nothing_that_looks_complete(urls, s3):
    env, fs = s3
    fs.put(str(urls), "faults/in/urls.parquet")
    # the config, the input plan and staging parts are written; every shard's annotations file is refused
    with FaultyS3Proxy(env["AWS_ENDPOINT_URL"], deny_put=r"/annotations/") as proxy:
        proc = subprocess.run(_annotate("s3://faults/in/urls.parquet", "s3://faults/runs/denied"),
                              env=_env(env, proxy.endpoint), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 2, proc.stderr[-3000:]
    # (Ray's own start-up warnings may come first: the error is the last line, and there is no traceback)
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("tailor: storage error: PermissionError"), proc.stderr[-3000:]
    assert "s3://faults/runs/denied" in lines[-1] and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proxy.failed and all(method == "PUT" for method, _, _ in proxy.failed)
    fs.invalidate_cache()
    assert fs.exists("faults/runs/denied/config.yaml")
    assert not fs.exists("faults/runs/denied/_done") or not fs.ls("faults/runs/denied/_done")
    assert not fs.exists("faults/runs/denied/run.json")
    status = subprocess.run([sys.executable, "-m", "pipelines.cli", "status", "s3://faults/runs/denied"],
                            env=_env(env), capture_output=True, text=True, timeout=60)
    # parts were written before the commits were refused: they count as written, not as committed
    assert "running or interrupted; rows done " in status.stdout and "(0 in 0/4 committed shards" in status.stdout


def test_unwritable_local_output_is_one_clear_line(urls, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the run folder's parent should be\n")
    proc = subprocess.run(_annotate(urls, blocker / "run"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("tailor: storage error:") and str(blocker) in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert blocker.read_text().startswith("a file")


def _listing(fs, path: str) -> list[str]:
    try:
        return fs.ls(path, refresh=True)
    except FileNotFoundError:
        return []


def _settled_count(fs, path: str, quiet: float = 3.0, limit: float = 30.0) -> int:
    last, since, deadline = -1, time.time(), time.time() + limit
    while time.time() < deadline:
        n = len(_listing(fs, path))
        if n != last:
            last, since = n, time.time()
        elif time.time() - since >= quiet:
            break
        time.sleep(0.5)
    return last


def test_driver_killed_on_s3_then_rerun_equals_clean_run(urls, truth, s3, demo_run):
    """The clean run is the session's demo run (never killed) of the whole demo web: rows are keyed by their place
    in the input, so its first ROWS rows are a clean run of `urls`. (It ran the embed stage too, which adds
    embeddings and changes none of the COMPARED columns.)"""
    env, fs = s3
    fs.put(str(urls), "faults/in/urls.parquet")
    # one download and one decode task at a time, 8 shards: shards finish one after another, the kill lands between
    command = _annotate("s3://faults/in/urls.parquet", "s3://faults/runs/killed", "--set", "input.rows_per_shard=20",
                        "--set", "ray.max_fetch_tasks=1")
    proc = subprocess.Popen(command, env=_env(env), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not _listing(fs, "faults/runs/killed/_done"):
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait(timeout=60)
    # a commit task already running may still finish (its worker outlives the driver by a moment): a marker
    # appears only after its shard's files are complete, so count once every process of the run is gone and
    # the markers stop changing
    wait_until_gone(session=proc.pid)  # its Ray workers die a moment later: a wait, not a check
    done_when_killed = _settled_count(fs, "faults/runs/killed/_done", quiet=1.0)
    assert 1 <= done_when_killed < 8, "the kill must land mid-run"
    assert not fs.exists("faults/runs/killed/run.json")

    rerun = subprocess.run(command, env=_env(env), capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"({done_when_killed} were already done)" in rerun.stdout
    fs.invalidate_cache()
    tables = []
    for path in fs.ls("faults/runs/killed/annotations"):
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    resumed = pa.concat_tables(tables).sort_by("key")
    _check_complete(resumed, truth)
    _, clean, _ = demo_run
    assert resumed.select(COMPARED).to_pylist() == pq.read_table(clean / "annotations").sort_by("key") \
        .slice(0, ROWS).select(COMPARED).to_pylist()
    assert not fs.exists("faults/runs/killed/_staging")
