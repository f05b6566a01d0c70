"""Fetching as a crawler hosts tolerate, against a loopback web of many hosts that defend themselves
(tests/host_web.py): per-host budgets, 429/503 as waits, robots.txt (RFC 9309), TDMRep, kept-alive connections.

These drive the download operator in this process (its own host budget); test_crawl_runs.py drives whole runs.
"""

from __future__ import annotations

import io

import PIL.Image
import pyarrow as pa
import pytest
from host_web import DISALLOW_IMG, HostSpec, HostWeb

from operators import status as st
from operators.download import Downloader, DownloadOptions, retry_after_seconds
from operators.optouts import HostPolicy

LOOPBACK = ["127.0.0.0/8"]


def _images(n: int = 4) -> list[bytes]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        PIL.Image.new("RGB", (64, 48), (40 * i, 90, 200 - 30 * i)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def _download(urls: list[str], **options) -> list[dict]:
    settings = {"allow_networks": LOOPBACK, "timeout": 5.0, "threads": 16} | options
    return Downloader(DownloadOptions(**settings))(pa.table({"url": pa.array(urls, pa.string())})).to_pylist()


def _image_requests(web: HostWeb, address: str) -> list:
    return [r for r in web.log(address) if r.path.startswith("/img/")]


def test_a_throttling_host_gets_every_row_through_and_never_holds_up_the_others():
    """Host .2 admits 2 requests at a time and 8 a second, 429 + Retry-After: 1 beyond; host .3 is unlimited. Every
    row of both ends ok, .3's rows are all done while .2 is still being worked through, and .3 (which does not
    defend itself) never sees more than download.host_concurrency requests at once."""
    specs = [HostSpec("127.0.0.2", concurrency=2, rate=8), HostSpec("127.0.0.3", latency=0.02)]
    with HostWeb(specs, _images()) as web:
        urls = web.urls_for(["127.0.0.2"] * 40 + ["127.0.0.3"] * 40)
        rows = _download(urls, host_concurrency=3, max_wait=60)
        assert [r["status"] for r in rows] == [st.OK] * 80
        assert web.max_inflight("127.0.0.3") <= 3
        slow = sorted(r.time for r in _image_requests(web, "127.0.0.2") if r.status == 200)
        fast = sorted(r.time for r in _image_requests(web, "127.0.0.3"))
        assert len(fast) == 40 and fast[-1] < slow[len(slow) // 2]  # no head-of-line blocking behind .2
        # the budget learnt the host's limit: few of its requests were refused
        assert web.refused("127.0.0.2") <= 8, web.statuses("127.0.0.2")


def test_no_request_reaches_a_host_before_its_retry_after():
    spec = HostSpec("127.0.0.4", rate=3, retry_after="2")
    with HostWeb([spec], _images()) as web:
        rows = _download(web.urls_for(["127.0.0.4"] * 12), host_concurrency=1, max_wait=60)
        assert [r["status"] for r in rows] == [st.OK] * 12
        log = web.log("127.0.0.4")
        refusals = [r.time for r in log if r.status == 429]
        assert refusals, "the host never throttled: the test checks nothing"
        for refused in refusals:
            early = [r for r in log if refused < r.time < refused + 2.0 - 0.05]
            assert not early, f"requests within Retry-After of a 429: {early}"


@pytest.mark.parametrize("throttle", [429, 503])
def test_a_host_that_keeps_throttling_ends_rate_limited_after_max_wait(throttle):
    """A host that refuses everything (concurrency 0): each row waits its max_wait from the first 429/503, then is
    rate_limited with the host's last answer, marked transient (a rerun tries it again). 503 without
    Retry-After waits throttle_wait, doubling."""
    retry_after = "1" if throttle == 429 else None
    with HostWeb([HostSpec("127.0.0.5", concurrency=0, throttle_status=throttle, retry_after=retry_after)],
                 _images()) as web:
        rows = _download(web.urls_for(["127.0.0.5"] * 5), max_wait=2.5, throttle_wait=0.5,
                         opt_outs=["x_robots_tag"])
        assert {r["status"] for r in rows} == {st.RATE_LIMITED}
        assert all(f"HTTP {throttle}" in r["error"] and "download.max_wait 2.5s" in r["error"] for r in rows)
        assert all(r["transient"] for r in rows)
        assert web.requests("127.0.0.5") <= 5 * 6  # waits, not a retry storm


def test_retry_after_as_seconds_or_an_http_date():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2026 07:28:30 GMT", "Wed, 21 Oct 2026 07:28:00 GMT") == 30.0
    assert retry_after_seconds("Wed, 21 Oct 2026 07:27:00 GMT", "Wed, 21 Oct 2026 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


ROBOTS = """\
User-agent: *
Disallow: /

User-agent: tailor
Allow: /img/
Disallow: /img/1
Allow: /img/10.jpg
Disallow: /img/*3.jpg$
"""


def test_robots_txt_rules_as_rfc_9309_says_and_disallowed_images_are_never_requested():
    """Longest match wins, Allow wins a tie, `*` and `$`, the group of our token (the `*` group for others)."""
    with HostWeb([HostSpec("127.0.0.6", robots=ROBOTS)], _images()) as web:
        paths = ["/img/1.jpg", "/img/10.jpg", "/img/13.jpg", "/img/2.jpg", "/img/23.jpg", "/img/23.jpg?x=1"]
        base = web.url("127.0.0.6", 0).rsplit("/img/", 1)[0]
        rows = _download([base + p for p in paths])
        expected = [st.OPTED_OUT, st.OK, st.OPTED_OUT, st.OK, st.OPTED_OUT, st.OK]
        assert [r["status"] for r in rows] == expected
        assert all("robots.txt disallows" in r["error"] and "'tailor'" in r["error"]
                   for r in rows if r["status"] == st.OPTED_OUT)
        requested = {r.path for r in web.log("127.0.0.6")}
        assert requested == {"/robots.txt", "/.well-known/tdmrep.json", "/img/10.jpg", "/img/2.jpg", "/img/23.jpg?x=1"}
        assert sum(r.path == "/robots.txt" for r in web.log("127.0.0.6")) == 1

        web.reset()
        others = _download([base + p for p in paths], user_agent_token="othercrawler")
        assert {r["status"] for r in others} == {st.OPTED_OUT}
        assert not _image_requests(web, "127.0.0.6")

        web.reset()  # dropping the signal is the user's decision: then the images are fetched
        ignored = _download([base + p for p in paths], opt_outs=["tdm_rep", "x_robots_tag"])
        assert {r["status"] for r in ignored} == {st.OK}
        assert not [r for r in web.log("127.0.0.6") if r.path == "/robots.txt"]


@pytest.mark.parametrize(("robots_status", "expected"), [(404, st.OK), (403, st.OK), (500, st.HTTP_ERROR),
                                                         (503, st.RATE_LIMITED)])
def test_a_robots_txt_that_is_missing_allows_and_one_that_fails_disallows_for_now(robots_status, expected):
    """RFC 9309 §2.3.1.3-4: 4xx is "unavailable" (crawl anything); 5xx is "unreachable" (complete disallow):
    the rows are http_error, transient (a rerun asks again), and no image is requested. A 503 asks for a wait, as
    for an image: past max_wait the rows are rate_limited."""
    spec = HostSpec("127.0.0.7", robots=DISALLOW_IMG, robots_status=robots_status,
                    retry_after=None if robots_status != 503 else "1")
    with HostWeb([spec], _images()) as web:
        rows = _download(web.urls_for(["127.0.0.7"] * 4), retries=0, max_wait=0)
        assert {r["status"] for r in rows} == {expected}
        if expected != st.OK:
            assert not _image_requests(web, "127.0.0.7")
            assert all(r["transient"] for r in rows)
            assert all("robots.txt" in r["error"] for r in rows)


def test_an_unreachable_host_fails_as_its_image_would():
    with HostWeb([HostSpec("127.0.0.8")], _images()) as web:
        urls = web.urls_for(["127.0.0.8"] * 3)
        web.stop("127.0.0.8")
        rows = _download(urls, retries=0)
    assert {r["status"] for r in rows} == {st.CONNECTION_ERROR}
    assert all(r["transient"] for r in rows)


def test_tdm_reservations_by_header_and_by_well_known_file():
    tdmrep = '[{"location": "/img/1*", "tdm-reservation": 1, "tdm-policy": "https://example.org/p"}, ' \
             '{"location": "/img/", "tdm-reservation": 0}]'
    specs = [HostSpec("127.0.0.9", tdm_header=True), HostSpec("127.0.0.10", tdmrep=tdmrep)]
    with HostWeb(specs, _images()) as web:
        header_rows = _download(web.urls_for(["127.0.0.9"] * 3))
        assert {r["status"] for r in header_rows} == {st.OPTED_OUT}
        assert all("tdm-reservation: 1 header" in r["error"] for r in header_rows)
        base = web.url("127.0.0.10", 0).rsplit("/img/", 1)[0]
        rows = _download([f"{base}/img/{i}.jpg" for i in (1, 2, 12, 3)])
        assert [r["status"] for r in rows] == [st.OPTED_OUT, st.OK, st.OPTED_OUT, st.OK]
        assert "tdmrep.json reserves TDM rights on '/img/1*' (policy https://example.org/p)" in rows[0]["error"]
        assert {r.path for r in _image_requests(web, "127.0.0.10")} == {"/img/2.jpg", "/img/3.jpg"}


def test_tdmrep_rules_first_match_decides():
    policy = HostPolicy(tdmrep_status=200, tdmrep=b'[{"location": "/a/b$", "tdm-reservation": 0}, '
                                                  b'{"location": "/a/", "tdm-reservation": 1}, "junk"]')
    assert policy.tdm_refusal("/a/b") is None
    assert policy.tdm_refusal("/a/bc") is not None and policy.tdm_refusal("/z") is None
    assert HostPolicy(tdmrep_status=200, tdmrep=b"{not json").tdm_refusal("/a") is None


def test_connections_are_kept_alive_per_host():
    with HostWeb([HostSpec("127.0.0.11")], _images()) as web:
        rows = _download(web.urls_for(["127.0.0.11"] * 60), host_concurrency=2)
        assert {r["status"] for r in rows} == {st.OK}
        assert web.requests("127.0.0.11") == 62  # 60 images, robots.txt, tdmrep.json
        assert web.connections("127.0.0.11") <= 4, web.connections("127.0.0.11")


def test_a_slow_image_of_the_row_that_read_the_policy_holds_up_no_other_row():
    """The first row to reach a host reads its robots.txt and tdmrep.json, then waits on a slow image; the policy
    goes to the budget as soon as it is read, so the host's other rows are fetched meanwhile."""
    import http.server
    import threading

    release = threading.Event()
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.path)
            if self.path == "/hang.jpg":
                release.wait(timeout=30)
            body = _images(1)[0]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.12", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.12:{server.server_port}"

    others_first: list[bool] = []

    def open_when_the_others_are_in():
        for _ in range(400):  # the others arrive while /hang.jpg is held; then it is let go
            if sum(p.startswith("/img/") for p in seen) == 20:
                others_first.append(True)
                break
            threading.Event().wait(0.05)
        release.set()

    watcher = threading.Thread(target=open_when_the_others_are_in)
    watcher.start()
    try:
        rows = _download([base + "/hang.jpg"] + [f"{base}/img/{i}.jpg" for i in range(20)], timeout=30)
    finally:
        release.set()
        watcher.join()
        server.shutdown()
    assert {r["status"] for r in rows} == {st.OK}
    assert seen.index("/hang.jpg") < min(i for i, p in enumerate(seen) if p.startswith("/img/"))
    assert others_first, "the host's other rows waited for the row that read its policy"
