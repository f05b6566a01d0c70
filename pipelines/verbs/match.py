"""MetaCLIP metadata matching with Ray Data: inside annotate, or as its own pass over a run.

Inside annotate (config section `match:`), a stage after decode (before the writer) adds
`metaclip_entries` and `metadata_id` to every annotation row. An actor pool runs it, so each
actor builds the Aho–Corasick automaton once.

As its own pass (`tailor match RUN --metadata FILE`), over a finished or partly finished run:

    RUN/match/_match.json            the settings (metadata id and source, punctuation) and summary
    RUN/match/shards/SHARD.parquet   key, metaclip_entries (list<int32>), metadata_id: one row per
                                     annotation row of SHARD
    RUN/match/entry_counts.parquet   entry_id, entry, count (sql/metaclip_entry_counts.sql)
    RUN/metadata/ID.parquet          entry_id -> entry of the metadata the ids refer to

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

import pyarrow as pa
import pyarrow.parquet as pq

from operators.match import MatchOptions, MetaclipMatcher
from operators.table import replace_columns
from pipelines.core.engine import cluster_cpus, map_shards
from pipelines.core.passes import Pass
from pipelines.core.storage import RunPaths
from pipelines.metadata import Metadata, load_metadata

if TYPE_CHECKING:
    import ray

log = logging.getLogger(__name__)

MATCH_SCHEMA = pa.schema([("key", pa.string()), ("metaclip_entries", pa.list_(pa.int32())),
                          ("metadata_id", pa.string())])
READ_BATCH_ROWS = 65_536


def for_workers(options: MatchOptions) -> MatchOptions:
    """A local relative metadata path made absolute: Ray workers need not share the driver's directory."""
    source = options.metadata
    if source == "default" or "://" in source or os.path.isabs(source):
        return options
    return options.model_copy(update={"metadata": os.path.abspath(source)})


def save_metadata(paths: RunPaths, metadata: Metadata) -> str:
    """Write RUN/metadata/ID.parquet (entry_id, entry) once; return the metadata id."""
    target = paths.metadata(metadata.id)
    if not paths.exists(target):
        paths.write_parquet(metadata.table(), target)
    return metadata.id


class MatchStage:
    """Ray Data actor: loads the metadata and builds the automaton once, then matches batches.

    Columns in: `caption`. Columns added: `metaclip_entries`, `metadata_id`.
    """

    def __init__(self, options: MatchOptions):
        metadata = load_metadata(options.metadata)
        self.metadata_id = metadata.id
        self.matcher = MetaclipMatcher(metadata.entries, options.punctuation)

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = self.matcher(batch)
        return replace_columns(batch, {"metadata_id": pa.repeat(pa.scalar(self.metadata_id), batch.num_rows)})


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
                          fn_constructor_kwargs={"options": for_workers(options)}, num_cpus=0,
                          compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max_actors))


# ---------------------------------------------------------------- the standalone pass

class ShardMatcher:
    """Ray Data actor: for each work item (one annotated shard), write RUN/match/shards/SHARD.parquet."""

    def __init__(self, options: MatchOptions, run: str):
        self.paths = RunPaths(run)
        self.stage = MatchStage(options)

    def __call__(self, items: pa.Table) -> pa.Table:
        shards, rows, seconds = [], [], []
        for shard in items.column("shard").to_pylist():
            started = time.perf_counter()
            with self.paths.fs.open(self.paths.output("annotations", shard), "rb") as f:
                parts = [self.stage(pa.Table.from_batches([b])).select(MATCH_SCHEMA.names)
                         for b in pq.ParquetFile(f).iter_batches(READ_BATCH_ROWS, columns=["key", "caption"])]
            table = pa.concat_tables(parts) if parts else MATCH_SCHEMA.empty_table()
            self.paths.write_parquet(table.cast(MATCH_SCHEMA), self.paths.match_shard(shard))
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
    settings = {"metadata_id": metadata.id, "metadata": options.metadata, "punctuation": options.punctuation,
                "entries": len(metadata.entries)}
    info_path = paths.match_info
    check = this.settings(info_path, settings, fields=("metadata_id", "punctuation"))  # what changes the matches
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
        for row in map_shards(ShardMatcher, pending, {"options": for_workers(options), "run": run}, progress,
                              actors):
            actor_seconds += row["seconds"]
            if row["rows"] != shards[row["shard"]]:
                paths.remove(paths.match_shard(row["shard"]))
                raise RuntimeError(f"shard {row['shard']}: matched {row['rows']} rows, "
                                   f"annotations have {shards[row['shard']]}")
    matched_at = time.time()
    totals = write_entry_counts(run)
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
