"""Concept-frequency audit of a run: text, image and matched counts per concept, the long tail,
what a subset removed from it, and (given per-concept accuracies) the log-linear analysis.

    audit_run(run, AuditOptions(concepts="coco80"), subset=None, accuracy=None) writes RUN/audit/NAME/:
        _audit.json             settings (concept list id, tagger, model) and the summary
        concepts.parquet        concept_id, concept, synonyms
        variants.parquet        variant_id, concept_id, variant (every name and synonym)
        tags/SHARD.parquet      per annotation row: key, status, sha256, text_concepts, text_concepts_bag,
                                text_variants, image_concepts, image_top, image_top_score
        counts.parquet          sql/audit_counts.sql: per concept, caption rows naming it (text_count*), distinct
                                images (sha256) tagged with it (image_count) or also named by one of their
                                captions (matched_count), rank, tail, top synonym
        subsets/SUBSET.parquet  sql/audit_subset_delta.sql: the same for the subset's rows, and the delta
        loglinear.parquet       sql/audit_loglinear.sql: the paper's bins of ln(count), accuracy per bin
                                (pipelines/verbs/loglinear.py; counts from the accuracy file or the run)
        report/index.html, report/*.png   (pipelines/verbs/audit_report.py)

Tagging is one pass over the run's shards: each shard's captions are matched word by word
(operators/concepts.py ConceptMatcher: concept words and their inflections) and its stored image
embeddings are scored against the concept text embeddings (ImageConceptTagger; the text tower runs
once, in the driver). Small runs are tagged in this process; large ones (or `engine="ray"`) with a
Ray Data actor pool, one shard per work item. Tags are kept and reused while the concept list,
tagger and model are unchanged, so a second audit (another subset, another accuracy file) is SQL only.

Units: a caption row is one annotation row (an image-text pair); an image is one distinct sha256
among ok rows (COCO has five caption rows per image; the same web image can sit under several
URLs). `text_count*` count caption rows; `image_count`, `matched_count`, `text_image_count` and the
misalignment count images (sql/audit_counts.sql, sql/audit_misalignment.sql). A text pass holds caption
rows only: its summary and report speak of caption rows, its `text_image_count` is null, and image
figures (tagger, image counts, misalignment) appear only where images were fetched and tagged.

The tail is taken among the concepts mentioned at all (sql/audit_counts.sql); those never mentioned are
counted on their own (`tail.never_mentioned`), not as the bottom of the tail.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from operators.clip import ClipTextTower
from operators.concepts import IDS, ConceptMatcher, Concepts, ImageConceptTagger, make_tagger
from pipelines.concepts import concept_list_name, load_concepts
from pipelines.core.config import ConfigError
from pipelines.core.duck import connect, run_sql, scan
from pipelines.core.engine import map_shards
from pipelines.core.passes import Pass
from pipelines.core.storage import RunPaths
from pipelines.core.verb_options import DEFAULT_THRESHOLD, MODEL_THRESHOLD, AuditOptions  # noqa: F401  (re-exported)
from pipelines.models import resolve_model
from pipelines.verbs.audit_report import write_report
from pipelines.verbs.loglinear import analyse, read_points, run_points

log = logging.getLogger(__name__)

TAGS_SCHEMA = pa.schema([("key", pa.string()), ("status", pa.string()), ("sha256", pa.string()),
                         ("text_concepts", IDS), ("text_concepts_bag", IDS), ("text_variants", IDS),
                         ("image_concepts", IDS), ("image_top", pa.int32()), ("image_top_score", pa.float32())])
TAGS_VERSION = 3  # 2: sha256 per row (image counts of distinct images), inflection-based text matching;
# 3: -ing/-ed forms count only where operators/concepts.py's VERB_FORMS lists them ("training" is no train)
LOCAL_MAX_ROWS = 200_000
# What each count counts (also in _audit.json's summary): caption rows, or distinct images (sha256) among ok rows.
UNITS = {
    "text_count": "ok caption rows naming the concept",
    "text_count_bag": "ok caption rows naming it by the pure bag-of-words rule",
    "text_count_all": "caption rows naming it, any download status",
    "text_image_count": "ok images (distinct sha256) with a caption row naming it",
    "image_count": "ok images (distinct sha256) tagged with it",
    "matched_count": "ok images tagged with it and named so by at least one of their caption rows",
    "misalignment": "ok images with an image tag none of whose caption rows names any of their concepts",
}
# A text pass (annotate --text-only) has caption rows and no image: its counts in those words.
TEXT_PASS_UNITS = {
    "text_count": "caption rows naming the concept (a text pass: every row; no image fetched yet)",
    "text_count_bag": "caption rows naming it by the pure bag-of-words rule",
    "text_count_all": "caption rows naming it (the same rows as text_count on a text pass)",
    "text_image_count": "null: a text pass holds no image",
}


# ---------------------------------------------------------------- tagging

class ShardTagger:
    """Tags one annotated shard: annotations (key, caption, status) + embeddings (key, image_emb)."""

    def __init__(self, concepts: Concepts, options: AuditOptions, concept_emb: np.ndarray | None, model: str | None,
                 run: str, name: str):
        self.paths = RunPaths(run)
        self.audit = self.paths.audit(name)
        self.matcher = ConceptMatcher(concepts, options.lang, options.nested)
        self.image = None
        if concept_emb is not None and model is not None:
            tagger = make_tagger(options.tagger, options.threshold_for(model), options.temperature)
            self.image = ImageConceptTagger(concept_emb, tagger)

    def tag(self, shard: str) -> pa.Table:
        with self.paths.fs.open(self.paths.output("annotations", shard), "rb") as f:
            names = pq.read_schema(f).names
            f.seek(0)
            table = pq.read_table(f, columns=[c for c in ("key", "caption", "status", "sha256") if c in names])
        if "sha256" not in table.column_names:  # the image's identity for image counts; the key without it
            table = table.append_column("sha256", pa.nulls(table.num_rows, pa.string()))
        table = self.matcher(table)
        emb_path = self.paths.output("embeddings", shard)
        if self.image is not None and self.paths.exists(emb_path):
            with self.paths.fs.open(emb_path, "rb") as f:
                emb = pq.read_table(f, columns=["key", "image_emb"])
            index = pc.index_in(table.column("key"), value_set=emb.column("key"))
            table = self.image(table.append_column("image_emb", emb.column("image_emb").take(index)))
        else:
            n = table.num_rows
            table = table.append_column("image_concepts", pa.nulls(n, IDS)).append_column(
                "image_top", pa.nulls(n, pa.int32())).append_column("image_top_score", pa.nulls(n, pa.float32()))
        return table.select(TAGS_SCHEMA.names).cast(TAGS_SCHEMA)

    def write(self, shard: str) -> int:
        table = self.tag(shard)
        self.paths.write_parquet(table, self.audit.tags(shard))
        return table.num_rows

    def __call__(self, items: pa.Table) -> pa.Table:  # Ray Data: one shard per row
        shards = items.column("shard").to_pylist()
        rows = [self.write(shard) for shard in shards]
        return pa.table({"shard": pa.array(shards, pa.string()), "rows": pa.array(rows, pa.int64())})


def run_embed_model(paths: RunPaths) -> str | None:
    """The embed model of the run (RUN/config.yaml's embed.model), or None without embeddings."""
    if not paths.exists(paths.config) or not paths.outputs("embeddings"):
        return None
    embed = paths.read_config().get("embed")
    if not embed:
        return None
    return embed.get("model")


def model_warning(paths: RunPaths) -> str | None:
    """annotate's warning that the demo CLIP knows only the demo web's shapes, where it applies to this run's
    recorded config (pipelines/verbs/annotate.py `demo_model_warning` owns the check and its words): then the
    run's image tags, image counts and misalignment mean nothing. None where it does not apply."""
    data = paths.read_config()
    if not data or (data.get("embed") or {}).get("model") != "builtin:demo-clip" or not paths.outputs("embeddings"):
        return None  # no demo CLIP embeddings: nothing to warn about (and no annotate import)
    from pipelines.core.config import load_config
    from pipelines.verbs.annotate import demo_model_warning

    try:
        config = load_config(base=data)
    except ConfigError:  # a config this version no longer reads: say nothing rather than fail the audit
        return None
    return demo_model_warning(config)


def concept_embeddings(concepts: Concepts, model: str, options: AuditOptions) -> np.ndarray:
    """(C, D) concept text embeddings: the model's prompt ensemble over each concept's name and synonyms."""
    return ClipTextTower.load(resolve_model(model), options.device).ensemble(concepts.all_names(), options.templates)


def tag_run(run: str, options: AuditOptions, progress: bool = False) -> dict:
    """Write RUN/audit/NAME/tags/ (reused when the settings are unchanged); return the settings."""
    this = Pass(run)
    run, paths = this.run, this.paths
    shards = this.committed_shards("audit")
    concepts = load_concepts(options.concepts)
    name = concept_list_name(options.concepts)
    audit = paths.audit(name)
    model = run_embed_model(paths)
    settings = {
        "concepts": options.concepts, "concepts_id": concepts.id, "n_concepts": len(concepts),
        "lang": options.lang, "nested": options.nested, "model": model, "tagger": options.tagger,
        "image_threshold": options.threshold_for(model) if model else None,
        "temperature": options.temperature if options.tagger == "softmax" else None,
        "templates": options.templates,
        "tags_version": TAGS_VERSION,
    }
    info_path = audit.settings
    check = this.settings(info_path, settings)  # other settings are not refused: the tags are redone
    if not check.same:
        if check.previous is not None:
            log.info("audit %s: retagging, the tags were made with other settings (%s)", name, check.describe())
        paths.remove(audit.tags_folder)
    paths.write_json({"settings": settings, "summary": None}, info_path)
    paths.write_parquet(pa.table({
        "concept_id": pa.array(range(len(concepts)), pa.int32()),
        "concept": pa.array(concepts.names, pa.string()),
        "synonyms": pa.array([list(s) for s in concepts.synonyms], pa.list_(pa.string()))}),
        audit.concepts)
    variants = concepts.variants()
    paths.write_parquet(pa.table({
        "variant_id": pa.array(range(len(variants)), pa.int32()),
        "concept_id": pa.array([k for k, _ in variants], pa.int32()),
        "variant": pa.array([t for _, t in variants], pa.string())}), audit.variants)

    pending = paths.pending(shards, audit.tag_files())
    if pending:
        concept_emb = concept_embeddings(concepts, model, options) if model else None
        engine = options.engine
        if engine == "auto":
            engine = "ray" if sum(shards[s] for s in pending) > LOCAL_MAX_ROWS else "local"
        kwargs = {"concepts": concepts, "options": options, "concept_emb": concept_emb, "model": model,
                  "run": run, "name": name}
        done = _tag_ray(pending, kwargs, progress) if engine == "ray" else _tag_local(pending, kwargs)
        for shard, rows in done.items():
            if rows != shards[shard]:
                paths.remove(audit.tags(shard))
                raise RuntimeError(f"shard {shard}: tagged {rows} rows, annotations have {shards[shard]}")
    settings["name"] = name
    settings["tagged_now"] = len(pending)
    return settings


def _tag_local(pending: list[str], kwargs: dict) -> dict[str, int]:
    tagger = ShardTagger(**kwargs)
    return {shard: tagger.write(shard) for shard in pending}


def _tag_ray(pending: list[str], kwargs: dict, progress: bool) -> dict[str, int]:
    return {row["shard"]: row["rows"] for row in map_shards(ShardTagger, pending, kwargs, progress)}


# ---------------------------------------------------------------- statistics (SQL)

def _register(con, paths: RunPaths, name: str, subset: str | None = None) -> None:
    audit = paths.audit(name)
    tags = scan(con, paths, audit.tag_files())
    if subset is not None:
        manifest = paths.complete_subset(subset).manifest
        scan(con, paths, [manifest]).select("key").create_view("subset_keys")
        tags = tags.filter("key IN (SELECT key FROM subset_keys)")
    tags.create_view("tags", replace=True)
    scan(con, paths, [audit.concepts]).create_view("concepts", replace=True)
    scan(con, paths, [audit.variants]).create_view("variants", replace=True)


def concept_counts(run: str, name: str, options: AuditOptions, subset: str | None = None) -> pa.Table:
    """sql/audit_counts.sql over the run's tags (or a subset's rows only)."""
    paths = RunPaths(run)
    con = connect()
    _register(con, paths, name, subset)
    return run_sql(con, "audit_counts", frequency=options.frequency, tail_fraction=options.tail_fraction,
                   tail_floor=options.tail_floor)


def misalignment(run: str, name: str, subset: str | None = None) -> dict:
    """sql/audit_misalignment.sql: ok rows and images, tagged images, misaligned images and their rate."""
    paths = RunPaths(run)
    con = connect()
    _register(con, paths, name, subset)
    return run_sql(con, "audit_misalignment").to_pylist()[0]


def subset_delta(full: pa.Table, sub: pa.Table) -> pa.Table:
    con = connect()
    con.register("full_counts", full)
    con.register("subset_counts", sub)
    return run_sql(con, "audit_subset_delta")


def read_accuracy(path: str) -> pa.Table:
    """A per-concept accuracy file (CSV/TSV/Parquet/JSON lines): columns `concept` and `accuracy`, and
    optionally `count` (then used instead of the run's frequency) and `dataset` (pipelines/verbs/loglinear.py)."""
    return read_points(path, "--accuracy", count_required=False)


def log_linear(counts: pa.Table, accuracy: pa.Table, bins: int = 12,
               source: str = "log-linear") -> tuple[pa.Table, dict, pa.Table]:
    """The paper's log-linear analysis (pipelines/verbs/loglinear.py) of the accuracies against the run's
    `frequency`, or against the accuracy table's own `count` column when it has one: (bins table,
    fit {bins_used, pearson_r, slope, intercept}, the points). A ConfigError below 3 usable bins."""
    result = analyse(run_points(counts, accuracy), bins, source)
    return result.bins, result.fit, result.points


# ---------------------------------------------------------------- the whole audit

def audit_run(run: str, options: AuditOptions | None = None, subset: str | None = None,
              accuracy: str | None = None, report: bool = True, progress: bool = False) -> dict:
    """Tag (or reuse tags), count, compare with a subset, fit accuracies; write tables and the report."""
    started = time.time()
    options = options or AuditOptions()
    run = RunPaths.absolute(run)
    paths = RunPaths(run)
    text_pass = paths.is_text_pass()
    if text_pass and options.frequency != "text":
        raise ConfigError(f"--frequency {options.frequency}: {run} is a text pass (no image fetched yet); "
                          "audit it with --frequency text, or fetch a subset (tailor fetch) and audit that run")
    accuracy_table = read_accuracy(accuracy) if accuracy is not None else None  # a bad file fails before tagging
    settings = tag_run(run, options, progress)
    tagged_at = time.time()
    name = settings["name"]
    audit = paths.audit(name)
    counts = concept_counts(run, name, options)
    paths.write_parquet(counts, audit.counts)
    rows = counts.to_pylist()
    scope = misalignment(run, name)
    committed, planned = paths.shard_progress()
    tagged = bool(settings["model"])  # image figures only where images were fetched and tagged
    warning = model_warning(paths) if tagged else None
    summary: dict = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "concepts": len(rows),
        "caption_rows": scope["ok_rows"],  # the caption rows counted: ok rows, or every row of a text pass
        "ok_rows": scope["ok_rows"],
        "ok_images": None if text_pass else scope["ok_images"],  # a text pass holds no image
        "text_pass": text_pass,  # then every row counts as a caption row: none is fetched yet
        "shards": {"committed": committed, "total": planned},  # a run still annotating: its committed shards
        "units": TEXT_PASS_UNITS if text_pass else UNITS,
        "frequency": options.frequency,
        "tail": {"fraction": options.tail_fraction, "floor": options.tail_floor,
                 "concepts": sum(r["tail"] for r in rows),
                 "share_of_mentions": _tail_share(rows),
                 "mentioned": sum(r["frequency"] > 0 for r in rows),  # the concepts the tail is taken among
                 "never_mentioned": sum(r["frequency"] == 0 for r in rows)},
        "concepts_never_in_text": sum(r["text_count"] == 0 for r in rows),
        "concepts_never_in_images": sum(r["image_count"] == 0 for r in rows) if tagged else None,
        "misalignment": scope if tagged else None,
        "warnings": [warning] if warning else [],
        "head": [{k: r[k] for k in ("concept", "text_count", "text_image_count", "image_count", "matched_count",
                                    "frequency")}
                 for r in sorted(rows, key=lambda r: (r["rank"], r["concept_id"]))[:10]],
    }
    delta = None
    if subset is not None:
        sub = concept_counts(run, name, options, subset)
        delta = subset_delta(counts, sub)
        paths.write_parquet(delta, audit.subset_delta(subset))
        d = delta.to_pylist()
        summary["subset"] = {
            "name": subset,
            "tail_concepts_lost": [r["concept"] for r in d if r["tail"] and r["lost"]],
            "concepts_lost": sum(r["lost"] for r in d),
            "tail_retained": _ratio(sum(r["subset_frequency"] for r in d if r["tail"]),
                                    sum(r["frequency"] for r in d if r["tail"])),
            "head_retained": _ratio(sum(r["subset_frequency"] for r in d if not r["tail"]),
                                    sum(r["frequency"] for r in d if not r["tail"])),
            "misalignment": misalignment(run, name, subset) if tagged else None,
        }
    fit = bins = points = None
    failed: ConfigError | None = None
    if accuracy_table is not None:
        source = "file" if "count" in accuracy_table.column_names else f"run {options.frequency} frequency"
        try:
            result = analyse(run_points(counts, accuracy_table), options.bins,
                             f"--accuracy {accuracy} (counts: {source})")
        except ConfigError as err:  # what did succeed is still written (summary, tables, report), then the error
            failed = err
            paths.remove(audit.loglinear)  # an earlier analysis's bins are not this accuracy file's
            summary["loglinear"] = {"error": str(err), "accuracy": accuracy, "counts": source}
        else:
            bins, fit, points = result.bins, result.fit, result.points
            paths.write_parquet(bins, audit.loglinear)
            summary["loglinear"] = {**result.summary(), "counts": source}
    summary["wall_time_s"] = round(time.time() - started, 2)
    summary["tagging_s"] = round(tagged_at - started, 2)
    if report:
        summary["report"] = write_report(audit, settings, summary, counts, delta, bins, points, fit)
    paths.write_json({"settings": {k: v for k, v in settings.items() if k not in ("name", "tagged_now")},
                      "summary": summary}, audit.settings)
    for said in summary["warnings"]:  # last, so the console shows it beside the summary it qualifies
        log.warning("audit: %s", said)
    if failed is not None:
        raise ConfigError(f"{failed} (the rest of the audit is written: {audit.settings})") from None
    summary["out"] = audit.folder
    summary["settings"] = settings
    return summary


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def _tail_share(rows: list[dict]) -> float | None:
    total = sum(r["frequency"] for r in rows)
    return round(sum(r["frequency"] for r in rows if r["tail"]) / total, 4) if total else None
