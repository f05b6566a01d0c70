"""annotate: every input row becomes exactly one annotation row, with Ray Data.

    shards ─▶ load (CPU task per piece) ─▶ fetch (download + decode: tasks of download.threads threads,
           each row decoded on the thread that fetched it) ─▶ write parts to RUN/_staging
           ─▶ driver commits each shard
    (img2dataset tar input has its bytes already: load ─▶ decode ─▶ write)
    (a text pass, text_only: load ─▶ text ─▶ [match] ─▶ write, no network: every row not_fetched, the image
     columns null; `tailor fetch` (pipelines/verbs/fetch_subset.py) downloads a subset of it later, same keys)

The stream that reaches the driver is only part metadata (shard, part, rows), never
images. A shard is committed when all of its rows have been written: a Ray task merges its
parts into `annotations/SHARD.parquet` and `images/SHARD.parquet`, then writes
`_done/SHARD.json`. A rerun skips shards that have the marker and redoes the rest from
scratch, so a run killed at any point (SIGKILL included) resumes without losing or
duplicating a row.
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import yaml

from operators import status as st
from operators.decode import Decoder
from operators.embed import ClipEmbedder, ClipPreprocessor
from operators.fetch import Fetcher, not_fetched
from operators.text import CaptionText
from pipelines.core.config import AnnotateConfig, ConfigError, load_config
from pipelines.core.console import ProgressLine
from pipelines.core.engine import embed_actor_resources, init_ray, session_logs, storage_errors
from pipelines.core.hosts import HostsReport, RemoteBudget, start_budget
from pipelines.core.sources import (
    InputError,
    Shard,
    check_input,
    list_input_files,
    load_img2dataset_shard,
    plan_img2dataset_file,
    plan_table_file,
)
from pipelines.core.storage import RunPaths
from pipelines.core.throughput import StatsFormatError, stage_throughput
from pipelines.metadata import load_metadata
from pipelines.models import resolve_model
from pipelines.verbs.match import add_match_stage, save_metadata

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ["key", "image", "width", "height"]
EMBEDDING_COLUMNS = ["image_emb", "text_emb"]
OUTPUT_KINDS = ["annotations", "images", "embeddings"]
TEXT_PASS_PIECE_ROWS = 8192  # rows per task of a text pass (language ID and matching: ~1 s of work)


# ---------------------------------------------------------------- Ray

# ---------------------------------------------------------------- planning

@ray.remote(num_cpus=0.5)
def _plan_table_file(config, fs, path, file_idx, paths):
    return plan_table_file(config, fs, path, file_idx, paths)


def plan_shards(config: AnnotateConfig, paths: RunPaths) -> list[Shard]:
    """Cut the input into shards once; later runs of the same folder reuse the plan.

    One table file is planned here, in the driver, before Ray starts: any mistake in it (a missing column,
    a bad line) is reported at once. Many files are planned in parallel Ray tasks, once the first file's
    columns have been checked. On an InputError nothing planned is left behind."""
    if paths.exists(paths.plan):
        plan = paths.read_json(paths.plan)
        return [Shard(**s) for s in plan["shards"]]
    error = None
    try:
        shards, files, read = _plan_input(config, paths)
    except InputError as err:
        error = err
    if error is not None:  # raised outside the handler, and without the OSError it may wrap: an input
        paths.remove(paths.input)  # problem, not one of the run folder (see storage_errors)
        error.__cause__ = error.__context__ = None
        raise error
    paths.write_json({"shards": [s.to_dict() for s in shards], "rows": sum(s.rows for s in shards),
                      "files": files, "read": read}, paths.plan)
    return shards


def _plan_input(config: AnnotateConfig, paths: RunPaths) -> tuple[list[Shard], list[str], list[dict]]:
    fs, files = list_input_files(config.input)
    if config.input.format == "img2dataset":
        shards, read = [plan_img2dataset_file(fs, path, i) for i, path in enumerate(files)], []
    elif len(files) == 1:
        shards, read = plan_table_file(config.input, fs, files[0], 0, paths)
        read = [read]
    else:
        check_input(config.input)
        init_ray(config.ray.address)
        refs = [_plan_table_file.remote(config.input, fs, path, i, paths) for i, path in enumerate(files)]
        try:
            results = ray.get(refs)
        except ray.exceptions.RayTaskError as err:
            for ref in refs:  # stop the other files' planning before what they wrote is removed
                ray.cancel(ref)
            ray.wait(refs, num_returns=len(refs), timeout=60)
            if isinstance(err.cause, InputError):
                raise err.cause from None
            raise
        shards = [s for group, _ in results for s in group]
        read = [r for _, r in results]
    if not shards:
        raise InputError(f"the input {config.input.path} has no rows")
    return shards, files, read


# ---------------------------------------------------------------- stages (thin Ray wrappers over operators)

def pieces(shards: list[Shard], rows_per_piece: int, retry: dict[str, int] | None = None) -> list[dict]:
    """Work items: URL-table shards cut into pieces so download and decode run as many parallel tasks.

    (Ray Data merges a task's outputs into one block, so a whole shard per item would be one task
    per stage.) An img2dataset shard is one piece: its tar is read once. `retry`: finished shards and how many
    of their rows failed for a moment; their pieces cut those rows only (in key order: `transient_keys`).
    """
    items = []
    for shard in shards:
        rows = (retry or {}).get(shard.id, shard.rows)
        step = rows_per_piece if shard.kind == "table" else max(rows, 1)
        for offset in range(0, max(rows, 1), step):
            items.append(shard.to_dict() | {"offset": offset, "length": step, "retry": shard.id in (retry or {})})
    return items


def transient_keys(paths: RunPaths, shard: str) -> list[str]:
    """The keys of a committed shard's rows that failed for a moment (timeouts, resets, 5xx, rate_limited), in
    key order: what a rerun fetches again. Runs written before the `transient` column: by status."""
    with paths.fs.open(paths.output("annotations", shard), "rb") as f:
        names = set(pq.read_schema(f).names)
        columns = ["key", "status", "http_status"] + (["transient"] if "transient" in names else [])
        table = pq.read_table(f, columns=columns)
    if "transient" in names:
        mask = pc.fill_null(table.column("transient"), False)
    else:
        mask = pa.array([st.is_transient(s, h) for s, h in zip(table.column("status").to_pylist(),
                                                                 table.column("http_status").to_pylist(),
                                                                 strict=True)], pa.bool_())
    return sorted(table.filter(mask).column("key").to_pylist())


def load_pieces(batch: pa.Table, paths: RunPaths) -> pa.Table:
    tables = []
    for row in batch.to_pylist():
        offset, length, retry = row.pop("offset"), row.pop("length"), row.pop("retry")
        shard = Shard(**row)
        if shard.kind == "img2dataset":
            table = load_img2dataset_shard(shard)
        else:
            with paths.fs.open(shard.path, "rb") as f:
                table = pq.read_table(f)
            if retry:
                keys = transient_keys(paths, shard.id)[offset:offset + length]
                table = table.filter(pc.is_in(table.column("key"), pa.array(keys, table.column("key").type)))
            else:
                table = table.slice(offset, length)
        tables.append(table.append_column("shard", pa.array([shard.id] * table.num_rows, pa.string())))
    return pa.concat_tables(tables, promote_options="default")


def text_batch(batch: pa.Table, options) -> pa.Table:
    return CaptionText(options)(batch)


def decode_batch(batch: pa.Table, options) -> pa.Table:
    return Decoder(options)(batch)


_OPERATORS: dict[str, tuple[str, object]] = {}


def _worker_operator(kind: str, key: str, build):
    """One operator of a kind per worker process, rebuilt only when its settings change: thread pools, DNS
    caches, processors and tokenizers outlive the batch instead of being set up again for each one."""
    held = _OPERATORS.get(kind)
    if held is None or held[0] != key:
        held = _OPERATORS[kind] = (key, build())
    return held[1]


def fetch_batch(batch: pa.Table, download, decode, budget) -> pa.Table:
    key = download.model_dump_json() + decode.model_dump_json() + budget.key
    return _worker_operator("fetch", key, lambda: Fetcher(download, decode, budget))(batch)


def preprocess_batch(batch: pa.Table, model_path: str) -> pa.Table:
    return _worker_operator("preprocess", model_path, lambda: ClipPreprocessor(model_path))(batch)


def output_tables(part: pa.Table) -> dict[str, pa.Table]:
    """The run's tables for these rows: annotations (every row, light columns), and for ok rows the
    stored images and, when the embed stage ran, the embeddings."""
    ok = part.filter(pc.equal(part.column("status"), st.OK))
    heavy = [c for c in ("image", *EMBEDDING_COLUMNS) if c in part.column_names]
    tables = {"annotations": part.drop_columns(heavy), "images": ok.select(IMAGE_COLUMNS)}
    if "image_emb" in part.column_names:
        tables["embeddings"] = ok.select(["key", *EMBEDDING_COLUMNS, "clip_model"])
    return tables


def write_parts(batch: pa.Table, paths: RunPaths) -> pa.Table:
    """Write this batch's rows as staging parts, one per shard; return what was written."""
    shards, parts, rows, ok = [], [], [], []
    for shard in pc.unique(batch.column("shard")).to_pylist():
        part = batch.filter(pc.equal(batch.column("shard"), shard))
        name = uuid.uuid4().hex
        for kind, table in output_tables(part).items():
            paths.write_parquet(table, f"{paths.staging(shard)}/{name}.{kind}.parquet",
                                row_group_size=None if kind == "annotations" else 256)
        shards.append(shard)
        parts.append(name)
        rows.append(part.num_rows)
        ok.append(pc.sum(pc.equal(part.column("status"), st.OK)).as_py() or 0)
    return pa.table({"shard": pa.array(shards, pa.string()), "part": pa.array(parts, pa.string()),
                     "rows": pa.array(rows, pa.int64()), "ok": pa.array(ok, pa.int64())})


# ---------------------------------------------------------------- commit

def stage_of(status: str, original_width: int | None) -> str | None:
    """Which stage failed a row (None for ok); too_large is the decoder's when it read a header."""
    if status in (st.OK, st.NOT_FETCHED):
        return None
    if status == st.TOO_LARGE:
        return "decode" if original_width is not None else "download"
    return st.STAGE_OF_STATUS.get(status, "download")


def _read_parts(paths: RunPaths, shard: str, parts: list[str], kind: str) -> pa.Table:
    tables = []
    for part in parts:
        with paths.fs.open(f"{paths.staging(shard)}/{part}.{kind}.parquet", "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables, promote_options="default").sort_by("key")


def _merged(paths: RunPaths, shard: str, kind: str, new: pa.Table, keys: pa.Array) -> pa.Table:
    """A committed shard's `kind` table with the rows of `keys` (a rerun's retried rows) replaced by `new`'s.
    Idempotent: a commit killed between two files is merged again from the same parts by the next rerun."""
    path = paths.output(kind, shard)
    if not paths.exists(path):
        return new
    with paths.fs.open(path, "rb") as f:
        old = pq.read_table(f)
    kept = old.filter(pc.invert(pc.is_in(old.column("key"), keys)))
    return pa.concat_tables([kept, new], promote_options="default").sort_by("key")


@ray.remote(num_cpus=0.25, max_retries=3)
def commit_shard(paths: RunPaths, shard: str, parts: list[str], expected_rows: int, kinds: list[str],
                 retried: int | None = None) -> dict:
    """Seal a shard from its staged parts; `retried`: the parts hold that many rows retried in a finished
    shard of `expected_rows`, which replace their old rows (the heavy tables first, the marker last)."""
    annotations = _read_parts(paths, shard, parts, "annotations")
    keys = annotations.column("key")
    if retried is not None:
        if annotations.num_rows != retried:
            raise RuntimeError(f"shard {shard}: {annotations.num_rows} retried rows written, expected {retried}")
        annotations = _merged(paths, shard, "annotations", annotations, keys)
    distinct = pc.count_distinct(annotations.column("key")).as_py()
    if annotations.num_rows != expected_rows or distinct != expected_rows:
        raise RuntimeError(f"shard {shard}: {annotations.num_rows} rows, {distinct} distinct keys, "
                           f"expected {expected_rows}")
    for kind in kinds:  # the heavy tables first: a shard's annotations file appears last
        table = _read_parts(paths, shard, parts, kind)
        if retried is not None:
            table = _merged(paths, shard, kind, table, keys)
        paths.write_parquet(table, paths.output(kind, shard), row_group_size=256)
    paths.write_parquet(annotations, paths.output("annotations", shard))
    statuses = annotations.column("status").to_pylist()
    widths = annotations.column("original_width").to_pylist()
    failed_at = collections.Counter((stage_of(s, w), s) for s, w in zip(statuses, widths, strict=True))
    transient = pc.sum(pc.fill_null(annotations.column("transient"), False)).as_py() or 0 \
        if "transient" in annotations.column_names else None
    marker = {
        "shard": shard,
        "rows": annotations.num_rows,
        "transient": transient,
        "status_counts": dict(collections.Counter(statuses)),
        "failed_at": {f"{stage}:{status}": n for (stage, status), n in failed_at.items() if stage},
        "committed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    paths.write_json(marker, paths.done(shard))
    paths.remove(paths.staging(shard))
    return marker


# ---------------------------------------------------------------- the run

def recorded_config(paths: RunPaths) -> AnnotateConfig | None:
    """The config a run in this folder was made with (RUN/config.yaml); None where no run was recorded."""
    recorded = paths.read_config()
    return None if recorded is None else load_config(base=recorded)


def _prepare_folder(config: AnnotateConfig, paths: RunPaths, overwrite: bool) -> None:
    """Refuse a folder that holds a run of another config, naming what differs. Writes nothing: the config is
    recorded (RUN/config.yaml) once the input is planned, so a run refused for its input leaves nothing that
    would refuse the corrected command."""
    foreign = paths.foreign()
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", … ({len(foreign)} entries)" if len(foreign) > 5 else "")
        raise ConfigError(f"config error: {config.output} is not empty and holds no tailor run ({shown}); "
                          "annotate into a new or empty folder (--overwrite replaces runs only, never other files)")
    if overwrite:
        check_input(config.input)  # a mistake in the input must not cost the run being overwritten
        paths.remove(paths.root)
        return
    previous = recorded_config(paths)
    if previous is not None:
        if previous.fingerprint() != config.fingerprint():
            differences = previous.differences(config)
            shown = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
            raise ConfigError(
                f"config error: {config.output} holds a run made with a different input or settings "
                f"({shown or f'config hash {previous.fingerprint()} != {config.fingerprint()}'}); "
                "use another output folder, or --overwrite to start over")
    elif paths.exists(paths.input):
        paths.remove(paths.input)  # planned by a run that stopped before it recorded its config


def _build_dataset(pending: list[Shard], config: AnnotateConfig, paths: RunPaths, retry: dict[str, int],
                   budget: RemoteBudget | None) -> ray.data.Dataset:
    """The pipeline. Load, text, fetch (or decode) and, when no model stage follows, write ask Ray for the
    same resources, so Ray Data fuses them into one task per piece: a piece's rows never leave the worker
    between stages, and the cluster runs as many worker processes as the fetch stage's CPUs allow (each
    extra Ray worker costs about 3 CPU-seconds to start and its own copy of the language-ID model)."""
    rc = config.ray
    fetching = not config.text_only and any(s.kind == "table" for s in pending)
    cpus, tasks = (rc.fetch_cpus, rc.max_fetch_tasks) if fetching else (rc.decode_cpus, rc.max_decode_tasks)
    same = {"num_cpus": cpus, "concurrency": tasks, "batch_format": "pyarrow"}
    # a text pass does no I/O per row: pieces of a download batch's size would be mostly per-task overhead
    items = pieces(pending, rc.batch_size if not config.text_only else max(rc.batch_size, TEXT_PASS_PIECE_ROWS),
                   retry)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(load_pieces, batch_size=1, fn_kwargs={"paths": paths}, **same)
    ds = ds.map_batches(text_batch, batch_size=None, fn_kwargs={"options": config.text}, **same)
    if config.text_only:  # a text pass: no network, no image stage (embed included)
        ds = ds.map_batches(not_fetched, batch_size=None, **same)
    elif fetching:
        ds = ds.map_batches(fetch_batch, batch_size=None, fn_kwargs={"download": config.download,
                                                                     "decode": config.decode, "budget": budget},
                            **same)
    else:
        ds = ds.map_batches(decode_batch, batch_size=None, fn_kwargs={"options": config.decode}, **same)
    embed = config.embed if not config.text_only else None
    if embed is None and config.match is None:
        return ds.map_batches(write_parts, batch_size=None, fn_kwargs={"paths": paths}, **same)
    if embed is not None:
        ds = _add_embed_stages(ds, config)
    if config.match is not None:  # an actor pool of its own (placed here, Ray Data does not fuse it with load)
        ds = add_match_stage(ds, config.match, rc.batch_size)
    return ds.map_batches(write_parts, batch_size=None, batch_format="pyarrow", fn_kwargs={"paths": paths},
                          num_cpus=0.25)


def _add_embed_stages(ds: ray.data.Dataset, config: AnnotateConfig) -> ray.data.Dataset:
    """CPU tasks preprocess (decode JPEG, resize, normalise, tokenise); an actor pool runs the model,
    one GPU per actor where the cluster has GPUs, CPU otherwise."""

    options = config.embed
    model_path = resolve_model(options.model)
    resources = embed_actor_resources(options)
    # a remote-args function keeps preprocessing in CPU tasks of its own: Ray Data would otherwise fuse it
    # (and, with equal CPUs, the fetch stage before it) into the model actors on a CPU-only cluster
    with warnings.catch_warnings():  # Ray 2.60 calls the argument deprecated; it is still the documented way
        warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*")
        ds = ds.map_batches(preprocess_batch, batch_size=options.batch_size, batch_format="pyarrow",
                            fn_kwargs={"model_path": model_path}, num_cpus=config.ray.decode_cpus,
                            ray_remote_args_fn=lambda: {"num_cpus": config.ray.decode_cpus})
    return ds.map_batches(ClipEmbedder, batch_size=options.batch_size, batch_format="pyarrow",
                          fn_constructor_kwargs={"model_path": model_path, "options": options},
                          compute=ray.data.ActorPoolStrategy(size=options.num_actors), **resources)


def _run_pending(pending: list[Shard], config: AnnotateConfig, paths: RunPaths, progress: bool,
                 retry: dict[str, int], budget: RemoteBudget | None) -> str:
    """Annotate the pending shards whole and, in finished shards, the `retry` rows (shard -> rows that failed
    for a moment), in one dataset; commit each shard as its rows are all written."""
    expected = {s.id: retry.get(s.id, s.rows) for s in pending}
    sizes = {s.id: s.rows for s in pending}
    line = None
    if progress:  # a text pass fetches nothing, so its ok share would read 0%
        line = ProgressLine(sum(expected.values()), label="text pass: rows" if config.text_only else "rows",
                            show_ok=not config.text_only)
    written: dict[str, int] = collections.defaultdict(int)
    parts: dict[str, list[str]] = collections.defaultdict(list)
    commits = []
    kinds = ["images", "embeddings"] if config.embed is not None and not config.text_only else ["images"]
    ds = _build_dataset(pending, config, paths, retry, budget)
    # prefetch_batches=0: with Ray's default of 1 the iterator holds each finished block until the next one
    # arrives, so a shard whose rows are all written is not committed while a slow shard is still running
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0):
        for row in batch.to_pylist():
            shard = row["shard"]
            written[shard] += row["rows"]
            parts[shard].append(row["part"])
            if line is not None:
                line.update(row["rows"], row["ok"])
            if written[shard] == expected[shard]:
                commits.append(commit_shard.remote(paths, shard, parts.pop(shard), sizes[shard], kinds,
                                                   expected[shard] if shard in retry else None))
    if line is not None:
        line.close()
    log.info("all parts written; waiting for %d shard commits", len(commits))
    failed = []
    for ref in commits:  # every commit is awaited, so a failed one is reported once, not also as "unhandled"
        try:
            marker = ray.get(ref)
            log.info("committed shard %s (%d rows)", marker["shard"], marker["rows"])
        except ray.exceptions.RayError as err:
            failed.append(err)
    if failed:
        raise failed[0]
    missing = sorted(set(expected) - {m for m in written if written[m] == expected[m]})
    if missing:
        raise RuntimeError(f"shards not completed: {missing[:10]} (rows written {[written[m] for m in missing[:10]]})")
    return ds.stats()


def summarize(shards: list[Shard], paths: RunPaths, config: AnnotateConfig, started: float,
              processed_rows: int, skipped: int) -> dict:
    statuses, failed_at, done = paths.committed_counts([s.id for s in shards])
    rows_in = sum(s.rows for s in shards)
    rows_out = sum(statuses.values())
    download_fail = {k.split(":", 1)[1]: v for k, v in failed_at.items() if k.startswith("download:")}
    decode_fail = {k.split(":", 1)[1]: v for k, v in failed_at.items() if k.startswith("decode:")}
    decode_in = rows_in - sum(download_fail.values())
    wall = time.time() - started
    stages = {
        "download": {"rows_in": rows_in, "rows_ok": decode_in, "failed": dict(sorted(download_fail.items()))},
        "decode": {"rows_in": decode_in, "rows_ok": statuses.get(st.OK, 0),
                   "failed": dict(sorted(decode_fail.items()))},
    }
    return {
        "config_hash": config.fingerprint(),
        "text_only": config.text_only,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_time_s": round(wall, 2),
        "rows_in": rows_in,
        "rows_out": rows_out,
        "shards": {"total": len(shards), "done": done, "skipped_already_done": skipped},
        "status_counts": dict(sorted(statuses.items())),
        "stages": {} if config.text_only else stages,
        "rows_processed_this_run": processed_rows,
        "rows_per_s_this_run": round(processed_rows / wall, 1) if wall > 0 else None,
        "hint": blocked_hint(statuses),
    }


def run_status(paths: RunPaths) -> dict | None:
    """A run's progress from its files alone, while it runs, after it was interrupted or once it finished
    (`tailor status`); None before its input is planned. rows_committed: the rows of committed shards;
    rows_written: those of unfinished shards written as parts so far (a killed run redoes them);
    status_counts: both together per status, most first; hosts: RUN/hosts.json (rewritten every 10 s
    while a run fetches), None where there is none."""
    if not paths.exists(paths.plan):
        return None
    shards = [Shard(**s) for s in paths.read_json(paths.plan)["shards"]]
    committed, _, done = paths.committed_counts([s.id for s in shards])
    sealed = paths.committed()
    written = paths.staged_counts([s.id for s in shards if s.id not in sealed])
    return {
        "finished": done == len(shards) and paths.exists(paths.summary),
        "rows": sum(s.rows for s in shards),
        "shards": {"total": len(shards), "committed": done},
        "rows_committed": sum(committed.values()),
        "rows_written": sum(written.values()),
        "status_counts": dict(sorted((committed + written).items(), key=lambda kv: -kv[1])),
        "hosts": paths.read_json(paths.hosts) if paths.exists(paths.hosts) else None,
    }

# the setting to look at when one status took (most of) the rows and none came through (`error` says more)
SETTING_OF_STATUS = {
    st.BLOCKED_ADDRESS: "hosts resolved to private or loopback addresses, which download.allow_networks refuses "
                        "unless their network is listed (e.g. --set 'download.allow_networks=[\"127.0.0.0/8\"]')",
    st.TIMEOUT: "see download.timeout (and download.threads against a slow server)",
    st.TOO_LARGE: "see download.max_bytes and decode.max_pixels",
    st.TOO_SMALL: "see decode.min_image_size",
    st.BAD_ASPECT_RATIO: "see decode.max_aspect_ratio",
    st.OPTED_OUT: "the hosts opt out (robots.txt, TDM reservations or X-Robots-Tag: see `error`, and "
                  "download.opt_outs)",
    st.CONNECTION_ERROR: "no host answered (DNS or connection failures): can the workers reach the network? "
                         "Running the same command again fetches the rows that failed for a moment once more",
    st.RATE_LIMITED: "the hosts kept answering 429/503 (see download.max_wait, download.host_rate); running the "
                     "same command again fetches these rows once more",
    st.INVALID_URL: "no URL could be requested: is input.url_column the URL column?",
}


def blocked_hint(statuses: collections.Counter) -> str | None:
    """When no row came through and one failure status took most of them, the setting to look at."""
    if not statuses or statuses.get(st.OK, 0):
        return None
    status, rows = statuses.most_common(1)[0]
    total = sum(statuses.values())
    if rows * 2 < total or status not in SETTING_OF_STATUS:
        return None
    return f"{rows} of {total} rows are {status}: {SETTING_OF_STATUS[status]}"


def _check_embed_model(config: AnnotateConfig) -> None:
    """embed.model loads (its config, not its weights): one line before anything is written or Ray starts,
    not an error in every actor, nor a run folder whose recorded config refuses the corrected command."""
    if config.embed is None or config.text_only:
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(resolve_model(config.embed.model))
    except Exception as err:
        raise ConfigError(f"config error: embed.model: cannot load {config.embed.model!r}: {err}".splitlines()[0]) \
            from None


def demo_model_warning(config: AnnotateConfig) -> str | None:
    """The demo config embeds with the demo CLIP, which knows only the demo web's shapes: the words that say so
    when the input is not a demo web (a folder holding truth.parquet), before its scores (and an audit's image
    tags) are taken for a real model's. A run `tailor fetch` made is judged by its text pass's input. None where
    it does not apply."""
    if config.embed is None or config.embed.model != "builtin:demo-clip" or config.text_only:
        return None
    inputs = []
    for path in [config.input.path] if isinstance(config.input.path, str) else config.input.path:
        text_pass = RunPaths.of_fetch_input(path)
        recorded = (text_pass.read_config() or {}).get("input", {}).get("path") if text_pass else None
        inputs += [recorded] if isinstance(recorded, str) else recorded or [path]
    if all("://" not in p and (Path(p).parent / "truth.parquet").exists() for p in inputs):
        return None
    return ("embed.model is builtin:demo-clip, a tiny CLIP trained only on the demo web's drawn shapes: its "
            "embeddings, CLIP scores and image tags of other images mean nothing; set embed.model to a CLIP "
            "checkpoint (a local path or hub name), or embed=null to skip embedding")


def _warn_demo_model(config: AnnotateConfig) -> None:
    warning = demo_model_warning(config)
    if warning:
        log.warning(warning)


def _to_retry(paths: RunPaths, finished: list[Shard], config: AnnotateConfig) -> dict[str, int]:
    """Finished shards holding rows that failed for a moment, and how many: what a rerun fetches again."""
    if config.text_only:
        return {}
    retry = {}
    for shard in finished:
        if shard.kind != "table":
            continue
        marker = paths.read_json(paths.done(shard.id))
        counted = marker.get("transient")
        if counted is None:  # a marker written before the count: any status that may be transient
            counted = sum(n for status, n in marker["status_counts"].items()
                          if status in st.TRANSIENT or status == st.HTTP_ERROR)
        if counted:
            keys = transient_keys(paths, shard.id)
            if keys:
                retry[shard.id] = len(keys)
    return retry


def annotate(config: AnnotateConfig, overwrite: bool = False, progress: bool = True,
             ray_progress: bool = False, retry_transient: bool = True) -> dict:
    """Run (or resume) annotation into config.output and return the run summary. `progress`: tailor's
    progress line on stderr; `ray_progress`: Ray Data's own per-operator bars as well. `retry_transient`: rows
    of finished shards that failed for a moment (connection errors, timeouts, 5xx, rate_limited) are fetched
    again, and their shards rewritten with the new outcomes."""
    started = time.time()
    paths = RunPaths(config.output)
    # an unreadable metadata file is one line before anything is written or Ray starts; read once, here
    metadata = load_metadata(config.match.metadata) if config.match is not None else None
    fresh = overwrite or not paths.exists(paths.config)
    if fresh:  # before its config is recorded; a resumed run is checked only if it has work left
        _check_embed_model(config)
    with storage_errors(config.output):
        _prepare_folder(config, paths, overwrite)
        shards = plan_shards(config, paths)  # before Ray starts (unless the input is many files)
        if not paths.exists(paths.config):
            paths.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), paths.config)
        if metadata is not None:
            save_metadata(paths, metadata)  # RUN/metadata/ID.parquet, which match lists refer to
    planned = time.time()
    log.info("input planned after %.1f s", planned - started)
    committed = paths.committed()
    pending = [s for s in shards if s.id not in committed]
    retry = _to_retry(paths, [s for s in shards if s not in pending], config) if retry_transient else {}
    work = pending + [s for s in shards if s.id in retry]
    if work:  # a finished run with nothing to retry is summarised without starting Ray (seconds on a small machine)
        if not fresh:
            _check_embed_model(config)
        init_ray(config.ray.address)
        _warn_demo_model(config)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = ray_progress
        # Ray Data's default reserves half the CPUs for the light stages (load, download, write), which on a
        # small node leaves the CPU-bound decode one task at a time; the budget follows demand instead.
        context.op_resource_reservation_enabled = False
    ray_ready = time.time()
    log.info("ray ready after %.1f s", ray_ready - started)
    # parts and outputs of unfinished shards are from an interrupted run: redo those shards whole
    paths.remove(paths.staging_root)
    for shard in pending:
        for kind in OUTPUT_KINDS:
            paths.remove(paths.output(kind, shard.id))
    log.info("%d shards, %d already done, %d to do, %d rows to retry in %d finished shards", len(shards),
             len(shards) - len(pending), len(pending), sum(retry.values()), len(retry))
    before = paths.committed_counts([s for s in retry]) if retry else None
    stats, hosts = "", None
    if work:
        fetching = not config.text_only and any(s.kind == "table" for s in work)
        budget = start_budget(config.download) if fetching else None
        with storage_errors(config.output):
            if budget is None:
                stats = _run_pending(work, config, paths, progress, retry, None)
            else:
                with HostsReport(budget, lambda snapshot: paths.write_json(snapshot, paths.hosts)) as report:
                    stats = _run_pending(work, config, paths, progress, retry, budget)
                hosts = report.last
        paths.write_text(stats, paths.log("ray_data_stats.txt"))
        paths.remove(paths.staging_root)
    pipeline_done = time.time()
    processed = sum(s.rows for s in pending) + sum(retry.values())
    summary = summarize(shards, paths, config, started, processed, len(shards) - len(pending))
    if retry:
        after = paths.committed_counts(list(retry))[0]
        summary["retried"] = {"rows": sum(retry.values()), "shards": len(retry),
                              "resolved": dict(sorted((before[0] - after).items())),
                              "now_ok": after.get(st.OK, 0) - before[0].get(st.OK, 0)}
    summary["retry_transient"] = retry_transient
    if hosts is not None:
        summary["hosts"] = hosts
    if not work and paths.exists(paths.summary):  # nothing ran: run.json keeps the figures of the run that did
        previous = paths.read_json(paths.summary)  # the work (its wall time, stages, hosts); it is not rewritten
        previous.pop("retried", None)  # (what that run fetched again: nothing was this time)
        return previous | {"rows_processed_this_run": 0, "rows_per_s_this_run": None, "nothing_to_do": True,
                           "this_command_s": summary["wall_time_s"], "retry_transient": retry_transient,
                           "shards": summary["shards"]}
    try:
        summary["stage_throughput"] = stage_throughput(stats, processed)  # this run's stages (empty if none ran)
    except StatsFormatError as err:
        log.warning("per-stage throughput left out of run.json: %s", err)
        summary["stage_throughput"] = {"unreadable": str(err)}
    summary["seconds"] = {"plan": round(planned - started, 2), "ray_start": round(ray_ready - planned, 2),
                          "pipeline": round(pipeline_done - ray_ready, 2)}
    summary["ray_logs"] = session_logs()  # the workers' own lines (the console shows them only with -v)
    paths.write_json(summary, paths.summary)
    return summary
