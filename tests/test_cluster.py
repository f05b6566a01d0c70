"""A real multi-process Ray cluster on this machine: `ray start --head`, a second node with its own
resources, the demo pipeline submitted with `ray job submit`, outputs checked against ground truth.

The head gets no CPUs (as on a real cluster, where it only runs the driver and the control plane), so
every task of the run must land on the second node. That node declares one GPU: the embed stage's model
actor must ask for it by resource (as on a GPU worker group) and be placed there; with no CUDA on this
machine the actor then runs its model on CPU. The cluster lives in its own process groups, temp
folder and ports, beside the session's in-process `ray_local` (which it never touches); it is torn down
by killing those process groups, never with `ray stop` (which would stop every Ray on the machine).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import DEMO_CONFIG

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
ROWS = 80  # two shards of 40: enough to see the run spread over the worker node
WORKER_RESOURCES = {"tailor_worker": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env() -> dict[str, str]:
    """The suite's environment (network guard on PYTHONPATH, netguard log), `tailor` on PATH, no auth token.

    Token authentication stays off: the cluster listens on loopback only and lives for one test module. With usage
    stats off, a `ray start` cluster's dashboard still pings the stats server once to say so: it is pointed
    at a closed loopback port.
    """
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def submit(cluster: LocalCluster, submission_id: str, entrypoint: list[str],
           timeout: float) -> subprocess.CompletedProcess:
    """`ray job submit` and wait for the job; retried while the head's job agent is still starting."""
    deadline = time.time() + timeout
    while True:
        job = subprocess.run([RAY, "job", "submit", "--address", cluster.dashboard, "--submission-id", submission_id,
                              "--", *entrypoint], env=cluster.env, capture_output=True, text=True,
                             timeout=max(deadline - time.time(), 1))
        if "No available agent" not in job.stderr or time.time() > deadline - 30:
            return job
        time.sleep(2)


def _wait(what: str, check, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not ready after {timeout} s")


def _http_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _alive_nodes(dashboard: str) -> list[dict]:
    body = _http_json(f"{dashboard}/api/v0/nodes?limit=100")
    return [n for n in body["data"]["result"]["result"] if n["state"] == "ALIVE"]


class LocalCluster:
    """A head (no CPUs) and one worker node, each a `ray start --block` in a process group of its own."""

    def __init__(self, worker_cpus: int = 2):
        self.temp_dir = tempfile.mkdtemp(prefix="tcl-", dir="/tmp")  # short: Ray's socket paths have a length cap
        self.port, self.dashboard_port, self.client_port = free_port(), free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.worker_cpus = worker_cpus
        self.env = cluster_env()
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = Path(self.temp_dir) / f"{name}.log"
        self.logs.append(log)
        # every node's agents on ports of their own: the defaults (52365, ...) may be held by another Ray here
        ports = [f"--{flag}={free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                          "runtime-env-agent-port", "metrics-export-port")]
        with open(log, "w") as out:
            proc = subprocess.Popen([RAY, "start", "--block", "--node-ip-address", "127.0.0.1", *ports, *args],
                                    env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> LocalCluster:
        head = self._start("head", [
            "--head", "--port", str(self.port), "--num-cpus", "0", "--temp-dir", self.temp_dir,
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(self.client_port),
            "--disable-usage-stats"])
        _wait("ray head dashboard", lambda: _http_json(f"{self.dashboard}/api/version"), 180, head)
        _wait("ray head node", lambda: len(_alive_nodes(self.dashboard)) == 1, 180, head)
        # `ray start` gives a joining node's raylet a fixed 30 s to register with the GCS. On a loaded 2-core
        # machine (the suite's own Ray, the head still starting its agents) one registration RPC can take all of
        # it, and the node gives up (CI saw this once: "timed out during startup"). That is Ray's start-up, not
        # what this test checks, so a node that gives up is cleared away and started again, up to three times.
        for attempt in range(1, 4):
            worker = self._start(f"worker-{attempt}", [
                "--address", f"127.0.0.1:{self.port}", "--num-cpus", str(self.worker_cpus), "--num-gpus", "1",
                "--resources", json.dumps(WORKER_RESOURCES)])
            try:
                _wait("second ray node", lambda: len(_alive_nodes(self.dashboard)) == 2, 180, worker)
                return self
            except RuntimeError:
                if attempt == 3:
                    raise
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGKILL)  # its raylet and agents, if they outlived `ray start`
                _wait("the given-up node to leave", lambda: len(_alive_nodes(self.dashboard)) == 1, 120, head)
        return self

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in reversed(self.procs):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
            if sig == signal.SIGTERM:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    for proc in self.procs:
                        proc.wait(timeout=5)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def tail_logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in self.logs if log.exists())


@pytest.fixture(scope="module")
def cluster():
    """One cluster for the module's tests (starting one is most of a test's time): each test submits a job of
    its own, with a submission id of its own, and reads only what its own job wrote."""
    c = LocalCluster()
    try:
        yield c.start()
    except Exception:
        print(c.tail_logs())
        raise
    finally:
        c.stop()


def test_job_submit_on_two_node_cluster(cluster, demo_web, tmp_path):
    _, web = demo_web
    urls = tmp_path / "urls.parquet"
    pq.write_table(pq.read_table(web / "urls.parquet").slice(0, ROWS), urls)
    run = tmp_path / "run"

    nodes = _alive_nodes(cluster.dashboard)
    worker = [n for n in nodes if not n["is_head_node"]]
    assert len(nodes) == 2 and len(worker) == 1
    assert worker[0]["resources_total"].get("tailor_worker") == 1 and worker[0]["resources_total"]["GPU"] == 1

    job = submit(cluster, "tailor-demo", ["tailor", "annotate", "--config", str(DEMO_CONFIG), "--input", str(urls),
                                          "--output", str(run), "--set", "input.rows_per_shard=40", "--no-progress"],
                 timeout=420)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    assert "Job 'tailor-demo' succeeded" in job.stdout, job.stdout[-4000:]
    assert f"rows in {ROWS}, rows out {ROWS}" in job.stdout

    annotations = pq.read_table(run / "annotations")
    assert annotations.num_rows == ROWS and len(set(annotations.column("key").to_pylist())) == ROWS
    submitted = set(pq.read_table(urls).column("demo_id").to_pylist())
    truth = {r["demo_id"]: r["expected_status"] for r in pq.read_table(web / "truth.parquet").to_pylist()
             if r["demo_id"] in submitted}
    assert {r["demo_id"]: r["status"] for r in annotations.to_pylist()} == truth
    summary = json.loads((run / "run.json").read_text())
    assert summary["shards"] == {"total": ROWS // 40, "done": ROWS // 40, "skipped_already_done": 0}
    assert len(pq.read_table(run / "embeddings")) == summary["status_counts"]["ok"] > 0
    assert {"fetch", "embed", "write"} <= set(summary["stage_throughput"])

    # the embed stage asked Ray for the node's GPU (declared, not real: the actor found no CUDA and ran on CPU)
    actors = _http_json(f"{cluster.dashboard}/api/v0/actors?detail=1&limit=1000")["data"]["result"]["result"]
    embedders = [a for a in actors if "ClipEmbedder" in f"{a.get('repr_name')} {a.get('class_name')}"]
    assert embedders, [(a.get("class_name"), a.get("repr_name")) for a in actors]
    assert all(a["required_resources"].get("GPU") == 1 and a["node_id"] == worker[0]["node_id"] for a in embedders)


def test_an_address_where_no_cluster_listens_is_one_line_not_a_wait(tmp_path):
    """ray.address (or RAY_ADDRESS) naming a port where nothing listens: Ray itself retries for minutes; the
    command says at once what is wrong and how to run locally."""
    table = tmp_path / "one.tsv"
    table.write_text("url\tcaption\nhttp://127.0.0.1:9/a.jpg\ta cat\n")
    address = f"127.0.0.1:{free_port()}"
    # embed=null: the embed stage's up-front model check imports torch (seconds per command), and the address
    # is checked the same way with or without it
    runs = {"ray.address": [str(BIN / "tailor"), "annotate", "--config", str(DEMO_CONFIG), "--input", str(table),
                            "--set", "embed=null", "--output", str(tmp_path / "a"), "--set", f"ray.address={address}"],
            "RAY_ADDRESS": [str(BIN / "tailor"), "annotate", "--config", str(DEMO_CONFIG), "--input", str(table),
                            "--set", "embed=null", "--output", str(tmp_path / "b")]}
    envs = {"ray.address": os.environ, "RAY_ADDRESS": {**os.environ, "RAY_ADDRESS": address},
            # the dashboard's URL (what `ray job submit` reads from RAY_ADDRESS) is not an address to join
            "http": {**os.environ, "RAY_ADDRESS": "http://127.0.0.1:8265"}}
    # the three commands at once: each is mostly the interpreter's start-up and imports, not the check
    runs["http"] = [*runs["RAY_ADDRESS"][:-1], str(tmp_path / "c")]  # an output folder of its own
    procs = {source: subprocess.Popen(runs[source], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env) for source, env in envs.items()}
    try:
        done = {source: (proc.communicate(timeout=180)[1], proc.returncode) for source, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for source in ("ray.address", "RAY_ADDRESS"):
        stderr, returncode = done[source]
        assert returncode == 2, stderr
        assert stderr.strip().splitlines() == [
            f"tailor: {source} {address!r}: no Ray cluster answers there ([Errno 111] Connection refused). "
            "Start one (`ray start --head`), or run on a private local Ray with --set ray.address=null"
            + (" and RAY_ADDRESS unset" if source == "RAY_ADDRESS" else "")]
    stderr, returncode = done["http"]
    assert returncode == 2 and "an http:// URL" in stderr and len(stderr.strip().splitlines()) == 1


def test_host_budget_holds_across_the_processes_of_a_cluster(cluster, tmp_path):
    """The run's host budget lives in one actor on the driver's node (the head); every fetch process on the worker
    node asks it for slots across nodes. A host that does not defend itself still never sees more than
    download.host_concurrency requests at once; a throttling one gets every row through; robots.txt holds."""
    import io

    import PIL.Image
    import pyarrow as pa
    from host_web import DISALLOW_IMG, HostSpec, HostWeb

    buf = io.BytesIO()
    PIL.Image.new("RGB", (80, 60), (200, 90, 40)).save(buf, "JPEG")
    specs = [HostSpec("127.0.0.50", latency=0.03), HostSpec("127.0.0.51", concurrency=2, rate=10),
             HostSpec("127.0.0.52", robots=DISALLOW_IMG)]
    with HostWeb(specs, [buf.getvalue()]) as web:
        hosts = ["127.0.0.50"] * 80 + ["127.0.0.51"] * 30 + ["127.0.0.52"] * 10
        urls = tmp_path / "urls.parquet"
        pq.write_table(pa.table({"url": web.urls_for(hosts), "caption": ["a photo"] * len(hosts)}), urls)
        run = tmp_path / "run"
        job = submit(cluster, "tailor-hosts", [
            "tailor", "annotate", "--config", str(DEMO_CONFIG), "--input", str(urls), "--output", str(run),
            "--no-progress", "--set", "embed=null", "--set", "download.host_concurrency=2",
            "--set", "ray.batch_size=10", "--set", "input.rows_per_shard=40", "--set", "download.max_wait=120"],
            timeout=420)
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
        assert web.max_inflight("127.0.0.50") <= 2
        assert not [r for r in web.log("127.0.0.52") if r.path.startswith("/img/")]
    statuses = collections.Counter(pq.read_table(run / "annotations").column("status").to_pylist())
    assert statuses == {"ok": 110, "opted_out": 10}
