"""Resume: a run killed with SIGKILL at any point, run again, equals a run that was never killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from helpers import DEMO_CONFIG

pytestmark = pytest.mark.slow

COMPARED = ["key", "demo_id", "url", "caption", "status", "http_status", "n_bytes", "original_width",
            "original_height", "width", "height", "sha256", "phash"]


def _command(urls, output) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "annotate", "--config", str(DEMO_CONFIG), "--input", str(urls),
            "--output", str(output), "--set", "input.rows_per_shard=50", "--no-progress"]


def _status(run) -> str:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "status", str(run)], capture_output=True,
                          text=True, timeout=60).stdout


def test_sigkill_then_rerun_equals_clean_run(demo_web, tmp_path):
    _, web = demo_web
    urls = web / "urls.parquet"
    clean = tmp_path / "clean"
    subprocess.run(_command(urls, clean), check=True, timeout=600, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(urls, killed), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((killed / "_done").glob("*.json")):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait(timeout=60)
    time.sleep(3)  # Ray worker processes die with their raylet a moment after the driver
    done_when_killed = len(list((killed / "_done").glob("*.json")))
    assert 1 <= done_when_killed < 8, "the kill must land mid-run"
    assert "running or interrupted" in _status(killed)
    assert len(pq.read_table(killed / "annotations")) < 400  # only whole shards are visible

    rerun = subprocess.run(_command(urls, killed), timeout=600, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"({done_when_killed} were already done)" in rerun.stdout
    assert "finished; rows done 400/400 (400 in 8/8 committed shards" in _status(killed)

    ours = pq.read_table(killed / "annotations").sort_by("key")
    theirs = pq.read_table(clean / "annotations").sort_by("key")
    assert ours.num_rows == theirs.num_rows == 400
    assert ours.select(COMPARED).to_pylist() == theirs.select(COMPARED).to_pylist()
    images = pq.read_table(killed / "images").sort_by("key")
    assert images.select(["key", "width", "height"]).equals(
        pq.read_table(clean / "images").sort_by("key").select(["key", "width", "height"]))
    assert not (killed / "_staging").exists()
