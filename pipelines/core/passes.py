"""The shape every pass over a finished run shares (semdedup, decontaminate, match, recaption, evaluate):

    p = Pass(run)                        the run as Ray workers see it (p.run: absolute path or URL), p.paths
    check = p.settings(info, settings)   what made the outputs already there, compared with this call's
    ... plan: reuse when check.same, check.refuse(...) where a different rerun must not mix into them
    p.start_ray()                        only once there is work for Ray
    ... run
    p.write_summary(summary, path)       the summary (with the settings), written last

One settings policy. A pass stores the settings that change its output as JSON beside the outputs
(`{"settings": ...}` in its info file, or the whole file). A rerun compares the fields that change the
output (`fields`; all of them by default) with what is stored: the same -> the outputs are reused or
resumed; different -> the pass either refuses (`check.refuse`: a ConfigError naming every field that differs,
`field: stored != now`, and how to override) or, where the pass replaces its outputs in place (semdedup),
recomputes and logs the fields that differ. The field rule is pipelines.core.config.differences, the one annotate's
config check uses.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from pipelines.core.config import ConfigError, differences
from pipelines.core.engine import init_ray
from pipelines.core.storage import RunPaths

log = logging.getLogger(__name__)

SHOWN = 6  # differences named in a refusal; the rest are counted


@dataclass(frozen=True)
class SettingsCheck:
    """This call's settings against those stored beside a pass's outputs (None: nothing stored yet)."""

    current: dict[str, Any]
    previous: dict[str, Any] | None
    fields: tuple[str, ...] | None = None  # the fields that change the output; None: every field

    def differences(self, fields: tuple[str, ...] | None = None) -> list[str]:
        """The compared fields that differ, `field: stored != now` (none when nothing is stored)."""
        if self.previous is None:
            return []
        names = fields or self.fields
        if names is None:
            return differences(self.previous, self.current)
        return differences({n: self.previous.get(n) for n in names}, {n: self.current.get(n) for n in names})

    @property
    def same(self) -> bool:
        """Stored, and every compared field equal: the outputs there are this call's."""
        return self.previous is not None and not self.differences()

    def describe(self) -> str:
        found = self.differences()
        more = f"; and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
        return "; ".join(found[:SHOWN]) + more

    def refuse(self, what: str, hint: str) -> None:
        """Raise a one-line ConfigError naming the fields that differ, when something different is stored."""
        if self.previous is not None and self.differences():
            raise ConfigError(f"{what} was made with other settings ({self.describe()}; stored != now); {hint}")


class Pass:
    """One pass over a run folder: its absolute path, its RunPaths, the clock, Ray once needed."""

    def __init__(self, run: str):
        self.started = time.time()
        self.run = RunPaths.absolute(run)  # as Ray tasks and actors will see it
        self.paths = RunPaths(self.run)

    def settings(self, info_path: str, settings: dict[str, Any], key: str | None = "settings",
                 fields: tuple[str, ...] | None = None) -> SettingsCheck:
        """Compare `settings` with those stored at info_path (under `key`; key None: the whole file)."""
        previous = None
        if self.paths.exists(info_path):
            stored = self.paths.read_json(info_path)
            previous = stored if key is None else stored.get(key)
        return SettingsCheck(settings, previous, fields)

    def committed_shards(self, what: str) -> dict[str, int]:
        """The run's committed annotation shards and their rows, or one line saying it has none to WHAT."""
        shards = self.paths.committed_shards()
        if not shards:
            raise ConfigError(f"{self.run}: no annotated shards to {what} (no RUN/_done/*.json); run `tailor annotate` "
                              "first")
        return shards

    def start_ray(self) -> None:
        init_ray(None)

    def seconds(self) -> float:
        return time.time() - self.started

    def write_summary(self, summary: dict, path: str) -> dict:
        self.paths.write_json(summary, path)
        return summary
