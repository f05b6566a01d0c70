"""Shared fixtures: the network guard, a local Ray, a demo web served on 127.0.0.1.

The network guard is installed before anything else, in this process and (through
PYTHONPATH + sitecustomize) in every Python process the tests start, so a bug that tries to
reach anything but loopback or this machine's own address fails the test.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NETGUARD = Path(__file__).resolve().parent / "netguard"
_log = tempfile.NamedTemporaryFile(prefix="tailor-netguard-", suffix=".log", delete=False)
_log.close()
os.environ["TAILOR_NETGUARD"] = "1"
os.environ["TAILOR_NETGUARD_LOG"] = _log.name
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETGUARD), str(ROOT), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"  # models load from local paths only
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
sys.path.insert(0, str(NETGUARD))
import sitecustomize  # noqa: E402  (the guard; installs itself because TAILOR_NETGUARD=1)

sitecustomize.install()

DEMO_CONFIG = ROOT / "pipelines" / "configs" / "demo.yaml"


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
TEST_SLOW_SECONDS = 6.0  # the demo web's slow/stall pages outlast the demo config's 2 s timeout


def netguard_violations() -> list[str]:
    with open(_log.name) as f:
        return f.read().splitlines()


@pytest.fixture(autouse=True)
def no_network_escape():
    """Fail any test during which some process tried to reach a non-loopback address."""
    before = len(netguard_violations())
    yield
    new = netguard_violations()[before:]
    assert not new, "network guard refused non-loopback traffic:\n" + "\n".join(new)


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"], "TAILOR_NETGUARD": "1",
                                       "TAILOR_NETGUARD_LOG": _log.name}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@contextlib.contextmanager
def served_demo_web(out: Path, n: int, seed: int):
    """Build a demo web into `out` and serve it on 127.0.0.1; yields (server, out)."""
    from pipelines.demo_web.build import build_demo_web
    from pipelines.demo_web.serve import DemoWebServer

    build_demo_web(out, n=n, seed=seed)
    with DemoWebServer(out, slow_seconds=TEST_SLOW_SECONDS) as server:
        yield server, out


@pytest.fixture(scope="session")
def demo_web(tmp_path_factory):
    """A demo web with every hostile kind, served on 127.0.0.1 for the whole session."""
    with served_demo_web(tmp_path_factory.mktemp("demo-web"), n=400, seed=7) as served:
        yield served


@pytest.fixture(scope="session")
def demo_run(ray_local, demo_web, tmp_path_factory):
    """The session's demo web annotated once (download, decode, CLIP): (summary, run folder, web folder).

    Shared by every test that reads a run (annotate, select, materialize, audit); tests write only
    their own subsets/NAME folders into it, never change its annotations.
    """
    from pipelines.annotate import annotate

    server, web = demo_web
    run = tmp_path_factory.mktemp("run")
    summary = annotate(demo_config(web / "urls.parquet", run, "input.rows_per_shard=120"), progress=False)
    return summary, run, web


def demo_config(urls: str | Path, output: str | Path, *overrides: str):
    from pipelines.config import load_config

    return load_config(DEMO_CONFIG, [f"input.path={urls}", f"output={output}", *overrides])


def write_manifest(run: Path, name: str, keys: list[str]) -> None:
    """A hand-made subset: RUN/subsets/NAME/manifest.parquet listing `keys`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = run / "subsets" / name
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"key": pa.array(keys, pa.string())}), folder / "manifest.parquet")


def run_with_truth(demo_run) -> tuple[Path, list[dict], dict]:
    """(run folder, its annotation rows, the demo web's ground truth by demo_id) of the session's demo run."""
    import pyarrow.parquet as pq

    _, run, web = demo_run
    truth = {r["demo_id"]: r for r in pq.read_table(web / "truth.parquet").to_pylist()}
    return run, pq.read_table(run / "annotations").to_pylist(), truth
