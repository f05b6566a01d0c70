"""Benchmarks run under the test suite's loopback-only socket allow-list (tests/netguard)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

NETGUARD = Path(__file__).resolve().parent.parent / "tests" / "netguard"


def install_network_guard(work: Path) -> Path:
    """Install the allow-list in this process and every process it starts; return the refusals log."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "netguard.log"
    log.write_text("")
    os.environ.update({"TAILOR_NETGUARD": "1", "TAILOR_NETGUARD_LOG": str(log), "NO_ALBUMENTATIONS_UPDATE": "1",
                       "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(NETGUARD), os.environ.get("PYTHONPATH")]))})
    sys.path.insert(0, str(NETGUARD))
    import sitecustomize

    sitecustomize.install()
    return log
