"""Shared fixtures: the network guard, a local Ray, a demo web served on 127.0.0.1.

The network guard is installed before anything else, in this process and (through
PYTHONPATH + sitecustomize) in every Python process the tests start, so a bug that tries to
reach anything but loopback or this machine's own address fails the test.

Plain helper functions and constants the test modules share live in helpers.py.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import ROOT, demo_config, served_demo_web

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
sys.path.insert(1, str(ROOT))  # `tests.slow_dns:getaddrinfo` and the like load by name here as in the CLI's processes
import sitecustomize  # noqa: E402  (the guard; installs itself because TAILOR_NETGUARD=1)

sitecustomize.install()


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
    from pipelines.verbs.annotate import annotate

    server, web = demo_web
    run = tmp_path_factory.mktemp("run")
    summary = annotate(demo_config(web / "urls.parquet", run, "input.rows_per_shard=120"), progress=False)
    return summary, run, web


# Fixtures that make a run of the demo web (Ray, download, decode, CLIP: a minute on 2 cores) make every test
# that uses them slow, whatever its own body costs; `-m "not slow"` leaves them out.
SLOW_FIXTURES = {"demo_run", "ray_local"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
