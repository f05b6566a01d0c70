"""A multi-host loopback web whose hosts defend themselves like CDNs: per-host concurrency and rate limits
answered with 429 (or 503) and Retry-After, robots.txt, TDMRep opt-outs, latency, and outages on demand.

Every host is a ThreadingHTTPServer of its own on one address of 127.0.0.0/8 (127.0.0.2, 127.0.0.3, ...),
all on the same port, so URLs read `http://127.0.0.N:PORT/img/I.jpg`; `/img/I.jpg` on any host serves
images[I % len(images)] (a query string is ignored). HTTP/1.1 with keep-alive: a client may reuse a
connection, and the web counts connections as well as requests.

    specs = [HostSpec("127.0.0.2", concurrency=2, rate=8), HostSpec("127.0.0.3", robots=DISALLOW_IMG)]
    with HostWeb(specs, images) as web:
        urls = web.urls_for(["127.0.0.2", "127.0.0.3", "127.0.0.2"])   # image i on host assignments[i]
        ...                                                              # the client under test
        web.requests("127.0.0.2"), web.refused("127.0.0.2"), web.max_inflight("127.0.0.2")
        web.connections("127.0.0.2"), web.log("127.0.0.2")               # [Request(time, path, status, connection)]
        web.stop("127.0.0.3"); ...; web.start("127.0.0.3")              # an outage and the host's return

The limits hold for every request a host answers (images, /robots.txt, /.well-known/tdmrep.json, 404s):
`concurrency` bounds the requests being served at once, `rate` the requests admitted within any sliding
second; a request beyond either is answered at once with `throttle_status` and `Retry-After: retry_after`
and is not admitted (it counts in neither limit). `latency` is slept, admitted, before an image's answer.

skewed_hosts(n_rows, shares, n_hosts, seed) assigns rows to hosts with a real crawl's skew (CC3M_TOP_SHARES:
the five busiest CC3M hosts' shares), the rest of the rows spread Zipf-like over the other hosts.

Standard library only (tests/test_host_web.py, benchmarks/host_skew.py).
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

CC3M_TOP_SHARES = (0.138, 0.125, 0.085, 0.030, 0.026)  # CC3M's five busiest hosts, of all rows
DISALLOW_IMG = "User-agent: *\nDisallow: /img/\n"  # a robots.txt that keeps every crawler off the images
TDMREP_RESERVED = '[{"location": "/", "tdm-reservation": 1}]'  # a tdmrep.json reserving TDM rights site-wide
WINDOW = 1.0  # seconds of the sliding window `rate` counts admissions in

_IMAGE_PATH = re.compile(r"/img/(\d+)\.jpg")


@dataclass
class HostSpec:
    """One host of the web and how it defends itself (None: no such limit / no such file)."""

    address: str  # e.g. "127.0.0.7"
    concurrency: int | None = None  # requests served at once; beyond -> throttle_status
    rate: float | None = None  # requests admitted within any sliding second; beyond -> throttle_status
    retry_after: str | None = "1"  # the Retry-After header sent with a throttled answer; None sends none
    throttle_status: int = 429  # 429, or 503 as some CDNs answer
    robots: str | None = None  # the body of /robots.txt (200); None -> 404
    robots_status: int | None = None  # force this status for /robots.txt (e.g. 500, 503)
    tdm_header: bool = False  # send `tdm-reservation: 1` with every image
    tdmrep: str | None = None  # the JSON body of /.well-known/tdmrep.json; None -> 404
    latency: float = 0.0  # seconds slept (admitted) before an image's answer

    def __post_init__(self):
        if self.throttle_status not in (429, 503):
            raise ValueError(f"throttle_status {self.throttle_status}: 429 or 503")


class Request(NamedTuple):
    """One request a host answered: arrival (time.monotonic()), path as sent, status answered, connection id."""

    time: float
    path: str
    status: int
    connection: int


class _Host:
    """A host's state: its spec, its server (None while stopped), admission counters and records."""

    def __init__(self, spec: HostSpec, port: int):
        self.spec, self.port = spec, port
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.inflight = 0
        self.max_inflight = 0
        self.window: collections.deque[float] = collections.deque()  # arrival times of admitted requests
        self.records: list[Request] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self.throttled = 0  # answers refused by a limit
        self.connections = 0  # connections opened since the last reset
        self.next_connection = 0  # connection ids, never reused
        self.open: set[socket.socket] = set()  # connections open now (closed by stop)

    def admit(self, now: float) -> bool:
        spec = self.spec
        with self.lock:
            while self.window and self.window[0] <= now - WINDOW:
                self.window.popleft()
            if spec.concurrency is not None and self.inflight >= spec.concurrency:
                return False
            if spec.rate is not None and len(self.window) >= spec.rate:
                return False
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            self.window.append(now)
            return True

    def release(self) -> None:
        with self.lock:
            self.inflight -= 1

    def record(self, now: float, path: str, status: int, connection: int, throttled: bool = False) -> None:
        with self.lock:
            self.records.append(Request(now, path, status, connection))
            self.statuses[status] += 1
            self.throttled += throttled

    def connect(self, sock: socket.socket) -> int:
        with self.lock:
            self.connections += 1
            self.next_connection += 1
            self.open.add(sock)
            return self.next_connection

    def disconnect(self, sock: socket.socket) -> None:
        with self.lock:
            self.open.discard(sock)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client says close
    server_version = "HostWeb/1"
    sys_version = ""
    timeout = 30.0  # an idle keep-alive connection is closed after this (its thread ends)
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection_id = self.server.host.connect(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.host.disconnect(self.connection)

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        host, now = self.server.host, time.monotonic()
        spec = host.spec
        if not host.admit(now):
            headers = {"Retry-After": spec.retry_after} if spec.retry_after is not None else {}
            host.record(now, self.path, spec.throttle_status, self.connection_id, throttled=True)
            self._answer(spec.throttle_status, b"slow down\n", "text/plain", headers)
            return
        try:
            status, body, kind, headers = self._route(spec)
            host.record(now, self.path, status, self.connection_id)
            self._answer(status, body, kind, headers)
        finally:
            host.release()

    def _route(self, spec: HostSpec) -> tuple[int, bytes, str, dict]:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        match = _IMAGE_PATH.fullmatch(path)
        if match:
            if spec.latency:
                time.sleep(spec.latency)
            images = self.server.images
            headers = {"tdm-reservation": "1"} if spec.tdm_header else {}
            return 200, images[int(match.group(1)) % len(images)], "image/jpeg", headers
        if path == "/robots.txt":
            if spec.robots_status is not None:
                return spec.robots_status, (spec.robots or "").encode(), "text/plain", {}
            if spec.robots is not None:
                return 200, spec.robots.encode(), "text/plain", {}
        if path == "/.well-known/tdmrep.json" and spec.tdmrep is not None:
            return 200, spec.tdmrep.encode(), "application/json", {}
        return 404, b"not found\n", "text/plain", {}

    def _answer(self, status: int, body: bytes, kind: str, headers: dict) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, host: _Host, images: list[bytes], handler: type[_Handler]):
        self.host, self.images = host, images
        super().__init__((host.spec.address, host.port), handler)

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hung up, or a connection stop() closed


class HostWeb:
    """Hosts of `specs` serving `images` (JPEG bytes) on one port; a context manager (serves while inside)."""

    def __init__(self, specs: list[HostSpec], images: list[bytes], idle_timeout: float = 30.0):
        if not images:
            raise ValueError("HostWeb needs at least one image")
        addresses = [s.address for s in specs]
        if len(set(addresses)) != len(addresses):
            raise ValueError("HostWeb: an address appears twice")
        self.specs, self.images, self.idle_timeout = list(specs), list(images), idle_timeout
        self.port = 0
        self._hosts: dict[str, _Host] = {}
        self._handler = type("Handler", (_Handler,), {"timeout": idle_timeout})

    # serving

    def __enter__(self) -> HostWeb:
        for _ in range(20):  # one free port every address can take
            self.port = _free_port(self.specs[0].address)
            self._hosts = {s.address: _Host(s, self.port) for s in self.specs}
            try:
                for address in self._hosts:
                    self.start(address)
                return self
            except OSError:
                self._close_all()
        raise OSError(f"no port free on all of {[s.address for s in self.specs]}")

    def __exit__(self, *exc) -> None:
        self._close_all()

    def start(self, address: str) -> None:
        """Serve `address` again (or for the first time) on the web's port; its records are kept."""
        host = self._hosts[address]
        if host.server is not None:
            return
        server = _Server(host, self.images, self._handler)
        host.server = server
        host.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name=f"host-web-{address}", daemon=True)
        host.thread.start()

    def stop(self, address: str) -> None:
        """An outage: close `address`'s listening socket (new connections are refused) and its open connections."""
        host = self._hosts[address]
        server, host.server = host.server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with host.lock:
            conns = list(host.open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        host.thread.join(timeout=5)

    def _close_all(self) -> None:
        for address, host in self._hosts.items():
            if host.server is not None:
                self.stop(address)

    def reset(self) -> None:
        """Forget every record, count and maximum (the connection counter too), e.g. between two clients."""
        for host in self._hosts.values():
            with host.lock:
                host.records.clear()
                host.statuses.clear()
                host.throttled = 0
                host.window.clear()
                host.connections = 0
                host.max_inflight = host.inflight

    # URLs

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.specs]

    def url(self, address: str, i: int) -> str:
        return f"http://{address}:{self.port}/img/{i}.jpg"

    def urls_for(self, assignments: list[str]) -> list[str]:
        """URL i serves image i from host assignments[i]."""
        return [self.url(address, i) for i, address in enumerate(assignments)]

    # records

    def log(self, address: str) -> list[Request]:
        host = self._hosts[address]
        with host.lock:
            return list(host.records)

    def statuses(self, address: str) -> dict[int, int]:
        host = self._hosts[address]
        with host.lock:
            return dict(host.statuses)

    def requests(self, address: str) -> int:
        host = self._hosts[address]
        with host.lock:
            return len(host.records)

    def refused(self, address: str) -> int:
        """Throttled answers (the host's throttle_status sent because a limit was reached)."""
        host = self._hosts[address]
        with host.lock:
            return host.throttled

    def inflight(self, address: str) -> int:
        """The admitted requests `address` is serving now."""
        host = self._hosts[address]
        with host.lock:
            return host.inflight

    def max_inflight(self, address: str) -> int:
        """The most admitted requests `address` served at once."""
        host = self._hosts[address]
        with host.lock:
            return host.max_inflight

    def connections(self, address: str) -> int:
        """TCP connections `address` accepted."""
        host = self._hosts[address]
        with host.lock:
            return host.connections


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def host_shares(top: list[float] | tuple[float, ...], n_hosts: int) -> list[float]:
    """Shares of rows for n_hosts hosts: `top` for the busiest (fractions of all rows, in order), the rest of
    the rows over the other hosts Zipf-like, (k + j) ** -s for the j-th of them after k top hosts, with the
    largest s <= 1 that keeps them below the last top share (uniform when even that cannot)."""
    top = list(top)[:n_hosts]
    if any(s < 0 for s in top) or sum(top) > 1 + 1e-9:
        raise ValueError(f"shares {top}: fractions of all rows, summing to at most 1")
    rest, k, m = max(0.0, 1 - sum(top)), len(top), n_hosts - len(top)
    if m == 0:
        return [s / sum(top) for s in top] if top else []

    def tail(s: float) -> list[float]:
        weights = [(k + j) ** -s for j in range(1, m + 1)]
        total = sum(weights)
        return [rest * w / total for w in weights]

    if not top or tail(1.0)[0] <= top[-1]:
        return top + tail(1.0)
    low, high = 0.0, 1.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if tail(mid)[0] <= top[-1] else (low, mid)
    return top + tail(low)


def skewed_hosts(n_rows: int, shares: list[float] | tuple[float, ...], n_hosts: int, seed: int) -> list[int]:
    """A host index (0 = busiest) for each of n_rows rows, following host_shares(shares, n_hosts) (largest
    remainders), in an order shuffled by `seed` (the same seed, the same list)."""
    full = host_shares(shares, n_hosts)
    exact = [n_rows * s for s in full]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(n_hosts), key=lambda h: (counts[h] - exact[h], h))
    for h in by_remainder[:n_rows - sum(counts)]:
        counts[h] += 1
    rows = [h for h, c in enumerate(counts) for _ in range(c)]
    random.Random(seed).shuffle(rows)
    return rows
