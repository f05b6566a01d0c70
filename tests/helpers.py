"""Helpers the test modules share (`from helpers import ...`): paths, the demo config, a served demo web, hand-made
subsets. Fixtures live in conftest.py, which also installs the network guard before any test module is imported."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "pipelines" / "configs" / "demo.yaml"
TEST_SLOW_SECONDS = 6.0  # the demo web's slow/stall pages outlast the demo config's 2 s timeout


def shared_data() -> Path:
    """The team's real sample data (../shared/data beside the project), wherever this checkout lives.

    TAILOR_SHARED_DATA wins; then ../shared/data; then the workplace's /work/shared/data (a clean clone
    in a temporary folder has no ../shared). Missing data fails the tests that need it, loudly.
    """
    candidates = [os.environ.get("TAILOR_SHARED_DATA"), ROOT.parent / "shared" / "data", "/work/shared/data"]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "coco-mini").is_dir():
            return Path(candidate)
    raise FileNotFoundError(f"shared sample data not found (looked in {candidates}); set TAILOR_SHARED_DATA")


@contextlib.contextmanager
def served_demo_web(out: Path, n: int, seed: int):
    """Build a demo web into `out` and serve it on 127.0.0.1; yields (server, out)."""
    from pipelines.demo.web.build import build_demo_web
    from pipelines.demo.web.serve import DemoWebServer

    build_demo_web(out, n=n, seed=seed)
    with DemoWebServer(out, slow_seconds=TEST_SLOW_SECONDS) as server:
        yield server, out


def demo_config(urls: str | Path, output: str | Path, *overrides: str):
    from pipelines.core.config import load_config

    return load_config(DEMO_CONFIG, [f"input.path={urls}", f"output={output}", *overrides])


def write_manifest(run: Path, name: str, keys: list[str]) -> None:
    """A hand-made subset: RUN/subsets/NAME/manifest.parquet listing `keys`, and the stats.json that makes a
    subset complete (written last, as select does)."""
    import pyarrow as pa

    from pipelines.core.storage import RunPaths

    paths = RunPaths(str(run))
    subset = paths.subset(name)
    paths.write_parquet(pa.table({"key": pa.array(keys, pa.string())}), subset.manifest)
    paths.write_json({"subset": name, "rows": len(keys), "kept": len(keys), "made_at": "by hand"}, subset.stats)


def run_with_truth(demo_run) -> tuple[Path, list[dict], dict]:
    """(run folder, its annotation rows, the demo web's ground truth by demo_id) of the session's demo run."""
    import pyarrow.parquet as pq

    _, run, web = demo_run
    truth = {r["demo_id"]: r for r in pq.read_table(web / "truth.parquet").to_pylist()}
    return run, pq.read_table(run / "annotations").to_pylist(), truth


def live_processes(*, session: int | None = None, group: int | None = None) -> list[int]:
    """Pids of the processes (zombies aside) in session `session` and/or process group `group`, from /proc.

    A command started with start_new_session=True leads a session whose id is its pid; the Ray it starts keeps
    that session even where Ray puts a worker in a process group of its own.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, pgrp, sid = fields[0], int(fields[2]), int(fields[3])
        if state not in ("Z", "X") and (session is None or sid == session) and (group is None or pgrp == group):
            found.append(int(entry.name))
    return found


def wait_until_gone(*, session: int | None = None, group: int | None = None, timeout: float = 120) -> list[int]:
    """Wait until no process of `session` / `group` is left (a killed run's Ray workers die a moment after their
    raylet); returns those still alive after `timeout` seconds (empty when all are gone)."""
    import time

    deadline = time.time() + timeout
    while (left := live_processes(session=session, group=group)) and time.time() < deadline:
        time.sleep(0.1)
    return left
