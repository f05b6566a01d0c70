"""Resume: a run killed with SIGKILL at any point, run again, equals a run that was never killed."""

from __future__ import annotations

import collections
import http.server
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import PIL.Image
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import DEMO_CONFIG, wait_until_gone

pytestmark = pytest.mark.slow

ROWS = 250  # the demo web's first 250 rows: 5 shards of 50, every hostile kind among them
COMPARED = ["key", "demo_id", "url", "caption", "status", "http_status", "n_bytes", "original_width",
            "original_height", "width", "height", "sha256", "phash"]


def _command(urls, output) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "annotate", "--config", str(DEMO_CONFIG), "--input", str(urls),
            "--output", str(output), "--set", "input.rows_per_shard=50", "--no-progress"]


def _status(run) -> str:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "status", str(run)], capture_output=True,
                          text=True, timeout=60).stdout


def test_sigkill_then_rerun_equals_clean_run(demo_run, tmp_path):
    """The clean run is the session's demo run (the same demo config, never killed) of the whole demo web: rows
    are keyed by their place in the input, so its first ROWS rows are a clean run of the input's first ROWS."""
    _, clean, web = demo_run
    urls = tmp_path / "urls.parquet"
    pq.write_table(pq.read_table(web / "urls.parquet").slice(0, ROWS), urls)
    shards = ROWS // 50

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(urls, killed), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((killed / "_done").glob("*.json")):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait(timeout=60)
    # Ray worker processes (process groups of their own, the driver's session) die with their raylet a moment later
    wait_until_gone(session=proc.pid)  # its Ray workers die a moment later: a wait, not a check
    done_when_killed = len(list((killed / "_done").glob("*.json")))
    assert 1 <= done_when_killed < shards, "the kill must land mid-run"
    assert "running or interrupted" in _status(killed)
    assert len(pq.read_table(killed / "annotations")) < ROWS  # only whole shards are visible

    rerun = subprocess.run(_command(urls, killed), timeout=600, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"({done_when_killed} were already done)" in rerun.stdout
    assert f"finished; rows done {ROWS}/{ROWS} ({ROWS} in {shards}/{shards} committed shards" in _status(killed)

    ours = pq.read_table(killed / "annotations").sort_by("key")
    keys = ours.column("key").combine_chunks()
    theirs = pq.read_table(clean / "annotations").sort_by("key").slice(0, ROWS)
    assert ours.num_rows == theirs.num_rows == ROWS
    assert ours.select(COMPARED).to_pylist() == theirs.select(COMPARED).to_pylist()
    images = pq.read_table(killed / "images").sort_by("key")
    clean_images = pq.read_table(clean / "images").sort_by("key")
    clean_images = clean_images.filter(pc.is_in(clean_images.column("key"), keys))
    assert images.select(["key", "width", "height"]).equals(clean_images.select(["key", "width", "height"]))
    assert not (killed / "_staging").exists()


def _kill_if_running(proc: subprocess.Popen | None) -> None:
    """A first run that a failed assertion left running: stopped with its Ray, not left to the next test."""
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        wait_until_gone(session=proc.pid)


class _GatedImages(http.server.BaseHTTPRequestHandler):
    """/ok/N.jpg answers at once; /gated/N.jpg waits until the test opens the gate. Counts requests."""
    gate = threading.Event()
    requests: collections.Counter = collections.Counter()
    body = b""

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).requests[self.path] += 1
        if self.path.startswith("/gated/"):
            self.gate.wait(timeout=600)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)
        except OSError:
            pass  # the killed run's connections

    def log_message(self, *args):
        pass


class _Servers:
    def __init__(self, servers):
        self.servers = servers

    def shutdown(self):
        for server in self.servers:
            server.shutdown()


def _gated_web(tmp_path, ok: int, waiting: int):
    """Two loopback hosts of their own (one gate and request counts): `ok` images on 127.0.0.1 that answer at
    once, then `waiting` on 127.0.0.2 that wait for the gate (a held request keeps its host's slot: on one host,
    the held rows would take the prompt ones' budget). Returns (handler class, servers, table path)."""
    gated = type("Gated", (_GatedImages,), {"gate": threading.Event(), "requests": collections.Counter()})
    image = io.BytesIO()
    PIL.Image.new("RGB", (64, 48), (200, 30, 30)).save(image, "JPEG")
    gated.body = image.getvalue()
    servers = [http.server.ThreadingHTTPServer((address, 0), gated) for address in ("127.0.0.1", "127.0.0.2")]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    prompt, held = (f"http://{s.server_address[0]}:{s.server_port}" for s in servers)
    urls = [f"{prompt}/ok/{i}.jpg" for i in range(ok)] + [f"{held}/gated/{i}.jpg" for i in range(waiting)]
    table = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": urls, "caption": [f"a red photo {i}" for i in range(ok + waiting)]}), table)
    return gated, _Servers(servers), table


def test_shards_commit_while_the_last_one_still_downloads(tmp_path):
    """The first shards are committed while the last shard's downloads hang; a SIGKILL then loses only the
    unfinished shard, and the rerun fetches only its rows."""
    gated, server, table = _gated_web(tmp_path, ok=100, waiting=50)
    run = tmp_path / "run"
    command = _command(table, run) + ["--set", "embed=null", "--set", "download.timeout=300",
                                      "--set", "download.retries=0", "--set", "ray.batch_size=50"]
    log = tmp_path / "first-run.log"
    proc = None
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(command, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
        def gated_requests() -> int:
            return sum(n for path, n in list(gated.requests.items()) if path.startswith("/gated/"))

        # (the last shard's fetch task may start only once an earlier one is done: wait for both conditions)
        deadline = time.time() + 300
        while time.time() < deadline and (len(list((run / "_done").glob("*.json"))) < 2 or not gated_requests()):
            assert proc.poll() is None, f"the run ended before its first shards were committed: {log.read_text()}"
            time.sleep(0.1)
        assert len(list((run / "_done").glob("*.json"))) == 2, "the first two shards were not committed in time"
        assert proc.poll() is None
        assert gated_requests() > 0, "the last shard's downloads did not start in time"
        assert not gated.gate.is_set()  # the last shard's downloads are still waiting
        assert "rows done 100/150 (100 in 2/3 committed shards" in _status(run)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        wait_until_gone(session=proc.pid)  # its Ray workers die a moment later: a wait, not a check
        assert len(pq.read_table(run / "annotations")) == 100

        gated.requests.clear()
        gated.gate.set()
        rerun = subprocess.run(command, timeout=600, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "(2 were already done)" in rerun.stdout
        assert not any(path.startswith("/ok/") for path in gated.requests)  # done shards not refetched
        images = sorted(path for path in gated.requests if path.startswith(("/ok/", "/gated/")))
        assert images == sorted(f"/gated/{i}.jpg" for i in range(50))  # (and the host's policy files: a new run)
        done = pq.read_table(run / "annotations")
        assert done.num_rows == 150 and set(done.column("status").to_pylist()) == {"ok"}
    finally:
        gated.gate.set()
        server.shutdown()
        _kill_if_running(proc)


@pytest.mark.parametrize("how", ["sigterm to the driver", "ctrl-c to the process group"])
def test_a_stopped_run_says_so_and_resumes(tmp_path, how):
    """SIGTERM (`kill PID`, a scheduler's stop) or Ctrl-C while the last shard downloads: the command says
    it was stopped and how to resume, exits 143 or 130 without a stack trace, leaves no Ray process, and
    the same command then finishes the run."""
    gated, server, table = _gated_web(tmp_path, ok=50, waiting=50)
    run = tmp_path / "run"
    command = [str(Path(sys.executable).parent / "tailor"), *_command(table, run)[3:], "--set", "embed=null",
               "--set", "download.timeout=300", "--set", "download.retries=0", "--set", "ray.batch_size=50"]
    proc = None
    try:
        proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.time() + 300
        while time.time() < deadline and not list((run / "_done").glob("*.json")):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        assert proc.poll() is None and not gated.gate.is_set()
        if how.startswith("sigterm"):
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == (143 if how.startswith("sigterm") else 130), stderr[-3000:]
        said = "stopped by SIGTERM" if how.startswith("sigterm") else "interrupted (Ctrl-C)"
        assert f"tailor: {said}. Shards already committed are kept" in stderr, stderr[-3000:]
        assert "Traceback" not in stderr and "received at time" not in stderr, stderr[-3000:]
        # Ray's own lines (`(raylet) Task ... submit failed`, workers' `(pid=...)` lines) stay in its logs
        assert "(raylet)" not in stderr and "pid=" not in stderr, stderr[-3000:]
        # the driver's group (the Ray processes it started) empties a moment after the driver exits
        assert not wait_until_gone(group=proc.pid), "Ray processes outlived the stopped command"

        gated.gate.set()
        rerun = subprocess.run(command, timeout=600, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "(1 were already done)" in rerun.stdout
        done = pq.read_table(run / "annotations")
        assert done.num_rows == 100 and set(done.column("status").to_pylist()) == {"ok"}
    finally:
        gated.gate.set()
        server.shutdown()
        _kill_if_running(proc)
