"""Build a demo web: served files, route table, pages, ground truth and manifest."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.demo.web.payloads import Job, final_path, image_format, page_path, run_job
from pipelines.demo.web.plan import (
    BOMB_SIDE,
    CONTENT_TYPES,
    EXPECTED_STATUS,
    HOSTILE_KINDS,
    IMAGE_HOSTILE,
    PIPELINE_THRESHOLDS,
    Row,
    demo_id,
    plan_rows,
)

logger = logging.getLogger(__name__)

PAGES_SCHEMA = pa.schema(
    [
        ("demo_id", pa.string()),
        ("path", pa.string()),
        ("raw_url", pa.string()),
        ("caption", pa.string()),
        ("source", pa.string()),
    ]
)

TRUTH_SCHEMA = pa.schema(
    [
        ("demo_id", pa.string()),
        ("concepts", pa.list_(pa.string())),
        ("caption_concepts", pa.list_(pa.string())),
        ("mismatch", pa.bool_()),
        ("boilerplate", pa.bool_()),
        ("caption_lang", pa.string()),
        ("dup_group", pa.string()),
        ("dup_kind", pa.string()),
        ("near_transform", pa.string()),
        ("hostile", pa.string()),
        ("expected_status", pa.string()),
        ("format", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("n_bytes", pa.int64()),
    ]
)

# Served bodies whose headers claim a JPEG whatever the bytes are.
_FAKE_JPEG = frozenset({"truncated", "random_bytes", "html"})


# -- materialising files ------------------------------------------------------


def _jobs(rows: list[Row], seed: int, site: Path) -> Iterator[Job]:
    for row in rows:
        if row.role == "exact":
            continue
        original = rows[row.original].image if row.original is not None else None
        yield Job(seed, row, original, site)


def _run_jobs(jobs: list[Job], workers: int) -> dict[int, dict[str, int]]:
    if workers <= 1 or len(jobs) < 2:
        return dict(map(run_job, jobs))
    chunksize = max(1, len(jobs) // (workers * 16))
    # Spawned, not forked: callers may hold threads (a server, Ray) that a fork
    # would copy mid-lock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return dict(pool.map(run_job, jobs, chunksize=chunksize))


def _copy_exact_duplicates(rows: list[Row], site: Path, sizes: dict[int, dict[str, int]]) -> None:
    for row in rows:
        if row.role != "exact" or row.original is None:
            continue
        source = str(page_path(rows[row.original]))
        target = str(page_path(row))
        shutil.copyfile(site / source.lstrip("/"), site / target.lstrip("/"))
        sizes[row.index] = {target: sizes[row.original][source]}


# -- tables -------------------------------------------------------------------


def _file_route(row: Row, url_path: str, kind: str = "file") -> dict[str, object]:
    fmt = image_format(row)
    content_type = "image/jpeg" if row.role in _FAKE_JPEG or fmt is None else CONTENT_TYPES[fmt]
    return {
        "kind": kind,
        "hostile": row.hostile,
        "demo_id": row.demo_id,
        "file": f"site{url_path}",
        "content_type": content_type,
    }


def _redirect(row: Row, location: str) -> dict[str, object]:
    return {"kind": "redirect", "hostile": row.hostile, "demo_id": row.demo_id, "location": location}


def _row_routes(row: Row) -> dict[str, dict[str, object]]:
    path = page_path(row)
    if path is None:
        return {}
    kind = row.role
    if kind == "not_found":
        return {path: {"kind": "not_found", "hostile": kind, "demo_id": row.demo_id}}
    if kind == "redirect_chain":
        hop = f"/hop/{row.demo_id}"
        # Relative references on purpose: clients must resolve them.
        return {
            path: _redirect(row, f"{hop}/1"),
            f"{hop}/1": _redirect(row, "2"),
            f"{hop}/2": _redirect(row, f"../..{final_path(row)}"),
            final_path(row): _file_route(row, final_path(row)),
        }
    if kind == "redirect_loop":
        other = f"/img/{row.demo_id}-b.jpg"
        return {path: _redirect(row, other), other: _redirect(row, path)}
    if kind == "redirect_private":
        return {path: _redirect(row, str(row.params["location"]))}
    if kind == "oversize":
        return {path: {"kind": "oversize", "hostile": kind, "demo_id": row.demo_id,
                       "content_type": "image/jpeg", **row.params}}  # fmt: skip
    behaviour = kind if kind in ("error_then_ok", "slow", "stall") else "file"
    route = _file_route(row, path, behaviour)
    if kind == "noai":
        route["headers"] = {"X-Robots-Tag": row.params["x_robots_tag"]}
    return {path: route}


def build_routes(rows: Iterable[Row]) -> dict[str, dict[str, object]]:
    routes: dict[str, dict[str, object]] = {}
    for row in rows:
        routes.update(_row_routes(row))
    return routes


def pages_table(rows: list[Row]) -> pa.Table:
    records = [
        {
            "demo_id": row.demo_id,
            "path": page_path(row),
            "raw_url": row.params.get("raw_url") if page_path(row) is None else None,
            "caption": row.caption.text,
            "source": row.source,
        }
        for row in rows
    ]
    return pa.Table.from_pylist(records, schema=PAGES_SCHEMA)


def _served_image(row: Row) -> tuple[list[str], str | None, int | None, int | None]:
    """(concepts, format, width, height) of what a patient client receives."""
    fmt = image_format(row)
    if row.role == "bomb":
        return [], fmt, BOMB_SIDE, BOMB_SIDE
    if row.role in ("truncated", "stall"):
        return [], fmt, None, None
    if row.hostile is not None and row.role not in IMAGE_HOSTILE:
        return [], None, None, None
    if row.near is not None:
        return list(row.image.concepts), fmt, row.near.width, row.near.height
    return list(row.image.concepts), fmt, row.image.width, row.image.height


def _served_bytes(row: Row, sizes: dict[int, dict[str, int]]) -> int | None:
    if row.role == "oversize":
        return int(row.params["size"])
    files = sizes.get(row.index, {})
    return next(iter(files.values()), None)


def _dup_fields(row: Row, originals: set[int]) -> tuple[str | None, str | None, str | None]:
    if row.original is not None:
        near = row.near.transform if row.near is not None else None
        return demo_id(row.original), row.role, near
    if row.index in originals:
        return row.demo_id, "original", None
    return None, None, None


def truth_table(rows: list[Row], sizes: dict[int, dict[str, int]]) -> pa.Table:
    originals = {row.original for row in rows if row.original is not None}
    records = []
    for row in rows:
        concepts, fmt, width, height = _served_image(row)
        dup_group, dup_kind, near_transform = _dup_fields(row, originals)
        records.append(
            {
                "demo_id": row.demo_id,
                "concepts": concepts,
                "caption_concepts": list(row.caption.concepts),
                "mismatch": row.mismatch,
                "boilerplate": row.boilerplate,
                "caption_lang": row.caption.lang,
                "dup_group": dup_group,
                "dup_kind": dup_kind,
                "near_transform": near_transform,
                "hostile": row.hostile,
                "expected_status": EXPECTED_STATUS.get(row.role, "ok"),
                "format": fmt,
                "width": width,
                "height": height,
                "n_bytes": _served_bytes(row, sizes),
            }
        )
    return pa.Table.from_pylist(records, schema=TRUTH_SCHEMA)


def manifest(rows: list[Row], n: int, seed: int, min_size: int, max_size: int) -> dict[str, object]:
    roles = Counter(row.role for row in rows)
    formats = Counter(image_format(row) for row in rows if row.hostile is None)
    return {
        "n": n,
        "seed": seed,
        "min_size": min_size,
        "max_size": max_size,
        "hostile_counts": {kind: roles[kind] for kind in HOSTILE_KINDS},
        "expected_status": EXPECTED_STATUS,
        "counts": {
            "normal": roles["normal"],
            "exact_duplicates": roles["exact"],
            "near_duplicates": roles["near"],
            "mismatch": sum(row.mismatch for row in rows),
            "boilerplate": sum(row.boilerplate for row in rows),
            "non_english": sum(row.caption.lang not in ("en", "und") for row in rows),
            "exif_rotated": sum(bool(row.image.orientation) for row in rows if row.role == "normal"),
            "formats": {str(fmt): formats[fmt] for fmt in sorted(formats, key=str)},
        },
        "pipeline_thresholds": PIPELINE_THRESHOLDS,
    }


# -- entry point --------------------------------------------------------------


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def build_demo_web(
    out: Path,
    n: int,
    seed: int,
    min_size: int = 64,
    max_size: int = 1600,
    workers: int | None = None,
) -> dict:
    """Build a demo web of n pages under `out`; same arguments, same bytes.

    Returns a summary: the manifest's counts plus timing and totals.
    """
    started = time.perf_counter()
    out = Path(out)
    site = out / "site"
    if site.exists():
        shutil.rmtree(site)  # stale files from another n would break determinism
    site.mkdir(parents=True)
    rows = plan_rows(n, seed, min_size, max_size)
    workers = workers or os.cpu_count() or 1
    sizes = _run_jobs(list(_jobs(rows, seed, site)), workers)
    _copy_exact_duplicates(rows, site, sizes)
    pq.write_table(pages_table(rows), out / "pages.parquet")
    pq.write_table(truth_table(rows, sizes), out / "truth.parquet")
    _write_json(out / "routes.json", build_routes(rows))
    info = manifest(rows, n, seed, min_size, max_size)
    _write_json(out / "manifest.json", info)
    elapsed = time.perf_counter() - started
    total = sum(size for files in sizes.values() for size in files.values())
    logger.info("built demo web n=%d seed=%d in %.1fs (%d bytes)", n, seed, elapsed, total)
    return {
        "out": str(out),
        "n": n,
        "seed": seed,
        "hostile_counts": info["hostile_counts"],
        "counts": info["counts"],
        "site_bytes": total,
        "workers": workers,
        "elapsed_s": round(elapsed, 3),
    }
