"""tailor browse: the views of a run as plain dicts (grid, sample, duplicates, search, concepts), read-only.

    Browser(run).grid(GridQuery.parse({"status": ["ok"]}))    # one page of the grid, keyset-paginated
    Browser(run).sample(key)                                    # every annotation column, decisions, neighbours
    Browser(run).image(key) -> (bytes, content type)            # the stored image (RUN/images)

pipelines/browse/server.py serves them as a JSON API beside one static page (pipelines/browse/static/);
pipelines/browse/export.py writes them as a static folder.

Scale: every view is a DuckDB query (pipelines/sql/browse_*.sql, values bound as parameters) over the run's
Parquet. The footers of the annotation and image files are read once (`KeyIndex`): each file's, and each
image row group's, smallest and largest key. Annotation shards are sorted by key and cover disjoint key
ranges, so a page reads only the files of a key window after the cursor (`WHERE key > $after AND key <=
$upto`), widened four-fold until the page is full or a time budget is spent; decisions and tags are
filtered by the same bounds so their scans skip the row groups outside it. A thumbnail reads the one
image row group (256 rows) whose key range holds its key; recent row groups are cached.

Safety: parameters are checked against what the run has (a subset, audit or concept that does not exist
is a 404; a malformed value a 400, both with a message); a user value is never part of a path or of SQL
text: subset and audit names are looked up among the folders the run has, keys are only bound values.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow.parquet as pq
import yaml

from operators.clip import ClipTextTower, to_matrix
from pipelines import PACKAGE
from pipelines.core.config import ConfigError
from pipelines.core.duck import connect, scan, sql, to_arrow
from pipelines.core.storage import Audit, RunPaths
from pipelines.models import resolve_model

PAGE_DEFAULT = 100
PAGE_MAX = 500
GROUPS_DEFAULT = 20
NEIGHBOURS_DEFAULT = 12
FIRST_WINDOW_ROWS = 4096  # rows of the first key window of a page; each further window is 4x larger
PAGE_BUDGET_S = 2.0  # a sparse filter returns what it found in this time, with the cursor where it stopped
IMAGE_CACHE_GROUPS = 32
IDLE_CONNECTIONS = 8
LANGUAGE_SAMPLE_ROWS = 200_000  # the language menu lists the languages of the first files up to this many rows
SEARCH_MAX_ROWS = 2_000_000  # search and neighbours hold every image embedding in memory (faiss, exact)
CONCEPT_MODES = ("caption", "image", "both", "misaligned")
# what an audit's `frequency` counts (pipelines/sql/audit_counts.sql): the concepts chart's value axis
FREQUENCY_UNITS = {"text": "caption rows naming the concept (ok rows)",
                   "image": "images tagged with the concept (distinct sha256, ok rows)",
                   "matched": "images tagged with the concept and named so by a caption"}
DUPLICATE_KINDS = ("exact", "near", "semantic")
GRID_COLUMNS = {"key": "VARCHAR", "caption": "VARCHAR", "status": "VARCHAR", "clip_score": "DOUBLE",
                "caption_lang": "VARCHAR", "width": "INTEGER", "height": "INTEGER"}
KEY_PATTERN = re.compile(r"[^\x00-\x1f\x7f/\\]{1,256}")
WORD_PATTERN = re.compile(r"[A-Za-z0-9_.:=+-]{1,80}")
IMAGE_TYPES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG", "image/png"), (b"GIF8", "image/gif"))


class BrowseError(Exception):
    """A request the views refuse: `status` is the HTTP status (400 malformed, 404 not found), the message
    says what was wrong with which parameter."""

    status = 400


class NotFound(BrowseError):
    status = 404


class Unavailable(BrowseError):
    """A view this server does not offer for this run (search over more embeddings than it holds in memory)."""

    status = 501


# ---------------------------------------------------------------- parameters

def check_key(value: str, name: str = "key") -> str:
    """A sample key as a request may give it: 1-256 printable characters, no path separator, no '..'."""
    if not KEY_PATTERN.fullmatch(value) or ".." in value:
        raise BrowseError(f"{name}: {value[:80]!r} is not a valid key (1-256 printable characters, "
                          "no '/', '\\' or '..')")
    return value


def _word(value: str, name: str) -> str:
    if not WORD_PATTERN.fullmatch(value):
        raise BrowseError(f"{name}: {value[:80]!r} is not a valid value (letters, digits, . _ : = + -)")
    return value


def _number(value: str, name: str, low: float, high: float, integer: bool = False) -> float | int:
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        raise BrowseError(f"{name}: {value[:80]!r} is not a {'whole ' if integer else ''}number") from None
    if not (low <= number <= high) or (isinstance(number, float) and math.isnan(number)):
        raise BrowseError(f"{name}: {value[:80]!r} is outside [{low:g}, {high:g}]")
    return number


def _choice(value: str, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise BrowseError(f"{name}: {value[:80]!r} is not one of {', '.join(choices)}")
    return value


class Params:
    """A request's query parameters (name -> list of values, as urllib.parse.parse_qs gives them): each read
    at most once, given at most once; `done()` refuses the names no view reads."""

    def __init__(self, query: dict[str, list[str]], allowed: tuple[str, ...]):
        unknown = sorted(set(query) - set(allowed))
        if unknown:
            raise BrowseError(f"unknown parameter(s) {', '.join(repr(u[:40]) for u in unknown)} "
                              f"(this view takes: {', '.join(allowed) or 'none'})")
        for name, values in query.items():
            if len(values) > 1:
                raise BrowseError(f"{name}: given {len(values)} times")
        self.values = {k: v[0] for k, v in query.items() if v and v[0] != ""}

    def get(self, name: str) -> str | None:
        return self.values.get(name)


@dataclass(frozen=True)
class GridQuery:
    """The grid's filters and page (all optional): see `parse` for the parameters."""

    status: str | None = None
    subset: str | None = None
    decision: str | None = None  # kept | dropped
    step: str | None = None
    reason: str | None = None
    audit: str | None = None
    concept: str | None = None
    concept_mode: str = "caption"
    clip_min: float | None = None
    clip_max: float | None = None
    lang: str | None = None
    sample: float | None = None
    seed: int = 0
    after: str | None = None
    limit: int = PAGE_DEFAULT

    PARAMS = ("status", "subset", "decision", "step", "reason", "audit", "concept", "concept_mode",
              "clip_min", "clip_max", "lang", "sample", "seed", "after", "limit")

    @classmethod
    def parse(cls, query: dict[str, list[str]]) -> GridQuery:
        p = Params(query, cls.PARAMS)
        g = p.get
        fields: dict = {}
        for name in ("status", "subset", "step", "reason", "audit", "lang"):
            if g(name) is not None:
                fields[name] = _word(g(name), name)
        if g("concept") is not None:
            concept = g("concept")
            if len(concept) > 200 or any(ord(c) < 32 for c in concept):
                raise BrowseError(f"concept: {concept[:80]!r} is not a valid concept name")
            fields["concept"] = concept
        if g("decision") is not None:
            fields["decision"] = _choice(g("decision"), "decision", ("kept", "dropped"))
        if g("concept_mode") is not None:
            fields["concept_mode"] = _choice(g("concept_mode"), "concept_mode", CONCEPT_MODES)
        for name in ("clip_min", "clip_max"):
            if g(name) is not None:
                fields[name] = _number(g(name), name, -1.0, 1.0)
        if g("sample") is not None:
            fields["sample"] = _number(g("sample"), "sample", 1e-6, 1.0)
        if g("seed") is not None:
            fields["seed"] = _number(g("seed"), "seed", 0, 2**31 - 1, integer=True)
        if g("after") is not None:
            fields["after"] = check_key(g("after"), "after")
        if g("limit") is not None:
            fields["limit"] = _number(g("limit"), "limit", 1, PAGE_MAX, integer=True)
        query_ = cls(**fields)
        if (query_.decision or query_.step or query_.reason) and not query_.subset:
            raise BrowseError("decision, step and reason filter a subset's decisions: give subset=NAME too")
        if query_.clip_min is not None and query_.clip_max is not None and query_.clip_min > query_.clip_max:
            raise BrowseError(f"clip_min {query_.clip_min} is above clip_max {query_.clip_max}")
        return query_

    def filters(self) -> dict:
        """The filters in effect, as the page shows them (no cursor)."""
        return {k: v for k, v in self.__dict__.items() if v is not None and k not in ("after", "limit")
                and not (k == "concept_mode" and self.concept is None) and not (k == "seed" and self.sample is None)}


# ---------------------------------------------------------------- where keys live

@dataclass(frozen=True)
class Span:
    """A file (or one row group of it) of a run table and the keys it holds."""

    path: str
    shard: str
    row_group: int | None
    lo: str | None  # None: the file has no key statistics
    hi: str | None
    rows: int


def _file_spans(paths: RunPaths, path: str, row_groups: bool) -> list[Span]:
    with paths.fs.open(path, "rb") as f:
        meta = pq.ParquetFile(f).metadata
    shard = path.rsplit("/", 1)[-1].removesuffix(".parquet")
    column = next((j for j in range(meta.num_columns) if meta.schema.column(j).path == "key"), None)
    spans = []
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        stats = group.column(column).statistics if column is not None else None
        ok = stats is not None and stats.has_min_max
        spans.append(Span(path, shard, i, stats.min if ok else None, stats.max if ok else None, group.num_rows))
    if row_groups or not spans:
        return spans or [Span(path, shard, None, None, None, 0)]
    known = all(s.lo is not None for s in spans)
    return [Span(path, shard, None, min(s.lo for s in spans) if known else None,
                 max(s.hi for s in spans) if known else None, sum(s.rows for s in spans))]


class KeyIndex:
    """Which files (or row groups) of a run table hold which keys, from the Parquet footers (read once)."""

    def __init__(self, paths: RunPaths, files: list[str], row_groups: bool = False):
        with ThreadPoolExecutor(8) as pool:
            spans = [s for part in pool.map(lambda f: _file_spans(paths, f, row_groups), files) for s in part]
        spans = [s for s in spans if s.rows > 0]
        self.known = all(s.lo is not None for s in spans)
        self.spans = sorted(spans, key=lambda s: (s.lo, s.hi)) if self.known else spans
        # sorted and disjoint: a key lies in at most one span, and windows are contiguous runs of spans
        self.disjoint = self.known and all(a.hi < b.lo for a, b in zip(self.spans, self.spans[1:], strict=False))
        self._his = [s.hi for s in self.spans]
        self.rows = sum(s.rows for s in spans)
        self.max_key = max(self._his) if self.known and self.spans else None

    def holding(self, key: str) -> list[Span]:
        """The spans whose key range holds key (all of them when ranges are unknown)."""
        if not self.known:
            return list(self.spans)
        if self.disjoint:
            i = bisect.bisect_left(self._his, key)
            return [self.spans[i]] if i < len(self.spans) and self.spans[i].lo <= key else []
        return [s for s in self.spans if s.lo <= key <= s.hi]

    def windows(self, after: str | None):
        """(spans, upto, last) windows covering the keys above `after` in key order; each window holds about
        four times the rows of the previous one. Without sorted, disjoint spans: one window of everything."""
        if not self.disjoint:
            yield list(self.spans), None, True
            return
        start = 0 if after is None else bisect.bisect_right(self._his, after)
        want = FIRST_WINDOW_ROWS
        while start < len(self.spans):
            end, rows = start, 0
            while end < len(self.spans) and (end == start or rows < want):
                rows += self.spans[end].rows
                end += 1
            yield self.spans[start:end], self.spans[end - 1].hi, end == len(self.spans)
            start, want = end, want * 4


# ---------------------------------------------------------------- the run's side tables

@dataclass
class SubsetView:
    """A subset as browse shows it: its decisions, stats and the step of each drop reason."""

    name: str
    decisions: str
    stats: dict
    reasons: dict[str, dict] = field(default_factory=dict)  # reason -> {step, rows}

    @property
    def near_steps(self) -> list[dict]:
        """The near_dedup steps the subset's selection ran (stats.json), whether or not they dropped a row."""
        return [s for s in self.stats.get("steps", []) if s.get("name") == "near_dedup"]

    @property
    def has_near(self) -> bool:
        return bool(self.near_steps) or "near_duplicate" in self.reasons


@dataclass
class AuditView:
    """An audit as browse shows it: its concepts, tag files and counts."""

    artifact: Audit
    concepts: list[str]
    ids: dict[str, int]
    frequency: str
    counted: bool = False  # counts.parquet written (a `tailor audit`; recaption's concept tags alone have none)

    @property
    def name(self) -> str:
        return self.artifact.name


def _empty(con: duckdb.DuckDBPyConnection, name: str, columns: dict[str, str]) -> None:
    """An empty view with these columns (a run without that table)."""
    con.sql(f"CREATE OR REPLACE VIEW {name} AS SELECT "
            + ", ".join(f"NULL::{t} AS {c}" for c, t in columns.items()) + " WHERE false")


def _json_value(value):
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        return str(value)  # a uint64 pHash: JavaScript numbers would round it
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def image_type(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((t for magic, t in IMAGE_TYPES if data.startswith(magic)), "application/octet-stream")


class Browser:
    """The read-only views of one run. Thread-safe: each query opens its own DuckDB connection."""

    def __init__(self, run: str, threads: int | None = None):
        self.run = RunPaths.absolute(run)
        self.paths = RunPaths(self.run)
        self.threads = threads
        annotations = self.paths.outputs("annotations")
        if not annotations:
            raise ConfigError(f"{run}: no annotations to browse (no RUN/annotations/*.parquet); "
                              "run `tailor annotate` first")
        self.annotations = KeyIndex(self.paths, annotations)
        self.images = KeyIndex(self.paths, self.paths.outputs("images"), row_groups=True)
        self.embeddings = self.paths.outputs("embeddings")
        self.subsets = self._find_subsets()
        self.audits = self._find_audits()
        semdedup = self.paths.dedup("semdedup.parquet")
        self.semdedup = semdedup if self.paths.exists(semdedup) else None
        config = self.paths.read_config() or {}
        self.model = (config.get("embed") or {}).get("model") if self.embeddings else None
        self.text_pass = self.paths.is_text_pass()  # no image fetched: no image tags to filter on
        # a run of the demo web (its URL table's demo_id rides along): the demo recipe fits it, not other runs
        self.demo = bool(self.annotations.spans) and "demo_id" in self._schema(self.annotations.spans[0].path)
        self._lock = threading.Lock()
        self._image_cache: OrderedDict[tuple[str, int], dict[str, bytes]] = OrderedDict()
        self._groups: dict[tuple, tuple[list[str], dict[str, list[tuple[str, bool]]]]] = {}
        self._index = None
        self._tower = None
        self._languages: list[dict] | None = None
        self._statuses: dict[str, int] | None = None
        self._idle: list[duckdb.DuckDBPyConnection] = []
        # the upper bound of every key (a window's `key <= $upto` when the key ranges are unknown)
        self._top = self.annotations.max_key if self.annotations.known else "\U0010ffff" * 8

    # -- discovery
    def _schema(self, path: str) -> list[str]:
        with self.paths.fs.open(path, "rb") as f:
            return pq.read_schema(f).names

    def _find_subsets(self) -> dict[str, SubsetView]:
        subsets = {}
        for found in self.paths.subsets():
            stats = found.info()
            subset = SubsetView(found.name, found.decisions, stats)
            for step in stats.get("steps", []):
                for reason, rows in step.get("by_reason", {}).items():
                    subset.reasons[reason] = {"step": step["name"], "rows": rows}
            subsets[found.name] = subset
        return subsets

    def _find_audits(self) -> dict[str, AuditView]:
        audits = {}
        for found in self.paths.audits():
            with self.paths.fs.open(found.concepts, "rb") as f:
                concepts = pq.read_table(f, columns=["concept_id", "concept"]).sort_by("concept_id")
            names = concepts.column("concept").to_pylist()
            ids = dict(zip(names, concepts.column("concept_id").to_pylist(), strict=True))
            info = self.paths.read_json(found.settings) if self.paths.exists(found.settings) else {}
            frequency = ((info.get("summary") or {}).get("frequency")) or "text"
            audits[found.name] = AuditView(found, names, ids, frequency, self.paths.exists(found.counts))
        # the default (first) audit is one with counts, so the concepts view opens on something to show
        return dict(sorted(audits.items(), key=lambda item: (not item[1].counted, item[0])))

    def subset(self, name: str | None) -> SubsetView | None:
        if name is None:
            return None
        if name not in self.subsets:
            raise NotFound(f"subset: the run has no subset {name!r} (subsets: {', '.join(self.subsets) or 'none'})")
        return self.subsets[name]

    def audit(self, name: str | None, required: bool = False) -> AuditView | None:
        """The audit NAME; without a name the first (those with counts first, then by name), or None when the
        run has none."""
        if name is None:
            if self.audits:
                return next(iter(self.audits.values()))
            if required:
                raise NotFound("concepts need an audit of the run (`tailor audit RUN --concepts LIST`); "
                               "the run has none")
            return None
        if name not in self.audits:
            raise NotFound(f"audit: the run has no audit {name!r} (audits: {', '.join(self.audits) or 'none'})")
        return self.audits[name]

    # -- DuckDB over the run
    @contextlib.contextmanager
    def _connect(self):
        """A DuckDB connection of this run's pool (opening one costs ~20 ms; a view is defined before each use)."""
        with self._lock:
            con = self._idle.pop() if self._idle else None
        if con is None:
            con = connect(self.threads)
        try:
            yield con
        except BaseException:
            con.close()  # a failed query is not trusted to leave the connection as it found it
            raise
        with self._lock:
            if len(self._idle) < IDLE_CONNECTIONS:
                self._idle.append(con)
                return
        con.close()

    def _view(self, con, name: str, files: list[str], columns: dict[str, str] | None = None) -> None:
        """View `name` over these files (columns: a fixed projection, NULL where the files lack one)."""
        if not files:
            _empty(con, name, columns or {"key": "VARCHAR"})
            return
        rel = scan(con, self.paths, files)
        if columns is not None:
            have = set(rel.columns)
            rel = rel.project(", ".join(c if c in have else f"NULL::{t} AS {c}" for c, t in columns.items()))
        rel.create_view(name, replace=True)

    def _tags_view(self, con, audit: AuditView | None, shards: list[str] | None) -> None:
        columns = {"key": "VARCHAR", "text_concepts": "INTEGER[]", "image_concepts": "INTEGER[]"}
        if audit is None:
            _empty(con, "tags", columns)
            return
        files = audit.artifact.tag_files()
        if shards is not None:
            wanted = set(shards)
            files = [f for f in files if f.rsplit("/", 1)[-1].removesuffix(".parquet") in wanted]
        self._view(con, "tags", files, columns)

    def _dec_view(self, con, subset: SubsetView | None) -> None:
        columns = {"key": "VARCHAR", "kept": "BOOLEAN", "reason": "VARCHAR", "step": "VARCHAR", "detail": "VARCHAR"}
        self._view(con, "dec", [subset.decisions] if subset else [], columns)

    # -- views
    def meta(self) -> dict:
        if self._statuses is None:  # from the shards' _done markers, as `tailor status` counts them
            statuses, _, _ = self.paths.committed_counts([s.shard for s in self.annotations.spans])
            self._statuses = dict(statuses.most_common())
        return {
            "run": self.run, "rows": self.annotations.rows, "statuses": self._statuses,
            "subsets": [{"name": s.name, "kept": s.stats.get("kept"), "rows": s.stats.get("rows"),
                         "steps": [st["name"] for st in s.stats.get("steps", [])], "reasons": s.reasons}
                        for s in self.subsets.values()],
            "audits": [{"name": a.name, "concepts": a.concepts, "frequency": a.frequency}
                       for a in self.audits.values()],
            "languages": self.languages(),
            "embeddings": bool(self.embeddings), "search": self.model is not None,
            "semdedup": self.semdedup is not None, "model": self.model, "text_pass": self.text_pass,
            "page_max": PAGE_MAX, "static": False,
        }

    def languages(self) -> list[dict]:
        if self._languages is None:
            spans, rows = [], 0
            for s in self.annotations.spans:
                if rows >= LANGUAGE_SAMPLE_ROWS:
                    break
                spans.append(s.path)
                rows += s.rows
            with self._connect() as con:
                self._view(con, "ann", spans, {"caption_lang": "VARCHAR"})
                self._languages = to_arrow(con.sql(sql("browse_languages"))).to_pylist()
        return self._languages

    def _grid_params(self, q: GridQuery) -> tuple[SubsetView | None, AuditView | None, dict]:
        subset = self.subset(q.subset)
        audit = self.audit(q.audit, required=q.concept is not None)
        concept = None
        if q.concept is not None:
            concept = audit.ids.get(q.concept)
            if concept is None and q.concept.isdigit() and int(q.concept) < len(audit.concepts):
                concept = int(q.concept)
            if concept is None:
                raise NotFound(f"concept: {q.concept!r} is not a concept of audit {audit.name!r}")
            if q.concept_mode != "caption" and self.text_pass:
                raise BrowseError(f"concept_mode: {q.concept_mode!r} reads image tags, and this run is a text pass "
                                  "(no image fetched yet); use concept_mode=caption")
        if subset is not None:
            steps = {r["step"] for r in subset.reasons.values()}
            if q.step is not None and steps and q.step not in steps:
                raise NotFound(f"step: subset {subset.name!r} has no step {q.step!r} that dropped rows "
                               f"(steps: {', '.join(sorted(steps))})")
            if q.reason is not None and subset.reasons and q.reason not in subset.reasons:
                raise NotFound(f"reason: subset {subset.name!r} dropped no row for {q.reason!r} "
                               f"(reasons: {', '.join(sorted(subset.reasons))})")
        params = {"status": q.status, "decision": q.decision, "step": q.step, "reason": q.reason,
                  "clip_min": q.clip_min, "clip_max": q.clip_max, "lang": q.lang, "concept": concept,
                  "concept_mode": q.concept_mode, "sample": q.sample, "seed": q.seed}
        return subset, audit, params

    def grid(self, q: GridQuery) -> dict:
        """One page of samples matching q after the cursor q.after, in key order. `next` is the cursor of
        the following page (None at the end); a sparse filter may stop early at PAGE_BUDGET_S with fewer
        items and a cursor where it stopped (`partial`)."""
        subset, audit, params = self._grid_params(q)
        started = time.perf_counter()
        rows: list[dict] = []
        cursor, finished = q.after, False
        query = sql("browse_matches") + "\nORDER BY a.key\nLIMIT $limit"
        with self._connect() as con:
            self._dec_view(con, subset)
            for spans, upto, last in self.annotations.windows(q.after):
                self._view(con, "ann", [s.path for s in spans], GRID_COLUMNS)
                self._tags_view(con, audit, [s.shard for s in spans] if self.annotations.disjoint else None)
                found = to_arrow(con.sql(query, params={**params, "after": cursor or "", "upto": upto or self._top,
                                                         "limit": q.limit + 1 - len(rows)})).to_pylist()
                rows.extend(found)
                cursor = upto
                if len(rows) > q.limit:
                    break
                if last or upto is None:
                    finished = True
                    break
                if time.perf_counter() - started > PAGE_BUDGET_S:
                    break
            else:
                finished = True
        more = len(rows) > q.limit
        rows = rows[:q.limit]
        if more:
            cursor = rows[-1]["key"]
        if q.after is not None and not rows and finished:
            raise NotFound(f"page past the end: no sample after key {q.after!r} matches this filter")
        items = [self._card(r, audit, subset) for r in rows]
        return {"items": items, "next": None if finished and not more else cursor,
                "partial": not finished and not more, "filters": q.filters(), "limit": q.limit,
                "seconds": round(time.perf_counter() - started, 4)}

    def count(self, q: GridQuery) -> dict:
        """How many samples match q's filters (a full scan: the page asks for it after the first page)."""
        subset, audit, params = self._grid_params(q)
        started = time.perf_counter()
        with self._connect() as con:
            self._dec_view(con, subset)
            self._view(con, "ann", [s.path for s in self.annotations.spans], GRID_COLUMNS)
            self._tags_view(con, audit, None)
            n = con.sql(f"SELECT count(*) FROM ({sql('browse_matches')})",
                        params={**params, "after": "", "upto": self._top}).fetchall()[0][0]
        return {"count": n, "filters": q.filters(), "seconds": round(time.perf_counter() - started, 4)}

    def _card(self, row: dict, audit: AuditView | None = None, subset: SubsetView | None = None) -> dict:
        card = {"key": row["key"], "caption": row.get("caption"), "status": row.get("status"),
                "clip_score": _json_value(row.get("clip_score")), "lang": row.get("caption_lang"),
                "width": row.get("width"), "height": row.get("height")}
        if audit is not None:
            card["caption_concepts"] = [audit.concepts[i] for i in row.get("text_concepts") or []]
            card["image_concepts"] = [audit.concepts[i] for i in row.get("image_concepts") or []]
        if subset is not None and row.get("reason") is not None:
            card["decision"] = {"subset": subset.name, "kept": row["kept"], "reason": row["reason"],
                                "step": row["step"], "detail": row["detail"]}
        return card

    def cards(self, keys: list[str]) -> list[dict]:
        """Cards (key, caption, status, score, concept tags of the only audit) of keys, in the given order."""
        if not keys:
            return []
        files = sorted({s.path for k in keys for s in self.annotations.holding(k)})
        audit = self.audit(None)
        with self._connect() as con:
            self._view(con, "ann", files, GRID_COLUMNS)
            found = {r["key"]: r for r in to_arrow(con.sql(sql("browse_cards"), params={"keys": keys})).to_pylist()}
            if audit is not None:
                shards = sorted({s.shard for k in keys for s in self.annotations.holding(k)})
                self._tags_view(con, audit, shards)
                for r in to_arrow(con.sql(sql("browse_card_tags"), params={"keys": keys})).to_pylist():
                    if r["key"] in found:
                        found[r["key"]].update(r)
        return [self._card(found[k], audit) for k in keys if k in found]

    def _lookup(self, files: list[str], key: str) -> dict | None:
        if not files:
            return None
        with self._connect() as con:
            self._view(con, "tbl", files)
            rows = to_arrow(con.sql(sql("browse_lookup"), params={"key": key})).to_pylist()
        return rows[0] if rows else None

    def sample(self, key: str, neighbours: int = NEIGHBOURS_DEFAULT) -> dict:
        """Everything about one key: every annotation column, its decision in each subset, its concept tags in
        each audit, its semantic-duplicate record and its nearest neighbours by image embedding."""
        key = check_key(key)
        spans = self.annotations.holding(key)
        row = self._lookup([s.path for s in spans], key)
        if row is None:
            raise NotFound(f"unknown key {key!r}: no annotation row has it")
        decisions = {}
        for subset in self.subsets.values():
            d = self._lookup([subset.decisions], key)
            # subsets from before metaclip-balance wrote step and detail lack them
            decisions[subset.name] = None if d is None else {k: d.get(k) for k in ("kept", "reason", "step", "detail")}
        tags = {}
        for audit in self.audits.values():
            t = self._lookup([f for f in audit.artifact.tag_files()
                              if f.rsplit("/", 1)[-1].removesuffix(".parquet") in {s.shard for s in spans}], key)
            if t is not None:
                tags[audit.name] = {
                    "caption": [audit.concepts[i] for i in t.get("text_concepts") or []],
                    "image": [audit.concepts[i] for i in t.get("image_concepts") or []],
                    "image_top": audit.concepts[t["image_top"]] if t.get("image_top") is not None else None,
                    "image_top_score": _json_value(t.get("image_top_score"))}
        semantic = None
        if self.semdedup is not None:
            s = self._lookup([self.semdedup], key)
            if s is not None:
                semantic = {k: _json_value(s.get(k)) for k in ("cluster", "max_sim", "dup_of")}
        result = {"key": key, "annotation": {k: _json_value(v) for k, v in row.items()},
                  "decisions": decisions, "concepts": tags, "semdedup": semantic,
                  "has_image": bool(self.images.holding(key)) and row.get("status") == "ok",
                  "neighbours": []}
        if self.embeddings and row.get("status") == "ok" and neighbours:
            try:
                result["neighbours"] = self.neighbours(key, neighbours)["items"]
            except (NotFound, Unavailable):
                pass
        return result

    def image(self, key: str) -> tuple[bytes, str]:
        """The stored image of key and its content type; a 404 when the run stored none."""
        key = check_key(key)
        for span in self.images.holding(key):
            group = self._image_group(span)
            if key in group:
                return group[key], image_type(group[key])
        raise NotFound(f"unknown key {key!r}: the run stored no image for it")

    def _image_group(self, span: Span) -> dict[str, bytes]:
        cache_key = (span.path, span.row_group or 0)
        with self._lock:
            if cache_key in self._image_cache:
                self._image_cache.move_to_end(cache_key)
                return self._image_cache[cache_key]
        with self.paths.fs.open(span.path, "rb") as f:
            table = pq.ParquetFile(f).read_row_group(span.row_group or 0, columns=["key", "image"])
        group = dict(zip(table.column("key").to_pylist(), table.column("image").to_pylist(), strict=True))
        with self._lock:
            self._image_cache[cache_key] = group
            while len(self._image_cache) > IMAGE_CACHE_GROUPS:
                self._image_cache.popitem(last=False)
        return group

    def decisions_and_tags(self, first: str, last: str) -> tuple[dict[str, dict], dict[str, dict]]:
        """For every key in [first, last]: its decision in each subset ([kept, reason, step]) and its concept tags
        in each audit ([caption concept ids, image concept ids or None where the image was not tagged]); what a
        static copy's grid filters on."""
        decisions: dict[str, dict] = {}
        tags: dict[str, dict] = {}
        bounds = {"first": first, "last": last}
        with self._connect() as con:
            for subset in self.subsets.values():
                self._dec_view(con, subset)
                for r in to_arrow(con.sql(sql("browse_copy_decisions"), params=bounds)).to_pylist():
                    decisions.setdefault(r["key"], {})[subset.name] = [r["kept"], r["reason"], r["step"]]
            for audit in self.audits.values():
                self._tags_view(con, audit, None)
                for r in to_arrow(con.sql(sql("browse_copy_tags"), params=bounds)).to_pylist():
                    # image tags stay null where the image was not tagged (no image): not "tagged with nothing"
                    tags.setdefault(r["key"], {})[audit.name] = [r["text_concepts"] or [], r["image_concepts"]]
        return decisions, tags

    # -- duplicates
    def _dup_groups(self, kind: str, subset: SubsetView | None) -> tuple[list[str], dict[str, list[tuple[str, bool]]]]:
        cache_key = (kind, subset.name if subset else None)
        with self._lock:
            if cache_key in self._groups:
                return self._groups[cache_key]
        with self._connect() as con:
            if kind == "exact":
                self._view(con, "ann", [s.path for s in self.annotations.spans],
                           {"key": "VARCHAR", "status": "VARCHAR", "sha256": "VARCHAR", "clip_score": "DOUBLE"})
                table = to_arrow(con.sql(sql("browse_dup_exact")))
            elif kind == "near":
                self._dec_view(con, subset)
                table = to_arrow(con.sql(sql("browse_dup_decided"), params={"reason": "near_duplicate"}))
            else:
                self._view(con, "sem", [self.semdedup] if self.semdedup else [],
                           {"key": "VARCHAR", "dup_of": "VARCHAR"})
                table = to_arrow(con.sql(sql("browse_dup_semantic")))
        groups: dict[str, list[tuple[str, bool]]] = {}
        for keeper, key, kept in zip(*(table.column(c).to_pylist() for c in ("keeper", "key", "kept")), strict=True):
            groups.setdefault(keeper, []).append((key, kept))
        result = (sorted(groups), groups)
        with self._lock:
            self._groups[cache_key] = result
        return result

    def duplicates(self, query: dict[str, list[str]]) -> dict:
        """One page of duplicate groups of a kind: exact (same sha256), near (a subset's near_dedup drops: the
        subset given when it ran a near_dedup step, else another that did; `step` is that step's max_hamming,
        rows in and dropped, and the note says when it found none), semantic (SemDeDup); each group's members
        with the one kept first. Paged by the kept key."""
        p = Params(query, ("kind", "subset", "after", "limit"))
        kind = _choice(p.get("kind") or "exact", "kind", DUPLICATE_KINDS)
        after = check_key(p.get("after"), "after") if p.get("after") else None
        limit = _number(p.get("limit"), "limit", 1, 200, integer=True) if p.get("limit") else GROUPS_DEFAULT
        subset = None
        note = None
        step = None
        if kind == "near":
            asked = self.subset(_word(p.get("subset"), "subset")) if p.get("subset") else None
            subset, note = self._near_subset(asked)
            if subset is None:
                return {"kind": kind, "groups": [], "next": None, "subset": None, "step": None,
                        "total_groups": 0, "total_rows": 0, "note": note}
            step = self._near_step(subset)
        elif p.get("subset"):
            raise BrowseError(f"subset: {kind} groups do not depend on a subset (only kind=near does)")
        if kind == "semantic" and self.semdedup is None:
            note = "semantic groups come from `tailor semdedup RUN`; the run has no RUN/dedup/semdedup.parquet"
        keepers, groups = self._dup_groups(kind, subset)
        if kind == "near" and not keepers:
            ran = f" (max_hamming {step['max_hamming']})" if step and step.get("max_hamming") is not None else ""
            over = f" over {step['rows_in']} rows" if step and step.get("rows_in") is not None else ""
            note = ((note + "; ") if note else "") + (
                f"subset {subset.name!r}: its near_dedup step{ran} ran{over} and found no near-duplicate")
        start = 0 if after is None else bisect.bisect_right(keepers, after)
        if after is not None and start >= len(keepers):
            raise NotFound(f"page past the end: no {kind} duplicate group after key {after!r}")
        page = keepers[start:start + limit]
        cards = {c["key"]: c for c in self.cards([k for keeper in page for k, _ in groups[keeper]])}
        out = [{"kept": keeper, "members": [{**cards.get(k, {"key": k}), "kept": kept} for k, kept in groups[keeper]]}
               for keeper in page]
        more = start + limit < len(keepers)
        return {"kind": kind, "subset": subset.name if subset else None, "step": step, "groups": out,
                "next": page[-1] if more and page else None, "total_groups": len(keepers),
                "total_rows": sum(len(g) for g in groups.values()), "note": note}

    def _near_subset(self, asked: SubsetView | None) -> tuple[SubsetView | None, str | None]:
        """The subset whose near_dedup decisions the near groups show: the one asked for (the page passes the
        subset browse was opened on) when it ran a near_dedup step, else the first that dropped near duplicates,
        else the first that ran one; and a note when that is not the one asked for, or there is none."""
        if asked is not None and asked.has_near:
            return asked, None
        ran = [s for s in self.subsets.values() if s.has_near]
        chosen = next((s for s in ran if "near_duplicate" in s.reasons), ran[0] if ran else None)
        if chosen is not None:
            return chosen, (None if asked is None else
                            f"subset {asked.name!r} ran no near_dedup step; showing those of subset {chosen.name!r}")
        have = f"subset {asked.name!r} ran no near_dedup step, nor did any other subset" if asked is not None else (
            f"no subset of this run ran a near_dedup step (subsets: {', '.join(self.subsets)})" if self.subsets
            else "the run has no subset")
        return None, f"{have}; near-duplicate groups come from one: {self._near_hint()}"

    def _near_step(self, subset: SubsetView) -> dict | None:
        """The subset's (last) near_dedup step as stats.json recorded it: max_hamming, rows in, rows dropped."""
        if not subset.near_steps:
            return None
        s = subset.near_steps[-1]
        return {"name": "near_dedup", "max_hamming": (s.get("params") or {}).get("max_hamming"),
                "rows_in": s.get("rows_in"), "dropped": s.get("dropped")}

    def _near_hint(self) -> str:
        """How to make a subset with a near_dedup step: a shipped recipe that has one and fits the run (the demo
        recipe only on a run of the demo web: its thresholds are the demo CLIP's), else the step to add."""
        shipped = [r for r in near_dedup_recipes() if self.demo or r != "demo"]
        if shipped:
            return f"`tailor select RUN --recipe {shipped[0]} --name NAME`"
        return ("add a near_dedup step to your recipe (`- step: near_dedup` with `max_hamming: 4`, the pHash bits "
                "that may differ) and run `tailor select RUN --recipe RECIPE.yaml --name NAME`")

    # -- search
    def _embedding_index(self):
        with self._lock:
            if self._index is not None:
                return self._index
        if not self.embeddings:
            raise NotFound("search needs image embeddings (an annotate config with an embed section); "
                           "the run has none")
        rows = KeyIndex(self.paths, self.embeddings).rows
        if rows > SEARCH_MAX_ROWS:
            raise Unavailable(f"search and neighbours hold every image embedding in memory, up to {SEARCH_MAX_ROWS}; "
                              f"this run has {rows}")
        import faiss

        keys, parts = [], []
        for path in self.embeddings:
            with self.paths.fs.open(path, "rb") as f:
                table = pq.read_table(f, columns=["key", "image_emb"])
            keys.extend(table.column("key").to_pylist())
            parts.append(to_matrix(table.column("image_emb")))
        matrix = np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros((0, 1), np.float32))
        index = faiss.IndexFlatIP(matrix.shape[1])
        index.add(matrix)
        order = np.argsort(np.array(keys, dtype=object))
        sorted_keys = [keys[i] for i in order]
        built = (index, keys, matrix, sorted_keys, order)
        with self._lock:
            self._index = built
        return built

    def _nearest(self, vector: np.ndarray, k: int, exclude: str | None = None) -> list[dict]:
        index, keys, _, _, _ = self._embedding_index()
        scores, rows = index.search(vector.reshape(1, -1).astype(np.float32), min(k + 1, index.ntotal))
        hits = [(keys[r], float(s)) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0 and keys[r] != exclude]
        hits = hits[:k]
        cards = {c["key"]: c for c in self.cards([h for h, _ in hits])}
        # float16 vectors: a self-match can score 1.0001
        return [{**cards.get(h, {"key": h}), "similarity": round(min(s, 1.0), 4)} for h, s in hits]

    def neighbours(self, key: str, k: int = NEIGHBOURS_DEFAULT) -> dict:
        """The k stored images closest to key's image embedding (cosine)."""
        key = check_key(key)
        _, _, matrix, sorted_keys, order = self._embedding_index()
        i = bisect.bisect_left(sorted_keys, key)
        if i >= len(sorted_keys) or sorted_keys[i] != key:
            raise NotFound(f"unknown key {key!r}: no image embedding has it")
        return {"key": key, "items": self._nearest(matrix[order[i]], k, exclude=key)}

    def search(self, query: dict[str, list[str]]) -> dict:
        """Text search: the query embedded by the run's CLIP text tower, nearest stored image embeddings."""
        p = Params(query, ("q", "k"))
        text = p.get("q")
        if not text or len(text) > 500:
            raise BrowseError("q: give a text query of 1-500 characters")
        k = _number(p.get("k"), "k", 1, 200, integer=True) if p.get("k") else 48
        if self.model is None:
            raise NotFound("search needs the run's CLIP model (embed.model in RUN/config.yaml) and embeddings; "
                           "the run has none")
        self._embedding_index()  # refused (too many embeddings) before the model loads
        vector = self._text_tower().encode([text])[0]
        return {"q": text, "model": self.model, "items": self._nearest(vector, k)}

    def _text_tower(self):
        with self._lock:
            if self._tower is None:

                self._tower = ClipTextTower.load(resolve_model(self.model), "cpu")
            return self._tower

    def neighbours_view(self, query: dict[str, list[str]]) -> dict:
        p = Params(query, ("key", "k"))
        if not p.get("key"):
            raise BrowseError("key: give the key of a sample")
        k = _number(p.get("k"), "k", 1, 200, integer=True) if p.get("k") else NEIGHBOURS_DEFAULT
        return self.neighbours(p.get("key"), k)

    # -- concepts
    def concepts(self, query: dict[str, list[str]]) -> dict:
        """An audit's concepts, tail first, with their counts and rank (links go to the grid's concept filter)."""
        p = Params(query, ("audit",))
        audit = self.audit(_word(p.get("audit"), "audit") if p.get("audit") else None, required=True)
        counts = audit.artifact.counts
        if not self.paths.exists(counts):
            raise NotFound(f"audit {audit.name!r} has no counts.parquet yet (run `tailor audit`)")
        with self._connect() as con:
            self._view(con, "counts", [counts])
            rows = to_arrow(con.sql(sql("browse_concepts"))).to_pylist()
        mode = {"text": "caption", "image": "image", "matched": "both"}.get(audit.frequency, "caption")
        return {"audit": audit.name, "frequency": audit.frequency, "mode": mode, "concepts": rows,
                "unit": FREQUENCY_UNITS.get(audit.frequency, audit.frequency)}


def near_dedup_recipes() -> list[str]:
    """The shipped recipes (pipelines/recipes) with a near_dedup step, by name."""
    names = []
    for path in sorted((PACKAGE / "recipes").glob("*.yaml")):
        steps = (yaml.safe_load(path.read_text()) or {}).get("steps") or []
        if any(isinstance(s, dict) and s.get("step") == "near_dedup" for s in steps):
            names.append(path.stem)
    return names


def sample_view(browser: Browser, query: dict[str, list[str]]) -> dict:
    p = Params(query, ("key",))
    if not p.get("key"):
        raise BrowseError("key: give the key of a sample")
    return browser.sample(p.get("key"))


def image_view(browser: Browser, query: dict[str, list[str]]) -> tuple[bytes, str]:
    p = Params(query, ("key",))
    if not p.get("key"):
        raise BrowseError("key: give the key of a sample")
    return browser.image(p.get("key"))
