"""Per-host budgets for a whole run, and the row scheduler of a fetch task that keeps to them.

A real URL table puts 10-14% of its rows on one host. Each host gets, across every thread, task, process and
node of the run together:
- at most `host_concurrency` requests in flight, reached by a slow start (2 at first, one more per round of
  answers); a refusal while others were in flight caps the host at what it took, one more tried after a
  minute without a throttle,
- at most `host_rate` requests a second when set, and a learnt rate once the host has throttled us for rate
  (0.95 of what it admitted in the second before it refused; raised 3% every 5 s after a minute without one),
- no request before its `Retry-After` has passed (seconds or an HTTP date; `throttle_wait`, doubling, when the
  answer has none),
- its robots.txt and tdmrep.json fetched once (`HostPolicy`), by the first worker to reach it.

`HostBudget` is that authority: plain Python, one instance per run. Locally it is called directly; on a Ray run it
lives in an actor (pipelines/core/hosts.py) and every fetch process calls it through `exchange`, one round trip that
returns finished attempts' slots and asks for new ones for every host the caller has rows of. All its times are
its own clock's: callers send and receive durations, so nodes' clocks never meet. A slot is a lease: one that is
not returned within `lease_s` (a worker killed mid-request) is taken back.

`HostScheduler` runs one batch of URLs in a fetch process: rows wait in per-host queues and timers, never on a
thread, so a throttled host holds no download thread and never stalls the other hosts' rows; a thread is given a
row only when the budget grants its host a slot.
"""

from __future__ import annotations

import collections
import heapq
import math
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from operators import status as st
from operators.optouts import HostPolicy, robots_unreachable

MIN_RATE = 0.2               # requests/s: the slowest a throttled host is asked
RATE_MARGIN = 0.95           # a learnt rate: this share of what the host admitted in the second before it refused
RACE_S = 0.1                 # requests granted this close together may reach a host in either order
RATE_STEP_S = 5.0            # a learnt rate is raised by 3% at most this often ...
RATE_PROBE_S = 60.0          # ... once no throttle came for this long (and one more request at a time allowed)
POLICY_TTL_S = 24 * 3600.0   # RFC 9309 §2.4: a cached robots.txt is used for at most 24 hours
UNREACHABLE_POLICY_TTL_S = 60.0  # a robots.txt answering 5xx: asked again after a minute
START_LIMIT = 2.0            # requests at a time to a host not heard from yet (slow start, as TCP's)
RELEASE = object()           # a thread's note that its download ended and decoding begins
POLICY = object()            # a thread's note that it read its host's policy files (its image comes next)
POLL_S = 0.05                # a caller whose hosts are all busy elsewhere asks again this often
MAX_HOSTS = 200_000          # host states kept; idle ones beyond this are folded into `other`


@dataclass
class Report:
    """What became of one attempt (or of a row settled without one) on `host` (an origin)."""

    host: str
    released: bool = True            # the attempt held a slot of the host
    outcome: str = "ok"              # ok (the host answered), throttled (429/503), error (no usable answer)
    retry_after: float | None = None
    answer: str | None = None        # the host's answer when throttled
    final: str | None = None         # the row's status, when the row is settled
    signal: str | None = None        # the opt-out signal of an opted_out row
    age: float = 0.0                 # seconds from the slot's grant to this report (the request's admission)
    others: int = 0                  # the host's other requests in flight (the run's) when this one was granted
    waited: float = 0.0              # seconds the settled row waited on its host
    policy: HostPolicy | None = None  # the host's policy files, when this attempt fetched them
    policy_failed: bool = False      # this attempt was to fetch the policy and did not get an answer
    requests: int = 0
    connections: int = 0


@dataclass
class Answer:
    grants: dict[str, int] = field(default_factory=dict)
    inflight: dict[str, int] = field(default_factory=dict)     # granted hosts: requests in flight before these
    waits: dict[str, float] = field(default_factory=dict)      # hosts with unmet demand: seconds to ask again
    give_up: dict[str, str] = field(default_factory=dict)      # hosts whose wait outlasts max_wait: last answer
    policies: dict[str, HostPolicy] = field(default_factory=dict)
    fetch_policy: set[str] = field(default_factory=set)        # hosts whose policy this caller fetches now


class _Host:
    __slots__ = ("limit", "max_limit", "rate", "next_at", "blocked_until", "leases", "ok_times", "last_throttle",
                 "refused_at", "last_increase", "last_decrease", "consecutive", "throttled_since", "last_answer",
                 "fetcher", "fetcher_until", "last_seen", "stats")

    def __init__(self, limit: float, rate: float | None, now: float):
        # a host starts at START_LIMIT at a time and grows by one per `limit` answers served up to `max_limit`:
        # a host that takes 2 at a time sees a refusal or two, not a burst of host_concurrency
        self.limit, self.rate = min(limit, START_LIMIT), rate
        self.max_limit = int(limit)  # what `limit` grows to: one less than a concurrency the host refused
        self.next_at = self.blocked_until = 0.0
        self.leases: dict[str, list[float]] = {}   # caller -> expiry of each slot it holds
        self.ok_times: collections.deque = collections.deque()  # when the host admitted requests it answered
        self.refused_at = -math.inf  # when the host admitted the request whose refusal last set our rate
        self.last_throttle = self.last_increase = self.last_decrease = -math.inf
        self.consecutive = 0
        self.throttled_since: float | None = None
        self.last_answer: str | None = None
        self.fetcher: str | None = None
        self.fetcher_until = 0.0
        self.last_seen = now
        self.stats = collections.Counter()

    def inflight(self, now: float) -> int:
        total = 0
        for client, expiries in list(self.leases.items()):
            live = [e for e in expiries if e > now]
            if live:
                self.leases[client] = live
                total += len(live)
            else:
                del self.leases[client]
        return total

    def release(self, client: str) -> None:
        held = self.leases.get(client)
        if held:
            held.pop(0)
            if not held:
                del self.leases[client]


class HostBudget:
    """The run's per-host limits (see the module docstring). Not thread-safe by itself: callers in one process
    share it through a lock (`exchange` takes it), a Ray actor runs one call at a time."""

    def __init__(self, concurrency: int = 4, rate: float | None = None, max_wait: float = 300.0,
                 throttle_wait: float = 1.0, lease_s: float = 60.0, policies: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.concurrency, self.rate, self.max_wait = concurrency, rate, max_wait
        self.throttle_wait, self.lease_s, self.policies_needed = throttle_wait, lease_s, policies
        self.clock = clock
        self._hosts: dict[str, _Host] = {}
        self._policies: dict[str, tuple[float, HostPolicy]] = {}
        self._policy_bytes = 0
        self._waiting: dict[str, tuple[float, dict[str, int]]] = {}
        self._other = collections.Counter()  # stats of hosts folded away (MAX_HOSTS)
        self._lock = threading.Lock()

    @staticmethod
    def settings(options) -> dict[str, Any]:
        """The budget's arguments from a DownloadOptions (operators/download.py): HostBudget(**settings)."""
        return {"concurrency": options.host_concurrency, "rate": options.host_rate, "max_wait": options.max_wait,
                "throttle_wait": options.throttle_wait,
                # an attempt (policy files and redirects included) ends within its timeout; the rest is slack
                "lease_s": options.timeout * 2 + 30.0,
                "policies": bool(set(options.opt_outs) & {"robots_txt", "tdm_rep"})}

    # ------------------------------------------------------------------ the one call

    def exchange(self, client: str, reports: list[Report], wants: dict[str, int],
                 need_policy: set[str] | None = None, waiting: dict[str, int] | None = None) -> Answer:
        """Take `reports` (slots returned, what hosts answered), then grant slots for `wants` (host -> rows
        ready). `need_policy`: hosts whose policy the caller lacks; `waiting`: its rows not settled, by host."""
        with self._lock:
            now = self.clock()
            for report in reports:
                self._take(client, report, now)
            if waiting is not None:
                self._waiting[client] = (now, waiting)
            answer = Answer()
            for host in need_policy or ():
                known = self._policy(host, now)
                if known is not None:
                    answer.policies[host] = known
            for host, n in wants.items():
                if n > 0:
                    self._grant(client, host, n, now, answer)
            if len(self._hosts) > MAX_HOSTS:
                self._fold(now)
            return answer

    def _state(self, host: str, now: float) -> _Host:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _Host(float(self.concurrency), self.rate, now)
        state.last_seen = now
        return state

    def _policy(self, host: str, now: float) -> HostPolicy | None:
        held = self._policies.get(host)
        if held is None:
            return None
        if held[0] <= now:
            del self._policies[host]
            self._policy_bytes -= held[1].size()
            return None
        return held[1]

    def _grant(self, client: str, host: str, n: int, now: float, answer: Answer) -> None:
        state = self._state(host, now)
        inflight = state.inflight(now)
        if state.throttled_since is not None and now - state.throttled_since > self.max_wait:
            answer.give_up[host] = f"{state.last_answer} (no success for {now - state.throttled_since:.0f}s)"
            return
        if now < state.blocked_until:
            wait = state.blocked_until - now
            if state.throttled_since is not None and now + wait - state.throttled_since > self.max_wait:
                answer.give_up[host] = f"{state.last_answer} (the host asks for {wait:.0f}s more)"
            else:
                answer.waits[host] = wait
            return
        if self.policies_needed and self._policy(host, now) is None:
            # one request at a time until the host's policy is known: the first to reach it fetches it
            if state.fetcher is not None and state.fetcher != client and state.fetcher_until > now:
                answer.waits[host] = POLL_S
                return
            if inflight:
                answer.waits[host] = POLL_S
                return
            state.fetcher, state.fetcher_until = client, now + self.lease_s
            answer.fetch_policy.add(host)
            n = 1
        free = int(state.limit) - inflight
        granted = min(n, max(free, 0))
        if granted and state.rate:
            if now < state.next_at:
                granted = 0
            else:
                granted = 1
                state.next_at = max(state.next_at, now - 1.0 / state.rate) + 1.0 / state.rate
        if granted:
            state.leases.setdefault(client, []).extend([now + self.lease_s] * granted)
            answer.grants[host] = granted
            answer.inflight[host] = inflight
            state.stats["requests_granted"] += granted
        if granted < n:
            if state.rate and now < state.next_at:
                answer.waits[host] = state.next_at - now
            else:
                answer.waits[host] = POLL_S

    def _take(self, client: str, report: Report, now: float) -> None:
        state = self._state(report.host, now)
        if report.released:
            state.release(client)
        if state.fetcher == client and (report.released or report.policy is not None):
            state.fetcher = None
        if report.policy is not None:
            ttl = UNREACHABLE_POLICY_TTL_S if robots_unreachable_policy(report.policy) else POLICY_TTL_S
            old = self._policies.pop(report.host, None)
            if old is not None:
                self._policy_bytes -= old[1].size()
            self._policies[report.host] = (now + ttl, report.policy)
            self._policy_bytes += report.policy.size()
        if report.outcome == "throttled":
            self._throttled(state, now, report)
        elif report.outcome == "ok":
            self._served(state, now, report)
        stats = state.stats
        stats["requests"] += report.requests
        stats["connections"] += report.connections
        if report.outcome == "throttled":
            stats["throttled"] += 1
        if report.final is not None:
            stats["rows"] += 1
            stats["waited_s"] += report.waited
            if report.final == st.OK:
                stats["ok"] += 1
            elif report.final == st.RATE_LIMITED:
                stats["rate_limited"] += 1
            elif report.final == st.OPTED_OUT:
                stats[f"opted_out:{report.signal or 'other'}"] += 1

    def _throttled(self, state: _Host, now: float, report: Report) -> None:
        wait = report.retry_after
        if wait is None:
            wait = self.throttle_wait * 2 ** min(state.consecutive, 6)
        state.blocked_until = max(state.blocked_until, now + wait)
        state.last_answer = report.answer
        state.last_throttle = now
        state.consecutive += 1
        if state.throttled_since is None:
            state.throttled_since = now
        if now - state.last_decrease < 1.0:
            return  # the other answers of the same burst: slow down once
        state.last_decrease = now
        # what the host admitted in the second before it refused this request: its rate, when it refused for rate
        sent = now - report.age  # (requests granted a moment after it may have reached the host before it)
        admitted = sum(sent - 1.0 < t <= sent + RACE_S for t in state.ok_times)
        if report.others:  # refused with others of ours in flight: a concurrency the host does not take
            state.max_limit = max(1, min(report.others, int(state.limit) - 1))
            state.limit = min(state.limit, float(state.max_limit))
        elif admitted >= 3:  # a rate: the host's, with a margin; not probed past for a while (RATE_PROBE_S)
            # (refused below it, with our margin: requests bunched on the way; slowing down would cost more than
            # the host's rare waits)
            state.rate = max(MIN_RATE, min(state.rate or math.inf, RATE_MARGIN * admitted))
            state.refused_at = sent
        else:  # alone and too few answered to measure a rate: slow down
            state.max_limit = max(1, int(state.limit) // 2)
            state.limit = float(state.max_limit)
        state.next_at = max(state.next_at, state.blocked_until)

    def _served(self, state: _Host, now: float, report: Report) -> None:
        state.consecutive = 0
        state.throttled_since = None
        sent, admitted = now - report.age, max(1, report.requests)  # the policy files count with their row
        state.ok_times.extend([sent] * admitted)
        while state.ok_times and state.ok_times[0] < now - 5.0:
            state.ok_times.popleft()
        if state.rate and state.refused_at - 1.0 < sent <= state.refused_at + RACE_S:
            state.rate += RATE_MARGIN * admitted  # admitted around the refusal, answered after it: count it in
        quiet = now - state.last_throttle
        if quiet > RATE_PROBE_S and state.max_limit < self.concurrency:
            state.max_limit += 1  # a minute without a throttle: try one more at a time
            state.last_throttle = now - RATE_PROBE_S / 2
        if state.limit < state.max_limit:
            state.limit = min(float(state.max_limit), state.limit + 1.0 / state.limit)
        if state.rate and quiet > RATE_PROBE_S and now - state.last_increase > RATE_STEP_S:
            state.last_increase = now
            state.rate *= 1.03
            if self.rate is not None:
                state.rate = min(state.rate, self.rate)

    def _fold(self, now: float) -> None:
        """Forget idle hosts (no slot held, not blocked, unseen for a minute) beyond MAX_HOSTS, keeping their
        figures as `other`: a billion-row run meets tens of millions of hosts."""
        for host, state in list(self._hosts.items()):
            if len(self._hosts) <= MAX_HOSTS * 0.9:
                break
            if not state.leases and state.blocked_until < now and now - state.last_seen > 60:
                self._other.update(state.stats)
                self._other["hosts"] += 1
                del self._hosts[host]

    # ------------------------------------------------------------------ what the run reports

    def snapshot(self, top: int = 10) -> dict[str, Any]:
        """Per-host figures of the busiest and the most throttled hosts, totals, and rows waiting on hosts."""
        with self._lock:
            now = self.clock()
            waiting: collections.Counter = collections.Counter()
            for client, (seen, rows) in list(self._waiting.items()):
                if now - seen > 60:
                    del self._waiting[client]
                else:
                    waiting.update(rows)

            def figures(host: str, state: _Host) -> dict[str, Any]:
                stats = state.stats
                opted = {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("opted_out:")}
                return {"host": host, "rows": stats["rows"], "ok": stats["ok"], "throttled": stats["throttled"],
                        "rate_limited": stats["rate_limited"], "waited_s": round(stats["waited_s"], 1),
                        "requests": stats["requests"], "connections": stats["connections"],
                        "opted_out": opted, "waiting": waiting.get(host, 0),
                        "concurrency": round(state.limit, 2),
                        "rate": round(state.rate, 2) if state.rate else None,
                        "blocked_for_s": round(max(0.0, state.blocked_until - now), 1)}

            items = list(self._hosts.items())
            busiest = sorted(items, key=lambda kv: -kv[1].stats["rows"])[:top]
            throttled = sorted((kv for kv in items if kv[1].stats["throttled"]),
                               key=lambda kv: -kv[1].stats["throttled"])[:top]
            totals = collections.Counter(self._other)
            for _, state in items:
                totals.update(state.stats)
            totals.pop("hosts", None)
            opted = {k.split(":", 1)[1]: v for k, v in totals.items() if k.startswith("opted_out:")}
            return {
                "hosts": len(items) + self._other["hosts"],
                "requests": totals["requests"], "connections": totals["connections"],
                "requests_per_connection": round(totals["requests"] / totals["connections"], 2)
                if totals["connections"] else None,
                "throttled": totals["throttled"], "rate_limited": totals["rate_limited"],
                "waited_s": round(totals["waited_s"], 1), "opted_out": opted,
                "waiting_rows": sum(waiting.values()),
                "waiting": dict(waiting.most_common(top)),
                "busiest": [figures(h, s) for h, s in busiest],
                "most_throttled": [figures(h, s) for h, s in throttled],
                "policies_cached": len(self._policies), "policy_bytes": self._policy_bytes,
            }


def robots_unreachable_policy(policy: HostPolicy) -> bool:
    return policy.robots_status is not None and robots_unreachable(policy.robots_status)


# ---------------------------------------------------------------------- the scheduler of one fetch process


@dataclass
class _Row:
    index: int
    url: str
    host: str
    attempts: int = 0
    first_throttled: float | None = None
    ready_since: float = 0.0
    waited: float = 0.0
    granted: float = 0.0
    fetch_policy: bool = False
    released: bool = False  # its slot went back before the row settled (decoding after a download)
    others: int = 0         # the host's requests in flight (the run's) when this row's slot was granted


class HostScheduler:
    """Runs a batch of URLs under the budget: `run(urls)` returns one (Fetched, extra) per URL, in order.

    `attempt(url, policy, fetch_policy, on_policy)` makes one attempt on a download thread and returns a Fetched (see
    operators/download.py: `throttled`, `retry_after`, `retryable`, `policy`, `requests`, `connections`);
    `origin(url)` names the host a row counts against (None: settle it with `attempt` at once, no slot);
    `refusal(policy, url)` says which opt-out of a known policy refuses a URL before any request;
    `after(fetched)` runs on the same thread after a successful attempt (decoding) and gives (fetched, extra);
    `failed(status, error, http_status)` makes the Fetched of a row settled here (rate_limited, a bug).
    """

    def __init__(self, attempt: Callable, origin: Callable[[str], str | None], refusal: Callable,
                 threads: int, retries: int, backoff: float, max_wait: float, throttle_wait: float,
                 budget: HostBudget | Any, failed: Callable, after: Callable | None = None,
                 policies_needed: bool = True):
        self.attempt, self.origin, self.refusal, self.after = attempt, origin, refusal, after
        self.failed = failed
        self.threads, self.retries, self.backoff = threads, retries, backoff
        self.max_wait, self.throttle_wait = max_wait, throttle_wait
        self.budget = budget
        self.policies_needed = policies_needed
        self.client = uuid.uuid4().hex[:12]
        self.policies: collections.OrderedDict[str, tuple[float, HostPolicy]] = collections.OrderedDict()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch")

    # ------------------------------------------------------------------ policies known in this process

    def _policy(self, host: str, now: float) -> HostPolicy | None:
        held = self.policies.get(host)
        if held is None or held[0] <= now:
            return None
        return held[1]

    def _keep_policy(self, host: str, policy: HostPolicy, now: float) -> None:
        ttl = UNREACHABLE_POLICY_TTL_S if robots_unreachable_policy(policy) else POLICY_TTL_S
        self.policies[host] = (now + ttl, policy)
        self.policies.move_to_end(host)
        while len(self.policies) > 50_000:
            self.policies.popitem(last=False)

    # ------------------------------------------------------------------ one batch

    def run(self, urls: list[str]) -> list[tuple[Any, Any]]:
        results: list[tuple[Any, Any] | None] = [None] * len(urls)
        queues: dict[str, collections.deque[_Row]] = collections.defaultdict(collections.deque)
        timers: list[tuple[float, int, _Row]] = []
        done: queue.SimpleQueue = queue.SimpleQueue()
        reports: list[Report] = []
        inflight = 0
        remaining = len(urls)
        now = time.monotonic()
        for i, url in enumerate(urls):
            host = self.origin(url)
            if host is None:  # not a URL any host will see: settled at once, on this thread
                results[i] = (self.attempt(url, None, False), None)
                remaining -= 1
            else:
                queues[host].append(_Row(i, url, host, ready_since=now))

        def work(row: _Row, policy: HostPolicy | None) -> None:
            extra = None
            try:
                # the host's policy goes to the budget as soon as it is read, not when this row's image is done
                fetched = self.attempt(row.url, policy, row.fetch_policy, lambda got: done.put((row, got, POLICY)))
                if fetched.status == st.OK and self.after is not None:
                    done.put((row, fetched, RELEASE))  # the host's slot is free while this thread decodes
                    fetched, extra = self.after(fetched)
            except Exception as err:  # a bug here must not cost the row, nor hang the batch
                fetched = self.failed(st.CONNECTION_ERROR, f"unexpected {type(err).__name__}: {err}", None)
            done.put((row, fetched, extra))

        def settle(row: _Row, fetched, extra, report: Report) -> None:
            nonlocal remaining
            results[row.index] = (fetched, extra)
            remaining -= 1
            report.final = fetched.status
            report.waited = row.waited

        last_exchange = -math.inf
        waits: dict[str, float] = {}
        while remaining:
            now = time.monotonic()
            while timers and timers[0][0] <= now:
                _, _, row = heapq.heappop(timers)
                row.ready_since = now
                queues[row.host].append(row)
            while True:  # what the threads finished
                try:
                    row, fetched, extra = done.get_nowait()
                except queue.Empty:
                    break
                now = time.monotonic()
                inflight -= self._took(row, fetched, extra, now, timers, settle, reports)
            # rows a known policy refuses: settled without a request (and without a slot)
            for host, rows in queues.items():
                policy = self._policy(host, now) if rows and self.policies_needed else None
                if policy is None:
                    continue
                kept = collections.deque()
                for row in rows:
                    refused = self.refusal(policy, row.url)
                    if refused is None:
                        kept.append(row)
                    else:
                        report = Report(host, released=False, signal=refused[0])
                        settle(row, refused[1], None, report)
                        reports.append(report)
                queues[host] = kept
            if not remaining:
                break
            free = self.threads - inflight
            wants = self._wants(queues, free)
            asked = wants or reports or now - last_exchange > 1.0
            if asked and (now - last_exchange > 0.005 or reports or not waits):
                need = {h for h in wants if self.policies_needed and self._policy(h, now) is None}
                waiting = collections.Counter(r.host for _, _, r in timers)
                for host, rows in queues.items():
                    if rows:
                        waiting[host] += len(rows)
                answer = self.budget.exchange(self.client, reports, wants, need, dict(waiting))
                reports = []
                last_exchange = now
                waits = answer.waits
                for host, policy in answer.policies.items():
                    self._keep_policy(host, policy, now)
                for host, last in answer.give_up.items():
                    for row in queues.pop(host, ()):
                        report = Report(host, released=False)
                        settle(row, self._rate_limited(row, last, now), None, report)
                        reports.append(report)
                for host, n in answer.grants.items():
                    rows = queues[host]
                    policy = self._policy(host, now)
                    for i in range(n):
                        if not rows:  # granted more than is left (a row settled meanwhile): give it back
                            reports.append(Report(host, outcome="none"))
                            continue
                        row = rows.popleft()
                        row.waited += now - row.ready_since
                        row.granted = time.monotonic()
                        row.others = answer.inflight.get(host, 0) + i
                        row.fetch_policy = host in answer.fetch_policy
                        refused = self.refusal(policy, row.url) if policy is not None else None
                        if refused is not None:
                            report = Report(host, released=True, outcome="none", signal=refused[0])
                            settle(row, refused[1], None, report)
                            reports.append(report)
                            continue
                        inflight += 1
                        self._pool.submit(work, row, policy)
                if reports:
                    continue  # give back at once what was not used
            if not remaining:
                break
            # sleep until a thread finishes, a timer is due or a host may be asked again
            wake = [1.0]
            if timers:
                wake.append(timers[0][0] - now)
            if any(queues.values()) and waits:
                wake.append(min(waits.values()))
            timeout = max(0.005, min(wake))
            if inflight:
                try:
                    item = done.get(timeout=timeout)
                except queue.Empty:
                    continue
                inflight -= self._took(*item, time.monotonic(), timers, settle, reports)
            else:
                time.sleep(timeout)
        if reports:
            self.budget.exchange(self.client, reports, {}, None, {})
        return results  # type: ignore[return-value]

    def _wants(self, queues: dict[str, collections.deque], free: int) -> dict[str, int]:
        """Rows ready per host, no more in all than there are free threads (shared out a row per host at a time)."""
        ready = {host: len(rows) for host, rows in queues.items() if rows}
        if free <= 0 or not ready:
            return {}
        if sum(ready.values()) <= free:
            return ready
        wants: dict[str, int] = collections.Counter()
        hosts = list(ready)
        random.shuffle(hosts)
        while free > 0 and hosts:
            for host in list(hosts):
                if free <= 0:
                    break
                wants[host] += 1
                free -= 1
                if wants[host] >= ready[host]:
                    hosts.remove(host)
        return dict(wants)

    def _took(self, row: _Row, fetched, extra, now: float, timers: list, settle, reports: list[Report]) -> int:
        """One note from a download thread into `reports`; 1 when its thread is free again (the row's attempt ended),
        0 for a note along the way (its host's policy read, its download done while it decodes)."""
        if extra is POLICY:
            reports.append(self._policy_read(row, fetched, now))
            return 0
        if extra is RELEASE:
            reports.append(self._released(row, fetched, now))
            return 0
        reports.append(self._finished(row, fetched, extra, now, timers, settle))
        return 1

    def _policy_read(self, row: _Row, policy: HostPolicy, now: float) -> Report:
        """The host's policy files, read by this row's attempt before its image: for every worker at once."""
        self._keep_policy(row.host, policy, now)
        return Report(row.host, released=False, outcome="none", policy=policy)

    def _released(self, row: _Row, fetched, now: float) -> Report:
        """A successful download whose thread goes on decoding: its slot goes back now, the row settles later."""
        row.released = True
        report = Report(row.host, outcome="ok", requests=fetched.requests, connections=fetched.connections,
                        age=now - row.granted, policy=fetched.policy)
        if fetched.policy is not None:
            self._keep_policy(row.host, fetched.policy, now)
        return report

    def _finished(self, row: _Row, fetched, extra, now: float, timers: list, settle) -> Report:
        if row.released:  # its slot went back when the download ended (`_released`): only the row's end
            row.released = False
            report = Report(row.host, released=False, outcome="none")
            settle(row, fetched, extra, report)
            return report
        report = Report(row.host, outcome="ok", requests=getattr(fetched, "requests", 0),
                        connections=getattr(fetched, "connections", 0), age=now - row.granted, others=row.others)
        policy = getattr(fetched, "policy", None)
        if policy is not None:
            report.policy = policy
            self._keep_policy(row.host, policy, now)
        elif row.fetch_policy:
            report.policy_failed = True
        if getattr(fetched, "throttled", False):
            report.outcome, report.retry_after, report.answer = "throttled", fetched.retry_after, fetched.error
            if row.first_throttled is None:
                row.first_throttled = now
            wait = fetched.retry_after if fetched.retry_after is not None else self.throttle_wait
            if now + wait - row.first_throttled > self.max_wait:
                settle(row, self._rate_limited(row, fetched.error, now, fetched.http_status), None, report)
            else:
                row.ready_since = now + wait
                heapq.heappush(timers, (now + wait, id(row), row))
            return report
        if fetched.http_status is None and fetched.status != st.OK:
            report.outcome = "error"
        row.attempts += 1
        if fetched.retryable and row.attempts <= self.retries:
            delay = self.backoff * 2 ** (row.attempts - 1) * (0.5 + random.random())  # jitter spreads a host's retries
            row.ready_since = now + delay
            heapq.heappush(timers, (now + delay, id(row), row))
            return report
        if fetched.retryable and self.retries:
            fetched.error = f"{fetched.error} (after {row.attempts} attempts)"
        if fetched.status == st.OPTED_OUT:
            report.signal = getattr(fetched, "signal", None)
        settle(row, fetched, extra, report)
        return report

    def _rate_limited(self, row: _Row, last: str | None, now: float, http_status: int | None = None):
        waited = now - row.first_throttled if row.first_throttled is not None else 0.0
        return self.failed(st.RATE_LIMITED, f"{last or 'the host throttled us'}; gave up after waiting {waited:.0f}s "
                           f"(download.max_wait {self.max_wait:g}s)", http_status)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
