"""SemDeDup over a run's image embeddings: spherical k-means, then greedy dedup inside each cluster.

    RUN/dedup/semdedup.parquet            one row per key with an image embedding (sorted by key):
        key (string), cluster (int32), part (int32: 0 unless the cluster was split),
        rank (int32: position in the cluster's visiting order), max_sim (float32: max cosine to a
        kept point earlier in the order, null for the first), dup_of (string: key of the kept point
        it duplicates, null when kept), max_sim_any (float32: max cosine to any earlier point)
    RUN/dedup/semdedup.json               the settings and counts of the table
    RUN/dedup/semdedup-centroids.parquet  cluster, centroid (list<float32>)

A key is a semantic duplicate when `dup_of IS NOT NULL`; the select step anti-joins those. The rule
and the visiting order are in operators/semdedup.py. Passes:

1. sample: `n_clusters * sample_per_centroid` points drawn by a seeded generator over the row
   positions of the sorted shards (Ray task per shard), and k-means trained on them in the driver
   (`faiss.Kmeans(spherical=True, seed=seed)`).
2. assign (Ray task per embeddings shard, streamed): every point to its nearest centroid; rows are
   written to `RUN/dedup/_semdedup_work/ID/BUCKET/SHARD.parquet` with bucket = cluster mod buckets,
   so each later task reads only its clusters' vectors.
3. dedup (Ray task per bucket): cluster by cluster, order and dedup. A cluster with more than
   `max_cluster_size` points is first cut by a secondary spherical k-means into parts of about that
   size (operators.semdedup.split_cluster); parts are deduped separately, so duplicates that fall
   into different parts are missed.

Every decision depends on the vectors, keys, seed and settings only: not on the number of buckets,
tasks or workers. A rerun with the same settings and the same embeddings files returns the existing
table; other settings recompute it in place (the json says which settings made it), reusing the
centroids when only `eps` or `max_cluster_size` changed. Two passes over one run at once do not
clobber each other's work, but the table is the last one's: run one at a time.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from operators.clip import to_matrix
from operators.semdedup import cluster_order, greedy_dedup, normalize, split_cluster
from pipelines.core.config import ConfigError
from pipelines.core.duck import parquet_url
from pipelines.core.engine import cluster_cpus, run_tasks
from pipelines.core.passes import Pass
from pipelines.core.storage import RunPaths
from pipelines.core.verb_options import SemdedupOptions

log = logging.getLogger(__name__)

SAMPLE_PER_CENTROID = 256  # faiss' default max_points_per_centroid
BUCKET_BYTES = 128 << 20  # stored (float16) vector bytes one dedup task reads at most, roughly
VERSION = 1
CLUSTERING_SETTINGS = ("n_clusters", "seed", "niter", "sample_per_centroid", "version", "embeddings")
SCHEMA = pa.schema([("key", pa.string()), ("cluster", pa.int32()), ("part", pa.int32()), ("rank", pa.int32()),
                    ("max_sim", pa.float32()), ("dup_of", pa.string()), ("max_sim_any", pa.float32())])


def table_path(paths: RunPaths) -> str:
    return paths.dedup("semdedup.parquet")


def default_clusters(n: int) -> int:
    """About sqrt(n) clusters of about sqrt(n) points (1M points: 1,000 clusters of ~1,000)."""
    return max(1, min(n, round(math.sqrt(n))))


# ---------------------------------------------------------------- reading embeddings

def _read_shard(paths: RunPaths, shard: str, columns: list[str]) -> pa.Table:
    with paths.fs.open(shard, "rb") as f:
        table = pq.read_table(f, columns=columns)
    return table.filter(pc.is_valid(table.column("image_emb"))) if "image_emb" in columns else table


def _vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list column as an (n, d) float32 array, rows normalised."""
    return normalize(to_matrix(column))


def _shard_rows(paths: RunPaths, shards: list[str]) -> list[int]:
    counts = []
    for shard in shards:
        with paths.fs.open(shard, "rb") as f:
            counts.append(pq.ParquetFile(f).metadata.num_rows)
    return counts


def _fingerprint(paths: RunPaths, shards: list[str], rows: list[int]) -> list:
    return [[s.rsplit("/", 1)[-1], r, paths.fs.size(s)] for s, r in zip(shards, rows, strict=True)]


# ---------------------------------------------------------------- the three passes (Ray task bodies)

def sample_shard(paths: RunPaths, shard: str, positions: np.ndarray) -> np.ndarray:
    """Normalised vectors at the given row positions of one shard (positions among non-null rows)."""
    table = _read_shard(paths, shard, ["image_emb"])
    positions = positions[positions < table.num_rows]
    return _vectors(table.column("image_emb").take(pa.array(positions)))


def assign_shard(paths: RunPaths, shard: str, centroids: np.ndarray, buckets: int, work: str) -> np.ndarray:
    """Nearest centroid of every point of a shard; rows written to WORK/BUCKET/SHARD.parquet.

    Returns the shard's point count per cluster."""
    import faiss

    table = _read_shard(paths, shard, ["key", "image_emb"])
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    sims, assigned = index.search(_vectors(table.column("image_emb")), 1)
    cluster = assigned[:, 0].astype(np.int32)
    table = table.append_column("cluster", pa.array(cluster)).append_column(
        "centroid_sim", pa.array(sims[:, 0].astype(np.float32)))
    name = shard.rsplit("/", 1)[-1]
    bucket_of = cluster % buckets
    for bucket in np.unique(bucket_of):
        rows = table.filter(pa.array(bucket_of == bucket))
        paths.write_parquet(rows, f"{work}/{bucket:05d}/{name}")
    return np.bincount(cluster, minlength=len(centroids))


def dedup_bucket(paths: RunPaths, folder: str, eps: float, max_cluster_size: int, seed: int) -> pa.Table:
    """Dedup every cluster whose rows are in one bucket folder; one output row per point."""
    files = sorted(p for p in paths.fs.ls(folder, detail=False) if p.endswith(".parquet"))
    tables = []
    for file in files:
        with paths.fs.open(file, "rb") as f:
            tables.append(pq.read_table(f))
    rows = pa.concat_tables(tables)
    by_cluster = np.argsort(rows.column("cluster").to_numpy(), kind="stable")
    rows = rows.take(pa.array(by_cluster))
    clusters, starts = np.unique(rows.column("cluster").to_numpy(), return_index=True)
    ends = np.append(starts[1:], rows.num_rows)
    out = [dedup_cluster(rows.slice(start, end - start), int(cluster), eps, max_cluster_size, seed)
           for cluster, start, end in zip(clusters, starts, ends, strict=True)]
    return pa.concat_tables(out) if out else SCHEMA.empty_table()


def dedup_cluster(members: pa.Table, cluster: int, eps: float, max_cluster_size: int, seed: int) -> pa.Table:
    """Order one cluster's points, split it if too large, greedy-dedup each part."""
    keys = np.asarray(members.column("key").to_pylist(), dtype=object)
    order = cluster_order(members.column("centroid_sim").to_numpy(), keys)
    keys = keys[order]
    vectors = _vectors(members.column("image_emb").take(pa.array(order)))
    parts = split_cluster(vectors, max_cluster_size, seed + cluster)
    n = len(keys)
    max_sim = np.empty(n, dtype=np.float32)
    max_any = np.empty(n, dtype=np.float32)
    dup_of = np.full(n, None, dtype=object)
    for part in np.unique(parts):
        idx = np.flatnonzero(parts == part)  # ascending: the cluster's order within the part
        result = greedy_dedup(vectors[idx], eps)
        max_sim[idx], max_any[idx] = result.max_sim, result.max_sim_any
        dropped = ~result.kept
        dup_of[idx[dropped]] = keys[idx[result.dup_of[dropped]]]
    return pa.table({
        "key": pa.array(keys.tolist(), pa.string()),
        "cluster": pa.array(np.full(n, cluster, dtype=np.int32)),
        "part": pa.array(parts.astype(np.int32)),
        "rank": pa.array(np.arange(n, dtype=np.int32)),
        "max_sim": pa.array(max_sim, mask=np.isnan(max_sim)),
        "dup_of": pa.array(dup_of.tolist(), pa.string()),
        "max_sim_any": pa.array(max_any, mask=np.isnan(max_any)),
    }, schema=SCHEMA)


# ---------------------------------------------------------------- the pass

def _train(sample: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    import faiss

    kmeans = faiss.Kmeans(sample.shape[1], k, niter=niter, spherical=True, seed=seed,
                          max_points_per_centroid=SAMPLE_PER_CENTROID, verbose=False)
    kmeans.train(np.ascontiguousarray(sample))
    return normalize(kmeans.centroids)


def _sample_and_train(paths: RunPaths, put, shards: list[str], rows: list[int], k: int, niter: int,
                      seed: int) -> tuple[np.ndarray, int]:
    """Centroids of a spherical k-means trained on k * SAMPLE_PER_CENTROID points drawn with `seed`.

    Positions are drawn over the shards' row counts and taken among a shard's non-null embeddings;
    nulls are rare, so the few positions past a shard's end are simply dropped."""
    total = sum(rows)
    sample_size = min(total, k * SAMPLE_PER_CENTROID)
    drawn = np.sort(np.random.default_rng(seed).choice(total, size=sample_size, replace=False))
    offsets = np.concatenate([[0], np.cumsum(rows)])
    sample = np.concatenate(run_tasks(sample_shard, [(put, shard, drawn[(drawn >= lo) & (drawn < hi)] - lo)
                                                     for shard, lo, hi in zip(shards, offsets[:-1], offsets[1:],
                                                                              strict=True)]))
    return _train(sample, min(k, len(sample)), niter, seed), len(sample)


def _remove_if_empty(paths: RunPaths, folder: str) -> None:
    """The shared work folder, once no pass uses it (a killed pass leaves its ID folder: delete by hand)."""
    try:
        if paths.is_local and not paths.fs.ls(folder, detail=False):
            paths.fs.rmdir(folder)
    except OSError:
        pass  # another pass has just put its folder there


def _read_centroids(paths: RunPaths, path: str) -> np.ndarray:
    with paths.fs.open(path, "rb") as f:
        return to_matrix(pq.read_table(f).sort_by("cluster").column("centroid"))


def semdedup(run: str, options: SemdedupOptions | None = None, overwrite: bool = False) -> str:
    """Write (or reuse) RUN/dedup/semdedup.parquet for these settings and return its path (a URL for a remote run).

    options: the settings (SemdedupOptions' fields and defaults; None: the defaults).
    overwrite: recompute even when the settings are unchanged.
    """
    import ray

    options = options or SemdedupOptions()
    eps, n_clusters, seed = options.eps, options.n_clusters, options.seed
    max_cluster_size, niter, buckets = options.max_cluster_size, options.niter, options.buckets
    this = Pass(run)
    started, run, paths = this.started, this.run, this.paths
    shards = paths.outputs("embeddings")
    if not shards:
        raise ConfigError(f"{run}: no image embeddings (RUN/embeddings/*.parquet); annotate with an embed section")
    rows = _shard_rows(paths, shards)
    total = sum(rows)
    if total == 0:
        raise ConfigError(f"{run}: the embeddings tables are empty")
    k = min(n_clusters or default_clusters(total), total)
    settings = {"eps": eps, "n_clusters": k, "seed": seed, "max_cluster_size": max_cluster_size, "niter": niter,
                "sample_per_centroid": SAMPLE_PER_CENTROID, "version": VERSION,
                "embeddings": _fingerprint(paths, shards, rows)}
    target, info_path = table_path(paths), paths.dedup("semdedup.json")
    centroids_path = paths.dedup("semdedup-centroids.parquet")
    check = this.settings(info_path, settings)  # other settings are not refused: the table is recomputed in place
    if not overwrite and check.same and paths.exists(target):
        log.info("semdedup: reusing %s (same settings)", target)
        return parquet_url(paths, target)
    if not overwrite and check.previous is not None and not check.same:
        log.info("semdedup: recomputing %s, made with other settings (%s)", target, check.describe())
    # only eps or max_cluster_size changed: the clustering is the same, skip sampling and training
    reuse_centroids = (not overwrite and check.previous is not None and paths.exists(centroids_path)
                       and not check.differences(CLUSTERING_SETTINGS))
    paths.remove(info_path)  # until this pass finishes, nothing here is reusable

    this.start_ray()
    put = ray.put(paths)
    # 1. the centroids
    if reuse_centroids:
        centroids = _read_centroids(paths, centroids_path)
        sample_size = None
    else:
        centroids, sample_size = _sample_and_train(paths, put, shards, rows, k, niter, seed)
    trained_at = time.time()

    # 2. assign every point, partitioned into buckets of clusters
    dim = centroids.shape[1]
    n_buckets = buckets or max(math.ceil(total * dim * 2 / BUCKET_BYTES), 2 * cluster_cpus())
    n_buckets = max(1, min(n_buckets, len(centroids)))
    work = f"{paths.dedup('_semdedup_work')}/{uuid.uuid4().hex}"  # a concurrent pass has its own
    centroid_ref = ray.put(centroids)
    sizes = np.sum(run_tasks(assign_shard, [(put, s, centroid_ref, n_buckets, work) for s in shards]), axis=0)
    assigned_at = time.time()

    # 3. dedup each bucket's clusters
    paths.fs.invalidate_cache(work)  # the tasks wrote there, not this filesystem object
    folders = sorted(p for p in paths.fs.ls(work, detail=False))
    parts = run_tasks(dedup_bucket, [(put, folder, eps, max_cluster_size, seed) for folder in folders])
    table = pa.concat_tables(parts).sort_by("key")
    deduped_at = time.time()
    if table.num_rows != int(sizes.sum()):
        raise RuntimeError(f"semdedup: {table.num_rows} rows out, {int(sizes.sum())} points assigned")

    paths.write_parquet(table, target)
    if not reuse_centroids:
        paths.write_parquet(pa.table({
            "cluster": pa.array(np.arange(len(centroids), dtype=np.int32)),
            "centroid": pa.FixedSizeListArray.from_arrays(pa.array(centroids.ravel()), dim)}), centroids_path)
    paths.remove(work)
    _remove_if_empty(paths, work.rsplit("/", 1)[0])
    dropped = table.num_rows - table.column("dup_of").null_count
    counts = {
        "points": table.num_rows,
        "kept": table.num_rows - dropped,
        "duplicates": dropped,
        "clusters": len(centroids),
        "nonempty_clusters": int((sizes > 0).sum()),
        "largest_cluster": int(sizes.max()),
        "split_clusters": int((sizes > max_cluster_size).sum()),
        "sample": sample_size,
        "centroids_reused": reuse_centroids,
        "buckets": len(folders),
    }
    seconds = {"sample_and_train": trained_at - started, "assign": assigned_at - trained_at,
               "dedup": deduped_at - assigned_at, "total": time.time() - started}
    this.write_summary({"settings": settings, "counts": counts,
                        "seconds": {name: round(s, 2) for name, s in seconds.items()},
                        "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}, info_path)
    log.info("semdedup: %d points, %d duplicates (eps %g, %d clusters) in %.1f s", counts["points"], dropped,
             eps, len(centroids), seconds["total"])
    return parquet_url(paths, target)
