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
- X-Robots-Tag opt-out, with img2dataset's directives and user-agent token semantics.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import ipaddress
import random
import socket
import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from email.message import Message
from urllib.parse import quote, urljoin, urlsplit

import pyarrow as pa
from pydantic import Field, field_validator

from operators import status as st
from operators.options import Options
from operators.table import replace_columns, require_columns

_CHUNK = 64 * 1024
_RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


class DownloadOptions(Options):
    threads: int = Field(32, gt=0, description="concurrent requests within one task")
    timeout: float = Field(10.0, gt=0, description="seconds per attempt: connect, each read, and the whole body")
    retries: int = Field(2, ge=0, description="extra attempts for retryable failures (timeouts, 5xx, resets)")
    backoff: float = Field(0.5, ge=0, description="first retry delay in seconds; doubles per attempt")
    max_bytes: int = Field(16_000_000, gt=0, description="byte cap per image, enforced while streaming")
    max_redirects: int = Field(5, ge=0)
    user_agent_token: str | None = "tailor"
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
    retryable: bool = False


def download_columns(results: list[Fetched], with_body: bool = True) -> dict[str, pa.Array]:
    """The download stage's columns for these results (`image`: the raw body, when with_body)."""
    columns = {
        "status": pa.array([r.status for r in results], pa.string()),
        "error": pa.array([r.error for r in results], pa.string()),
        "http_status": pa.array([r.http_status for r in results], pa.int32()),
        "n_bytes": pa.array([r.n_bytes for r in results], pa.int64()),
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
    default_port = 443
    _tls = ssl.create_default_context()

    def connect(self) -> None:
        super().connect()
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self.host)


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


class Downloader:
    """Fetches one URL with retries; `__call__` downloads a whole batch on a thread pool."""

    def __init__(self, options: DownloadOptions):
        self.options = options
        self.guard = AddressGuard(options.allow_networks, HostResolver(
            load_resolver(options.resolver), options.dns_ttl, options.dns_negative_ttl, threads=options.threads))
        self.headers = {
            "User-Agent": user_agent(options.user_agent_token),
            "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5",
            "Connection": "close",
        }
        self.directives = {d.strip().lower() for d in options.disallowed_header_directives}

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, ("url",), "download")
        urls = batch.column("url").to_pylist()
        workers = max(1, min(self.options.threads, len(urls)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="download") as pool:
            results = list(pool.map(self.fetch, urls))
        return replace_columns(batch, download_columns(results))

    def fetch(self, url: str) -> Fetched:
        delay = self.options.backoff
        result = Fetched(st.INVALID_URL)
        for attempt in range(self.options.retries + 1):
            try:
                result = self._fetch_once(url)
            except Exception as err:  # a bug here must not cost the row
                result = Fetched(st.CONNECTION_ERROR, f"unexpected {type(err).__name__}: {err}")
            if not result.retryable or attempt == self.options.retries:
                break
            time.sleep(delay * (0.5 + random.random()))  # jitter spreads retries to one host
            delay *= 2
        if result.retryable and self.options.retries:
            result.error = f"{result.error} (after {self.options.retries + 1} attempts)"
        return result

    def _fetch_once(self, url: str) -> Fetched:
        deadline = time.monotonic() + self.options.timeout
        visited: list[str] = []
        current = url
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
            outcome = self._request(scheme, host, port, address, target, deadline)
            if isinstance(outcome, Fetched):
                return outcome
            location = _header_text(outcome)
            if len(visited) > self.options.max_redirects:
                return Fetched(st.REDIRECT_ERROR, f"more than {self.options.max_redirects} redirects from {url}")
            current = urljoin(current, location)

    def _request(self, scheme: str, host: str, port: int, address: str, target: str,
                 deadline: float) -> Fetched | str:
        """Fetched on a final answer, or the Location of a redirect."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Fetched(st.TIMEOUT, f"no answer within {self.options.timeout:g}s", retryable=True)
        cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
        conn = cls(host, port, address, timeout=remaining)
        try:
            conn.request("GET", target, headers=self.headers)
            resp = conn.getresponse()
            code = resp.status
            if 300 <= code < 400 and code != 304:
                location = resp.getheader("Location")
                if not location:
                    return Fetched(st.HTTP_ERROR, f"HTTP {code} redirect without Location", code)
                return location
            if code >= 400:
                return Fetched(st.HTTP_ERROR, f"HTTP {code} {resp.reason}".strip(), code,
                               retryable=code in _RETRYABLE_HTTP)
            if self.directives and is_disallowed(resp.msg, self.options.user_agent_token, self.directives):
                tags = ", ".join(resp.msg.get_all("X-Robots-Tag") or [])
                return Fetched(st.OPTED_OUT, f"X-Robots-Tag disallows use: {tags}", code)
            return self._read_body(conn, resp, deadline)
        except TimeoutError:
            return Fetched(st.TIMEOUT, f"no complete answer within {self.options.timeout:g}s", retryable=True)
        except ssl.SSLError as err:
            return Fetched(st.CONNECTION_ERROR, f"TLS error: {err}")
        except (ConnectionError, http.client.HTTPException, OSError) as err:
            text = str(err) or type(err).__name__
            return Fetched(st.CONNECTION_ERROR, f"{type(err).__name__}: {text}", retryable=True)
        finally:
            conn.close()

    def _read_body(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                   deadline: float) -> Fetched:
        cap = self.options.max_bytes
        length = resp.getheader("Content-Length")
        if length and length.isdigit() and int(length) > cap:
            return Fetched(st.TOO_LARGE, f"Content-Length {int(length)} exceeds max_bytes {cap}", resp.status,
                           n_bytes=int(length))
        chunks: list[bytes] = []
        total = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Fetched(st.TIMEOUT, f"body incomplete after {self.options.timeout:g}s ({total} bytes read)",
                               resp.status, retryable=True)
            if conn.sock is not None:
                conn.sock.settimeout(remaining)
            chunk = resp.read(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                return Fetched(st.TOO_LARGE, f"body exceeds max_bytes {cap}", resp.status, n_bytes=total)
            chunks.append(chunk)
        body = b"".join(chunks)
        return Fetched(st.OK, None, resp.status, body, len(body))
