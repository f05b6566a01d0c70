"""tailor browse over a generated 10M-row run: time to the first page and to filtered pages, through the HTTP API.

Data: a synthetic run folder laid out as annotate writes one (RUN/annotations: 1,000 shards of 10k rows, sorted by
key, one row group each; RUN/_done markers; RUN/config.yaml), a subset's decisions.parquet over all 10M keys
(sorted by key, as select writes it: ~2% near_duplicate, ~3% exact_duplicate, ~20% below a CLIP threshold, the
failed rows by status) and its stats.json, and RUN/images for the first `--image-shards` shards (row groups of
256; 8 kB incompressible blobs): the pages measured read images only from those, and the other shards' images
would never be opened (a thumbnail reads the one row group whose key range holds its key).

Measured with the server (`BrowseServer`, DuckDB at `--threads` threads) answering over HTTP on 127.0.0.1, cold
(first request after start) and warm (median of `--repeat`):
    start      Browser(): reading the Parquet footers (the key index)
    meta       /api/meta (statuses from the _done markers, languages of the first 200k rows)
    first      /api/grid?limit=100 (the first page)
    thumbs     the 100 thumbnails of the first page (/api/image, one request after another)
    filtered   /api/grid?status=ok&lang=de&clip_min=0.3&limit=100; a subset's near_dedup drops; a sparse filter
               (status=decode_error&lang=fr&clip_min=0.6: about 1 row in 12,000); a page 5M keys deep
    count      /api/count of the near_dedup filter (a full scan: the page asks for it after the first page)

    .venv/bin/python benchmarks/browse.py                      # 10M rows (about 2.5 GB on disk, ~2 min to generate)
    .venv/bin/python benchmarks/browse.py --rows 1000000       # smaller

--coco-copy: the static copy (`tailor browse RUN --out DIR`) of a run of real photos, the way a user makes one:
the 80 COCO photos of shared/data/coco-mini served on 127.0.0.1, one URL row per COCO caption (400 rows, five
per photo), `tailor annotate --config demo`, `tailor select` of a subset `dedup` (exact_dedup, near_dedup),
`tailor audit --concepts coco80`, then the copy: its size (thumbnails, data), thumbnail files, distinct images
(sha256 of the ok rows), and what the Duplicates page says of near duplicates.

    .venv/bin/python benchmarks/browse.py --coco-copy          # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from network_guard import install_network_guard  # noqa: E402

SHARD_ROWS = 10_000
LANGS = ["en"] * 16 + ["de", "fr", "es", "it"]
# one shard of annotations: status, language, score and hashes drawn from the row number (md5), so a rerun
# writes the same run
SHARD_SQL = """
COPY (
    SELECT key, 'http://img.example/' || key || '.jpg' AS url,
           'a photo of thing number ' || (i % 997) AS caption,
           CASE WHEN h % 100 < 92 THEN 'ok' WHEN h % 100 < 95 THEN 'http_error' WHEN h % 100 < 98 THEN 'timeout'
                ELSE 'decode_error' END AS status,
           $langs[(1 + (h // 100) % 20)::BIGINT] AS caption_lang,
           (((h // 10000) % 1000) / 1000.0 - 0.2)::FLOAT AS clip_score,
           256 AS width, 256 AS height,
           md5(CASE WHEN (h // 10000000) % 100 < 3 THEN (i // 2)::VARCHAR ELSE key END) AS sha256,
           (h // 1000000000)::UBIGINT AS phash
    FROM (SELECT i, printf('%05d%010d', 0, i) AS key, hash(i) AS h
          FROM range($start, $stop) AS t(i))
    ORDER BY key
) TO '{path}' (FORMAT parquet, COMPRESSION zstd)
"""
DECISIONS_SQL = """
COPY (
    SELECT key, reason = 'kept' AS kept, reason,
           CASE WHEN reason = 'kept' THEN NULL WHEN reason LIKE 'status_%' THEN 'status'
                WHEN reason = 'exact_duplicate' THEN 'exact_dedup' WHEN reason = 'near_duplicate' THEN 'near_dedup'
                ELSE 'clip_score' END AS step,
           CASE WHEN reason LIKE '%_duplicate' THEN printf('%05d%010d', 0, (i // 2) * 2) END AS detail
    FROM (SELECT key, i, CASE WHEN status <> 'ok' THEN 'status_' || status
                              WHEN g % 100 < 3 THEN 'exact_duplicate' WHEN g % 100 < 5 THEN 'near_duplicate'
                              WHEN clip_score < 0.0 THEN 'clip_score_below_threshold' ELSE 'kept' END AS reason
          FROM (SELECT key, status, clip_score, CAST(key AS BIGINT) AS i, hash(key || 'd') % 1000 AS g
                FROM read_parquet('{annotations}/*.parquet')))
    ORDER BY key
) TO '{path}' (FORMAT parquet, COMPRESSION zstd)
"""


def generate(run: Path, rows: int, image_shards: int) -> None:
    import duckdb

    shards = (rows + SHARD_ROWS - 1) // SHARD_ROWS
    for folder in ("annotations", "images", "_done", "subsets/bench"):
        (run / folder).mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"threads": 2})
    started = time.time()
    for s in range(shards):
        shard = f"00000_{s:05d}"
        path = run / "annotations" / f"{shard}.parquet"
        if path.exists():
            continue
        tmp = path.with_suffix(".tmp")
        con.execute(SHARD_SQL.format(path=tmp), {"start": s * SHARD_ROWS, "stop": min(rows, (s + 1) * SHARD_ROWS),
                                                 "langs": LANGS})
        os.replace(tmp, path)
        statuses = dict(con.execute(f"SELECT status, count(*) FROM read_parquet('{path}') GROUP BY ALL").fetchall())
        (run / "_done" / f"{shard}.json").write_text(json.dumps(
            {"shard": shard, "rows": sum(statuses.values()), "status_counts": statuses, "failed_at": {}}))
        if s < image_shards:
            keys = con.execute(f"SELECT key FROM read_parquet('{path}') WHERE status = 'ok' ORDER BY key").fetchall()
            rng = np.random.default_rng(s)
            blobs = [b"\xff\xd8\xff\xe0" + rng.bytes(8192) for _ in keys]
            table = pa.table({"key": [k for (k,) in keys], "image": pa.array(blobs, pa.binary()),
                              "width": pa.array([256] * len(keys), pa.int32()),
                              "height": pa.array([256] * len(keys), pa.int32())})
            pq.write_table(table, run / "images" / f"{shard}.parquet", row_group_size=256, compression="zstd")
        if s % 100 == 99:
            print(f"  {s + 1}/{shards} shards in {time.time() - started:.0f} s", flush=True)
    decisions = run / "subsets" / "bench" / "decisions.parquet"
    if not decisions.exists():
        con.execute(DECISIONS_SQL.format(annotations=run / "annotations", path=decisions))
        by = con.execute(f"SELECT step, reason, count(*) FROM read_parquet('{decisions}') WHERE NOT kept "
                         "GROUP BY ALL ORDER BY ALL").fetchall()
        steps = {}
        for step, reason, n in by:
            steps.setdefault(step, {})[reason] = n
        kept = con.execute(f"SELECT count(*) FROM read_parquet('{decisions}') WHERE kept").fetchone()[0]
        (run / "subsets" / "bench" / "stats.json").write_text(json.dumps(
            {"rows": rows, "kept": kept, "steps": [{"name": k, "by_reason": v} for k, v in steps.items()]}))
    (run / "config.yaml").write_text("input: {path: generated}\n")
    print(f"generated {rows} rows in {shards} shards in {time.time() - started:.0f} s", flush=True)


def fetch(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        body = response.read()
    return time.perf_counter() - started, body


def timed(base: str, path: str, repeat: int, **params) -> dict:
    url = base + path + ("?" + urlencode(params) if params else "")
    cold, body = fetch(url)
    warm = [fetch(url)[0] for _ in range(repeat)]
    return {"cold_s": round(cold, 4), "warm_s": round(statistics.median(warm), 4), "body": json.loads(body)}


COCO_RECIPE = """\
description: exact and near-duplicate photos removed
steps:
  - step: exact_dedup
  - step: near_dedup
    max_hamming: 4
"""


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def coco_copy(work: Path) -> dict:
    """Annotate the COCO photos (one row per caption), select, audit, write the static copy; its figures."""
    from photo_web import COCO, serve_folder

    tailor = str(Path(sys.executable).parent / "tailor")

    def run(*args: str) -> None:
        done = subprocess.run([tailor, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            raise SystemExit(f"tailor {args[0]} failed: {done.stderr[-2000:]}")

    meta = json.loads((COCO / "captions_train2017.json").read_text())
    names = {img["id"]: img["file_name"] for img in meta["images"]}
    pairs = sorted((names[a["image_id"]], a["caption"].strip()) for a in meta["annotations"])
    work.mkdir(parents=True, exist_ok=True)
    run_dir, out = work / "coco-run", work / "coco-copy"
    with serve_folder(COCO) as base:
        urls = work / "coco-urls.parquet"
        pq.write_table(pa.table({"url": [f"{base}/train2017/{name}" for name, _ in pairs],
                                 "caption": [caption for _, caption in pairs]}), urls)
        run("annotate", "--config", "demo", "--input", str(urls), "--output", str(run_dir),
            "--no-progress", "--set", "input.rows_per_shard=200")
    (work / "coco-recipe.yaml").write_text(COCO_RECIPE)
    run("select", str(run_dir), "--recipe", str(work / "coco-recipe.yaml"), "--name", "dedup", "--overwrite")
    run("audit", str(run_dir), "--concepts", "coco80", "--no-progress")
    from pipelines.browse.export import export
    from pipelines.browse.views import Browser

    started = time.perf_counter()
    summary = export(str(run_dir), out)
    seconds = time.perf_counter() - started
    rows = pq.read_table(run_dir / "annotations", columns=["status", "sha256"]).to_pylist()
    near = Browser(str(run_dir)).duplicates({"kind": ["near"]})
    return {"rows": len(rows), "ok_rows": sum(r["status"] == "ok" for r in rows),
            "distinct_images": len({r["sha256"] for r in rows if r["status"] == "ok"}),
            "copy_samples": summary["samples"], "copy_s": round(seconds, 2),
            "thumb_files": len(list((out / "thumbs").iterdir())), "thumbs_bytes": _folder_bytes(out / "thumbs"),
            "data_bytes": _folder_bytes(out / "data"), "copy_bytes": _folder_bytes(out),
            "near_note": near["note"], "near_groups": near.get("total_groups", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--image-shards", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "browse"))
    parser.add_argument("--coco-copy", action="store_true", help="measure the static copy of a run of the COCO photos")
    args = parser.parse_args()
    guard_log = install_network_guard(Path(args.work))
    if args.coco_copy:
        results = coco_copy(Path(args.work))
        refused = guard_log.read_text().strip()
        if refused:
            raise SystemExit(f"the network guard refused traffic off this machine:\n{refused}")
        print(json.dumps(results, indent=2))
        (Path(args.work) / "results-coco-copy.json").write_text(json.dumps(results, indent=2))
        return
    run = Path(args.work) / f"run-{args.rows}"
    generate(run, args.rows, args.image_shards)

    from pipelines.browse.server import BrowseServer

    started = time.perf_counter()
    server = BrowseServer(str(run), threads=args.threads)
    results: dict = {"rows": args.rows, "shards": len(server.browser.annotations.spans), "threads": args.threads,
                     "start_s": round(time.perf_counter() - started, 3)}
    with server:
        base = server.url
        results["meta"] = timed(base, "api/meta", args.repeat)
        first = timed(base, "api/grid", args.repeat, limit=100)
        results["first_page"] = first
        keys = [c["key"] for c in first["body"]["items"] if c["status"] == "ok"]
        began = time.perf_counter()
        sizes = [len(fetch(base + "api/image?" + urlencode({"key": k}))[1]) for k in keys]
        results["thumbs_cold"] = {"images": len(keys), "bytes": sum(sizes), "s": round(time.perf_counter() - began, 4)}
        began = time.perf_counter()
        for k in keys:
            fetch(base + "api/image?" + urlencode({"key": k}))
        results["thumbs_warm"] = {"images": len(keys), "s": round(time.perf_counter() - began, 4)}
        results["filtered_lang_clip"] = timed(base, "api/grid", args.repeat, status="ok", lang="de", clip_min=0.3,
                                              limit=100)
        results["filtered_near_dedup"] = timed(base, "api/grid", args.repeat, subset="bench", decision="dropped",
                                               step="near_dedup", limit=100)
        results["filtered_sparse"] = timed(base, "api/grid", args.repeat, status="decode_error", lang="fr",
                                           clip_min=0.6, limit=100)
        middle = f"{0:05d}{args.rows // 2:010d}"
        results["deep_page"] = timed(base, "api/grid", args.repeat, status="ok", after=middle, limit=100)
        results["count_near_dedup"] = timed(base, "api/count", 1, subset="bench", step="near_dedup")
    for r in results.values():
        if isinstance(r, dict) and "body" in r:
            body = r.pop("body")
            r["items"] = len(body.get("items", [])) if "items" in body else body.get("count")
    refused = guard_log.read_text().strip()
    if refused:
        raise SystemExit(f"the network guard refused traffic off this machine:\n{refused}")
    print(json.dumps(results, indent=2))
    out = Path(args.work) / f"results-{args.rows}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
