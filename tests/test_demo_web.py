"""Tests of the synthetic demo web: build determinism, composition and serving."""

from __future__ import annotations

import csv
import gzip
import http.client
import io
import json
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from pipelines.demo.web.build import build_demo_web
from pipelines.demo.web.plan import EXPECTED_STATUS, HOSTILE_KINDS, PIPELINE_THRESHOLDS
from pipelines.demo.web.serve import DemoWebServer
from pipelines.demo.web.world import CONCEPTS, SIGNATURES, find_concepts

N = 300
SEED = 7
MAX_SIZE = 320
SLOW = 1.5
BYTE_CAP = int(PIPELINE_THRESHOLDS["max_bytes"])  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("web")
    build_demo_web(out, N, SEED, max_size=MAX_SIZE, workers=2)
    return out


@pytest.fixture(scope="module")
def rows(web: Path) -> dict[str, dict]:
    pages = pq.read_table(web / "pages.parquet").to_pylist()
    truth = pq.read_table(web / "truth.parquet").to_pylist()
    return {page["demo_id"]: {**page, **fact} for page, fact in zip(pages, truth, strict=True)}


@pytest.fixture()
def server(web: Path) -> Iterator[DemoWebServer]:
    with DemoWebServer(web, slow_seconds=SLOW) as running:
        yield running


def _site_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "site").rglob("*")) if p.is_file()}


def _of_kind(rows: dict[str, dict], kind: str) -> list[dict]:
    return [row for row in rows.values() if row["hostile"] == kind]


def _get(
    server: DemoWebServer, path: str, timeout: float = 5.0
) -> tuple[int, http.client.HTTPMessage, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def _decode(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return ImageOps.exif_transpose(image)


# -- build --------------------------------------------------------------------


def test_same_seed_is_byte_identical_whatever_the_worker_count(web: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_demo_web(again, N, SEED, max_size=MAX_SIZE, workers=1)
    for name in ("pages.parquet", "truth.parquet", "routes.json", "manifest.json"):
        assert (again / name).read_bytes() == (web / name).read_bytes(), name
    assert _site_files(again) == _site_files(web)


def test_small_builds_work(tmp_path: Path) -> None:
    for n in (1, 30):
        summary = build_demo_web(tmp_path / str(n), n, SEED, max_size=128, workers=1)
        assert pq.read_table(tmp_path / str(n) / "truth.parquet").num_rows == n
        assert sum(summary["hostile_counts"].values()) == 0


def test_other_seed_differs(web: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    build_demo_web(other, N, SEED + 1, max_size=MAX_SIZE, workers=2)
    assert not pq.read_table(other / "truth.parquet").equals(pq.read_table(web / "truth.parquet"))
    assert _site_files(other) != _site_files(web)


def test_concept_world() -> None:
    assert len(CONCEPTS) >= 120 and len(set(CONCEPTS)) == len(CONCEPTS)
    assert sum(" " in concept for concept in CONCEPTS) >= 12
    assert len(set(SIGNATURES.values())) == len(CONCEPTS)


def test_every_hostile_kind_present_with_its_status(rows: dict[str, dict], web: Path) -> None:
    manifest = json.loads((web / "manifest.json").read_text())
    for kind in HOSTILE_KINDS:
        found = _of_kind(rows, kind)
        assert len(found) >= 2, kind
        assert manifest["hostile_counts"][kind] == len(found)
        assert {row["expected_status"] for row in found} == {EXPECTED_STATUS[kind]}
        assert all(row["caption_concepts"] for row in found), kind
    plain = [row for row in rows.values() if row["hostile"] is None]
    assert {row["expected_status"] for row in plain} == {"ok"}
    assert manifest["pipeline_thresholds"]["max_bytes"] == 8_000_000


def test_composition_fractions(rows: dict[str, dict], web: Path) -> None:
    schema = pq.read_schema(web / "pages.parquet")
    assert schema.names == ["demo_id", "path", "raw_url", "caption", "source"]
    assert {str(t) for t in schema.types} == {"string"}
    table = list(rows.values())
    assert [row["demo_id"] for row in table] == [f"d{i:06d}" for i in range(N)]
    count = {kind: sum(row["dup_kind"] == kind for row in table) for kind in ("exact", "near")}
    assert count == {"exact": round(0.05 * N), "near": round(0.05 * N)}
    assert sum(row["mismatch"] for row in table) == round(0.10 * N)
    assert sum(row["boilerplate"] for row in table) == round(0.03 * N)
    assert sum(row["caption_lang"] not in ("en", "und") for row in table) == round(0.05 * N)
    plain = [row for row in table if row["hostile"] is None and row["dup_kind"] not in ("exact", "near")]
    share = {fmt: sum(row["format"] == fmt for row in plain) / len(plain) for fmt in ("jpeg", "png", "webp")}
    assert 0.45 < share["jpeg"] < 0.75 and 0.1 < share["png"] < 0.3 and 0.1 < share["webp"] < 0.3
    two = sum(len(row["concepts"]) == 2 for row in plain) / len(plain)
    assert 0.15 < two < 0.35
    firsts = [row["concepts"][0] for row in plain]
    assert max(set(firsts), key=firsts.count) in CONCEPTS[:3]
    assert all(64 <= row["width"] <= MAX_SIZE and 64 <= row["height"] <= MAX_SIZE for row in plain)
    assert all(max(row["width"], row["height"]) <= 3 * min(row["width"], row["height"]) for row in plain)


def test_captions_agree_with_truth(rows: dict[str, dict]) -> None:
    for row in rows.values():
        # Noise never misspells a concept nor adds one: a word scan recovers the truth.
        assert find_concepts(row["caption"]) == row["caption_concepts"], row
        if row["boilerplate"]:
            assert row["caption_concepts"] == [] and not row["mismatch"]
        elif row["mismatch"]:
            assert not set(row["caption_concepts"]) & set(row["concepts"])
        elif row["concepts"]:
            assert set(row["caption_concepts"]) <= set(row["concepts"])


def test_duplicates_refer_to_earlier_originals(rows: dict[str, dict], web: Path) -> None:
    for row in rows.values():
        if row["dup_kind"] not in ("exact", "near"):
            continue
        original = rows[row["dup_group"]]
        assert original["dup_kind"] == "original" and original["dup_group"] == original["demo_id"]
        assert original["demo_id"] < row["demo_id"] and original["hostile"] is None
        assert row["concepts"] == original["concepts"]
        same = (web / "site" / row["path"][1:]).read_bytes() == (web / "site" / original["path"][1:]).read_bytes()
        assert same == (row["dup_kind"] == "exact")
        assert (row["near_transform"] is not None) == (row["dup_kind"] == "near")


# -- serving ------------------------------------------------------------------


def test_ok_rows_are_served_as_the_truth_says(rows: dict[str, dict], server: DemoWebServer, web: Path) -> None:
    content_types = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
    rotated = 0
    for row in rows.values():
        if row["hostile"] is not None:
            continue
        status, headers, body = _get(server, row["path"])
        assert status == 200 and headers["Content-Type"] == content_types[row["format"]]
        assert body == (web / "site" / row["path"][1:]).read_bytes() and len(body) == row["n_bytes"]
        assert len(body) < BYTE_CAP
        raw = Image.open(io.BytesIO(body))
        rotated += raw.getexif().get(0x0112, 1) in (6, 8)
        image = _decode(body)
        assert image.format is None or image.format.lower() == row["format"]
        assert image.size == (row["width"], row["height"]), row["demo_id"]
    assert rotated >= 1


def test_not_found_and_error_then_ok(rows: dict[str, dict], server: DemoWebServer) -> None:
    for row in _of_kind(rows, "not_found"):
        assert _get(server, row["path"])[0] == 404
    for row in _of_kind(rows, "error_then_ok"):
        assert _get(server, row["path"])[0] == 500
        status, _, body = _get(server, row["path"])
        assert status == 200 and _decode(body).size == (row["width"], row["height"])
        assert server.request_counts()[row["path"]] == 2


def test_slow_and_stall_time_out_and_stop_is_prompt(rows: dict[str, dict], server: DemoWebServer) -> None:
    for row in _of_kind(rows, "slow"):
        with pytest.raises(TimeoutError):
            _get(server, row["path"], timeout=0.5)
    for row in _of_kind(rows, "stall"):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=0.5)
        connection.request("GET", row["path"])
        response = connection.getresponse()
        declared = int(response.headers["Content-Length"])
        assert declared == row["n_bytes"]
        received = b""
        with pytest.raises(TimeoutError):
            while len(received) < declared:
                received += response.read1(65536)
        assert 0 < len(received) < declared
        connection.close()
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1.0


def _follow(server: DemoWebServer, path: str, limit: int = 8) -> tuple[list[str], int, http.client.HTTPMessage, bytes]:
    visited = [path]
    for _ in range(limit):
        status, headers, body = _get(server, visited[-1])
        if status != 302:
            return visited, status, headers, body
        target = urljoin(server.base_url + visited[-1], headers["Location"])
        if urlsplit(target).netloc != urlsplit(server.base_url).netloc:
            visited.append(target)
            return visited, status, headers, body
        visited.append(urlsplit(target).path)
    return visited, 302, headers, body


def test_redirects(rows: dict[str, dict], server: DemoWebServer) -> None:
    for row in _of_kind(rows, "redirect_chain"):
        visited, status, headers, body = _follow(server, row["path"])
        assert len(visited) == 4 and status == 200
        assert headers["Content-Type"].startswith("image/") and len(body) == row["n_bytes"]
        assert _decode(body).size == (row["width"], row["height"])
    for row in _of_kind(rows, "redirect_loop"):
        visited, status, _, _ = _follow(server, row["path"], limit=6)
        assert status == 302 and len(set(visited)) == 2
    targets = set()
    for row in _of_kind(rows, "redirect_private"):
        visited, status, _, _ = _follow(server, row["path"])
        host = urlsplit(visited[-1]).hostname
        assert status == 302 and host in ("10.0.0.1", "169.254.169.254")
        targets.add(host)
    assert len(targets) == 2


def test_broken_bodies(rows: dict[str, dict], server: DemoWebServer) -> None:
    for row in _of_kind(rows, "truncated"):
        status, headers, body = _get(server, row["path"])
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
        with pytest.raises(OSError):
            _decode(body)
    for row in _of_kind(rows, "random_bytes") + _of_kind(rows, "html"):
        status, headers, body = _get(server, row["path"])
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        with pytest.raises(OSError):
            _decode(body)
    for row in _of_kind(rows, "html"):
        assert _get(server, row["path"])[2].startswith(b"<!DOCTYPE html>")


def test_image_geometry_hostiles(rows: dict[str, dict], server: DemoWebServer) -> None:
    for row in _of_kind(rows, "bomb"):
        status, headers, body = _get(server, row["path"])
        assert status == 200 and headers["Content-Type"] == "image/png" and len(body) < 500_000
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            size = Image.open(io.BytesIO(body)).size
        assert size == (12_000, 12_000) == (row["width"], row["height"])
    for row in _of_kind(rows, "tiny"):
        image = _decode(_get(server, row["path"])[2])
        assert max(image.size) <= 16 and image.size == (row["width"], row["height"])
    for row in _of_kind(rows, "extreme_aspect"):
        image = _decode(_get(server, row["path"])[2])
        assert min(image.size) >= 40 and max(image.size) > 8 * min(image.size)


def test_oversize_streams_past_the_cap(rows: dict[str, dict], server: DemoWebServer) -> None:
    with_length = []
    for row in _of_kind(rows, "oversize"):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("GET", row["path"])
        response = connection.getresponse()
        length = response.headers.get("Content-Length")
        with_length.append(length is not None)
        assert length is None or int(length) == row["n_bytes"] > BYTE_CAP
        received = 0
        while received <= BYTE_CAP:
            chunk = response.read1(1 << 20)
            assert chunk
            received += len(chunk)
        connection.close()
    assert set(with_length) == {True, False}


def test_noai_and_unreachable_urls(rows: dict[str, dict], server: DemoWebServer, web: Path) -> None:
    disallowed = set(PIPELINE_THRESHOLDS["disallowed_x_robots_tags"])  # type: ignore[call-overload]
    for row in _of_kind(rows, "noai"):
        status, headers, body = _get(server, row["path"])
        directives = {d.strip() for d in headers["X-Robots-Tag"].split(",")}
        assert status == 200 and directives & disallowed and _decode(body)
    urls = {row["demo_id"]: row["url"] for row in pq.read_table(web / "urls.parquet").to_pylist()}
    for row in _of_kind(rows, "malformed_url") + _of_kind(rows, "refused"):
        assert row["path"] is None and urls[row["demo_id"]] == row["raw_url"]
    for row in _of_kind(rows, "refused"):
        parts = urlsplit(row["raw_url"])
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((parts.hostname, parts.port), timeout=2).close()


def test_url_files_agree(server: DemoWebServer, web: Path, rows: dict[str, dict]) -> None:
    expected = pq.read_table(web / "urls.parquet").to_pylist()
    assert [row["demo_id"] for row in expected] == list(rows)
    for row in expected:
        page = rows[row["demo_id"]]
        assert row["url"] == (page["raw_url"] if page["path"] is None else server.base_url + page["path"])
        assert (row["caption"], row["source"]) == (page["caption"], page["source"])
    with open(web / "urls.csv", newline="", encoding="utf-8") as handle:
        assert list(csv.DictReader(handle)) == expected
    header, *lines = (web / "urls.tsv").read_text(encoding="utf-8").splitlines()  # plain TSV: no quoting
    assert [dict(zip(header.split("\t"), line.split("\t"), strict=True)) for line in lines] == expected
    jsonl = (web / "urls.jsonl").read_text(encoding="utf-8")
    assert [json.loads(line) for line in jsonl.splitlines()] == expected
    assert gzip.decompress((web / "urls.jsonl.gz").read_bytes()).decode("utf-8") == jsonl
