"""tailor browse RUN: the browse views (pipelines/browse/views.py) as a read-only JSON API beside one static page.

    GET /                       the page (pipelines/browse/static/index.html, app.js, app.css)
    GET /api/meta               the run: rows, statuses, subsets (steps, reasons), audits, languages
    GET /api/grid?...           a page of samples (filters: pipelines.browse.views.GridQuery), keyset-paginated
    GET /api/count?...          how many samples match the grid's filters
    GET /api/sample?key=K       every annotation column, decisions, concept tags, neighbours
    GET /api/image?key=K        the stored image bytes
    GET /api/duplicates?kind=exact|near|semantic[&subset=NAME][&after=K]   (near: NAME's near_dedup first)
    GET /api/search?q=TEXT      nearest stored images to a text (the run's CLIP text tower)
    GET /api/neighbours?key=K   nearest stored images to a sample's image
    GET /api/concepts[?audit=NAME]   an audit's concepts, tail first

It binds 127.0.0.1 unless told otherwise (and then answers only requests addressed to 127.0.0.1 or localhost),
answers GET and HEAD only, and never reads a file named by a request: the page's files are a fixed table, views
take only bound values. A refused request gets its 4xx and a one-line JSON {"error": ...}; an unexpected failure
a 500 with the exception's one line (the traceback goes to the log, not to the client).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pipelines.browse.views import BrowseError, Browser, GridQuery, image_view, sample_view

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
              "/index.html": ("index.html", "text/html; charset=utf-8"),
              "/app.js": ("app.js", "text/javascript; charset=utf-8"),
              "/app.css": ("app.css", "text/css; charset=utf-8")}
# the page loads nothing from elsewhere, runs no inline script, and is never framed
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
CSP = ("default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def _routes(browser: Browser) -> dict:
    return {
        "/api/meta": lambda q: _no_params(q) or browser.meta(),
        "/api/grid": lambda q: browser.grid(GridQuery.parse(q)),
        "/api/count": lambda q: browser.count(GridQuery.parse(q)),
        "/api/sample": lambda q: sample_view(browser, q),
        "/api/duplicates": browser.duplicates,
        "/api/search": browser.search,
        "/api/neighbours": browser.neighbours_view,
        "/api/concepts": browser.concepts,
    }


def _no_params(query: dict) -> None:
    if query:
        names = ", ".join(repr(k[:40]) for k in sorted(query))
        raise BrowseError(f"unknown parameter(s) {names} (this view takes none)")


class Handler(BaseHTTPRequestHandler):
    server: BrowseServer
    server_version = "tailor-browse"
    sys_version = ""

    def log_message(self, format: str, *args) -> None:  # noqa: A002  (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(head=False)

    def _refuse(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, _error_body("read-only: only GET and HEAD are answered"),
                   "application/json", extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    def _answer(self, head: bool) -> None:
        try:
            self._check_host()
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True, strict_parsing=False, max_num_fields=64)
            status, body, content_type, cache = self._route(url.path, query)
        except BrowseError as err:
            status, body, content_type, cache = err.status, _error_body(str(err)), "application/json", False
        except ValueError as err:  # parse_qs: too many fields, bad encoding
            status, body, content_type, cache = 400, _error_body(f"malformed query: {err}"), "application/json", False
        except Exception as err:  # never a traceback to the client
            log.exception("browse: %s failed", self.path)
            first = str(err).splitlines()[0] if str(err) else ""
            status, body, content_type, cache = 500, _error_body(f"internal error: {type(err).__name__}: {first}"), \
                "application/json", False
        self._send(status, body, content_type, head=head, cache=cache)

    def _check_host(self) -> None:
        """On a loopback address, answer only requests addressed to one (a web page elsewhere that points its
        own host name at 127.0.0.1, DNS rebinding, cannot read the run)."""
        if not self.server.loopback:
            return
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if host not in LOOPBACK_NAMES:
            raise _Forbidden(f"Host {host[:80]!r} is not this server's (it answers 127.0.0.1 and localhost)")

    def _route(self, path: str, query: dict) -> tuple[int, bytes, str, bool]:
        if path in PAGE_FILES:
            if query:
                raise BrowseError("the page takes no query parameters (filters live after '#')")
            name, content_type = PAGE_FILES[path]
            return 200, (STATIC / name).read_bytes(), content_type, False
        if path == "/api/image":
            data, content_type = image_view(self.server.browser, query)
            return 200, data, content_type, True
        view = self.server.routes.get(path)
        if view is None:
            raise _NotFoundPath(f"no such page or API: {path[:100]!r} (API: {', '.join(sorted(self.server.routes))}, "
                                "/api/image)")
        return 200, json.dumps(view(query), ensure_ascii=False).encode(), "application/json", False

    def _send(self, status: int, body: bytes, content_type: str, head: bool = False, cache: bool = False,
              extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _NotFoundPath(BrowseError):
    status = 404


class _Forbidden(BrowseError):
    status = 403


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}, ensure_ascii=False).encode()


class BrowseServer(ThreadingHTTPServer):
    """The browse page and API of one run on host:port (port 0: a free one). A context manager that serves
    from a background thread; `serve_forever()` serves in the caller's."""

    daemon_threads = True

    def __init__(self, run: str, host: str = "127.0.0.1", port: int = 0, threads: int | None = None):
        self.browser = Browser(run, threads=threads)
        self.routes = _routes(self.browser)
        super().__init__((host, port), Handler)
        try:
            self.loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            self.loopback = host == "localhost"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def __enter__(self) -> BrowseServer:
        self._thread = threading.Thread(target=self.serve_forever, name="tailor-browse", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
