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
      fetch-inputs/NAME-STAMP.parquet  the rows of subset NAME `tailor fetch` downloads       (fetch)
      dedup/                 semdedup.parquet/.json, semdedup-centroids.parquet,           (semdedup, decontam)
                             decontam-HASH.parquet/.json
      captions/NAME/         a caption set: _settings.json, parts/, _summary.json          (recaption)
      audit/NAME/            tags/, concepts, counts and the report of a concept list      (audit)
      evaluate/NAME/         proxy-CLIP evaluations of subsets                             (evaluate)

This module is the one that names paths under RUN/: the passes ask RunPaths, or the Subset, Audit, CaptionSet
and Evaluation it hands out, and never build one from a string (tests/test_imports.py checks). NAME is
checked (check_name) when one of those is made, before it becomes part of a path.
Local paths and fsspec URLs (s3://...) go through the same code.
"""

from __future__ import annotations

import collections
import json
import os
import re
import uuid
from functools import cached_property

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipelines.core.config import ConfigError

# S3 answers bursts of 503 SlowDown / 500 InternalError on busy prefixes; botocore retries them with backoff,
# but its default (legacy mode, 5 attempts) gives up within seconds, which a run of hours will hit. Set here,
# in every process that touches a run (driver and Ray workers), before any S3 client exists; the user's wins.
os.environ.setdefault("AWS_RETRY_MODE", "standard")
os.environ.setdefault("AWS_MAX_ATTEMPTS", "10")

# annotate's outputs: one file per shard in each of these folders
OUTPUT_KINDS = ("annotations", "images", "embeddings")
# the top-level entries annotate itself writes; everything else in a run was made from it by a later pass
ANNOTATE_ENTRIES = {*OUTPUT_KINDS, "input", "logs", "metadata", "_done", "_staging", "config.yaml", "run.json",
                    "hosts.json"}


def check_name(name: str, what: str = "subset") -> str:
    """NAME, once it is a plain folder name (of a subset, caption set, audit or evaluation), else one line."""
    if not isinstance(name, str) or not name or name.startswith(".") or not re.fullmatch(r"[\w.=+-]+", name):
        raise ConfigError(f"name: {name!r} is not a valid {what} name (letters, digits, . _ - = +)")
    return name


class SubsetError(ConfigError):
    """The run has no subset of that name; the message lists those it has."""


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

    @property
    def input(self) -> str:
        """RUN/input: the planned input shards (removed when a run starts over)."""
        return self.join("input")

    @property
    def staging_root(self) -> str:
        return self.join("_staging")

    def log(self, file: str) -> str:
        """RUN/logs/FILE: Ray Data's statistics of the last annotate run."""
        return self.join("logs", file)

    def outputs(self, kind: str) -> list[str]:
        """The committed-or-written RUN/KIND/*.parquet files, KIND one of OUTPUT_KINDS."""
        if kind not in OUTPUT_KINDS:
            raise ValueError(f"output kind {kind!r}: one of {OUTPUT_KINDS}")
        return self.list(kind, ".parquet")

    def output_shards(self, kind: str) -> list[str]:
        """The shard ids of RUN/KIND/*.parquet."""
        return [p.rsplit("/", 1)[-1].removesuffix(".parquet") for p in self.outputs(kind)]

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

    def match_shards(self) -> list[str]:
        return self.list("match/shards", ".parquet")

    @property
    def entry_counts(self) -> str:
        return self.join("match", "entry_counts.parquet")

    def subset(self, name: str) -> Subset:
        """RUN/subsets/NAME (NAME checked here)."""
        return Subset(self, name)

    def subsets(self) -> list[Subset]:
        """The run's complete subsets, by name."""
        return Subset.all(self)

    def complete_subset(self, name: str) -> Subset:
        """Subset NAME once it is complete, or a one-line SubsetError listing the subsets there are."""
        subset = Subset(self, name)
        if not subset.complete:
            listed = ", ".join(s.name for s in self.subsets()) or \
                "none yet; make one with `tailor select` or `tailor metaclip-balance`"
            raise SubsetError(f"{self.url} has no subset {name!r} (subsets: {listed})")
        return subset

    def fetch_input(self, name: str, made_at: str) -> str:
        """RUN/fetch-inputs/NAME-MADE_AT.parquet: the input rows of subset NAME of a text pass, which `tailor
        fetch` downloads; named by when the subset was made, so a re-selected subset is a new input. It lives
        outside the subset's folder: a fetched run's config names it, and re-selecting the subset
        (--overwrite) must not delete it from under that run."""
        stamp = "".join(c for c in made_at if c.isalnum())
        return self.join("fetch-inputs", f"{check_name(name)}-{stamp}.parquet")

    @staticmethod
    def of_fetch_input(path: str) -> RunPaths | None:
        """The text pass whose fetch input (RUN/fetch-inputs/NAME-STAMP.parquet) `path` is; None for any other
        path (a fetched run's config names its fetch input, not the table the rows came from)."""
        parts = str(path).rstrip("/").rsplit("/", 2)
        if len(parts) == 3 and parts[1] == "fetch-inputs" and parts[2].endswith(".parquet"):
            return RunPaths(parts[0])
        return None

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

    def captions(self, name: str) -> CaptionSet:
        """RUN/captions/NAME: a caption set (`tailor recaption`)."""
        return CaptionSet(self, name)

    def caption_sets(self) -> list[CaptionSet]:
        return CaptionSet.all(self)

    def audit(self, name: str) -> Audit:
        """RUN/audit/NAME: the audit of concept list NAME."""
        return Audit(self, name)

    def audits(self) -> list[Audit]:
        """The run's audits that have tags (and so can be browsed)."""
        return Audit.all(self)

    def evaluation(self, name: str) -> Evaluation:
        """RUN/evaluate/NAME: a proxy-CLIP evaluation of subsets."""
        return Evaluation(self, name)

    def derived(self) -> list[str]:
        """The top-level entries of the run that are not annotate's own outputs (what a fresh annotate leaves
        behind, or removes when it starts over)."""
        return sorted(p.rsplit("/", 1)[-1] for p in self.list("") if p.rsplit("/", 1)[-1] not in ANNOTATE_ENTRIES)

    def foreign(self) -> list[str]:
        """The entries of a folder that holds no run (no config.yaml) that annotate does not write itself:
        files annotate must neither mix with a run nor delete on --overwrite. Empty for a run, a new or empty
        folder, or what a run stopped before recording its config left (input/, _staging/, ...)."""
        if self.exists(self.config):
            return []
        return sorted(p.rsplit("/", 1)[-1] for p in self.list("") if p.rsplit("/", 1)[-1] not in ANNOTATE_ENTRIES)

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

    def write_bytes(self, data: bytes, path: str) -> None:
        def write(target: str) -> None:
            with self.fs.open(target, "wb") as f:
                f.write(data)

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
        committed = self.committed()
        for shard in shards:
            if shard in committed:
                marker = self.read_json(self.done(shard))
                statuses.update(marker["status_counts"])
                failed_at.update(marker["failed_at"])
                done += 1
        return statuses, failed_at, done

    @staticmethod
    def pending(shards, written: list[str]) -> list[str]:
        """The shards (ids, sorted) that have no file among `written` (one listing of an output folder, so
        finding a pass's pending shards costs one request, not one per shard)."""
        have = {path.rsplit("/", 1)[-1].rsplit(".", 1)[0] for path in written}
        return sorted(s for s in shards if s not in have)

    def committed(self) -> set[str]:
        """The ids of the shards with a _done marker (one listing)."""
        return {path.rsplit("/", 1)[-1].removesuffix(".json") for path in self.list("_done", ".json")}

    def shard_progress(self) -> tuple[int, int]:
        """(shards committed, shards planned) of an annotate run; (0, 0) before its input is planned."""
        if not self.exists(self.plan):
            return 0, 0
        planned = {s["id"] for s in self.read_json(self.plan)["shards"]}
        return len(planned & self.committed()), len(planned)

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
        pipelines.core.config.load_config(base=...) makes it an AnnotateConfig."""
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


class Artifact:
    """A named folder a later pass makes under RUN/KIND/NAME: its files, whether it is complete (one rule: the
    file the pass writes last exists) and what --overwrite replaces (all of the folder; a pass never keeps
    files of the artifact it replaces, and nothing another artifact needs lives inside one)."""

    KIND = ""  # the folder under RUN/
    WHAT = ""  # what users call it, in messages
    LAST = ""  # the file written last: the artifact is complete once it exists

    def __init__(self, paths: RunPaths, name: str):
        self.paths = paths
        self.name = check_name(name, self.WHAT)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.paths.url!r}, {self.name!r})"

    @property
    def folder(self) -> str:
        return self.paths.join(self.KIND, self.name)

    @property
    def url(self) -> str:
        """The folder as the user named the run (for messages)."""
        return f"{self.paths.url.rstrip('/')}/{self.KIND}/{self.name}"

    def file(self, *parts: str) -> str:
        return self.paths.join(self.KIND, self.name, *parts)

    def list(self, folder: str, suffix: str = "") -> list[str]:
        return self.paths.list(f"{self.KIND}/{self.name}/{folder}", suffix)

    @property
    def exists(self) -> bool:
        return self.paths.exists(self.folder)

    @property
    def complete(self) -> bool:
        return self.paths.exists(self.file(self.LAST))

    def info(self) -> dict:
        """The last-written file's contents ({} while the artifact is incomplete)."""
        return self.paths.read_json(self.file(self.LAST)) if self.complete else {}

    def check_free(self, overwrite: bool) -> None:
        """Refuse, in one line, to make this artifact where one of its name exists and `overwrite` is off."""
        if self.exists and not overwrite:
            raise ConfigError(f"{self.url} exists; pick another --name or pass --overwrite to replace it")

    def replace(self, overwrite: bool) -> None:
        """Make room for a new artifact of this name (check_free); the old one is removed whole."""
        self.check_free(overwrite)
        self.paths.remove(self.folder)

    @classmethod
    def all(cls, paths: RunPaths) -> list:
        """The run's complete artifacts of this kind, by name (folders of invalid names are not ours)."""
        found = []
        for folder in paths.list(cls.KIND):
            name = folder.rsplit("/", 1)[-1]
            try:
                artifact = cls(paths, name)
            except ConfigError:
                continue
            if artifact.complete:
                found.append(artifact)
        return found


class Subset(Artifact):
    """RUN/subsets/NAME (`tailor select`, `tailor metaclip-balance`): manifest.parquet (the kept keys),
    decisions.parquet (every key: kept, reason, step, detail), recipe.yaml (select's resolved recipe),
    entry_stats.parquet and entry_counts.png (metaclip-balance), stats.json (written last)."""

    KIND, WHAT, LAST = "subsets", "subset", "stats.json"

    @property
    def manifest(self) -> str:
        return self.file("manifest.parquet")

    @property
    def decisions(self) -> str:
        return self.file("decisions.parquet")

    @property
    def stats(self) -> str:
        return self.file("stats.json")

    @property
    def recipe(self) -> str:
        return self.file("recipe.yaml")


class Audit(Artifact):
    """RUN/audit/NAME (`tailor audit`): _audit.json (settings; summary once counted, written last),
    concepts.parquet, variants.parquet, tags/SHARD.parquet, counts.parquet, subsets/SUBSET.parquet,
    loglinear.parquet, report/. Browsable once it has concepts and tags."""

    KIND, WHAT, LAST = "audit", "audit", "_audit.json"

    @property
    def settings(self) -> str:
        return self.file("_audit.json")

    @property
    def concepts(self) -> str:
        return self.file("concepts.parquet")

    @property
    def variants(self) -> str:
        return self.file("variants.parquet")

    @property
    def counts(self) -> str:
        return self.file("counts.parquet")

    @property
    def tags_folder(self) -> str:
        return self.file("tags")

    def tags(self, shard: str) -> str:
        return self.file("tags", f"{shard}.parquet")

    def tag_files(self) -> list[str]:
        return self.list("tags", ".parquet")

    def subset_delta(self, subset: str) -> str:
        return self.file("subsets", f"{check_name(subset)}.parquet")

    @property
    def loglinear(self) -> str:
        return self.file("loglinear.parquet")

    def report_file(self, name: str) -> str:
        """RUN/audit/NAME/report/NAME: the report's page and figures."""
        return self.file("report", name)

    @property
    def complete(self) -> bool:
        return self.paths.exists(self.concepts) and bool(self.tag_files())


class CaptionSet(Artifact):
    """RUN/captions/NAME (`tailor recaption`): _settings.json, parts/*.parquet (key, caption, ...),
    concepts.parquet, _summary.json (written last)."""

    KIND, WHAT, LAST = "captions", "caption set", "_summary.json"

    @property
    def settings(self) -> str:
        return self.file("_settings.json")

    @property
    def summary(self) -> str:
        return self.file("_summary.json")

    @property
    def concepts(self) -> str:
        return self.file("concepts.parquet")

    def part(self, stem: str) -> str:
        return self.file("parts", f"{stem}.parquet")

    def parts(self) -> list[str]:
        return self.list("parts", ".parquet")


class Evaluation(Artifact):
    """RUN/evaluate/NAME (`tailor evaluate`): shards/SUBSET/ (the materialized subsets), per_concept.parquet,
    runs.parquet, the report's figures, summary.json (written last)."""

    KIND, WHAT, LAST = "evaluate", "evaluation", "summary.json"

    def shards(self, subset: str) -> str:
        return self.file("shards", check_name(subset))

    @property
    def summary(self) -> str:
        return self.file("summary.json")
