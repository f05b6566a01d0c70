"""Decontamination: the pool rows that show (nearly) an evaluation image, by CLIP embedding or pHash.

    RUN/dedup/decontam-HASH.parquet   ONLY the contaminated pool keys, sorted by key:
        key, eval_image (name of the nearest evaluation image), cosine (float32: max cosine to
        any evaluation image), hamming (int32: min pHash Hamming distance), by ('embedding' |
        'phash' | 'both')
    RUN/dedup/decontam-HASH.json      settings, the evaluation images used and skipped, counts

HASH is a short hash of the evaluation set's bytes (every image's name and sha256), the thresholds
and the run's embed model and decode settings: a rerun with the same evaluation set and settings
returns the existing table, anything else writes a new one. The rule (cosine >= max_cosine, or
Hamming <= max_hamming) is in operators/decontam.py.

Evaluation images: a folder (local or any fsspec URL) searched recursively for .jpg/.jpeg/.png/
.webp/.bmp/.gif files, named by their path relative to the folder; or a Parquet file with an image
column (`image`, else its only binary column) named by a `name`/`path`/`file`/`key` column, else
`row N`. They go through the run's own decode settings (resize and re-encode, so the pixels the model
sees are those a pool copy of the same image had; the run's size and aspect filters are not applied:
a tiny evaluation image still counts) and the run's embed model, on CPU in this process. An image
that cannot be decoded is skipped and listed in the json (`eval_skipped`); if none can, it is an error.

The pool side reads only what annotate stored: RUN/embeddings (image_emb) and the annotations'
`phash`; one Ray task per annotation shard. Nothing is downloaded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from operators import status as st
from operators.clip import to_matrix
from operators.decode import decode_image
from operators.decontam import OUTPUT_SCHEMA, EvalIndex
from operators.embed import ClipEmbedder, ClipPreprocessor
from operators.semdedup import normalize
from pipelines.core.config import AnnotateConfig, ConfigError, load_config
from pipelines.core.duck import parquet_url
from pipelines.core.engine import run_tasks
from pipelines.core.passes import Pass
from pipelines.core.storage import RunPaths
from pipelines.core.verb_options import DecontamOptions
from pipelines.models import resolve_model

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
NAME_COLUMNS = ("name", "path", "file", "key")
EMBED_BATCH = 32


# ---------------------------------------------------------------- the evaluation set

def read_eval_images(eval_path: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of every evaluation image, sorted by name."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(eval_path))
    root = root.rstrip("/")
    if not fs.exists(root):
        raise ConfigError(f"decontaminate: eval_path {eval_path} does not exist")
    if fs.isdir(root):
        files = sorted(p for p in fs.find(root) if p.lower().endswith(IMAGE_SUFFIXES))
        images = [(p[len(root) + 1:], fs.cat_file(p)) for p in files]
    elif root.lower().endswith(".parquet"):
        images = _parquet_images(fs, root, eval_path)
    else:
        raise ConfigError(f"decontaminate: eval_path {eval_path} is neither a folder of images nor a .parquet file")
    if not images:
        raise ConfigError(f"decontaminate: eval_path {eval_path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(images)


def _parquet_images(fs, path: str, eval_path: str) -> list[tuple[str, bytes]]:
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    binary = [f.name for f in table.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    column = "image" if "image" in binary else (binary[0] if len(binary) == 1 else None)
    if column is None:
        raise ConfigError(f"decontaminate: {eval_path} has no image column (a binary column named 'image', "
                          f"or a single binary column; found {binary or 'none'})")
    name_column = next((c for c in NAME_COLUMNS if c in table.column_names), None)
    names = (table.column(name_column).cast(pa.string()).to_pylist() if name_column
             else [f"row {i}" for i in range(table.num_rows)])
    return [(str(n), b) for n, b in zip(names, table.column(column).to_pylist(), strict=True) if b is not None]


def run_config(paths: RunPaths) -> AnnotateConfig:
    raw = paths.read_config()
    if raw is None:
        raise ConfigError(f"decontaminate: {paths.url} is not a run folder (no config.yaml)")
    return load_config(base=raw)


def prepare_eval_set(images: list[tuple[str, bytes]], config: AnnotateConfig,
                     embed: bool) -> tuple[list[str], np.ndarray | None, np.ndarray, list[dict]]:
    """Decode (run's resize/encode, no size filters), pHash and optionally embed the evaluation images.

    Returns names, unit embeddings (or None), uint64 pHashes, and the skipped images with the reason."""
    options = config.decode.model_copy(update={"min_image_size": 0, "max_aspect_ratio": float("inf")})
    names, encoded, hashes, skipped = [], [], [], []
    for name, data in images:
        decoded = decode_image(data, options)
        if decoded.status != st.OK:
            skipped.append({"image": name, "status": decoded.status, "error": decoded.error})
            continue
        names.append(name)
        encoded.append(decoded.image)
        hashes.append(decoded.phash)
    if skipped:
        log.warning("decontaminate: %d of %d evaluation images could not be decoded and are skipped (first: %s)",
                    len(skipped), len(images), skipped[0])
    if not names:
        raise ConfigError(f"decontaminate: none of the {len(images)} evaluation images could be decoded "
                          f"(first: {skipped[0]['image']}: {skipped[0]['error']})")
    vectors = embed_images(encoded, config) if embed else None
    return names, vectors, np.array(hashes, dtype=np.uint64), skipped


def embed_images(encoded: list[bytes], config: AnnotateConfig) -> np.ndarray:
    """Image embeddings with the run's model (CPU, in this process), as annotate computes them."""
    model_path = resolve_model(config.embed.model)
    preprocess = ClipPreprocessor(model_path)
    embedder = ClipEmbedder(model_path, config.embed.model_copy(update={"device": "cpu", "probes": {}}))
    out = []
    for start in range(0, len(encoded), EMBED_BATCH):
        chunk = encoded[start:start + EMBED_BATCH]
        batch = pa.table({"status": [st.OK] * len(chunk), "image": pa.array(chunk, pa.binary()),
                          "caption": [""] * len(chunk)})
        out.append(to_matrix(embedder(preprocess(batch)).column("image_emb")))
    return normalize(np.concatenate(out))


# ---------------------------------------------------------------- the pool side (a Ray task per shard)

def flag_shard(paths: RunPaths, shard: str, index: EvalIndex, max_cosine: float | None,
               max_hamming: int | None) -> pa.Table:
    """The contaminated rows of one annotation shard (ok rows; embeddings from RUN/embeddings/SHARD)."""
    with paths.fs.open(paths.output("annotations", shard), "rb") as f:
        rows = pq.read_table(f, columns=["key", "status", "phash"])
    rows = rows.filter(pc.equal(rows.column("status"), st.OK)).drop_columns(["status"])
    vectors, has_vector = None, np.zeros(rows.num_rows, dtype=bool)
    if max_cosine is not None:
        with paths.fs.open(paths.output("embeddings", shard), "rb") as f:
            emb = pq.read_table(f, columns=["key", "image_emb"])
        emb = emb.filter(pc.is_valid(emb.column("image_emb")))
        position = pc.index_in(emb.column("key"), value_set=rows.column("key")).to_numpy(zero_copy_only=False)
        stored = to_matrix(emb.column("image_emb"))
        vectors = np.zeros((rows.num_rows, stored.shape[1]), dtype=np.float32)
        found = ~np.isnan(position.astype(float))
        target = position[found].astype(np.int64)
        vectors[target] = normalize(stored[found])
        has_vector[target] = True
    phash = rows.column("phash")
    has_hash = phash.is_valid().to_numpy(zero_copy_only=False)
    hashes = phash.fill_null(0).to_numpy()
    return index.flag(rows.column("key").to_pylist(), vectors, hashes, has_vector, has_hash, max_cosine,
                      max_hamming)


# ---------------------------------------------------------------- the pass

def _fingerprint(images: list[tuple[str, bytes]], settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name, data in images:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:12]


def decontaminate(run: str, options: DecontamOptions, overwrite: bool = False) -> str:
    """Write (or reuse) RUN/dedup/decontam-HASH.parquet, the contaminated pool keys; return its path (a URL
    for a remote run). options: the evaluation set and thresholds (DecontamOptions' fields and defaults);
    overwrite: recompute even when the table exists."""
    import ray

    eval_path, max_cosine, max_hamming = options.eval_path, options.max_cosine, options.max_hamming
    this = Pass(run)
    started, run, paths = this.started, this.run, this.paths
    config = run_config(paths)
    shards = paths.output_shards("annotations")
    if not shards:
        raise ConfigError(f"decontaminate: {run} has no annotations (RUN/annotations/*.parquet)")
    if max_cosine is not None:
        missing = [s for s in shards if not paths.exists(paths.output("embeddings", s))]
        if config.embed is None or missing:
            raise ConfigError(f"decontaminate: max_cosine is set but {run} has no image embeddings "
                              f"{'(no embed section)' if config.embed is None else f'for shard {missing[0]}'}; "
                              "annotate with an embed section, or pass max_cosine=None to use pHash only")
    images = read_eval_images(eval_path)
    settings = {"max_cosine": max_cosine, "max_hamming": max_hamming, "decode": config.decode.model_dump(mode="json"),
                "model": config.embed.model if config.embed and max_cosine is not None else None}
    name = f"decontam-{_fingerprint(images, settings)}"
    target, info_path = paths.dedup(f"{name}.parquet"), paths.dedup(f"{name}.json")
    # NAME hashes the settings and the evaluation images: other settings write another table, never refused.
    # eval_path, stored beside them, changes nothing (the images' bytes do), so it is not compared.
    check = this.settings(info_path, settings, fields=tuple(settings))
    if not overwrite and check.same and paths.exists(target):
        log.info("decontaminate: reusing %s", target)
        return parquet_url(paths, target)

    names, vectors, hashes, skipped = prepare_eval_set(images, config, embed=max_cosine is not None)
    index = EvalIndex(names, vectors, hashes if max_hamming is not None else None)
    prepared_at = time.time()
    this.start_ray()
    index_ref = ray.put(index)
    parts = run_tasks(flag_shard, [(paths, s, index_ref, max_cosine, max_hamming) for s in shards])
    table = pa.concat_tables([OUTPUT_SCHEMA.empty_table(), *parts]).sort_by("key")
    paths.write_parquet(table, target)
    by = table.column("by").to_pylist()
    this.write_summary({
        "settings": settings | {"eval_path": str(eval_path)},
        "eval_images": len(names), "eval_skipped": skipped,
        "counts": {"contaminated": table.num_rows, **{k: by.count(k) for k in ("embedding", "phash", "both")}},
        "seconds": {"eval_set": round(prepared_at - started, 2), "total": round(time.time() - started, 2)},
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }, info_path)
    log.info("decontaminate: %d contaminated pool rows from %d evaluation images", table.num_rows, len(names))
    return parquet_url(paths, target)

