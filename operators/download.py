"""Download images over HTTP(S), concurrently within a batch, safely.

Columns in: `url`. Columns added: `status`, `error`, `http_status`, `n_bytes`, `image` (the raw
body, null unless status is ok).

Safety and politeness, as a crawler at web scale needs them:
- SSRF guard: the host is resolved here, every address is vetted (loopback, private,
  link-local, multicast, reserved... are refused unless allow-listed), and the connection goes
  to the vetted address, so a DNS answer cannot change between check and use. Every redirect
  hop is vetted the same way.
- DNS inside the deadline: a lookup counts against the attempt's timeout like the connect and
  the body. Each process keeps a cache of answers (positive for `dns_ttl`, failures and lookups
  that outlived a deadline for `dns_negative_ttl`) and makes one lookup per host at a time, however
  many rows wait on it: a dead table of a billion rows over a few million hosts costs a few million
  lookups, not a billion, and a slow resolver costs each row at most its timeout.
- a byte cap enforced while streaming, a per-attempt deadline that covers slow-drip bodies,
  retries with exponential backoff only for failures that can succeed later;
- per-host budgets for the whole run (operators/hosts.py): requests in flight and per second per host,
  429/503 as waits (Retry-After honoured), rows waiting in queues rather than on threads;
- opt-outs (`opt_outs`, operators/optouts.py): robots.txt and /.well-known/tdmrep.json, fetched once per host
  through this same guard, DNS cache and deadline (a robots-disallowed image is never requested); the
  `tdm-reservation` header; X-Robots-Tag with img2dataset's directives and user-agent token semantics;
- kept-alive HTTP/1.1 connections per host within a process (TLS sessions resumed), closed on any error.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import http.client
import importlib
import ipaddress
import socket
import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from email.message import Message
from typing import Literal
from urllib.parse import quote, urljoin, urlsplit

import pyarrow as pa
from pydantic import Field, field_validator

from operators import status as st
from operators.hosts import HostBudget, HostScheduler
from operators.options import Options
from operators.optouts import (
    MAX_POLICY_BYTES,
    ROBOTS_PATH,
    ROBOTS_TXT,
    SIGNALS,
    TDM_REP,
    TDMREP_PATH,
    X_ROBOTS_TAG,
    HostPolicy,
    robots_unreachable,
    tdm_header_refusal,
)
from operators.table import replace_columns, require_columns

_CHUNK = 64 * 1024
_THROTTLE_HTTP = {429, 503}  # "slow down": a wait on the host, not a failure of the row
_DRAIN_BYTES = 64 * 1024     # an error or redirect body up to this is read so its connection can be reused
MAX_RETRY_AFTER_S = 24 * 3600.0


class DownloadOptions(Options):
    threads: int = Field(32, gt=0, description="concurrent requests within one task")
    timeout: float = Field(10.0, gt=0, description="seconds per attempt: connect, each read, and the whole body")
    retries: int = Field(2, ge=0, description="extra attempts for retryable failures (timeouts, 5xx, resets); "
                         "429 and 503 are waits on the host, not attempts (see max_wait)")
    backoff: float = Field(0.5, ge=0, description="first retry delay in seconds; doubles per attempt")
    max_bytes: int = Field(16_000_000, gt=0, description="byte cap per image, enforced while streaming")
    max_redirects: int = Field(5, ge=0)
    user_agent_token: str | None = Field("tailor", description="the crawler's name: in the User-Agent, and the "
                                         "agent robots.txt groups and X-Robots-Tag prefixes are matched to")
    host_concurrency: int = Field(16, gt=0, description="requests in flight per host, across the whole run (every "
                                  "thread, process and node); halved while a host throttles, recovered slowly")
    host_rate: float | None = Field(None, gt=0, description="requests per second per host across the whole run; "
                                    "null: no fixed rate (a host that answers 429/503 gets a learnt one)")
    max_wait: float = Field(300.0, ge=0, description="seconds a row waits on a host that answers 429/503 before "
                            "it is rate_limited (counted from its first such answer)")
    throttle_wait: float = Field(1.0, gt=0, description="seconds to wait on a 429/503 without Retry-After; "
                                 "doubles while the host keeps throttling")
    opt_outs: list[Literal["robots_txt", "tdm_rep", "x_robots_tag"]] = Field(
        list(SIGNALS), description="opt-out signals honoured: robots.txt (RFC 9309), TDMRep (tdm-reservation "
        "header and /.well-known/tdmrep.json), X-Robots-Tag. Dropping one is a legal decision, not a speed setting")
    disallowed_header_directives: list[str] = ["noai", "noimageai", "noindex", "noimageindex"]
    allow_networks: list[str] = Field(
        default_factory=list,
        description="CIDR networks exempt from the private-address guard (the demo allows 127.0.0.0/8)",
    )
    dns_ttl: float = Field(300.0, ge=0, description="seconds a host's addresses are reused (per worker process)")
    dns_negative_ttl: float = Field(60.0, ge=0, description="seconds a failed or timed-out lookup is remembered")
    resolver: str | None = Field(None, description="'module:function' with socket.getaddrinfo's signature used "
                                 "instead of the system resolver (tests, custom DNS); null: the system's")

    @field_validator("resolver")
    @classmethod
    def _loadable_resolver(cls, value: str | None) -> str | None:
        load_resolver(value)
        return value

    @field_validator("allow_networks")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net, strict=False)
        return value


@dataclass
class Fetched:
    status: str
    error: str | None = None
    http_status: int | None = None
    body: bytes | None = None
    n_bytes: int | None = None
    retryable: bool = False              # may succeed later: retried in the run, and by a rerun (`transient`)
    throttled: bool = False              # 429/503: the host asks us to wait (`retry_after` seconds, when it says)
    retry_after: float | None = None
    signal: str | None = None            # the opt-out signal of an opted_out row
    policy: HostPolicy | None = None     # the host's policy files, when this attempt fetched them
    requests: int = 0                    # HTTP requests this attempt sent (policy files and redirects included)
    connections: int = 0                 # TCP connections it opened


def download_columns(results: list[Fetched], with_body: bool = True) -> dict[str, pa.Array]:
    """The download stage's columns for these results (`image`: the raw body, when with_body)."""
    columns = {
        "status": pa.array([r.status for r in results], pa.string()),
        "error": pa.array([r.error for r in results], pa.string()),
        "http_status": pa.array([r.http_status for r in results], pa.int32()),
        "n_bytes": pa.array([r.n_bytes for r in results], pa.int64()),
        # the failure may not recur (timeouts, resets, 5xx, rate_limited): a rerun fetches the row again
        "transient": pa.array([r.status != st.OK and r.retryable for r in results], pa.bool_()),
    }
    if with_body:
        columns["image"] = pa.array([r.body for r in results], pa.binary())
    return columns


def user_agent(token: str | None) -> str:
    base = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
    return f"{base} (compatible; {token}; +https://github.com/tailor-data/tailor)" if token else base


def is_disallowed(headers: Message, user_agent_token: str | None, directives: set[str]) -> bool:
    """img2dataset's X-Robots-Tag rule: `[token:] d1, d2`; a token-less value applies to everyone."""
    token = user_agent_token.strip().lower() if user_agent_token else None
    for value in headers.get_all("X-Robots-Tag") or []:
        parts = value.split(":", 1)
        found = {d.strip().lower() for d in parts[-1].split(",")}
        ua = parts[0].strip().lower() if len(parts) == 2 else None
        if (ua is None or ua == token) and found & directives:
            return True
    return False


class DnsError(Exception):
    """A lookup failed or did not answer in time (the text says which).

    `final` when the resolver answered that the name does not exist or has no address: asking again
    within the run gets the same answer (from the cache, for `dns_negative_ttl`), so a row is not
    retried for it. A lookup that timed out or failed for the time being (EAI_AGAIN) is not final.
    """

    def __init__(self, message: str, final: bool = False):
        super().__init__(message)
        self.final = final


class _Failed(str):
    """A cached failed lookup: its message, and whether the resolver's answer was final."""

    final = False


class _NoSuchHost(_Failed):
    final = True


_FINAL_DNS_ERRORS = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


class HostResolver:
    """A per-process DNS cache with one lookup per host at a time.

    `addresses(host, port, timeout)` waits at most `timeout` seconds. A lookup runs on a thread of its
    own, so a caller that gives up leaves it running: its answer, when it comes, serves later rows.
    Failures and lookups that outlived a caller's deadline are remembered for `negative_ttl` seconds,
    so the other rows of a dead host fail at once instead of each waiting out its timeout.
    """

    def __init__(self, lookup=socket.getaddrinfo, ttl: float = 300.0, negative_ttl: float = 60.0,
                 threads: int = 16):
        self.lookup, self.ttl, self.negative_ttl = lookup, ttl, negative_ttl
        self._cache: dict[tuple[str, int], tuple[float, list[str] | _Failed]] = {}
        self._inflight: dict[tuple[str, int], Future] = {}
        # reentrant: a lookup that is already done runs its done-callback (which takes the lock) at once,
        # in the thread that registers it, which holds the lock
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dns")

    def addresses(self, host: str, port: int, timeout: float) -> list[str]:
        with contextlib.suppress(ValueError):
            return [str(ipaddress.ip_address(host))]  # an IP literal needs no lookup
        key = (host, port)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > time.monotonic():
                return self._answer(cached[1])
            future = self._inflight.get(key)
            if future is None:
                future = self._pool.submit(self._resolve, host, port)
                self._inflight[key] = future
                future.add_done_callback(lambda done, key=key: self._store(key, done))
        try:
            return self._answer(future.result(timeout=max(0.0, timeout)))
        except FutureTimeout:
            message = _Failed(f"DNS lookup of {host!r} timed out (no answer within {timeout:.3g}s)")
            with self._lock:
                if not future.done():  # later rows of this host fail at once, until the lookup answers
                    self._cache[key] = (time.monotonic() + self.negative_ttl, message)
            raise DnsError(message) from None

    def _resolve(self, host: str, port: int) -> list[str] | _Failed:
        try:
            infos = self.lookup(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            final = err.errno in _FINAL_DNS_ERRORS
            return (_NoSuchHost if final else _Failed)(f"cannot resolve {host!r}: {err}")
        except UnicodeError as err:  # a name IDNA cannot encode: no resolver will ever answer it
            return _NoSuchHost(f"cannot resolve {host!r}: {err}")
        except OSError as err:
            return _Failed(f"cannot resolve {host!r}: {err}")
        found = list(dict.fromkeys(info[4][0] for info in infos))
        return found or _NoSuchHost(f"cannot resolve {host!r}: no addresses")

    def _store(self, key: tuple[str, int], future: Future) -> None:
        error = future.exception()
        answer = future.result() if not error else _Failed(f"cannot resolve {key[0]!r}: {error}")
        ttl = self.ttl if isinstance(answer, list) else self.negative_ttl
        with self._lock:
            self._inflight.pop(key, None)
            self._cache[key] = (time.monotonic() + ttl, answer)

    @staticmethod
    def _answer(answer: list[str] | _Failed) -> list[str]:
        if isinstance(answer, _Failed):
            raise DnsError(answer, final=answer.final)
        return answer


def load_resolver(path: str | None):
    """socket.getaddrinfo, or the function a 'module:function' path names."""
    if not path:
        return socket.getaddrinfo
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"download.resolver: cannot load {path!r}: {err}") from None


class AddressGuard:
    """Refuses addresses that are not globally routable unless an allow-listed network holds them."""

    def __init__(self, allow_networks: list[str], resolver: HostResolver | None = None):
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in allow_networks]
        self.resolver = resolver or HostResolver()

    def refusal(self, address: str) -> str | None:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allowed):
            return None
        if ip.is_multicast or not ip.is_global:
            kind = next(
                (name for name in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified")
                 if getattr(ip, f"is_{name}")),
                "non-global",
            )
            return f"{ip} is a {kind.replace('_', '-')} address"
        return None

    def resolve(self, host: str, port: int, timeout: float = 30.0) -> str:
        """Return one vetted address for host; raise _Refused if any resolved address is refused,
        DnsError if the lookup fails or outlives `timeout`."""
        addresses = self.resolver.addresses(host, port, timeout)
        for address in addresses:
            reason = self.refusal(address)
            if reason:
                net = ipaddress.ip_network(address.split("%", 1)[0])
                where = reason if host == address else f"{host} resolves to {address}, {reason.split(' is ', 1)[1]}"
                raise _Refused(f"{where}, not globally routable; to fetch from it anyway, list its network in "
                               f"download.allow_networks (e.g. --set 'download.allow_networks=[\"{net}\"]')")
        return addresses[0]


class _Refused(Exception):
    pass


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a pre-vetted address while sending the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """TLS to the vetted address, resuming the host's last TLS session where the process has one."""

    default_port = 443
    _tls = ssl.create_default_context()

    def __init__(self, host: str, port: int, address: str, timeout: float,
                 sessions: dict[tuple[str, int], ssl.SSLSession] | None = None):
        super().__init__(host, port, address, timeout)
        self._sessions = sessions if sessions is not None else {}

    def connect(self) -> None:
        super().connect()
        session = self._sessions.get((self.host, self.port))
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self.host, session=session)


_NOT_IN_HOSTS = set('<>"{}|\\^`%/?#@')
# printable ASCII but space and "<>: only what cannot go on the wire is escaped (a signed URL stays as signed)
_SAFE_IN_TARGET = "".join(c for c in map(chr, range(33, 127)) if c not in '"<>')


def _header_text(value: str) -> str:
    """A header as its sender wrote it: http.client decodes headers as Latin-1, and servers write a Location
    holding non-ASCII in UTF-8 (`/café` arrives as `/cafÃ©`)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _check_url(url: str) -> tuple[str, str, int, str] | str:
    """(scheme, host, port, path+query) or an error text."""
    if not isinstance(url, str) or not url.strip():
        return "empty URL"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as err:
        return f"malformed URL {url!r}: {err}"
    if parts.scheme not in ("http", "https"):
        return f"unsupported URL scheme {parts.scheme!r} in {url!r}" if parts.scheme else f"not a URL: {url!r}"
    if not parts.hostname:
        return f"URL has no host: {url!r}"
    if any(c in _NOT_IN_HOSTS or c.isspace() or ord(c) < 32 for c in parts.hostname):
        return f"malformed URL {url!r}: invalid character in host {parts.hostname!r}"
    port = port or (443 if parts.scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    # as a browser sends it: spaces and other characters a request line cannot hold percent-encoded (UTF-8),
    # escapes already there kept
    return parts.scheme, parts.hostname, port, quote(target, safe=_SAFE_IN_TARGET)


def is_url(value: str) -> bool:
    """Whether a value is a URL a download would request (http or https, with a host)."""
    return isinstance(_check_url(value), tuple)


def retry_after_seconds(value: str | None, date: str | None = None) -> float | None:
    """Retry-After as seconds: a number of seconds, or an HTTP date, taken against the answer's own Date header
    when it has one (so a server whose clock is off still gets the wait it asked for)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
        now = email.utils.parsedate_to_datetime(date).timestamp() if date else time.time()
    except (TypeError, ValueError, IndexError):
        return None
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER_S)


class _Counts:
    __slots__ = ("requests", "connections")

    def __init__(self):
        self.requests = self.connections = 0


class _Connections:
    """Idle kept-alive connections by (scheme, host, port, address), in this process; at most `per_host` idle per
    origin and `total` in all, each dropped after `idle_s` unused (servers close idle ones after 5-60 s)."""

    def __init__(self, per_host: int, total: int = 512, idle_s: float = 20.0):
        self.per_host, self.total, self.idle_s = per_host, total, idle_s
        self._idle: collections.OrderedDict[tuple, list] = collections.OrderedDict()
        self._count = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> http.client.HTTPConnection | None:
        now = time.monotonic()
        with self._lock:
            held = self._idle.get(key)
            while held:
                since, conn = held.pop()
                self._count -= 1
                if now - since < self.idle_s:
                    return conn
                conn.close()
        return None

    def put(self, key: tuple, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            held = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            if len(held) >= self.per_host:
                conn.close()
                return
            held.append((time.monotonic(), conn))
            self._count += 1
            while self._count > self.total:  # the least recently used origin's oldest connection
                oldest_key = next(iter(self._idle))
                oldest = self._idle[oldest_key]
                if oldest:
                    oldest.pop(0)[1].close()
                    self._count -= 1
                if not oldest:
                    del self._idle[oldest_key]


class _Stale(Exception):
    """A kept-alive connection the server had closed before our request: sent again on a new one."""


class Downloader:
    """Fetches URLs politely and safely. `__call__` downloads a batch under a host budget (its own, or the run's
    when `scheduler(budget)` is given one); `attempt` is one attempt at one URL, on a download thread."""

    def __init__(self, options: DownloadOptions):
        self.options = options
        self.guard = AddressGuard(options.allow_networks, HostResolver(
            load_resolver(options.resolver), options.dns_ttl, options.dns_negative_ttl, threads=options.threads))
        self.headers = {
            "User-Agent": user_agent(options.user_agent_token),
            "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5",
        }
        self.directives = {d.strip().lower() for d in options.disallowed_header_directives}
        self.honoured = set(options.opt_outs)
        self.policies_needed = bool(self.honoured & {ROBOTS_TXT, TDM_REP})
        self._connections = _Connections(per_host=options.host_concurrency)
        self._tls_sessions: dict[tuple[str, int], ssl.SSLSession] = {}
        self._hop_policies: dict[str, HostPolicy] = {}  # redirect targets' policies, fetched by this process
        self._scheduler: HostScheduler | None = None

    def scheduler(self, budget=None, after=None) -> HostScheduler:
        """A scheduler of this downloader's attempts under `budget` (the run's, shared by every process; by
        default one of this downloader's own). `after(fetched)` runs on the download thread after a success."""
        o = self.options
        return HostScheduler(self.attempt, self.origin, self.refusal, o.threads, o.retries, o.backoff, o.max_wait,
                             o.throttle_wait, budget if budget is not None else HostBudget(**HostBudget.settings(o)),
                             failed=lambda status, error, code: Fetched(status, error, code,
                                                                        retryable=st.is_transient(status, code)),
                             after=after, policies_needed=self.policies_needed)

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, ("url",), "download")
        if self._scheduler is None:
            self._scheduler = self.scheduler()
        results = [fetched for fetched, _ in self._scheduler.run(batch.column("url").to_pylist())]
        return replace_columns(batch, download_columns(results))

    # ------------------------------------------------------------------ hosts and their policies

    @staticmethod
    def origin(url: str) -> str | None:
        """The host a URL's requests count against (scheme://host:port), None for a URL that cannot be requested."""
        checked = _check_url(url)
        if isinstance(checked, str):
            return None
        scheme, host, port, _ = checked
        return f"{scheme}://{host.lower()}:{port}"

    def refusal(self, policy: HostPolicy, url: str) -> tuple[str | None, Fetched] | None:
        """(signal, the row's Fetched) when the host's known policy settles `url` without a request, else None."""
        checked = _check_url(url)
        if isinstance(checked, str):
            return None
        target = checked[3]
        if ROBOTS_TXT in self.honoured:
            if policy.robots_status is not None and robots_unreachable(policy.robots_status):
                return None, Fetched(st.HTTP_ERROR, f"robots.txt answered HTTP {policy.robots_status}: RFC 9309 "
                                     "treats the host as disallowed until it answers", policy.robots_status,
                                     retryable=True)
            reason = policy.robots_refusal(target, self.options.user_agent_token)
            if reason:
                return ROBOTS_TXT, Fetched(st.OPTED_OUT, reason, signal=ROBOTS_TXT)
        if TDM_REP in self.honoured:
            reason = policy.tdm_refusal(target)
            if reason:
                return TDM_REP, Fetched(st.OPTED_OUT, reason, signal=TDM_REP)
        return None

    def _fetch_policy(self, scheme: str, host: str, port: int, deadline: float,
                      counts: _Counts) -> HostPolicy | Fetched:
        """The host's robots.txt and tdmrep.json (those honoured), within the row's deadline; a Fetched when the
        host cannot be reached (the row fails as its image would) or throttles us."""
        base = f"{scheme}://{host}" + ("" if port == (443 if scheme == "https" else 80) else f":{port}")
        policy = HostPolicy()
        for signal, path in ((ROBOTS_TXT, ROBOTS_PATH), (TDM_REP, TDMREP_PATH)):
            if signal not in self.honoured:
                continue
            got = self._get(base + path, deadline, counts, MAX_POLICY_BYTES, check=False)
            if got.throttled:
                got.error = f"{path}: {got.error}"
                return got
            if got.http_status is None or got.status not in (st.OK, st.HTTP_ERROR, st.TOO_LARGE):
                if signal == TDM_REP:
                    continue  # no answer for tdmrep.json: no reservation known (the header still counts)
                got.error = f"{path}: {got.error}"
                return got
            body = got.body if got.status == st.OK else None
            if signal == ROBOTS_TXT:
                policy.robots_status, policy.robots = got.http_status, body
            else:
                policy.tdmrep_status, policy.tdmrep = got.http_status, body
        return policy

    # ------------------------------------------------------------------ one attempt

    def attempt(self, url: str, policy: HostPolicy | None = None, fetch_policy: bool = False,
                on_policy=None) -> Fetched:
        """One attempt at `url` within download.timeout, the host's policy files first when `fetch_policy` (and
        given to `on_policy` as soon as they are read, before the image is asked for)."""
        counts = _Counts()
        try:
            result = self._get(url, time.monotonic() + self.options.timeout, counts, self.options.max_bytes,
                               check=True, policy=policy, fetch_policy=fetch_policy, on_policy=on_policy)
        except Exception as err:  # a bug here must not cost the row
            result = Fetched(st.CONNECTION_ERROR, f"unexpected {type(err).__name__}: {err}")
        result.requests, result.connections = counts.requests, counts.connections
        return result

    def _get(self, url: str, deadline: float, counts: _Counts, cap: int, check: bool,
             policy: HostPolicy | None = None, fetch_policy: bool = False, on_policy=None) -> Fetched:
        """GET with redirects; `check`: honour the opt-outs (the first hop's `policy`, fetched first when
        `fetch_policy`; a redirect to another host has its own policy fetched here)."""
        visited: list[str] = []
        current = url
        fetched_policy = None
        first_origin = None
        while True:
            checked = _check_url(current)
            if isinstance(checked, str):
                status = st.INVALID_URL if not visited else st.REDIRECT_ERROR
                return Fetched(status, checked if not visited else f"redirect to bad URL: {checked}")
            if current in visited:
                return Fetched(st.REDIRECT_ERROR, "redirect loop: " + " -> ".join([*visited, current]))
            visited.append(current)
            scheme, host, port, target = checked
            try:
                address = self.guard.resolve(host, port, deadline - time.monotonic())
            except _Refused as err:
                hop = f" (redirect hop {len(visited) - 1})" if len(visited) > 1 else ""
                return Fetched(st.BLOCKED_ADDRESS, f"refused {current}: {err}{hop}")
            except DnsError as err:  # a name that does not exist stays so for the run: no retry
                return Fetched(st.CONNECTION_ERROR, str(err), retryable=not err.final)
            if check and self.policies_needed:
                origin = f"{scheme}://{host.lower()}:{port}"
                if len(visited) == 1:
                    first_origin = origin
                    hop_policy = policy
                elif origin == first_origin:
                    hop_policy = policy or fetched_policy
                else:
                    hop_policy = self._hop_policies.get(origin)
                if hop_policy is None:
                    if fetch_policy or len(visited) > 1:
                        got = self._fetch_policy(scheme, host, port, deadline, counts)
                        if isinstance(got, Fetched):
                            return got
                        hop_policy = got
                        if len(visited) == 1:
                            fetched_policy = got
                            if on_policy is not None:
                                on_policy(got)
                        else:
                            if len(self._hop_policies) > 10_000:
                                self._hop_policies.clear()
                            self._hop_policies[origin] = got
                if hop_policy is not None:
                    refused = self.refusal(hop_policy, current)
                    if refused is not None:
                        refused[1].policy = fetched_policy
                        if len(visited) > 1:
                            refused[1].error += f" (redirect hop {len(visited) - 1})"
                        return refused[1]
            outcome = self._request(scheme, host, port, address, target, deadline, counts, cap, check)
            if isinstance(outcome, Fetched):
                outcome.policy = fetched_policy
                return outcome
            location = _header_text(outcome)
            if len(visited) > self.options.max_redirects:
                return Fetched(st.REDIRECT_ERROR, f"more than {self.options.max_redirects} redirects from {url}",
                               policy=fetched_policy)
            current = urljoin(current, location)

    def _connect(self, scheme: str, host: str, port: int, address: str, timeout: float, counts: _Counts):
        key = (scheme, host, port, address)
        conn = self._connections.get(key)
        if conn is not None:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            return conn, True
        counts.connections += 1
        if scheme == "https":
            return _PinnedHTTPSConnection(host, port, address, timeout, self._tls_sessions), False
        return _PinnedHTTPConnection(host, port, address, timeout), False

    def _request(self, scheme: str, host: str, port: int, address: str, target: str, deadline: float,
                 counts: _Counts, cap: int, check: bool) -> Fetched | str:
        """Fetched on a final answer, or the Location of a redirect."""
        for _ in range(2):  # a second time only when a kept-alive connection turned out closed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Fetched(st.TIMEOUT, f"no answer within {self.options.timeout:g}s", retryable=True)
            conn, reused = self._connect(scheme, host, port, address, remaining, counts)
            keep = False
            try:
                try:
                    counts.requests += 1
                    conn.request("GET", target, headers=self.headers)
                    resp = conn.getresponse()
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as err:
                    if reused:
                        raise _Stale from err
                    raise
                outcome, keep = self._answer(conn, resp, deadline, cap, check)
                if keep and not resp.will_close:
                    self._connections.put((scheme, host, port, address), conn)
                    if isinstance(conn.sock, ssl.SSLSocket) and conn.sock.session is not None:
                        self._tls_sessions[(host, port)] = conn.sock.session
                else:
                    keep = False
                return outcome
            except _Stale:
                counts.requests -= 1
                continue
            except TimeoutError:
                return Fetched(st.TIMEOUT, f"no complete answer within {self.options.timeout:g}s", retryable=True)
            except ssl.SSLError as err:
                return Fetched(st.CONNECTION_ERROR, f"TLS error: {err}")
            except (ConnectionError, http.client.HTTPException, OSError) as err:
                text = str(err) or type(err).__name__
                return Fetched(st.CONNECTION_ERROR, f"{type(err).__name__}: {text}", retryable=True)
            finally:
                if not keep:
                    conn.close()
        return Fetched(st.CONNECTION_ERROR, "the server closed every connection before answering", retryable=True)

    def _answer(self, conn, resp: http.client.HTTPResponse, deadline: float, cap: int,
                check: bool) -> tuple[Fetched | str, bool]:
        """What an answer means, and whether its connection can serve another request."""
        code = resp.status
        if 300 <= code < 400 and code != 304:
            location = resp.getheader("Location")
            keep = _drain(resp)
            if not location:
                return Fetched(st.HTTP_ERROR, f"HTTP {code} redirect without Location", code), keep
            return location, keep
        if code >= 400:
            keep = _drain(resp)
            text = f"HTTP {code} {resp.reason}".strip()
            if code in _THROTTLE_HTTP:
                wait = retry_after_seconds(resp.getheader("Retry-After"), resp.getheader("Date"))
                if resp.getheader("Retry-After"):
                    text += f" (Retry-After: {resp.getheader('Retry-After')})"
                return Fetched(st.HTTP_ERROR, text, code, retryable=True, throttled=True, retry_after=wait), keep
            return Fetched(st.HTTP_ERROR, text, code, retryable=code in st.RETRYABLE_HTTP), keep
        if check:
            if X_ROBOTS_TAG in self.honoured and self.directives and \
                    is_disallowed(resp.msg, self.options.user_agent_token, self.directives):
                tags = ", ".join(resp.msg.get_all("X-Robots-Tag") or [])
                return Fetched(st.OPTED_OUT, f"X-Robots-Tag disallows use: {tags}", code, signal=X_ROBOTS_TAG), False
            if TDM_REP in self.honoured:
                reason = tdm_header_refusal(resp.msg)
                if reason:
                    return Fetched(st.OPTED_OUT, f"TDM rights reserved: {reason}", code, signal=TDM_REP), False
        return self._read_body(conn, resp, deadline, cap)

    def _read_body(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                   deadline: float, cap: int) -> tuple[Fetched, bool]:
        length = resp.getheader("Content-Length")
        if length and length.isdigit() and int(length) > cap:
            return Fetched(st.TOO_LARGE, f"Content-Length {int(length)} exceeds max_bytes {cap}", resp.status,
                           n_bytes=int(length)), False
        chunks: list[bytes] = []
        total = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Fetched(st.TIMEOUT, f"body incomplete after {self.options.timeout:g}s ({total} bytes read)",
                               resp.status, retryable=True), False
            if conn.sock is not None:
                conn.sock.settimeout(remaining)
            chunk = resp.read(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                return Fetched(st.TOO_LARGE, f"body exceeds max_bytes {cap}", resp.status, n_bytes=total), False
            chunks.append(chunk)
        body = b"".join(chunks)
        return Fetched(st.OK, None, resp.status, body, len(body)), True


def _drain(resp: http.client.HTTPResponse) -> bool:
    """Read a small error or redirect body so the connection can serve the next request; False: close it."""
    length = resp.getheader("Content-Length")
    if resp.chunked or not length or not length.isdigit() or int(length) > _DRAIN_BYTES:
        return False
    resp.read()
    return True
