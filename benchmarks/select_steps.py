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
Each select runs in a fresh process, which reports its peak RSS (select's memory alone, not the generator's
or pandas'). `--memory-limit`, `--threads`, `--temp-directory` are select's DuckDB settings (DuckOptions; unset:
its defaults). `--select-only` skips the peers and near_dedup, for the memory check at two sizes:

    .venv/bin/python benchmarks/select_steps.py --select-only --rounds 1 --rows 10000000
    .venv/bin/python benchmarks/select_steps.py --select-only --rounds 1 --rows 40000000

(the issue's target: peak RSS at 40M within 1.3x of 10M). Results go to benchmarks/.work/select_steps.json
(with --select-only: select_steps_ROWS.json); a generated run is kept and reused by later calls.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import duckdb
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from network_guard import install_network_guard  # noqa: E402

from pipelines.core.duck import DuckOptions  # noqa: E402
from pipelines.verbs.select import parse_recipe, select  # noqa: E402

WORK = ROOT / "benchmarks" / ".work"


def make_run(folder: Path, rows: int, shard_rows: int = 100_000, near: bool = False) -> str:
    """A run folder of synthetic annotation shards (kept: the same call later reuses it)."""
    made = folder / ".made"  # what the folder holds, written once it is complete
    if made.exists() and made.read_text() == f"{rows} {shard_rows} {near}":
        return str(folder)
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
    made.write_text(f"{rows} {shard_rows} {near}")
    return str(folder)


def _select_here(run: str, recipe: dict, name: str, duck: dict) -> tuple[float, float, dict, int]:
    """In a fresh process: select's seconds (wall, CPU), stats and this process's peak RSS in MB."""
    cpu = time.process_time()
    began = time.perf_counter()
    stats = select(run, parse_recipe(recipe), name, duck=DuckOptions(**duck), overwrite=True)
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    return seconds, cpu, stats, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10  # KB on Linux


def select_apart(run: str, recipe: dict, name: str, duck: dict) -> tuple[float, float, dict, int]:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_select_here, run, recipe, name, duck).result()


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


def bench_select(rows: int, rounds: int, duck: dict, peer: bool = True) -> dict:
    run = make_run(WORK / f"select-run-{rows}", rows)
    recipe = {"steps": [{"step": "basic"}, {"step": "clip_score", "min_score": 0.28}, {"step": "exact_dedup"}]}
    ours, cpus, peers, peaks = [], [], [], []
    for _ in range(rounds):
        seconds, cpu, stats, peak = select_apart(run, recipe, "bench", duck)
        ours.append(seconds)
        cpus.append(cpu)
        peaks.append(peak)
        if peer:
            seconds, kept = pandas_peer(run)
            peers.append(seconds)
            assert kept == stats["kept"], (kept, stats["kept"])
    result = {"rows": rows, "kept": stats["kept"], "duck": duck, "select_s": round(min(ours), 2),
              "select_cpu_s": round(min(cpus), 2), "select_peak_rss_mb": max(peaks)}
    if peer:
        result |= {"pandas_s": round(min(peers), 2), "ratio_pandas_over_select": round(min(peers) / min(ours), 2)}
    return result | {"step_seconds": {s["name"]: s["seconds"] for s in stats["steps"]}}


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


def bench_near(rows: int, peer_rows: int, k: int, duck: dict) -> dict:
    out = {"max_hamming": k}
    recipe = parse_recipe({"steps": [{"step": "near_dedup", "max_hamming": k}]})
    for n, with_peer in ((peer_rows, True), (rows, False)):
        run = make_run(WORK / f"near-run-{n}", n, near=True)
        began = time.perf_counter()
        stats = select(run, recipe, "near", duck=DuckOptions(**duck), overwrite=True)
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
    parser.add_argument("--select-only", action="store_true", help="no peers, no near_dedup: select's time and "
                        "peak RSS alone")
    parser.add_argument("--memory-limit", help="select's DuckDB memory limit (default: DuckOptions')")
    parser.add_argument("--threads", type=int, help="select's DuckDB threads")
    parser.add_argument("--temp-directory", help="select's DuckDB spill folder")
    args = parser.parse_args()
    duck = {k: v for k, v in {"memory_limit": args.memory_limit, "threads": args.threads,
                              "temp_directory": args.temp_directory}.items() if v is not None}
    guard_log = install_network_guard(WORK)
    result = {"select": bench_select(args.rows, args.rounds, duck, peer=not args.select_only)}
    if not args.select_only:
        result["near_dedup"] = bench_near(args.near_rows, args.near_peer_rows, args.max_hamming, duck)
    refused = guard_log.read_text().strip()
    if refused:
        raise SystemExit(f"the network guard refused connections:\n{refused}")
    out = f"select_steps_{args.rows}.json" if args.select_only else "select_steps.json"
    (WORK / out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
