"""The multi-host loopback web itself (host_web.py): limits, opt-out files, outages, keep-alive, skew."""

from __future__ import annotations

import collections
import http.client
import threading
import time
import urllib.error
import urllib.request

import pytest
from host_web import CC3M_TOP_SHARES, DISALLOW_IMG, TDMREP_RESERVED, HostSpec, HostWeb, host_shares, skewed_hosts

IMAGES = [b"\xff\xd8\xff\xe0first\xff\xd9", b"\xff\xd8\xff\xe0second\xff\xd9"]


def get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_images_on_every_host_and_urls():
    specs = [HostSpec("127.0.0.2"), HostSpec("127.0.0.3")]
    with HostWeb(specs, IMAGES) as web:
        urls = web.urls_for(["127.0.0.2", "127.0.0.3", "127.0.0.3"])
        assert urls == [f"http://127.0.0.2:{web.port}/img/0.jpg", f"http://127.0.0.3:{web.port}/img/1.jpg",
                        f"http://127.0.0.3:{web.port}/img/2.jpg"]
        assert [get(u)[:2] for u in urls] == [(200, IMAGES[0]), (200, IMAGES[1]), (200, IMAGES[0])]
        assert get(urls[1] + "?copy=3")[:2] == (200, IMAGES[1])  # query ignored
        status, _, headers = get(urls[0])
        assert headers["Content-Type"] == "image/jpeg" and "tdm-reservation" not in headers
        assert get(f"http://127.0.0.2:{web.port}/nothing")[0] == 404
        assert web.requests("127.0.0.2") == 3 and web.requests("127.0.0.3") == 3
        assert [r.path for r in web.log("127.0.0.3")] == ["/img/1.jpg", "/img/2.jpg", "/img/1.jpg?copy=3"]
        assert web.statuses("127.0.0.2") == {200: 2, 404: 1} and web.refused("127.0.0.2") == 0


def test_concurrency_refused_with_429_and_retry_after():
    specs = [HostSpec("127.0.0.4", concurrency=1, latency=1.5), HostSpec("127.0.0.5", concurrency=1, latency=1.5,
                                                                          retry_after=None, throttle_status=503)]
    with HostWeb(specs, IMAGES) as web:
        for address, status, retry_after in (("127.0.0.4", 429, "1"), ("127.0.0.5", 503, None)):
            slow = threading.Thread(target=get, args=(web.url(address, 0),))
            slow.start()
            deadline = time.monotonic() + 30
            while web.inflight(address) == 0 and time.monotonic() < deadline:  # the first is being served
                time.sleep(0.01)
            code, _, headers = get(web.url(address, 1))
            slow.join()
            assert (code, headers.get("Retry-After")) == (status, retry_after)
            assert get(f"http://{address}:{web.port}/robots.txt")[0] == 404  # free again (no latency there)
            assert web.refused(address) == 1 and web.requests(address) == 3
            assert web.max_inflight(address) == 1


def test_rate_window_counts_admitted_requests():
    """A host with rate 3 admits a request while fewer than 3 were admitted in the second before it, by its own
    clock (however slowly this machine sends them), and refuses the rest."""
    with HostWeb([HostSpec("127.0.0.6", rate=3)], IMAGES) as web:
        codes = [get(web.url("127.0.0.6", i))[0] for i in range(6)]
        assert codes[:3] == [200, 200, 200]
        log = web.log("127.0.0.6")
        assert [r.status for r in log] == codes and log == sorted(log, key=lambda r: r.time)
        for i, r in enumerate(log):
            admitted = [a for a in log[:i] if a.status == 200 and a.time > r.time - 1.0]
            assert r.status == (200 if len(admitted) < 3 else 429)
        time.sleep(1.05)  # every admission so far left the window
        assert get(web.url("127.0.0.6", 0))[0] == 200
        assert web.refused("127.0.0.6") == codes.count(429)


def test_robots_tdmrep_and_forced_robots_status():
    specs = [HostSpec("127.0.0.7", robots=DISALLOW_IMG, tdm_header=True, tdmrep=TDMREP_RESERVED),
             HostSpec("127.0.0.8", robots=DISALLOW_IMG, robots_status=503), HostSpec("127.0.0.9")]
    with HostWeb(specs, IMAGES) as web:
        base = {a: f"http://{a}:{web.port}" for a in web.addresses}
        assert get(base["127.0.0.7"] + "/robots.txt")[:2] == (200, DISALLOW_IMG.encode())
        code, body, headers = get(base["127.0.0.7"] + "/.well-known/tdmrep.json")
        assert (code, body, headers["Content-Type"]) == (200, TDMREP_RESERVED.encode(), "application/json")
        assert get(web.url("127.0.0.7", 0))[2]["tdm-reservation"] == "1"
        assert get(base["127.0.0.8"] + "/robots.txt")[0] == 503
        assert web.refused("127.0.0.8") == 0  # a forced status is not a throttle
        assert get(base["127.0.0.9"] + "/robots.txt")[0] == 404
        assert get(base["127.0.0.9"] + "/.well-known/tdmrep.json")[0] == 404


def test_limits_count_robots_requests_too():
    with HostWeb([HostSpec("127.0.0.10", rate=2, robots=DISALLOW_IMG)], IMAGES) as web:
        assert get(f"http://127.0.0.10:{web.port}/robots.txt")[0] == 200
        assert [get(web.url("127.0.0.10", i))[0] for i in range(2)] == [200, 429]


def test_stop_refuses_connections_and_start_serves_again():
    with HostWeb([HostSpec("127.0.0.11"), HostSpec("127.0.0.12")], IMAGES) as web:
        conn = http.client.HTTPConnection("127.0.0.11", web.port, timeout=5)
        conn.request("GET", "/img/0.jpg")
        assert conn.getresponse().read() == IMAGES[0]
        web.stop("127.0.0.11")
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(web.url("127.0.0.11", 0), timeout=5)
        with pytest.raises((http.client.HTTPException, OSError)):  # the kept-alive connection was closed too
            conn.request("GET", "/img/1.jpg")
            conn.getresponse().read()
        conn.close()
        assert get(web.url("127.0.0.12", 0))[0] == 200  # the other host never stopped
        web.start("127.0.0.11")
        assert get(web.url("127.0.0.11", 1))[:2] == (200, IMAGES[1])
        assert web.requests("127.0.0.11") == 2 and web.connections("127.0.0.11") == 2


def test_keep_alive_two_requests_one_connection():
    with HostWeb([HostSpec("127.0.0.13")], IMAGES) as web:
        conn = http.client.HTTPConnection("127.0.0.13", web.port, timeout=5)
        for i in range(2):
            conn.request("GET", f"/img/{i}.jpg")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == IMAGES[i]
        conn.close()
        assert web.requests("127.0.0.13") == 2 and web.connections("127.0.0.13") == 1
        assert len({r.connection for r in web.log("127.0.0.13")}) == 1
        web.reset()
        assert (web.requests("127.0.0.13"), web.connections("127.0.0.13"), web.log("127.0.0.13")) == (0, 0, [])


def test_skewed_hosts_follow_shares():
    shares = host_shares(CC3M_TOP_SHARES, 60)
    assert len(shares) == 60 and abs(sum(shares) - 1) < 1e-9
    assert shares[:5] == list(CC3M_TOP_SHARES) and shares[5] <= CC3M_TOP_SHARES[-1]
    assert all(a >= b for a, b in zip(shares[5:], shares[6:], strict=False))  # a decreasing tail
    rows = skewed_hosts(5000, CC3M_TOP_SHARES, 60, seed=3)
    counts = collections.Counter(rows)
    assert len(rows) == 5000 and set(counts) == set(range(60))
    assert [counts[h] for h in range(5)] == [690, 625, 425, 150, 130]
    assert rows == skewed_hosts(5000, CC3M_TOP_SHARES, 60, seed=3) != skewed_hosts(5000, CC3M_TOP_SHARES, 60, seed=4)
    assert rows[:50] != sorted(rows[:50])  # shuffled
    few = host_shares(CC3M_TOP_SHARES, 12)  # too few hosts for a tail below 2.6%: spread evenly
    assert abs(sum(few) - 1) < 1e-9 and len(set(round(s, 9) for s in few[5:])) == 1
    with pytest.raises(ValueError):
        host_shares([0.7, 0.6], 10)
