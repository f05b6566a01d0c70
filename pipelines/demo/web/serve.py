"""Serve a built demo web on 127.0.0.1, hostile behaviours included."""

from __future__ import annotations

import gzip
import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

URL_COLUMNS = ("demo_id", "url", "caption", "source")
_CHUNK = 1 << 16


def _jpeg_filler_segment() -> bytes:
    # A maximal JPEG comment segment: an oversize body stays a plausible JPEG
    # prefix, so only the byte cap (not sniffing) can reject it.
    return b"\xff\xfe" + (0xFFFF).to_bytes(2, "big") + b"\x00" * (0xFFFF - 2)


_JPEG_HEAD = bytes.fromhex("ffd8ffe000104a46494600010100000100010000")
_FILLER = _jpeg_filler_segment()


def oversize_chunks(size: int) -> Iterator[bytes]:
    """Exactly `size` bytes: a JPEG header followed by comment segments."""
    yield _JPEG_HEAD[:size]
    remaining = size - len(_JPEG_HEAD)
    while remaining > 0:
        chunk = _FILLER[: min(remaining, len(_FILLER))]
        remaining -= len(chunk)
        yield chunk


def url_table(out: Path, base_url: str) -> pa.Table:
    """The pages table with absolute URLs: raw_url verbatim, else base_url + path."""
    pages = pq.read_table(out / "pages.parquet").to_pylist()
    records = [
        {
            "demo_id": page["demo_id"],
            "url": page["raw_url"] if page["raw_url"] is not None else base_url + page["path"],
            "caption": page["caption"],
            "source": page["source"],
        }
        for page in pages
    ]
    schema = pa.schema([(name, pa.string()) for name in URL_COLUMNS])
    return pa.Table.from_pylist(records, schema=schema)


def write_url_files(out: Path, base_url: str) -> pa.Table:
    """urls.parquet/.csv/.tsv/.jsonl/.jsonl.gz: one table in every input format."""
    table = url_table(out, base_url)
    pq.write_table(table, out / "urls.parquet")
    pacsv.write_csv(table, out / "urls.csv")
    # TSV as most URL lists are (CC3M's, img2dataset's input): plain, one row a line, no quoting
    tsv_rows = [table.column_names, *zip(*(table.column(n).to_pylist() for n in table.column_names), strict=True)]
    if any(ch in (value or "") for row in tsv_rows for value in row for ch in "\t\n\r"):
        raise ValueError("a demo value holds a tab or a line break, which a plain TSV cannot hold")
    (out / "urls.tsv").write_text("".join("\t".join(v or "" for v in row) + "\n" for row in tsv_rows),
                                  encoding="utf-8")
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table.to_pylist())
    (out / "urls.jsonl").write_text(lines, encoding="utf-8")
    with gzip.GzipFile(out / "urls.jsonl.gz", "wb", mtime=0) as handle:
        handle.write(lines.encode("utf-8"))
    return table


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # A crawler opens many connections at once; the default backlog of 5 would
    # turn bursts into SYN retries (1 s stalls) that look like slow servers.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], web: DemoWebServer) -> None:
        self.web = web
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        # Clients hang up on oversize and slow bodies all the time: not an error.
        logger.debug("connection from %s ended abruptly", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "DemoWeb/1.0"
    timeout = 30  # reap idle keep-alive connections
    server: _HTTPServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Silence the default per-request stderr line."""

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(send_body=False)

    def _dispatch(self, send_body: bool) -> None:
        web = self.server.web
        path = urlsplit(self.path).path
        count = web.record_request(path)
        route = web.routes.get(path)
        kind = route["kind"] if route else "not_found"
        if kind == "not_found":
            self._send(404, b"not found\n", "text/plain", send_body)
        elif kind == "redirect":
            self._send(302, b"", "text/plain", send_body, {"Location": route["location"]})
        elif kind == "error_then_ok" and count == 1:
            self._send(500, b"internal server error\n", "text/plain", send_body)
        elif kind == "slow":
            if not web.stopping.wait(web.slow_seconds):
                self._send_file(route, send_body)
            self.close_connection = True
        elif kind == "stall":
            self._stall(route, send_body)
        elif kind == "oversize":
            self._oversize(route, send_body)
        else:
            self._send_file(route, send_body)

    def _headers(self, status: int, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        send_body: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._headers(status, content_type, {"Content-Length": str(len(body)), **(headers or {})})
        if send_body:
            self.wfile.write(body)

    def _read(self, route: dict) -> bytes:
        return (self.server.web.out / route["file"]).read_bytes()

    def _send_file(self, route: dict, send_body: bool) -> None:
        body = self._read(route)
        self._send(200, body, route["content_type"], send_body, route.get("headers"))

    def _stall(self, route: dict, send_body: bool) -> None:
        body = self._read(route)
        self._headers(200, route["content_type"], {"Content-Length": str(len(body))})
        if send_body:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.server.web.stopping.wait(self.server.web.slow_seconds)
        # The rest never comes: hang up mid-body.
        self.close_connection = True

    def _oversize(self, route: dict, send_body: bool) -> None:
        size = int(route["size"])
        if route.get("content_length"):
            headers = {"Content-Length": str(size)}
        else:
            # No length: the body is delimited by closing the connection.
            headers = {"Connection": "close"}
            self.close_connection = True
        self._headers(200, route["content_type"], headers)
        if not send_body:
            return
        for chunk in oversize_chunks(size):
            if self.server.web.stopping.is_set():
                self.close_connection = True
                return
            self.wfile.write(chunk)


class DemoWebServer:
    """Serves `out/site` per `out/routes.json` from a background thread.

    On start it writes `out/urls.*` with URLs pointing at the bound port.
    """

    def __init__(
        self, out: Path, host: str = "127.0.0.1", port: int = 0, slow_seconds: float = 10.0
    ) -> None:
        self.out = Path(out)
        self.host = host
        self.port = port
        self.slow_seconds = slow_seconds
        self.routes: dict[str, dict] = json.loads((self.out / "routes.json").read_text(encoding="utf-8"))
        self.stopping = threading.Event()
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("server not started")
        return self._base_url

    def start(self) -> DemoWebServer:
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self.stopping.clear()
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = int(self._httpd.server_address[1])
        self._base_url = f"http://{self.host}:{self.port}"
        write_url_files(self.out, self.base_url)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="demo-web", daemon=True
        )
        self._thread.start()
        logger.info("demo web serving %s at %s", self.out, self.base_url)
        return self

    def stop(self) -> None:
        """Stop promptly: sleeping handlers are woken and hang up."""
        if self._httpd is None:
            return
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd, self._thread = None, None

    def record_request(self, path: str) -> int:
        """Count a request; returns how many requests `path` has had so far."""
        with self._lock:
            self._counts[path] += 1
            return self._counts[path]

    def request_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __enter__(self) -> DemoWebServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
