"""SemDeDup inside one cluster: order the points, then greedily drop near-duplicates of kept points.

Semantic deduplication (Abbas et al. 2023, *SemDeDup*) clusters image embeddings with spherical
k-means and, inside each cluster, removes points whose cosine similarity to another point exceeds
`1 - eps`. This module is the in-cluster part, plain numpy (and faiss for the split of oversized
clusters); the clustering and the Ray wiring are in pipelines/verbs/semdedup.py.

Order. Points are visited by increasing cosine to their cluster centroid (the point farthest from
the centroid first, as SemDeDup's `keep_hard` default keeps the least prototypical copy), ties
broken by key, so the order and every decision are a function of the vectors and keys alone.

Rule (greedy, against kept points). Walking that order, a point is dropped when its cosine to some
point already *kept* exceeds `1 - eps`; `dup_of` is the kept point it is most similar to. The kept
set therefore has no pair above the threshold and every dropped point names a kept representative.
SemDeDup's reference code drops a point when it is similar to *any* earlier point, kept or not (in a
chain a~b~c with a, c dissimilar it drops both b and c); that rule's statistic is reported too, as
`max_sim_any`, so SQL can apply it at any eps without recomputing.

Memory: similarities are computed in blocks of rows against the earlier points (`block_elements`
floats at a time), never as an n x n matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BLOCK_ELEMENTS = 1 << 24  # similarity entries held at once (64 MB of float32)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (stored float16 embeddings drift by ~1e-4); zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def cluster_order(centroid_sim: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Indices in visiting order: ascending cosine to the centroid (farthest first), ties by key."""
    return np.lexsort((np.asarray(keys, dtype=object).astype(str), np.asarray(centroid_sim, dtype=np.float64)))


@dataclass
class Dedup:
    """Per point, in the order given to `greedy_dedup`.

    max_sim: max cosine to a kept point earlier in the order (NaN for the first point).
    dup_of: index of the kept point it duplicates, or -1 when kept.
    max_sim_any: max cosine to any earlier point, kept or not (NaN for the first).
    """

    max_sim: np.ndarray
    dup_of: np.ndarray
    max_sim_any: np.ndarray

    @property
    def kept(self) -> np.ndarray:
        return self.dup_of < 0


def greedy_dedup(vectors: np.ndarray, eps: float, block_elements: int = BLOCK_ELEMENTS) -> Dedup:
    """Greedy dedup of unit vectors already in visiting order: drop i when max cos to kept j < i > 1 - eps."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(x)
    threshold = np.float32(1.0 - eps)
    kept = np.ones(n, dtype=bool)
    max_sim = np.full(n, -np.inf, dtype=np.float32)
    max_any = np.full(n, -np.inf, dtype=np.float32)
    dup_of = np.full(n, -1, dtype=np.int64)
    best = np.full(n, -1, dtype=np.int64)  # the most similar kept earlier point
    step = max(16, min(4096, block_elements // max(n, 1)))
    for start in range(0, n, step):
        stop = min(n, start + step)
        rows = np.arange(stop - start)
        block = x[start:stop]
        if start:  # against every earlier block: kept status there is final
            sims = block @ x[:start].T
            max_any[start:stop] = sims.max(axis=1)
            kept_cols = np.flatnonzero(kept[:start])
            on_kept = sims[:, kept_cols]
            arg = on_kept.argmax(axis=1)
            max_sim[start:stop] = on_kept[rows, arg]
            best[start:stop] = kept_cols[arg]
            del sims, on_kept
        inner = block @ block.T
        inner[np.triu_indices(len(rows))] = -np.inf  # only earlier points of the block
        max_any[start:stop] = np.maximum(max_any[start:stop], inner.max(axis=1))
        # only a point with some earlier point above the threshold can be dropped; visit those in order
        for i in np.flatnonzero(np.maximum(max_sim[start:stop], inner.max(axis=1)) > threshold):
            earlier_kept = inner[i, :i][kept[start:start + i]]
            if max_sim[start + i] > threshold or (len(earlier_kept) and earlier_kept.max() > threshold):
                kept[start + i] = False
        inner[:, ~kept[start:stop]] = -np.inf
        arg = inner.argmax(axis=1)
        inner_best = inner[rows, arg]
        closer = inner_best > max_sim[start:stop]  # ties keep the earlier block's (earlier) point
        max_sim[start:stop] = np.where(closer, inner_best, max_sim[start:stop])
        best[start:stop] = np.where(closer, start + arg, best[start:stop])
    dup_of[~kept] = best[~kept]
    if n:
        max_sim[0] = max_any[0] = np.nan
    return Dedup(max_sim=max_sim, dup_of=dup_of, max_sim_any=max_any)


def split_cluster(vectors: np.ndarray, max_size: int, seed: int, depth: int = 3) -> np.ndarray:
    """Part labels (0..p-1) cutting a cluster into parts of at most about `max_size` points.

    A secondary spherical k-means with ceil(n / max_size) centroids, recursing into parts that
    are still too big; after `depth` levels (or when k-means cannot split) the remaining part is
    cut into consecutive slices. Duplicates that land in different parts are not compared, so
    splitting can miss pairs: it bounds the quadratic in-cluster work, at that price.
    """
    n = len(vectors)
    labels = np.zeros(n, dtype=np.int64)
    if n <= max_size:
        return labels
    if depth > 0:
        import faiss

        k = math.ceil(n / max_size)
        kmeans = faiss.Kmeans(vectors.shape[1], k, niter=10, spherical=True, seed=seed,
                              max_points_per_centroid=256, verbose=False)
        kmeans.train(np.ascontiguousarray(vectors, dtype=np.float32))
        _, assigned = kmeans.index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
        assigned = assigned[:, 0]
        if len(np.unique(assigned)) > 1:
            next_label = 0
            for part in np.unique(assigned):
                members = np.flatnonzero(assigned == part)
                sub = split_cluster(vectors[members], max_size, seed, depth - 1)
                labels[members] = next_label + sub
                next_label += int(sub.max()) + 1
            return labels
    return np.arange(n, dtype=np.int64) // max_size
