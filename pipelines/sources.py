"""Input: find the input files, cut them into resumable shards, and load a shard's rows.

A URL table (parquet, csv, tsv, jsonl; optionally .gz; local or any fsspec URL) is cut into
shards of `rows_per_shard` rows written as Parquet under `RUN/input/`, with the canonical
columns `key`, `url`, `caption` first and every other input column passed through. A folder
of img2dataset output (webdataset tars or parquet) is used in place: one shard per
img2dataset shard, read when the pipeline gets to it.

Keys are `FFFFFRRRRRRRRRR`: the input file's index (files sorted by path) and the row's
index in that file, so the same input always gives the same keys, whatever the shard size.
A `key_column` in the config takes the keys from the input instead.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tarfile
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from operators import status as st
from pipelines.config import InputConfig
from pipelines.storage import RunPaths

log = logging.getLogger(__name__)

TABLE_SUFFIXES = {
    ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
}
# columns the annotate stages add (download, decode, embed, match); an input column of the same name
# would be silently overwritten, so it is refused. Probe columns are `probe_NAME`.
RESERVED_COLUMNS = {
    "shard", "status", "error", "http_status", "n_bytes", "image", "original_width", "original_height",
    "width", "height", "sha256", "phash", "pixel_values", "input_ids", "attention_mask", "image_emb", "text_emb",
    "clip_score", "clip_model", "metaclip_entries", "metadata_id",
    "caption_lang", "caption_lang_score", "caption_words", "caption_chars",
}
RESERVED_PREFIX = "probe_"


class InputError(ValueError):
    """The input cannot be read as configured; the message names the file and the problem."""


@dataclass(frozen=True)
class Shard:
    id: str
    rows: int
    kind: str           # "table" (planned Parquet under RUN/input) or "img2dataset"
    path: str           # the planned shard file, or the img2dataset tar/parquet
    source: str         # the input file the rows come from
    meta_path: str | None = None  # img2dataset: the per-shard parquet listing every row

    def to_dict(self) -> dict:
        return asdict(self)


def table_format(path: str, configured: str) -> str:
    if configured != "auto":
        return configured
    name = PurePosixPath(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = PurePosixPath(name).suffix
    if suffix not in TABLE_SUFFIXES:
        raise InputError(f"cannot tell the format of {path} from its name; set input.format")
    return TABLE_SUFFIXES[suffix]


def list_input_files(config: InputConfig) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The input files in a stable order: a file, a folder (its table files), a glob, or a list."""
    paths = config.path if isinstance(config.path, list) else [config.path]
    fs, _ = fsspec.core.url_to_fs(paths[0])
    found: list[str] = []
    for path in paths:
        fs_path = fs._strip_protocol(path)
        if any(ch in path for ch in "*?["):
            found.extend(fs.glob(fs_path))
        elif fs.isdir(fs_path):
            for entry in fs.find(fs_path):
                name = PurePosixPath(entry).name
                if name.startswith(("_", ".")):
                    continue
                stem = name[:-3] if name.endswith(".gz") else name
                if config.format == "img2dataset":
                    if name.endswith(".tar") or (name.endswith(".parquet") and not _has_sibling_tar(fs, entry)):
                        found.append(entry)
                elif PurePosixPath(stem).suffix in TABLE_SUFFIXES:
                    found.append(entry)
        elif fs.exists(fs_path):
            found.append(fs_path)
        else:
            raise InputError(f"input not found: {path}")
    if not found:
        raise InputError(f"no input files under {config.path}")
    return fs, sorted(dict.fromkeys(found))


def _has_sibling_tar(fs: fsspec.AbstractFileSystem, parquet_path: str) -> bool:
    return fs.exists(parquet_path[: -len(".parquet")] + ".tar")


def _csv_batches(f: io.IOBase, delimiter: str, block_rows: int) -> pa.RecordBatchReader:
    # every column is read as text: type inference per block would disagree between blocks
    header = f.readline()
    names = next(csv.reader([header.decode("utf-8-sig")], delimiter=delimiter))
    return pacsv.open_csv(
        f,
        read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 22),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                             strings_can_be_null=False, quoted_strings_can_be_null=False),
    )


def iter_table_batches(fs: fsspec.AbstractFileSystem, path: str, fmt: str, rows: int):
    """Record batches of a URL table file, streamed (the whole file is never in memory)."""
    with fs.open(path, "rb", compression="infer") as f:
        if fmt == "parquet":
            yield from pq.ParquetFile(f).iter_batches(batch_size=rows)
        elif fmt in ("csv", "tsv"):
            yield from _csv_batches(f, "," if fmt == "csv" else "\t", rows)
        elif fmt == "jsonl":
            yield from pajson.open_json(f, read_options=pajson.ReadOptions(block_size=1 << 22))
        else:
            raise InputError(f"unsupported input format {fmt!r} for {path}")


def _canonical(batch: pa.RecordBatch, config: InputConfig, path: str, file_idx: int, first_row: int) -> pa.Table:
    table = pa.Table.from_batches([batch])
    names = table.column_names
    if config.url_column not in names:
        raise InputError(f"{path}: no url column {config.url_column!r} (columns: {', '.join(names)})")
    if config.caption_column not in names:
        raise InputError(f"{path}: no caption column {config.caption_column!r} (columns: {', '.join(names)})")
    if config.key_column and config.key_column not in names:
        raise InputError(f"{path}: no key column {config.key_column!r} (columns: {', '.join(names)})")
    canonical = {config.url_column, config.caption_column, config.key_column}
    extra = [n for n in names if n not in canonical]
    clash = sorted(n for n in extra if n in RESERVED_COLUMNS | {"key", "url", "caption"}
                   or n.startswith(RESERVED_PREFIX))
    if clash:
        raise InputError(f"{path}: input column(s) {clash} collide with annotation columns; rename them")
    if config.key_column:
        keys = table.column(config.key_column).cast(pa.string())
    else:
        keys = pa.array([f"{file_idx:05d}{first_row + i:010d}" for i in range(table.num_rows)], pa.string())
    columns = {
        "key": keys,
        "url": table.column(config.url_column).cast(pa.string()),
        "caption": table.column(config.caption_column).cast(pa.string()),
    }
    columns.update({n: table.column(n) for n in extra})
    return pa.table(columns)


def _rebatch(batches, rows: int):
    """Re-cut a stream of record batches into tables of exactly `rows` rows (the last may be short)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == rows:
                yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
                pending, count = [], 0
    if count:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def plan_table_file(config: InputConfig, fs: fsspec.AbstractFileSystem, path: str, file_idx: int,
                    paths: RunPaths) -> list[Shard]:
    """Cut one URL table into shard files under RUN/input/ and return their descriptions."""
    fmt = table_format(path, config.format)
    shards: list[Shard] = []
    first_row = 0
    try:
        for chunk_idx, batch in enumerate(_rebatch(iter_table_batches(fs, path, fmt, config.rows_per_shard),
                                                   config.rows_per_shard)):
            table = _canonical(batch, config, path, file_idx, first_row)
            shard_id = f"{file_idx:05d}_{chunk_idx:05d}"
            target = paths.input_shard(shard_id)
            paths.write_parquet(table, target)
            shards.append(Shard(shard_id, table.num_rows, "table", target, path))
            first_row += table.num_rows
    except InputError:
        raise
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError, csv.Error, EOFError) as err:
        raise InputError(f"cannot read {path} as {fmt}: {err}".splitlines()[0]) from None
    if not shards:
        log.warning("input file %s has no rows", path)
    return shards


# ---------------------------------------------------------------- img2dataset output as input

_I2D_OWN = {"key", "url", "caption", "status", "error_message", "width", "height", "original_width",
            "original_height", "exif", "sha256", "md5", "jpg", "png", "webp", "txt", "json"}


def plan_img2dataset_file(fs: fsspec.AbstractFileSystem, path: str, file_idx: int) -> Shard:
    """One img2dataset shard; its rows are read from the tar (or parquet) when processed."""
    meta = path[: -len(".tar")] + ".parquet" if path.endswith(".tar") else path
    meta_path = meta if fs.exists(meta) else None
    if meta_path is not None:
        rows = pq.ParquetFile(fs.open(meta_path, "rb")).metadata.num_rows
    else:
        rows = len(_read_tar_samples(fs, path))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    full = path if protocol in ("file", "local") else f"{protocol}://{path}"
    full_meta = None if meta_path is None else (meta_path if protocol in ("file", "local")
                                                else f"{protocol}://{meta_path}")
    return Shard(f"{file_idx:05d}_00000", rows, "img2dataset", full, full, full_meta)


def _read_tar_samples(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = PurePosixPath(member.name).name
            key, _, ext = name.partition(".")
            data = tar.extractfile(member).read()
            samples.setdefault(key, {})[ext] = data
    return samples


def _img2dataset_status(i2d_status: str | None, message: str | None) -> tuple[str, str | None]:
    """Map img2dataset's status and message to our vocabulary, keeping its message as the error."""
    if i2d_status == "success":
        return st.OK, None
    text = message or i2d_status or "failed in img2dataset"
    low = text.lower()
    rules = [("x-robots-tag", st.OPTED_OUT), ("timed out", st.TIMEOUT), ("timeout", st.TIMEOUT),
             ("http error", st.HTTP_ERROR), ("too small", st.TOO_SMALL), ("aspect ratio", st.BAD_ASPECT_RATIO),
             ("area too large", st.TOO_LARGE), ("unknown url type", st.INVALID_URL),
             ("decoding error", st.DECODE_ERROR)]
    for needle, status in rules:
        if needle in low:
            return status, f"img2dataset: {text}"
    if i2d_status == "failed_to_resize":
        return st.DECODE_ERROR, f"img2dataset: {text}"
    return st.CONNECTION_ERROR, f"img2dataset: {text}"


def load_img2dataset_shard(shard: Shard) -> pa.Table:
    """Rows of one img2dataset shard with status/error mapped and image bytes attached (ok rows)."""
    fs, path = fsspec.core.url_to_fs(shard.path)
    samples = _read_tar_samples(fs, path) if path.endswith(".tar") else {}
    if shard.meta_path is not None:
        meta_fs, meta_path = fsspec.core.url_to_fs(shard.meta_path)
        meta = pq.read_table(meta_fs.open(meta_path, "rb"))
        if not path.endswith(".tar"):  # parquet output format: the image is a column
            image_col = next((c for c in ("jpg", "png", "webp") if c in meta.column_names), None)
            images = meta.column(image_col).to_pylist() if image_col else [None] * meta.num_rows
            samples = {k: {"jpg": v} for k, v in zip(meta.column("key").to_pylist(), images, strict=True) if v}
        records = meta.to_pylist()
    else:
        records = [json.loads(s.get("json", b"{}")) | {"key": k} for k, s in sorted(samples.items())]
    keys, urls, captions, statuses, errors, images = [], [], [], [], [], []
    extra: dict[str, list] = {}
    for record in records:
        key = str(record["key"])
        sample = samples.get(key, {})
        data = next((sample[e] for e in ("jpg", "png", "webp") if e in sample), None)
        status, error = _img2dataset_status(record.get("status", "success" if data else None),
                                            record.get("error_message"))
        if status == st.OK and data is None:
            status, error = st.DECODE_ERROR, "img2dataset lists the row as a success but its image is missing"
        caption = record.get("caption")
        if caption is None and "txt" in sample:
            caption = sample["txt"].decode("utf-8", "replace")
        keys.append(key)
        urls.append(record.get("url"))
        captions.append(caption)
        statuses.append(status)
        errors.append(error)
        images.append(data if status == st.OK else None)
        for name, value in record.items():
            if name not in _I2D_OWN and name not in RESERVED_COLUMNS and not name.startswith(RESERVED_PREFIX):
                extra.setdefault(name, []).append(value)
    columns = {"key": pa.array(keys, pa.string()), "url": pa.array(urls, pa.string()),
               "caption": pa.array(captions, pa.string())}
    columns.update({n: pa.array(v) for n, v in extra.items() if len(v) == len(keys)})
    columns.update({
        "status": pa.array(statuses, pa.string()),
        "error": pa.array(errors, pa.string()),
        "http_status": pa.nulls(len(keys), pa.int32()),
        "n_bytes": pa.array([len(d) if d else None for d in images], pa.int64()),
        "image": pa.array(images, pa.binary()),
    })
    return pa.table(columns)
