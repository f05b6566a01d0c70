"""select at scale: basic + CLIP score + exact dedup over 10M annotation rows; pHash near-dup over 1M.

    .venv/bin/python benchmarks/select_steps.py --rows 10000000 --near-rows 1000000

Synthetic annotation shards are generated with DuckDB (100k rows per shard, as a run writes them):
95% ok rows, 80% English captions, Zipf-ish sizes, 5% exact duplicate images, CLIP scores around
0.3. Peers, in the same process on the same files:
- select (basic + clip_score + exact_dedup) against the same three filters in pandas (read the
  columns, filter, sort, drop_duplicates), what a notebook would do;
- near_dedup (multi-index hashing + components in SQL) against faiss's exact binary range search
  (IndexBinaryFlat, all pairs within the radius) on a subsample where that is affordable, and
  checked to find the same pairs there.
Results go to benchmarks/.work/select_steps.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import duckdb
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from network_guard import install_network_guard  # noqa: E402

from pipelines.select import parse_recipe, select  # noqa: E402

WORK = ROOT / "benchmarks" / ".work"


def make_run(folder: Path, rows: int, shard_rows: int = 100_000, near: bool = False) -> str:
    """A run folder of synthetic annotation shards."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "annotations").mkdir(parents=True)
    con = duckdb.connect()
    for shard, start in enumerate(range(0, rows, shard_rows)):
        stop = min(rows, start + shard_rows)
        con.execute(f"""
            COPY (
                SELECT lpad(CAST(i AS VARCHAR), 15, '0') AS key,
                       CASE WHEN hash(i, 1) % 20 = 0 THEN 'http_error' ELSE 'ok' END AS status,
                       'caption number ' || CAST(i AS VARCHAR) AS caption,
                       CASE WHEN hash(i, 2) % 5 = 0 THEN 'de' ELSE 'en' END AS caption_lang,
                       0.5 + (hash(i, 3) % 500) / 1000.0 AS caption_lang_score,
                       CAST(1 + hash(i, 4) % 12 AS INTEGER) AS caption_words,
                       CAST(3 + hash(i, 5) % 80 AS INTEGER) AS caption_chars,
                       CAST(64 + hash(i, 6) % 1500 AS INTEGER) AS original_width,
                       CAST(64 + hash(i, 7) % 1500 AS INTEGER) AS original_height,
                       sha256(CAST(CASE WHEN hash(i, 8) % 20 = 0 THEN hash(i, 9) % {max(rows // 40, 1)}
                                        ELSE i + {rows} END AS VARCHAR)) AS sha256,
                       {"xor(hash(i // 3, 10), CAST(1 AS UBIGINT) << CAST(hash(i, 11) % 64 AS INTEGER)) "
                        "" if near else "CAST(hash(i, 10) AS UBIGINT)"} AS phash,
                       0.05 + (hash(i, 12) % 4000) / 10000.0 AS clip_score
                FROM range({start}, {stop}) AS t(i)
            ) TO '{folder}/annotations/{shard:05d}.parquet' (FORMAT parquet, COMPRESSION zstd)
        """)
    return str(folder)


def pandas_peer(run: str) -> tuple[float, int]:
    import pyarrow.dataset as pads

    began = time.perf_counter()
    columns = ["key", "status", "caption_lang", "caption_words", "caption_chars", "original_width",
               "original_height", "sha256", "clip_score"]
    df = pads.dataset(f"{run}/annotations", format="parquet").to_table(columns=columns).to_pandas()
    short = df[["original_width", "original_height"]].min(axis=1)
    long = df[["original_width", "original_height"]].max(axis=1)
    df = df[(df.status == "ok") & (df.caption_lang == "en") & (df.caption_words >= 3) & (df.caption_chars >= 6)
            & (short >= 200) & (long <= 3 * short)]
    df = df[df.clip_score >= 0.28]
    df = df.sort_values(["clip_score", "key"], ascending=[False, True]).drop_duplicates("sha256")
    kept = len(df)
    return time.perf_counter() - began, kept


def bench_select(rows: int, rounds: int) -> dict:
    run = make_run(WORK / "select-run", rows)
    recipe = parse_recipe({"steps": [{"step": "basic"}, {"step": "clip_score", "min_score": 0.28},
                                     {"step": "exact_dedup"}]})
    ours, peer = [], []
    for _ in range(rounds):
        began = time.perf_counter()
        stats = select(run, recipe, "bench", overwrite=True)
        ours.append(time.perf_counter() - began)
        seconds, kept = pandas_peer(run)
        peer.append(seconds)
        assert kept == stats["kept"], (kept, stats["kept"])
    return {"rows": rows, "kept": stats["kept"], "select_s": round(min(ours), 2), "pandas_s": round(min(peer), 2),
            "ratio_pandas_over_select": round(min(peer) / min(ours), 2),
            "step_seconds": {s["name"]: s["seconds"] for s in stats["steps"]}}


def faiss_pairs(hashes: np.ndarray, radius: int) -> set[tuple[int, int]]:
    import faiss

    codes = hashes.astype(">u8").view(np.uint8).reshape(-1, 8)
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    lims, _, ids = index.range_search(codes, radius + 1)  # strictly below radius + 1
    pairs = set()
    for i in range(len(hashes)):
        for j in ids[lims[i]:lims[i + 1]]:
            a, b = hashes[i], hashes[int(j)]
            if a < b:
                pairs.add((int(a), int(b)))
    return pairs


def components(nodes: np.ndarray, pairs: set[tuple[int, int]]) -> int:
    parent = {int(h): int(h) for h in nodes}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    return len({find(int(h)) for h in nodes})


def bench_near(rows: int, peer_rows: int, k: int) -> dict:
    out = {"max_hamming": k}
    recipe = parse_recipe({"steps": [{"step": "near_dedup", "max_hamming": k}]})
    for n, with_peer in ((peer_rows, True), (rows, False)):
        run = make_run(WORK / f"near-run-{n}", n, near=True)
        began = time.perf_counter()
        stats = select(run, recipe, "near", overwrite=True)
        ours = time.perf_counter() - began
        entry = {"rows": n, "near_dedup_s": round(ours, 2), "dropped": stats["steps"][1]["dropped"]}
        if with_peer:
            con = duckdb.connect()
            hashes = np.unique(con.sql(f"SELECT phash FROM '{run}/annotations/*.parquet' WHERE status = 'ok'")
                               .fetchnumpy()["phash"].astype(np.uint64))
            began = time.perf_counter()
            pairs = faiss_pairs(hashes, k)
            entry["faiss_range_search_s"] = round(time.perf_counter() - began, 2)
            entry["ratio_faiss_over_ours"] = round(entry["faiss_range_search_s"] / ours, 2)
            entry["pairs_faiss"] = len(pairs)
            ok_rows = con.sql(f"SELECT count(*) FROM '{run}/annotations/*.parquet' WHERE status = 'ok'")
            ok_rows = ok_rows.fetchall()[0][0]
            expected = ok_rows - components(hashes, pairs)
            assert expected == entry["dropped"], (expected, entry["dropped"])  # the same groups as all pairs
        out[f"n{n}"] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--near-rows", type=int, default=1_000_000)
    parser.add_argument("--near-peer-rows", type=int, default=100_000)
    parser.add_argument("--max-hamming", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    guard_log = install_network_guard(WORK)
    result = {"select": bench_select(args.rows, args.rounds),
              "near_dedup": bench_near(args.near_rows, args.near_peer_rows, args.max_hamming)}
    refused = guard_log.read_text().strip()
    if refused:
        raise SystemExit(f"the network guard refused connections:\n{refused}")
    (WORK / "select_steps.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
