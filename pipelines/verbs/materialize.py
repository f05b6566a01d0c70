"""materialize: write a subset as WebDataset tar shards (and a Parquet copy) for trainers.

    materialize(run, name, out) reads RUN/subsets/NAME/manifest.parquet and writes

    OUT/00000.tar ...        KEY.jpg (the stored image bytes, unchanged; .png/.webp when stored so),
                             KEY.txt (the caption, UTF-8), KEY.json (the annotation row's scalar fields);
                             samples_per_shard samples per tar (the last one holds the rest), ordered by key
    OUT/parquet/00000.parquet ...   the same samples, one file per tar: key, caption, image, image_format
                             and the KEY.json fields as columns
    OUT/index.json           the shard index: name, samples, first/last key, bytes per tar; total samples;
                             OpenCLIP's --train-data brace pattern and --train-num-samples; run, subset, time
    OUT/_SUCCESS             written last: an output without it is incomplete (killed, or still being written)

How it scales (hundreds of millions of samples on a Ray cluster):

1. Plan in the driver with DuckDB, over keys only: the manifest joined with the annotations' light
   columns (key, status, shard) gives every kept key once, with the run shard that holds its image
   (RUN/images/SHARD.parquet), in a DuckDB temporary table that spills to disk. DuckDB sorts it out of
   core; the driver streams the sorted (key, shard) pairs in record batches and cuts them every
   samples_per_shard rows. Images never pass through the driver, and at most a window of shards' keys
   is held there at any time.
2. One Ray task per output shard gets its keys (a few hundred KB) and the few run shards they live in.
   It reads from RUN/images/SHARD.parquet only the row groups whose key statistics overlap its key
   range (images are written sorted by key, row groups of 256: a pyarrow dataset filter on the key
   range prunes the rest), keeps its keys, joins the annotation rows, and streams the tar straight to
   OUT (a temporary name renamed into place locally; an object store shows an object only once complete).
   Tasks run in parallel, a bounded window at a time; a task that fails on I/O is retried. A task holds
   its shard's samples in memory (samples_per_shard x image size: 10,000 x 30 kB is about 300 MB).
3. The driver writes index.json, then _SUCCESS. There is no resume: a killed call leaves no _SUCCESS, and
   running it again with overwrite starts over.

Tailor's own keys (file index + row, zero-padded) sort in the order of the run's shards, so a tar's
keys come from one or two run shards and each image row group is read about once (twice at a tar's
boundary). Keys from an input key_column that are not ordered like the input make every tar touch many
run shards: correct, but each task then reads many row groups for few samples (sorting by key is what
makes the output deterministic; group such keys before annotating if that matters).

Keys without a stored image (a hand-made manifest naming rows whose status is not ok, or keys not
in the run) fail the whole call by default, with the count per reason and a few keys; with
skip_missing=True they are left out and counted in the summary (`skipped`). Keys WebDataset cannot
carry (empty, or holding '.' or '/': it splits KEY.EXT at the first dot) always fail. A key listed
more than once in the manifest is written once and counted in the summary.

Tar entries carry a fixed mtime, uid/gid 0, no user names and mode 0644, so the same run and subset
give byte-identical tars. OUT may be any fsspec URL (s3://...).

caption_source names the annotation column that becomes KEY.txt ("caption" by default). With a caption set
(`tailor recaption`), KEY.txt is the new caption with probability `mix` (Recap-CLIP: 0.8), the draw fixed per
key by `mix_seed` so a rerun writes the same tars; KEY.json's caption_origin says which text it got, and the
Parquet copy keeps the original as original_caption.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from tqdm import tqdm

from pipelines.core.config import ConfigError
from pipelines.core.duck import connect, run_sql, scan, sql
from pipelines.core.engine import run_tasks
from pipelines.core.storage import RunPaths, SubsetError
from pipelines.core.verb_options import MaterializeOptions
from pipelines.verbs.recaption import caption_set_parts, read_captions

log = logging.getLogger(__name__)

TAR_MTIME = 0  # fixed entry metadata: the same samples give byte-identical tars
SUCCESS = "_SUCCESS"
INDEX = "index.json"
OUR_FILES = (".tar", INDEX, SUCCESS, "parquet")  # what overwrite may remove from OUT
EXAMPLES = 5


class MaterializeError(ConfigError):
    """A subset that cannot be materialized as asked, phrased as one line."""


# ---------------------------------------------------------------- samples -> bytes

def image_format(data: bytes, default: str = "jpg") -> str:
    """The file extension of encoded image bytes, from their signature."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return default


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def scalar_columns(schema: pa.Schema) -> list[str]:
    """The annotation columns KEY.json carries: every scalar field (not lists, structs, binary)."""
    def scalar(t: pa.DataType) -> bool:
        return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
                or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_temporal(t)
                or pa.types.is_decimal(t) or pa.types.is_null(t))
    return [f.name for f in schema if scalar(f.type)]


def sample_json(row: dict) -> bytes:
    return json.dumps({k: _json_value(v) for k, v in row.items()}, sort_keys=True, ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_tar(f, samples: pa.Table, caption_source: str, json_columns: list[str], default_format: str) -> list[str]:
    """Write samples (key, image, caption_source and json_columns) as KEY.EXT, KEY.txt, KEY.json members
    in row order; return each sample's image extension."""
    formats = []
    rows = samples.select(json_columns).to_pylist()
    images = samples.column("image").combine_chunks()
    captions = samples.column(caption_source).to_pylist()
    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, row in enumerate(rows):
            key, image = row["key"], images[i].as_py()
            ext = image_format(image, default_format)
            formats.append(ext)
            _add_member(tar, f"{key}.{ext}", image)
            _add_member(tar, f"{key}.txt", (captions[i] or "").encode("utf-8"))
            _add_member(tar, f"{key}.json", sample_json(row))
    return formats


@contextlib.contextmanager
def _atomic_open(out: RunPaths, path: str) -> Iterator:
    """A file at `path` that appears complete or not at all (rename locally; object stores do it themselves)."""
    if not out.is_local:
        with out.fs.open(path, "wb") as f:
            yield f
        return
    tmp = f"{path.rsplit('/', 1)[0]}/.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------- one output shard (a Ray task)

def read_samples(run: RunPaths, keys: pa.Array, sources: list[str], caption_source: str) -> pa.Table:
    """The annotation rows of `keys` (sorted, unique) with their stored `image`, reading only the `sources` run
    shards and, in their images, only the row groups whose key statistics overlap these keys' range."""
    first, last = (v.as_py() for v in pc.min_max(keys).values())
    fs = None if run.is_local else run.fs
    wanted = (pc.field("key") >= first) & (pc.field("key") <= last) & pc.field("key").isin(keys)
    images = pads.dataset([run.output("images", s) for s in sources], format="parquet", filesystem=fs)
    images = images.to_table(columns=["key", "image"], filter=wanted)
    images = images.cast(pa.schema([("key", pa.string()), ("image", pa.large_binary())]))  # > 2 GB per shard
    annotations = pads.dataset([run.output("annotations", s) for s in sources], format="parquet", filesystem=fs)
    annotations = annotations.to_table(filter=wanted)
    if caption_source not in annotations.column_names:
        raise MaterializeError(f"caption_source: no column {caption_source!r} in {run.url}/annotations")
    taken = []
    for table, where in ((annotations, "annotations"), (images, "images")):
        at = pc.index_in(keys, value_set=table.column("key"))  # the planned order, whatever the files' order
        if at.null_count:
            lost = keys.filter(at.is_null()).to_pylist()
            raise MaterializeError(f"{run.url}: {len(lost)} keys (planned from the annotations) are missing from "
                                   f"{where}/ ({', '.join(lost[:EXAMPLES])}); the run is incomplete or damaged")
        taken.append(table.take(at))
    annotations, images = taken
    return annotations.append_column("image", images.column("image"))


def with_mixed_captions(run: RunPaths, samples: pa.Table, caption_source: str, mix: dict) -> pa.Table:
    """Add `mixed_caption` (the new caption of caption set mix["captions"] with probability mix["p"], fixed
    per key by mix["seed"]; else the original) and `caption_origin` (recaption | original)."""
    new = read_captions(run, mix["captions"], samples.column("key").combine_chunks())
    keys = samples.column("key").to_pylist()
    captions, origin = mix_captions(keys, samples.column(caption_source).to_pylist(), [new.get(k) for k in keys],
                                    mix["p"], mix["seed"])
    return samples.append_column("mixed_caption", pa.array(captions, pa.string())).append_column(
        "caption_origin", pa.array(origin, pa.string()))


@dataclass(frozen=True)
class ShardJob:
    """What every write_shard task of one materialize shares."""

    run: str  # the run and the output folder, as Ray workers see them
    out: str
    width: int  # digits of a shard's name
    caption_source: str
    default_format: str  # the image format of samples whose stored bytes do not say
    parquet: bool
    mix: dict | None = None  # {captions, p, seed}: mix a caption set's new captions in


def write_shard(job: ShardJob, index: int, keys: pa.Array, sources: list[str]) -> dict:
    """Write OUT/{index}.tar (and OUT/parquet/{index}.parquet) holding exactly `keys`."""
    started = time.time()
    run, out = RunPaths(job.run), RunPaths(job.out)
    caption_source, mix = job.caption_source, job.mix
    samples = read_samples(run, keys, sources, caption_source)
    if mix is not None:
        samples = with_mixed_captions(run, samples, caption_source, mix)
        caption_source = "mixed_caption"
    json_columns = scalar_columns(samples.drop_columns(["image", "mixed_caption"] if mix else ["image"]).schema)
    name = f"{index:0{job.width}d}"
    with _atomic_open(out, out.join(f"{name}.tar")) as f:
        formats = write_tar(f, samples, caption_source, json_columns, job.default_format)
        size = f.tell()
    if job.parquet:
        out.write_parquet(parquet_copy(samples, caption_source, json_columns, formats),
                          out.join("parquet", f"{name}.parquet"), row_group_size=256)
    recaptioned = 0
    if mix is not None:
        recaptioned = int(pc.sum(pc.equal(samples.column("caption_origin"), "recaption")).as_py() or 0)
    return {"name": f"{name}.tar", "samples": samples.num_rows, "first_key": keys[0].as_py(),
            "last_key": keys[-1].as_py(), "bytes": size, "seconds": round(time.time() - started, 3),
            "recaptioned": recaptioned}


def parquet_copy(samples: pa.Table, caption_source: str, json_columns: list[str], formats: list[str]) -> pa.Table:
    """The tar's samples as a table: key, caption (KEY.txt), image, image_format, then KEY.json's fields
    (the annotation's own caption as `original_caption` when KEY.txt comes from another column)."""
    rest = [c for c in json_columns if c not in ("key", "caption")]
    columns = {"key": samples.column("key"), "caption": samples.column(caption_source),
               "image": samples.column("image"), "image_format": pa.array(formats, pa.string())}
    if caption_source != "caption" and "caption" in samples.column_names:
        columns["original_caption"] = samples.column("caption")
    columns.update({c: samples.column(c) for c in rest if c not in columns})
    return pa.table(columns)


# ---------------------------------------------------------------- the driver

def _check_out(out: RunPaths, overwrite: bool) -> list[str]:
    """OUT's entries, refusing a non-empty OUT without overwrite, and any OUT holding files not ours."""
    if not out.fs.exists(out.root):
        return []
    entries = [e for e in (p.rstrip("/").rsplit("/", 1)[-1] for p in out.fs.ls(out.root, detail=False)) if e]
    if entries and not overwrite:
        raise MaterializeError(f"out: {out.url} is not empty ({len(entries)} entries, e.g. {sorted(entries)[0]}); "
                               "pass --overwrite to replace a previous output")
    foreign = sorted(e for e in entries if not (e.endswith(".tar") or e in OUR_FILES or e.startswith(".tmp-")))
    if foreign:
        raise MaterializeError(f"out: {out.url} holds files materialize did not write ({', '.join(foreign[:5])}); "
                               "refusing to overwrite it")
    return entries


def _clear_out(out: RunPaths, entries: list[str]) -> None:
    """Remove a previous output (its _SUCCESS first: a half-cleaned folder must not look complete)."""
    out.remove(out.join(SUCCESS))
    for entry in sorted(entries):
        if entry != SUCCESS:
            out.remove(out.join(entry))
    out.fs.makedirs(out.root, exist_ok=True)


def _stored_format(paths: RunPaths) -> str:
    config = paths.read_config()
    if config is None:
        return "jpg"
    return str((config.get("decode") or {}).get("encode_format", "jpg"))


def plan(con, paths: RunPaths, manifest: str, skip_missing: bool, caption_source: str) -> dict:
    """Check the subset against the run and leave table `kept` (materialize_keys.sql) in `con`; return the facts."""
    annotations = paths.outputs("annotations")
    if not annotations:
        raise MaterializeError(f"{paths.url} has no annotations (run `tailor annotate` first)")
    scan(con, paths, [manifest]).select("key").create_view("manifest")
    rel = scan(con, paths, annotations)
    if caption_source not in rel.columns:
        raise MaterializeError(f"caption_source: no column {caption_source!r} in {paths.url}/annotations")
    rel.select("key, status, shard").create_view("annotations")
    con.execute(sql("materialize_keys"))
    facts = run_sql(con, "materialize_problems", examples=EXAMPLES).to_pylist()[0]
    facts["missing"] = {r["reason"]: r["keys"] for r in run_sql(con, "materialize_missing").to_pylist()}
    subset = f"subset {manifest.rstrip('/').rsplit('/', 2)[-2]!r}"
    if facts["unusable_keys"]:
        raise MaterializeError(f"{subset}: {facts['unusable_keys']} keys of the subset cannot be WebDataset keys "
                               f"(empty, or holding '.' or '/'), e.g. {', '.join(facts['unusable_examples'])}")
    if facts["without_image"] and not skip_missing:
        reasons = ", ".join(f"{reason} {n}" for reason, n in facts["missing"].items())
        raise MaterializeError(
            f"{subset}: {facts['without_image']} of its {facts['keys']} keys have no stored image ({reasons}), "
            f"e.g. {', '.join(facts['without_image_examples'])}; pass --skip-missing to leave them out")
    return facts


def _shard_batches(con, samples_per_shard: int) -> Iterator[pa.Table]:
    """The sorted (key, shard) stream, cut into tables of samples_per_shard rows (the last: the rest)."""
    reader = con.sql(sql("materialize_order")).to_arrow_reader(min(samples_per_shard, 1 << 16))
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in reader:
        while batch.num_rows:
            take = min(batch.num_rows, samples_per_shard - held)
            pending.append(batch.slice(0, take))
            held += take
            batch = batch.slice(take)
            if held == samples_per_shard:
                yield pa.Table.from_batches(pending).combine_chunks()
                pending, held = [], 0
    if held:
        yield pa.Table.from_batches(pending).combine_chunks()


def _write_shards(con, job: ShardJob, total: int, options: MaterializeOptions, progress: bool,
                  name: str) -> list[dict]:
    """One Ray task per output shard, a bounded window in flight; the shards' index entries."""
    import ray

    n_shards = -(-total // options.samples_per_shard)
    bar = None
    if progress:
        bar = tqdm(total=total, unit="samples", desc=f"materialize {name}", disable=None)  # None: a terminal only

    def items():
        for index, batch in enumerate(_shard_batches(con, options.samples_per_shard)):
            keys = batch.column("key").combine_chunks().cast(pa.string())
            yield job, index, keys, sorted(pc.unique(batch.column("shard")).to_pylist())

    try:
        shards = run_tasks(write_shard, items(), window=options.window, max_retries=3, retry_exceptions=[OSError],
                           on_result=(lambda info: bar.update(info["samples"])) if bar is not None else None)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, MaterializeError):
            raise MaterializeError(str(err.cause)) from None
        raise
    finally:
        if bar is not None:
            bar.close()
    written = sum(s["samples"] for s in shards)
    if len(shards) != n_shards or written != total:
        raise RuntimeError(f"{job.out}: wrote {written} samples in {len(shards)} shards, planned {total} in "
                           f"{n_shards}")
    return shards


def materialize(run: str, name: str, out: str, options: MaterializeOptions | None = None, overwrite: bool = False,
                progress: bool = True) -> dict:
    """Write subset NAME of RUN as WebDataset tar shards (and a Parquet copy) into OUT; return the summary.

    options: how (MaterializeOptions' fields and defaults; None: the defaults). captions: a caption set of
    RUN (tailor recaption): KEY.txt is its caption with probability `mix`, fixed per key by `mix_seed`,
    else the caption_source text; KEY.json says which (caption_origin). overwrite: replace a previous
    materialize output in OUT.
    """
    started = time.time()
    options = options or MaterializeOptions()
    caption_source, captions = options.caption_source, options.captions
    run, out = RunPaths.absolute(run), RunPaths.absolute(out).rstrip("/")  # as Ray workers will see them
    paths, out_paths = RunPaths(run), RunPaths(out)
    try:
        manifest = paths.complete_subset(name).manifest
    except SubsetError as err:
        raise MaterializeError(str(err)) from None
    if paths.is_text_pass():
        raise MaterializeError(f"{run} is a text pass: it stores no image. Download the subset first (tailor fetch "
                               f"{run} --subset {name} --out FETCHED), then select and materialize from FETCHED")
    mix_spec = None
    if captions is not None:
        caption_set_parts(paths, captions)
        mix_spec = {"captions": captions, "p": options.mix, "seed": options.mix_seed}
    previous = _check_out(out_paths, overwrite)  # before planning: a refusal should be quick
    with connect() as con:
        facts = plan(con, paths, manifest, options.skip_missing, caption_source)
        total = facts["keys"] - facts["without_image"]
        if total == 0:
            raise MaterializeError(f"subset {name!r} of {run} has no samples with a stored image")
        _clear_out(out_paths, previous)
        width = max(5, len(str(-(-total // options.samples_per_shard) - 1)))
        job = ShardJob(run, out, width, caption_source, _stored_format(paths), options.parquet, mix_spec)
        shards = _write_shards(con, job, total, options, progress, name)
    written = sum(s["samples"] for s in shards)

    wall = time.time() - started
    n_shards = len(shards)
    pattern = f"{out}/{{{0:0{width}d}..{n_shards - 1:0{width}d}}}.tar"
    index = {
        "run": run,
        "subset": name,
        "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "samples": written,
        "samples_per_shard": options.samples_per_shard,
        "caption_source": caption_source,
        "captions": mix_spec,
        "recaptioned_samples": sum(s["recaptioned"] for s in shards),
        "train_data": pattern,
        "train_num_samples": written,
        "parquet": f"{out}/parquet" if options.parquet else None,
        "shards": [{k: s[k] for k in ("name", "samples", "first_key", "last_key", "bytes")} for s in shards],
    }
    out_paths.write_json(index, out_paths.join(INDEX))
    summary = {
        **{k: index[k] for k in ("run", "subset", "samples", "train_data", "train_num_samples", "captions",
                                 "recaptioned_samples")},
        "out": out,
        "shards": len(shards),
        "bytes": sum(s["bytes"] for s in shards),
        "manifest_rows": facts["manifest_rows"],
        "duplicated_keys": facts["duplicated_keys"],
        "skipped": {"keys": facts["without_image"], "by_reason": facts["missing"],
                    "examples": facts["without_image_examples"] or []},
        "wall_time_s": round(wall, 2),
        "samples_per_s": round(written / wall, 1) if wall > 0 else None,
        "task_seconds": round(sum(s["seconds"] for s in shards), 2),
    }
    out_paths.write_json(summary, out_paths.join(SUCCESS))  # last: the output is complete
    return summary


def mix_unit(key: str, seed: int) -> float:
    """A uniform draw in [0, 1) fixed by (seed, key): the same sample gets the same choice in every run."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def mix_captions(keys: list[str], originals: list[str | None], new: list[str | None], p: float,
                 seed: int) -> tuple[list[str | None], list[str]]:
    """Per sample, the new caption with probability p (Recap-CLIP trains on 80% new), else the original;
    a sample without a new caption keeps its original. Returns (captions, origin per sample)."""
    captions, origin = [], []
    for key, old, fresh in zip(keys, originals, new, strict=True):
        if fresh and mix_unit(key, seed) < p:
            captions.append(fresh)
            origin.append("recaption")
        else:
            captions.append(old)
            origin.append("original")
    return captions, origin
