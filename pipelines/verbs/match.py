"""MetaCLIP metadata matching with Ray Data: inside annotate, or as its own pass over a run.

Inside annotate (config section `match:`), a stage after decode (before the writer) adds
`metaclip_entries` and `metadata_id` to every annotation row. An actor pool runs it, so each
actor builds the Aho–Corasick automaton once. With worldwide metadata (a folder of per-language
lists, MetaCLIP 2) the stage adds `match_lang` too, and each actor builds the automata of the
languages its batches hold, lazily, within match.max_automata_mb (operators/match.py).

As its own pass (`tailor match RUN --metadata FILE`), over a finished or partly finished run:

    RUN/match/_match.json            the settings (metadata id and source, punctuation) and summary
    RUN/match/shards/SHARD.parquet   key, metaclip_entries (list<int32>), metadata_id: one row per
                                     annotation row of SHARD
    RUN/match/entry_counts.parquet   entry_id, entry, count (sql/metaclip_entry_counts.sql)
    RUN/metadata/ID.parquet          entry_id -> entry of the metadata the ids refer to

Worldwide metadata (`--metadata FOLDER`; the contract balancing reads, see operators/match.py):

    RUN/match/shards/SHARD.parquet   key, match_lang (string), metaclip_entries (list<int32>: ids within
                                     match_lang's list), metadata_id
    RUN/match/entry_counts.parquet   lang, entry_id, entry, count (captions matched in lang holding it)
    RUN/metadata/ID.parquet          lang, entry_id, entry: (lang, entry_id) names an entry

Each work item is one annotated shard: an actor reads its key and caption columns in batches,
matches them and writes the shard's match file atomically. A rerun skips shards that have their
file, so a killed pass resumes; a rerun with other metadata or punctuation is refused
(`overwrite=True` starts over).
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from operators.match import MatchOptions, MetaclipMatcher, WorldwideMatcher
from operators.table import replace_columns
from pipelines.core.config import ConfigError
from pipelines.core.engine import cluster_cpus, map_shards
from pipelines.core.passes import Pass
from pipelines.core.storage import RunPaths
from pipelines.metadata import ID_SCHEMA_WORLDWIDE, Metadata, WorldwideMetadata, is_folder, load_metadata

if TYPE_CHECKING:
    import ray

log = logging.getLogger(__name__)

MATCH_SCHEMA = pa.schema([("key", pa.string()), ("metaclip_entries", pa.list_(pa.int32())),
                          ("metadata_id", pa.string())])
WORLDWIDE_SCHEMA = pa.schema([("key", pa.string()), ("match_lang", pa.string()),
                              ("metaclip_entries", pa.list_(pa.int32())), ("metadata_id", pa.string())])
READ_BATCH_ROWS = 65_536


def for_workers(options: MatchOptions) -> MatchOptions:
    """A local relative metadata path made absolute: Ray workers need not share the driver's directory."""
    source = options.metadata
    if source == "default" or "://" in source or os.path.isabs(source):
        return options
    return options.model_copy(update={"metadata": os.path.abspath(source)})


def save_metadata(paths: RunPaths, metadata: Metadata | WorldwideMetadata) -> str:
    """Write RUN/metadata/ID.parquet once (entry_id, entry; worldwide: lang, entry_id, entry, written one
    language at a time); return the metadata id."""
    target = paths.metadata(metadata.id)
    if paths.exists(target):
        return metadata.id
    if isinstance(metadata, Metadata):
        paths.write_parquet(metadata.table(), target)
        return metadata.id

    def write(path: str) -> None:
        with paths.fs.open(path, "wb") as f, pq.ParquetWriter(f, ID_SCHEMA_WORLDWIDE, compression="zstd") as out:
            for table in metadata.tables():
                out.write_table(table.cast(ID_SCHEMA_WORLDWIDE), row_group_size=1_000_000)

    paths._atomic(target, write)  # noqa: SLF001  (RunPaths' atomic write, streamed)
    return metadata.id


def is_worldwide(metadata: Metadata | WorldwideMetadata) -> bool:
    return isinstance(metadata, WorldwideMetadata)


class MatchStage:
    """Ray Data actor: loads the metadata and builds the automaton once, then matches batches.

    Columns in: `caption` (and, for worldwide metadata, options.language_column). Columns added:
    `metaclip_entries`, `metadata_id` (and `match_lang`). `metadata_id`: the id the driver computed (a
    worldwide folder is then listed here, and each list read only when a batch needs its language).
    """

    def __init__(self, options: MatchOptions, metadata_id: str | None = None):
        metadata = load_metadata(options.metadata)
        self.worldwide = is_worldwide(metadata)
        if self.worldwide:
            self.metadata_id = metadata_id or metadata.id
            self.matcher = WorldwideMatcher(metadata.languages, metadata.entries_of, options.punctuation,
                                            language_column=options.language_column,
                                            max_automata_mb=options.max_automata_mb)
        else:
            self.metadata_id = metadata.id
            self.matcher = MetaclipMatcher(metadata.entries, options.punctuation)

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = self.matcher(batch)
        return replace_columns(batch, {"metadata_id": pa.repeat(pa.scalar(self.metadata_id), batch.num_rows)})


def _stage_kwargs(options: MatchOptions) -> dict:
    """MatchStage's constructor arguments: worker-proof paths, and a worldwide metadata's id computed here, once
    (cached for the listing annotate already hashed)."""
    options = for_workers(options)
    worldwide = is_folder(options.metadata)  # a single list is read by each actor, not here
    return {"options": options, "metadata_id": load_metadata(options.metadata).id if worldwide else None}


def add_match_stage(ds: ray.data.Dataset, options: MatchOptions, batch_size: int) -> ray.data.Dataset:
    """The annotate stage: an autoscaling pool of MatchStage actors (about one per 16 CPUs at most). The
    driver has already saved the metadata (annotate, before Ray starts); each actor loads it once.

    Matching runs at hundreds of thousands of captions per second per actor, far ahead of
    downloads, so the pool stays small and its actors reserve no CPU: a reservation would be held for the
    whole run, and beside the embed stage's model actor it left a 2-CPU node no whole CPU for the fetch
    tasks (annotate with both `embed` and `match` waited forever).
    """
    import ray

    max_actors = max(1, cluster_cpus() // 16)
    return ds.map_batches(MatchStage, batch_size=batch_size, batch_format="pyarrow",
                          fn_constructor_kwargs=_stage_kwargs(options), num_cpus=0,
                          compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max_actors))


# ---------------------------------------------------------------- the standalone pass

class ShardMatcher:
    """Ray Data actor: for each work item (one annotated shard), write RUN/match/shards/SHARD.parquet."""

    def __init__(self, options: MatchOptions, run: str, metadata_id: str | None = None):
        self.paths = RunPaths(run)
        self.stage = MatchStage(options, metadata_id)
        self.schema = WORLDWIDE_SCHEMA if self.stage.worldwide else MATCH_SCHEMA
        self.columns = ["key", "caption"] + ([options.language_column] if self.stage.worldwide else [])

    def __call__(self, items: pa.Table) -> pa.Table:
        shards, rows, seconds = [], [], []
        for shard in items.column("shard").to_pylist():
            started = time.perf_counter()
            # worldwide: the whole shard at once, so each language's automaton is needed once per shard even when
            # the LRU cannot hold them all (a shard is a few MB of captions)
            rows_per_batch = READ_BATCH_ROWS if not self.stage.worldwide else 1 << 40
            with self.paths.fs.open(self.paths.output("annotations", shard), "rb") as f:
                parts = [self.stage(pa.Table.from_batches([b])).select(self.schema.names)
                         for b in pq.ParquetFile(f).iter_batches(rows_per_batch, columns=self.columns)]
            table = pa.concat_tables(parts) if parts else self.schema.empty_table()
            self.paths.write_parquet(table.cast(self.schema), self.paths.match_shard(shard))
            shards.append(shard)
            rows.append(table.num_rows)
            seconds.append(time.perf_counter() - started)
        return pa.table({"shard": pa.array(shards, pa.string()), "rows": pa.array(rows, pa.int64()),
                         "seconds": pa.array(seconds, pa.float64())})


def match_run(run: str, options: MatchOptions | None = None, actors: int | None = None,
              overwrite: bool = False, progress: bool = True) -> dict:
    """Match every committed annotation shard of `run` (resuming); write counts; return the summary."""
    from pipelines.verbs.metaclip import write_entry_counts  # here: DuckDB would add 0.2 s to every annotate worker

    options = options or MatchOptions()
    this = Pass(run)
    run, paths = this.run, this.paths
    shards = this.committed_shards("match")
    metadata = load_metadata(options.metadata)
    worldwide = is_worldwide(metadata)
    settings = {"metadata_id": metadata.id, "metadata": options.metadata, "punctuation": options.punctuation}
    if worldwide:
        _check_language_column(paths, shards, options.language_column)
        settings.update(worldwide=True, language_column=options.language_column, languages=len(metadata.languages),
                        entries=metadata.n_entries)
    else:
        settings["entries"] = len(metadata.entries)
    info_path = paths.match_info
    # what changes the matches (language_column is absent, so equal, for single-list metadata)
    check = this.settings(info_path, settings, fields=("metadata_id", "punctuation", "language_column"))
    if overwrite:
        paths.remove(paths.match)
    else:
        check.refuse(f"{run}/match", "use --overwrite to redo them")
    paths.write_json({"settings": settings, "summary": None}, info_path)
    save_metadata(paths, metadata)
    del metadata

    pending = paths.pending(shards, paths.match_shards())
    actor_seconds = 0.0  # reading, matching and writing shards, summed over actors
    log.info("%d annotated shards, %d already matched, %d to do", len(shards), len(shards) - len(pending),
             len(pending))
    if pending:
        this.start_ray()
        if worldwide and actors is None:
            actors = worldwide_actors(options)
        kwargs = {**_stage_kwargs(options), "run": run}
        for row in map_shards(ShardMatcher, pending, kwargs, progress, actors):
            actor_seconds += row["seconds"]
            if row["rows"] != shards[row["shard"]]:
                paths.remove(paths.match_shard(row["shard"]))
                raise RuntimeError(f"shard {row['shard']}: matched {row['rows']} rows, "
                                   f"annotations have {shards[row['shard']]}")
    matched_at = time.time()
    totals = write_worldwide_entry_counts(run) if worldwide else write_entry_counts(run)
    wall = this.seconds()
    summary = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_time_s": round(wall, 2),
        "entry_counts_s": round(time.time() - matched_at, 2),
        "shards": {"total": len(shards), "skipped_already_done": len(shards) - len(pending)},
        **totals,
        "rows_per_s_this_run": round(sum(shards[s] for s in pending) / wall, 1) if wall > 0 else None,
        "rows_per_actor_s": round(sum(shards[s] for s in pending) / actor_seconds) if actor_seconds else None,
    }
    this.write_summary({"settings": settings, "summary": summary}, info_path)
    return summary


def worldwide_actors(options: MatchOptions) -> int:
    """Matcher actors for a worldwide pass: one per CPU, but no more than the cluster's memory holds when each
    fills its automata budget (about 1.3x pyahocorasick's count in RSS, plus ~0.5 GB of worker)."""
    import ray

    per_actor = options.max_automata_mb * 1.3 * 2**20 + 2**29
    by_memory = int(0.7 * ray.cluster_resources().get("memory", 0) / per_actor)
    actors = max(1, min(cluster_cpus(), by_memory))
    if actors < cluster_cpus():
        log.info("worldwide matching: %d actors (memory for %d MB of automata each; --actors or "
                 "--max-automata-mb to change)", actors, options.max_automata_mb)
    return actors


def _check_language_column(paths: RunPaths, shards: dict[str, int], column: str) -> None:
    """One line before Ray starts when the annotations lack the column that routes captions by language."""
    if not shards:
        return
    with paths.fs.open(paths.output("annotations", next(iter(shards))), "rb") as f:
        names = pq.read_schema(f).names
    if column not in names:
        hint = ("annotate's text stage writes caption_lang (is text.language_id off?)" if column == "caption_lang"
                else "name an annotation column with --language-column")
        raise ConfigError(f"worldwide matching routes captions by language: the annotations have no column "
                          f"{column!r}; {hint} (columns: {', '.join(names)})")


# Entry counts of worldwide match lists: count(lang, entry) = the captions matched in lang whose list holds it.
WORLDWIDE_ENTRY_COUNTS_SQL = """
WITH per_entry AS (
    SELECT match_lang AS lang, entry_id, count(*) AS count
    FROM (SELECT match_lang, unnest(list_distinct(metaclip_entries)) AS entry_id FROM matches
          WHERE match_lang IS NOT NULL)
    GROUP BY ALL
)
SELECT e.lang, e.entry_id, e.entry, coalesce(p.count, 0) AS count
FROM entries AS e
LEFT JOIN per_entry AS p USING (lang, entry_id)
ORDER BY e.lang, e.entry_id
"""
WORLDWIDE_TOTALS_SQL = """
SELECT count(*) AS rows,
       count(*) FILTER (WHERE len(metaclip_entries) > 0) AS rows_matched,
       coalesce(sum(len(list_distinct(metaclip_entries))), 0)::BIGINT AS matches
FROM matches
"""


def write_worldwide_entry_counts(run: str) -> dict:
    """RUN/match/entry_counts.parquet (lang, entry_id, entry, count) of a worldwide match; the totals, with
    captions, matched captions and entries per language under `languages`."""
    from pipelines.core.duck import connect, scan, to_arrow

    paths = RunPaths(run)
    metadata_id = paths.read_json(paths.match_info)["settings"]["metadata_id"]
    with connect() as con:
        scan(con, paths, paths.match_shards()).select("key, match_lang, metaclip_entries").create_view("matches")
        scan(con, paths, [paths.metadata(metadata_id)]).create_view("entries")
        counts = to_arrow(con.sql(WORLDWIDE_ENTRY_COUNTS_SQL))
        totals = to_arrow(con.sql(WORLDWIDE_TOTALS_SQL)).to_pylist()[0]
        per_lang = to_arrow(con.sql(
            "SELECT coalesce(match_lang, '(none)') AS lang, count(*) AS rows, "
            "count(*) FILTER (WHERE len(metaclip_entries) > 0) AS rows_matched FROM matches GROUP BY ALL "
            "ORDER BY rows DESC, lang")).to_pylist()
    paths.write_parquet(counts, paths.entry_counts)
    matched_entries = int(np.count_nonzero(counts.column("count").to_numpy()))
    languages = {r["lang"]: {"rows": r["rows"], "rows_matched": r["rows_matched"]} for r in per_lang}
    return {**totals, "entries": counts.num_rows, "entries_matched": matched_entries, "languages": languages}
