"""The run's host budget (operators/hosts.py: HostBudget) as a Ray actor every fetch process shares, so a host's
limits hold across threads, tasks, processes and nodes together; and what the driver reports of it.

One actor per run, placed on the driver's node (the head, under `ray job submit`), one call at a time: a fetch
process makes one `exchange` round trip per scheduling step (slots returned and asked for all its hosts at
once), a few hundred a second per process at most. It holds per-host state, the hosts' policy files and figures;
idle hosts are folded away past 200,000 (operators/hosts.py: MAX_HOSTS).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from operators.download import DownloadOptions
from operators.hosts import Answer, HostBudget, Report


class RemoteBudget:
    """HostBudget's `exchange` and `snapshot`, through the run's actor (picklable: it travels to every task)."""

    def __init__(self, actor):
        self.actor = actor
        self.key = actor._actor_id.hex()

    def exchange(self, client: str, reports: list[Report], wants: dict[str, int],
                 need_policy: set[str] | None = None, waiting: dict[str, int] | None = None) -> Answer:
        return ray.get(self.actor.exchange.remote(client, reports, wants, need_policy, waiting))

    def snapshot(self, top: int = 10) -> dict:
        return ray.get(self.actor.snapshot.remote(top))


def start_budget(options: DownloadOptions) -> RemoteBudget:
    """The run's budget actor, on this (the driver's) node; it ends with the driver."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    actor = ray.remote(HostBudget).options(num_cpus=0, max_restarts=3, max_task_retries=3,
                                           scheduling_strategy=here).remote(**HostBudget.settings(options))
    return RemoteBudget(actor)


class HostsReport:
    """Writes the budget's snapshot to RUN/hosts.json every `interval` seconds while the run goes on (what
    `tailor status` shows of hosts), and once at the end."""

    def __init__(self, budget: RemoteBudget, write, interval: float = 10.0):
        self.budget, self.write, self.interval = budget, write, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hosts-report", daemon=True)
        self.last: dict | None = None

    def __enter__(self) -> HostsReport:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._write()

    def _write(self) -> None:
        try:
            self.last = self.budget.snapshot()
            self.last["written_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            self.write(self.last)
        except Exception:  # a report is never worth failing the run for
            pass

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._write()
