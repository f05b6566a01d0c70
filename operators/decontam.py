"""Nearest evaluation image of each pool row, by embedding cosine and by pHash Hamming distance.

`EvalIndex` holds a (small) evaluation set: names, L2-normalised image embeddings and 64-bit
pHashes. `EvalIndex.flag` takes a batch of pool rows and returns only the contaminated ones:

    columns in:  key, image_emb (unit vectors, or None), phash (uint64, or None)
    columns out: key, eval_image, cosine (float32), hamming (int32), by ('embedding' | 'phash' | 'both')

A pool row is contaminated when its cosine to some evaluation image is at least `max_cosine`, or
its pHash is within `max_hamming` bits of one (a criterion set to None is not used). `cosine` is the
max over evaluation images and `hamming` the min (null where that criterion is off or the row lacks
the input); `eval_image` is the nearest evaluation image by the embedding when the embedding flags
the row, else by pHash. Exact search: faiss IndexFlatIP and IndexBinaryFlat.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

OUTPUT_SCHEMA = pa.schema([("key", pa.string()), ("eval_image", pa.string()), ("cosine", pa.float32()),
                           ("hamming", pa.int32()), ("by", pa.string())])


def phash_bytes(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes as the (n, 8) uint8 codes faiss' binary indexes take (Hamming is byte-order free)."""
    return np.ascontiguousarray(np.asarray(hashes, dtype=np.uint64)).view(np.uint8).reshape(-1, 8)


class EvalIndex:
    """Exact nearest-neighbour indexes over an evaluation set (embeddings and/or pHashes)."""

    def __init__(self, names: list[str], embeddings: np.ndarray | None, phashes: np.ndarray | None):
        self.names = np.asarray(names, dtype=object)
        self.embeddings = None if embeddings is None else np.ascontiguousarray(embeddings, dtype=np.float32)
        self.phashes = None if phashes is None else np.asarray(phashes, dtype=np.uint64)
        self._indexes: dict = {}  # built on first use, in the process that searches (faiss indexes do not pickle)

    def __getstate__(self) -> dict:
        return {"names": self.names, "embeddings": self.embeddings, "phashes": self.phashes, "_indexes": {}}

    @property
    def embedding_index(self):
        if self.embeddings is not None and "embedding" not in self._indexes:
            import faiss

            self._indexes["embedding"] = faiss.IndexFlatIP(self.embeddings.shape[1])
            self._indexes["embedding"].add(self.embeddings)
        return self._indexes.get("embedding")

    @property
    def phash_index(self):
        if self.phashes is not None and "phash" not in self._indexes:
            import faiss

            self._indexes["phash"] = faiss.IndexBinaryFlat(64)
            self._indexes["phash"].add(phash_bytes(self.phashes))
        return self._indexes.get("phash")

    def nearest_embedding(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(max cosine, index of that evaluation image) per row of unit vectors."""
        sims, idx = self.embedding_index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
        return sims[:, 0], idx[:, 0]

    def nearest_phash(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(min Hamming distance, index of that evaluation image) per uint64 hash."""
        dist, idx = self.phash_index.search(phash_bytes(hashes), 1)
        return dist[:, 0], idx[:, 0]

    def flag(self, keys: list[str], vectors: np.ndarray | None, hashes: np.ndarray | None,
             has_vector: np.ndarray, has_hash: np.ndarray, max_cosine: float | None,
             max_hamming: int | None) -> pa.Table:
        """The contaminated rows of a batch (see the module doc). `vectors`/`hashes` are aligned with
        `keys`; `has_vector`/`has_hash` say which rows carry one (others hold any filler value)."""
        n = len(keys)
        cosine = np.full(n, np.nan, dtype=np.float32)
        hamming = np.full(n, -1, dtype=np.int64)
        by_emb = np.zeros(n, dtype=bool)
        by_hash = np.zeros(n, dtype=bool)
        near_emb = np.zeros(n, dtype=np.int64)
        near_hash = np.zeros(n, dtype=np.int64)
        if max_cosine is not None and self.embeddings is not None and has_vector.any():
            rows = np.flatnonzero(has_vector)
            cosine[rows], near_emb[rows] = self.nearest_embedding(vectors[rows])
            by_emb[rows] = cosine[rows] >= max_cosine
        if max_hamming is not None and self.phashes is not None and has_hash.any():
            rows = np.flatnonzero(has_hash)
            hamming[rows], near_hash[rows] = self.nearest_phash(hashes[rows])
            by_hash[rows] = hamming[rows] <= max_hamming
        hit = np.flatnonzero(by_emb | by_hash)
        nearest = np.where(by_emb, near_emb, near_hash)[hit]
        by = np.where(by_emb & by_hash, "both", np.where(by_emb, "embedding", "phash"))[hit]
        return pa.table({
            "key": pa.array([keys[i] for i in hit], pa.string()),
            "eval_image": pa.array(self.names[nearest].tolist(), pa.string()),
            "cosine": pa.array(cosine[hit], mask=np.isnan(cosine[hit])),
            "hamming": pa.array(hamming[hit].astype(np.int32), mask=hamming[hit] < 0),
            "by": pa.array(by.tolist(), pa.string()),
        }, schema=OUTPUT_SCHEMA)
