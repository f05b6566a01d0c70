"""SemDeDup over 1M 512-d embeddings: the clustered pass (`pipelines.verbs.semdedup`) vs exact all-pairs peers.

Data: a synthetic run folder holding only RUN/embeddings (100 shards of 10k, float16 as annotate
stores them): points around 2,000 blob centres (cosine ~0.5 between points of a blob), plus planted
near-duplicate groups (1% of the points: 2-4 copies of a point with small noise, cosine > 0.99).

1. `semdedup(run, eps)` over all points: wall time, time per phase, duplicates found, and planted-group
   quality (groups left with exactly one kept member; background points wrongly dropped).
2. Peers, run in the same process on the same machine and extrapolated to N (both are O(N^2)):
   - brute-force all-pairs greedy dedup (the same rule with every pair compared: one cluster;
     `operators.semdedup.greedy_dedup`, blocked numpy matmuls) on a random subsample of `--brute` points;
   - faiss exact nearest neighbour of every point (`IndexFlatIP` over all N, k=2) for `--faiss-queries`
     query points: the all-pairs search without the greedy step.

    .venv/bin/python benchmarks/semdedup.py                  # 1M points
    .venv/bin/python benchmarks/semdedup.py --n 200000       # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from network_guard import install_network_guard  # noqa: E402

from operators.semdedup import greedy_dedup, normalize  # noqa: E402

SHARD_ROWS = 10_000


def make_run(run: Path, n: int, dim: int, seed: int, dup_share: float = 0.01) -> np.ndarray:
    """Write RUN/embeddings/*.parquet; return the planted group of each key (as int; -1: background).

    Rows are generated in order, background first and the copies last, one shard at a time; keys are a
    random permutation of the row numbers, so key order says nothing about groups."""
    rng = np.random.default_rng(seed)
    centres = normalize(rng.standard_normal((2000, dim)))
    sizes = rng.integers(2, 5, int(n * dup_share) // 3 + 1)
    sizes = sizes[np.cumsum(sizes) <= int(n * dup_share)]
    n_background = n - int(sizes.sum())
    bases = np.sort(rng.choice(n_background, len(sizes), replace=False))
    group = np.full(n, -1, dtype=np.int64)
    group[bases] = np.arange(len(sizes))
    copy_base = np.repeat(bases, sizes)
    group[n_background:] = np.repeat(np.arange(len(sizes)), sizes)
    key_of_row = rng.permutation(n)
    base_vectors = {}
    (run / "embeddings").mkdir(parents=True)
    for s, start in enumerate(range(0, n, SHARD_ROWS)):
        ids = np.arange(start, min(n, start + SHARD_ROWS))
        chunk = np.random.default_rng([seed, s])
        vectors = np.empty((len(ids), dim), dtype=np.float32)
        background = ids < n_background
        spread = chunk.standard_normal((int(background.sum()), dim)) / np.sqrt(dim)
        vectors[background] = normalize(centres[chunk.integers(0, len(centres), len(spread))] + spread)
        for row in np.intersect1d(ids[background], bases):
            base_vectors[row] = vectors[row - start]
        copies = ids[~background]
        if len(copies):
            base = np.stack([base_vectors[b] for b in copy_base[copies - n_background]])
            vectors[~background] = normalize(base + 0.002 * chunk.standard_normal(base.shape))
        emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float16).ravel()), dim)
        table = pa.table({"key": [f"{k:09d}" for k in key_of_row[ids]], "image_emb": emb})
        pq.write_table(table, run / "embeddings" / f"{s:05d}.parquet", row_group_size=SHARD_ROWS)
    group_of_key = np.empty(n, dtype=np.int64)
    group_of_key[key_of_row] = group
    return group_of_key


def read_all(run: Path) -> tuple[np.ndarray, np.ndarray]:
    keys, vectors = [], []
    for path in sorted((run / "embeddings").glob("*.parquet")):
        table = pq.read_table(path)
        array = table.column("image_emb").combine_chunks()
        keys.append(np.array(table.column("key").to_pylist()))
        vectors.append(normalize(array.flatten().to_numpy().reshape(len(array), array.type.list_size)))
    return np.concatenate(keys), np.concatenate(vectors)


def quality(run: Path, table_path: str, group: np.ndarray) -> dict:
    table = pq.read_table(table_path, columns=["key", "dup_of"]).to_pandas()
    row = table.key.astype(np.int64).to_numpy()
    dropped = np.zeros(len(group), dtype=bool)
    dropped[row] = table.dup_of.notna().to_numpy()
    planted = group >= 0
    kept_per_group = np.bincount(group[planted & ~dropped], minlength=group.max() + 1)
    return {
        "planted_groups": int(group.max() + 1),
        "planted_points": int(planted.sum()),
        "groups_collapsed_to_one": int((kept_per_group == 1).sum()),
        "groups_with_extra_kept": int((kept_per_group > 1).sum()),
        "planted_duplicates_missed": int((kept_per_group[kept_per_group > 1] - 1).sum()),
        "background_dropped": int((dropped & ~planted).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--brute", type=int, default=20_000, help="subsample for the brute-force all-pairs peer")
    parser.add_argument("--faiss-queries", type=int, default=5_000, help="queries for the faiss flat peer")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "semdedup")
    parser.add_argument("--keep-data", action="store_true", help="reuse the generated run if present")
    args = parser.parse_args()
    guard_log = install_network_guard(args.work)
    run = args.work / f"run-{args.n}"
    started = time.time()
    group_file = args.work / f"groups-{args.n}.npy"
    if not (args.keep_data and group_file.exists()):
        shutil.rmtree(run, ignore_errors=True)
        group = make_run(run, args.n, args.dim, seed=0)
        np.save(group_file, group)
    group = np.load(group_file)
    shutil.rmtree(run / "dedup", ignore_errors=True)
    results: dict = {"n": args.n, "dim": args.dim, "eps": args.eps, "cpus": os.cpu_count(),
                     "generate_s": round(time.time() - started, 1)}
    print(f"data: {args.n} x {args.dim} in {results['generate_s']} s", flush=True)

    from pipelines.core.engine import init_ray
    from pipelines.verbs.semdedup import SemdedupOptions, semdedup

    t0 = time.perf_counter()
    init_ray(None)  # as in a select run, where Ray is up already
    results["ray_start_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    path = semdedup(str(run), SemdedupOptions(eps=args.eps))
    results["semdedup_s"] = round(time.perf_counter() - t0, 1)
    info = json.loads((run / "dedup" / "semdedup.json").read_text())
    results["semdedup_phases_s"] = info["seconds"]
    results["semdedup_counts"] = info["counts"]
    results["quality"] = quality(run, path, group)
    print(f"semdedup: {results['semdedup_s']} s {info['seconds']} {info['counts']}\n{results['quality']}", flush=True)

    keys, vectors = read_all(run)
    rng = np.random.default_rng(1)
    sample = vectors[np.sort(rng.choice(len(vectors), args.brute, replace=False))]
    t0 = time.perf_counter()
    greedy_dedup(sample, args.eps)
    brute = time.perf_counter() - t0
    results["brute_force"] = {"points": args.brute, "s": round(brute, 2),
                              "extrapolated_s": round(brute * (args.n / args.brute) ** 2)}
    import faiss

    index = faiss.IndexFlatIP(args.dim)
    index.add(vectors)
    queries = vectors[rng.choice(len(vectors), args.faiss_queries, replace=False)]
    t0 = time.perf_counter()
    index.search(queries, 2)
    flat = time.perf_counter() - t0
    results["faiss_flat"] = {"queries": args.faiss_queries, "s": round(flat, 2),
                             "extrapolated_s": round(flat * args.n / args.faiss_queries)}
    results["speedup_vs_brute_force"] = round(results["brute_force"]["extrapolated_s"] / results["semdedup_s"], 1)
    results["speedup_vs_faiss_flat"] = round(results["faiss_flat"]["extrapolated_s"] / results["semdedup_s"], 1)
    results["network_refusals"] = guard_log.read_text().splitlines()
    out = args.work / f"semdedup-{args.n}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"results in {out}")
    if results["network_refusals"]:
        sys.exit("network guard refused traffic")


if __name__ == "__main__":
    main()
