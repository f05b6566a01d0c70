"""The run folder: where each output lives, and writes that never leave half a file behind.

    RUN/
      config.yaml            the resolved config of the run
      run.json               summary: counts per status and stage, wall time, config hash
      input/_plan.json       the input shards (id, rows, source)
      input/SHARD.parquet    planned URL-table shards
      annotations/SHARD.parquet   one row per input row
      images/SHARD.parquet   key -> re-encoded image, for ok rows
      embeddings/SHARD.parquet    key -> image_emb, text_emb (when the embed stage runs)
      _done/SHARD.json       a shard is finished when (and only when) this exists
      _staging/SHARD/...     parts of shards in progress; removed when a shard is committed
      logs/                  Ray Data's stage statistics of the last annotate run
      fetched_from.json      a run `tailor fetch` made: the text pass and subset it fetched

    and what the later passes add (each pass's module documents its files):
      metadata/ID.parquet    entry_id -> entry of MetaCLIP metadata match lists refer to   (match)
      match/                 _match.json, shards/SHARD.parquet, entry_counts.parquet       (match, metaclip)
      subsets/NAME/          manifest.parquet (the kept keys), decisions, stats.json, ...  (select, metaclip)
                             fetch-input-*.parquet: the rows `tailor fetch` downloads        (fetch)
      dedup/                 semdedup.parquet/.json, semdedup-centroids.parquet,           (semdedup, decontam)
                             decontam-HASH.parquet/.json
      captions/NAME/         a caption set: _settings.json, parts/, _summary.json          (recaption)
      audit/NAME/            tags/, concepts, counts and the report of a concept list      (audit)
      evaluate/NAME/         proxy-CLIP evaluations of subsets                             (evaluate)

NAME is checked by the caller (pipelines.config.check_name) before it becomes part of a path.
Local paths and fsspec URLs (s3://...) go through the same code.
"""

from __future__ import annotations

import collections
import json
import os
import uuid
from functools import cached_property

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

# S3 answers bursts of 503 SlowDown / 500 InternalError on busy prefixes; botocore retries them with backoff,
# but its default (legacy mode, 5 attempts) gives up within seconds, which a run of hours will hit. Set here,
# in every process that touches a run (driver and Ray workers), before any S3 client exists; the user's wins.
os.environ.setdefault("AWS_RETRY_MODE", "standard")
os.environ.setdefault("AWS_MAX_ATTEMPTS", "10")


class RunPaths:
    """Paths of one run folder, and atomic writes into it. Pickles as its URL alone."""

    def __init__(self, url: str):
        self.url = str(url)

    @staticmethod
    def absolute(url: str) -> str:
        """A local path made absolute, as Ray workers (which need not share the driver's directory) must see
        it; an fsspec URL unchanged."""
        return str(url) if "://" in str(url) else os.path.abspath(url)

    @cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        fs, _ = fsspec.core.url_to_fs(self.url)
        return fs

    @cached_property
    def root(self) -> str:
        _, root = fsspec.core.url_to_fs(self.url)
        return root.rstrip("/")

    @property
    def is_local(self) -> bool:
        protocol = self.fs.protocol
        return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))

    def __getstate__(self) -> dict:
        return {"url": self.url}

    def __setstate__(self, state: dict) -> None:
        self.url = state["url"]

    def join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def input_shard(self, shard: str) -> str:
        return self.join("input", f"{shard}.parquet")

    @property
    def plan(self) -> str:
        return self.join("input", "_plan.json")

    def staging(self, shard: str) -> str:
        return self.join("_staging", shard)

    def output(self, kind: str, shard: str) -> str:
        """RUN/KIND/SHARD.parquet for kind in annotations, images, embeddings."""
        return self.join(kind, f"{shard}.parquet")

    def done(self, shard: str) -> str:
        return self.join("_done", f"{shard}.json")

    @property
    def summary(self) -> str:
        return self.join("run.json")

    @property
    def hosts(self) -> str:
        """Per-host figures of the run's fetching (busiest and most throttled hosts, rows waiting on hosts)."""
        return self.join("hosts.json")

    @property
    def config(self) -> str:
        return self.join("config.yaml")

    # -- the later passes' outputs
    def metadata(self, metadata_id: str) -> str:
        """RUN/metadata/ID.parquet: the entries that match lists made with metadata ID refer to."""
        return self.join("metadata", f"{metadata_id}.parquet")

    @property
    def match(self) -> str:
        """RUN/match: the standalone match pass (`tailor match`)."""
        return self.join("match")

    @property
    def match_info(self) -> str:
        return self.join("match", "_match.json")

    def match_shard(self, shard: str) -> str:
        return self.join("match", "shards", f"{shard}.parquet")

    @property
    def entry_counts(self) -> str:
        return self.join("match", "entry_counts.parquet")

    def subset(self, name: str, file: str | None = None) -> str:
        """RUN/subsets/NAME, or the file FILE in it."""
        return self.join("subsets", name, *([file] if file else []))

    def subset_manifest(self, name: str) -> str:
        return self.subset(name, "manifest.parquet")

    def fetch_input(self, name: str, made_at: str) -> str:
        """RUN/subsets/NAME/fetch-input-MADE_AT.parquet: the input rows of a subset of a text pass, which
        `tailor fetch` downloads; named by when the subset was made, so a re-selected subset is a new input."""
        stamp = "".join(c for c in made_at if c.isalnum())
        return self.subset(name, f"fetch-input-{stamp}.parquet")

    @property
    def fetched_from(self) -> str:
        """RUN/fetched_from.json of a run `tailor fetch` made: the text pass, the subset, its recipe."""
        return self.join("fetched_from.json")

    def is_text_pass(self) -> bool:
        """Whether the run is a text pass (annotate with text_only: no image fetched)."""
        return bool((self.read_config() or {}).get("text_only"))

    def dedup(self, file: str) -> str:
        """RUN/dedup/FILE: semdedup.parquet, semdedup.json, semdedup-centroids.parquet, _semdedup_work,
        decontam-HASH.parquet and .json."""
        return self.join("dedup", file)

    def captions(self, name: str) -> str:
        """RUN/captions/NAME: a caption set (`tailor recaption`)."""
        return self.join("captions", name)

    def audit(self, name: str) -> str:
        """RUN/audit/NAME: the audit of concept list NAME."""
        return self.join("audit", name)

    def evaluation(self, name: str) -> str:
        """RUN/evaluate/NAME: a proxy-CLIP evaluation of subsets."""
        return self.join("evaluate", name)

    # -- writes that are all-or-nothing: a reader never sees half a file
    def _atomic(self, path: str, write) -> None:
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if not self.is_local:
            write(path)  # an object store makes an object visible only once it is complete
            return
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def write_parquet(self, table: pa.Table, path: str, row_group_size: int | None = None) -> None:
        def write(target: str) -> None:
            with self.fs.open(target, "wb") as f:
                pq.write_table(table, f, row_group_size=row_group_size, compression="zstd")

        self._atomic(path, write)

    def write_text(self, text: str, path: str) -> None:
        def write(target: str) -> None:
            with self.fs.open(target, "w") as f:
                f.write(text)

        self._atomic(path, write)

    def write_json(self, obj: object, path: str) -> None:
        self.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)

    def staged_counts(self, shards: list[str]) -> collections.Counter:
        """Rows per status written as parts of these (unfinished) shards: progress a commit has not sealed."""
        import pyarrow.parquet as pq

        statuses: collections.Counter = collections.Counter()
        for shard in shards:
            for part in self.list(f"_staging/{shard}", ".annotations.parquet"):
                try:
                    with self.fs.open(part, "rb") as f:
                        column = pq.read_table(f, columns=["status"]).column("status")
                except (OSError, ValueError):  # a part being replaced or removed right now
                    continue
                statuses.update(column.to_pylist())
        return statuses

    def committed_counts(self, shards: list[str]) -> tuple[collections.Counter, collections.Counter, int]:
        """Rows per status and per `stage:status` failure over the committed shards, and how many are."""
        statuses: collections.Counter = collections.Counter()
        failed_at: collections.Counter = collections.Counter()
        done = 0
        for shard in shards:
            if self.exists(self.done(shard)):
                marker = self.read_json(self.done(shard))
                statuses.update(marker["status_counts"])
                failed_at.update(marker["failed_at"])
                done += 1
        return statuses, failed_at, done

    def shard_progress(self) -> tuple[int, int]:
        """(shards committed, shards planned) of an annotate run; (0, 0) before its input is planned."""
        if not self.exists(self.plan):
            return 0, 0
        planned = {s["id"] for s in self.read_json(self.plan)["shards"]}
        committed = {path.rsplit("/", 1)[-1].removesuffix(".json") for path in self.list("_done", ".json")}
        return len(planned & committed), len(planned)

    def committed_shards(self) -> dict[str, int]:
        """Committed annotation shards (those with a _done marker) and their row counts."""
        shards = {}
        for marker in self.list("_done", ".json"):
            info = self.read_json(marker)
            shards[info["shard"]] = info["rows"]
        return shards

    def read_json(self, path: str) -> dict:
        with self.fs.open(path, "r") as f:
            return json.load(f)

    def read_config(self) -> dict | None:
        """RUN/config.yaml as annotate recorded it (a mapping, {} when empty), or None when there is none.
        pipelines.config.load_config(base=...) makes it an AnnotateConfig."""
        if not self.exists(self.config):
            return None
        with self.fs.open(self.config, "r") as f:
            return yaml.safe_load(f) or {}

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def list(self, folder: str, suffix: str = "") -> list[str]:
        path = self.join(folder)
        if not self.fs.exists(path):
            return []
        return sorted(p for p in self.fs.ls(path, detail=False) if p.endswith(suffix)
                      and not p.rsplit("/", 1)[-1].startswith("."))
