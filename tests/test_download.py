"""Download: the address guard, URL checks, opt-out headers, and every hostile page of the demo web."""

from __future__ import annotations

from email.message import Message

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators import status as st
from operators.download import AddressGuard, Downloader, DownloadOptions, is_disallowed

DEMO_OPTIONS = dict(timeout=2, retries=1, backoff=0.05, max_bytes=8_000_000, allow_networks=["127.0.0.0/8"])


@pytest.mark.parametrize(
    "address,refused",
    [
        ("10.0.0.1", True),
        ("169.254.169.254", True),
        ("192.168.1.1", True),
        ("100.64.0.1", True),  # carrier-grade NAT
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("::1", True),
        ("fe80::1", True),
        ("::ffff:10.0.0.1", True),  # IPv4-mapped private address
        ("8.8.8.8", False),
        ("2606:4700::1111", False),
    ],
)
def test_guard_refuses_non_global_addresses(address, refused):
    assert (AddressGuard([]).refusal(address) is not None) is refused


def test_guard_allow_list_is_exact():
    guard = AddressGuard(["127.0.0.0/8"])
    assert guard.refusal("127.0.0.1") is None
    assert guard.refusal("10.0.0.1") is not None
    assert guard.refusal("169.254.169.254") is not None


def test_opt_out_header_semantics_match_img2dataset():
    directives = {"noai", "noimageai", "noindex", "noimageindex"}

    def headers(*values):
        msg = Message()
        for v in values:
            msg["X-Robots-Tag"] = v
        return msg

    assert is_disallowed(headers("noai"), "tailor", directives)
    assert is_disallowed(headers("noindex, nofollow"), "tailor", directives)
    assert is_disallowed(headers("tailor: noimageai"), "tailor", directives)
    assert not is_disallowed(headers("otherbot: noai"), "tailor", directives)
    assert not is_disallowed(headers("nofollow"), "tailor", directives)
    assert not is_disallowed(headers(), "tailor", directives)


@pytest.mark.parametrize("url", ["", "not a url", "htp:/broken", "http://", "ftp://127.0.0.1/x.jpg",
                                 "http://[::1", "javascript:alert(1)", None, "http://ex ample.com/a.jpg",
                                 "http://exa<mple.com/a.jpg"])
def test_malformed_urls_get_invalid_url(url):
    result = Downloader(DownloadOptions())(pa.table({"url": pa.array([url], pa.string())}))
    assert result.column("status").to_pylist() == [st.INVALID_URL]
    assert result.column("error").to_pylist()[0]


def test_a_path_with_spaces_and_non_ascii_is_sent_percent_encoded_as_a_browser_sends_it():
    """Real alt-text tables hold URLs with raw spaces and UTF-8 in the path; http.client refuses a request line
    holding them (that was a retried connection_error). Escapes already there, and printable characters a
    request line can hold ('|'), are sent as they are; so is a redirect's UTF-8 Location."""
    import http.server
    import threading

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.path)
            if self.path == "/go":  # a Location in raw UTF-8, as servers write it
                self.send_response(302)
                self.send_header("Location", "/ni\u00f1o|1.jpg".encode().decode("latin-1"))
            else:
                self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        urls = [f"{base}/my photo.jpg", f"{base}/caf\u00e9/a%20b.jpg?q=a b", f"{base}/go"]
        options = DownloadOptions(allow_networks=["127.0.0.0/8"], retries=0)
        result = Downloader(options)(pa.table({"url": urls}))
    finally:
        server.shutdown()
    assert result.column("status").to_pylist() == [st.HTTP_ERROR] * 3  # the server answered each
    assert sorted(seen) == ["/.well-known/tdmrep.json", "/caf%C3%A9/a%20b.jpg?q=a%20b", "/go", "/my%20photo.jpg",
                            "/ni%C3%B1o|1.jpg", "/robots.txt"]  # the host's policy files, once


def test_private_redirect_refused_without_allow_list(demo_web):
    """Without the demo's allow-list even the demo web itself (loopback) is refused."""
    server, _ = demo_web
    fetched = Downloader(DownloadOptions())(pa.table({"url": [server.base_url + "/"]}))
    assert fetched.column("status").to_pylist() == [st.BLOCKED_ADDRESS]
    assert "loopback" in fetched.column("error").to_pylist()[0]


def test_every_demo_page_gets_its_expected_download_outcome(demo_web):
    """Downloading alone: hostile pages fail the way the ground truth says; images come back whole."""
    server, out = demo_web
    urls = pq.read_table(out / "urls.parquet")
    truth = {r["demo_id"]: r for r in pq.read_table(out / "truth.parquet").to_pylist()}
    result = Downloader(DownloadOptions(threads=64, **DEMO_OPTIONS))(urls).to_pylist()
    download_statuses = {s for s, stage in st.STAGE_OF_STATUS.items() if stage == "download"}
    for row in result:
        expected = truth[row["demo_id"]]["expected_status"]
        oversize = truth[row["demo_id"]]["hostile"] == "oversize"
        if expected in download_statuses or oversize:
            assert row["status"] == expected, (row["demo_id"], row["url"], row["error"])
            assert row["error"], row
            assert row["image"] is None
        else:
            assert row["status"] == st.OK, (row["demo_id"], row["url"], row["error"])
            assert row["error"] is None and len(row["image"]) == row["n_bytes"]
            if truth[row["demo_id"]]["n_bytes"]:
                assert row["n_bytes"] == truth[row["demo_id"]]["n_bytes"]


def test_a_slow_resolver_costs_each_row_at_most_its_timeout_and_each_host_one_lookup(tmp_path, monkeypatch):
    """2,000 rows over 40 dead hosts, every lookup taking 5 s, timeout 1 s: every row fails as a connection
    error saying the lookup timed out or failed, and each host is looked up once (retries + 1 at most)."""
    import collections

    from operators.decode import DecodeOptions
    from operators.fetch import Fetcher

    log = tmp_path / "lookups.txt"
    monkeypatch.setenv("SLOW_DNS_LOG", str(log))
    monkeypatch.setenv("SLOW_DNS_SECONDS", "5")
    urls = [f"http://host{i % 40}.invalid/image{i}.jpg" for i in range(2000)]
    options = DownloadOptions(threads=32, timeout=1, retries=1, backoff=0, resolver="tests.slow_dns:getaddrinfo")
    rows = Fetcher(options, DecodeOptions())(pa.table({"url": urls})).to_pylist()
    assert len(rows) == 2000 and {r["status"] for r in rows} == {st.CONNECTION_ERROR}
    assert all("DNS lookup of" in r["error"] and "timed out" in r["error"] or "cannot resolve" in r["error"]
               for r in rows), rows[0]["error"]
    assert any("timed out (no answer within" in r["error"] for r in rows)
    lookups = collections.Counter(line.split()[1] for line in log.read_text().splitlines())
    assert len(lookups) <= 40 and max(lookups.values()) <= options.retries + 1  # queued lookups may start later


def test_a_resolver_that_fails_at_once_answers_every_row(tmp_path, monkeypatch):
    """Lookups that fail before the caller waits on them (the usual dead host) must not hang the batch."""
    from operators.decode import DecodeOptions
    from operators.fetch import Fetcher

    monkeypatch.setenv("SLOW_DNS_LOG", str(tmp_path / "lookups.txt"))
    monkeypatch.setenv("SLOW_DNS_SECONDS", "0")
    urls = [f"http://host{i % 7}.invalid/{i}.jpg" for i in range(500)]
    options = DownloadOptions(threads=32, timeout=1, retries=0, resolver="tests.slow_dns:getaddrinfo")
    rows = Fetcher(options, DecodeOptions())(pa.table({"url": urls})).to_pylist()
    assert len(rows) == 500 and all(r["status"] == st.CONNECTION_ERROR and "cannot resolve" in r["error"]
                                    for r in rows)
    assert len((tmp_path / "lookups.txt").read_text().splitlines()) == 7  # one lookup per host


@pytest.mark.parametrize("failure,attempts", [("noname", 1), ("again", 3)])
def test_a_name_that_does_not_exist_is_not_retried(tmp_path, monkeypatch, failure, attempts):
    """Most hosts of a real web table no longer exist. Asking again gets the same answer, so such a row
    fails on its first attempt; a resolver that cannot answer for now (EAI_AGAIN) is asked again."""
    from operators.decode import DecodeOptions
    from operators.fetch import Fetcher

    log = tmp_path / "lookups.txt"
    monkeypatch.setenv("SLOW_DNS_LOG", str(log))
    monkeypatch.setenv("SLOW_DNS_SECONDS", "0")
    monkeypatch.setenv("SLOW_DNS_FAILURE", failure)
    urls = [f"http://host{i}.invalid/{i}.jpg" for i in range(5)]  # one row per host: every attempt asks
    options = DownloadOptions(retries=2, backoff=0.05, dns_negative_ttl=0, resolver="tests.slow_dns:getaddrinfo")
    rows = Fetcher(options, DecodeOptions())(pa.table({"url": urls})).to_pylist()
    assert [r["status"] for r in rows] == [st.CONNECTION_ERROR] * 5
    assert all(r["error"].startswith(f"cannot resolve 'host{i}.invalid'") for i, r in enumerate(rows))
    assert all(("after 3 attempts" in r["error"]) == (attempts == 3) for r in rows), rows[0]["error"]
    lookups = log.read_text().splitlines()
    # a retry may reuse a lookup that finished a moment before (still in flight for the cache): at most 3 each
    assert len(lookups) == 5 if attempts == 1 else 5 < len(lookups) <= 15


def test_bad_resolver_setting_is_one_line():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="download.resolver: cannot load 'nope:nothing'"):
        DownloadOptions(resolver="nope:nothing")
