"""recaption: regenerate the captions of a subset with a vision-language model, rescore them, audit them.

    recaption(run, subset, RecaptionConfig(...), name) writes RUN/captions/NAME/:

    _settings.json        model, prompt (id and wording), generation parameters, subset: a rerun must match
    parts/PART.parquet    caption rows (operators/caption.py CAPTION_SCHEMA, plus `clip_score` of the new caption
                          and `original_clip_score`), one file per written batch, each appearing whole or not at all
    concepts.parquet      sql/recaption_concepts.sql: per concept, mentions in the original and the new captions
                          (caption rows), the images they name, image tags and the images whose tags confirm a
                          caption (distinct sha256, as the audit counts), over the recaptioned keys (with `concepts`)
    _summary.json         statuses, rescore and audit comparison, throughput, `warnings` (the image tags confirm
                          fewer of the new captions' concepts than of the originals'); rewritten by every run

How it runs (a Ray Data pipeline, the same on a laptop and a cluster):

1. Plan in the driver with DuckDB: the subset's keys joined with the run's annotations (status, shard),
   minus the keys already in parts/ (resume: a killed run loses at most the batches in flight, and a rerun
   captions every key exactly once). Pending keys are cut into work items of `rows_per_task` keys of one
   run shard.
2. A CPU task per item reads only those keys from RUN/annotations, RUN/images and RUN/embeddings/SHARD.
3. An actor pool of Captioners (one GPU each where the cluster has GPUs) generates the captions.
4. With `rescore`, an actor pool of the run's CLIP text tower embeds only the new captions; the stored image
   embeddings give their CLIP score (no second image pass).
5. A task writes each batch as a part file.

Then DuckDB summarises the parts and, with a concept list, ConceptMatcher counts concept mentions in the
original and the new captions next to image tags from the stored embeddings: whether recaptioning raised
alignment (CLIP score, captions naming what the image shows) and tail coverage.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pydantic import Field

from operators.caption import CAPTION_SCHEMA, Captioner, CaptionOptions, check_prompt, load_processor
from operators.clip import ClipTextTower, to_matrix
from operators.concepts import IDS, ConceptMatcher
from operators.options import Options
from pipelines.concepts import load_concepts
from pipelines.core.config import ConfigError
from pipelines.core.duck import connect, run_sql, scan, to_arrow
from pipelines.core.engine import embed_actor_resources, ray_bars
from pipelines.core.passes import Pass
from pipelines.core.storage import RunPaths
from pipelines.models import resolve_model
from pipelines.verbs.audit import AuditOptions, concept_counts, run_embed_model, tag_run

log = logging.getLogger(__name__)

PART_SCHEMA = CAPTION_SCHEMA.append(pa.field("clip_score", pa.float32())).append(
    pa.field("original_clip_score", pa.float32()))


class RecaptionConfig(Options):
    captions: CaptionOptions = CaptionOptions()
    rescore: bool = Field(True, description="CLIP-score the new captions with the run's embed model")
    concepts: str | None = Field(None, description="concept list to audit original vs new captions "
                                 "(imagenet1k, coco80, demo or a file); none: no concept audit")
    rows_per_task: int = Field(256, gt=0, description="keys per read task (one run shard each)")
    write_batch: int = Field(1024, gt=0, description="rows per part file")


def _settings(config: RecaptionConfig, subset: str) -> dict:
    """What makes a caption set's rows what they are; a rerun into the set must match it."""
    opts = config.captions
    return {"subset": subset, "model": opts.model, "prompt_id": opts.prompt_id,
            "prompt": opts.prompt_spec().model_dump(), "generation": opts.generation.model_dump(),
            "engine": opts.engine}


def _check_engine(options: CaptionOptions) -> None:
    if options.engine == "vllm":
        raise ConfigError("captions.engine: vllm is not wired in yet; use transformers (see README, recaption)")


def _check_model(options: CaptionOptions) -> str:
    """The model's local path; its config and processor load, and it can be given the prompt (else one line)."""
    from transformers import AutoConfig

    try:
        path = resolve_model(options.model)
        AutoConfig.from_pretrained(path)
        _, _, takes_text, chat = load_processor(path)
    except Exception as err:
        raise ConfigError(f"captions.model: cannot load {options.model!r}: {err}".splitlines()[0]) from None
    try:
        check_prompt(options.prompt_spec(), options.prompt, options.model, takes_text, chat)
    except ValueError as err:
        raise ConfigError(f"captions.prompt: {err}") from None
    return path


# ---------------------------------------------------------------- plan (DuckDB, driver)

def plan(paths: RunPaths, subset: str, name: str) -> tuple[pa.Table, dict]:
    """Pending (key, shard) of the subset, sorted by shard and key, and the facts (keys, done, not in run)."""
    manifest = paths.complete_subset(subset).manifest
    annotations = paths.outputs("annotations")
    if not annotations:
        raise ConfigError(f"run: {paths.url} has no annotations (run `tailor annotate` first)")
    con = connect()
    scan(con, paths, [manifest]).select("key").create_view("manifest")
    scan(con, paths, annotations).select("key, status, shard").create_view("annotations")
    done = paths.captions(name).parts()
    if done:
        scan(con, paths, done).select("key").create_view("done")
    else:
        con.sql("SELECT NULL::VARCHAR AS key WHERE false").create_view("done")
    pending = run_sql(con, "recaption_pending")
    facts = run_sql(con, "recaption_facts").to_pylist()[0]
    return pending, facts


def work_items(pending: pa.Table, rows_per_task: int) -> list[dict]:
    items = []
    for shard in pc.unique(pending.column("shard")).to_pylist():
        keys = pending.filter(pc.equal(pending.column("shard"), shard)).column("key").to_pylist()
        items += [{"shard": shard, "keys": keys[i:i + rows_per_task]} for i in range(0, len(keys), rows_per_task)]
    return items


# ---------------------------------------------------------------- Ray Data stages

def load_rows(batch: pa.Table, run: str) -> pa.Table:
    """One work item -> its rows: key, caption (original), status, image (null without a stored image),
    original_clip_score and image_emb (null without embeddings)."""
    paths = RunPaths(run)
    fs = None if paths.is_local else paths.fs
    (item,) = batch.to_pylist()
    keys = pa.array(item["keys"], pa.string())
    wanted = pc.field("key").isin(keys)

    def read(kind: str, columns: list[str]) -> pa.Table | None:
        path = paths.output(kind, item["shard"])
        if not paths.exists(path):
            return None
        dataset = pads.dataset(path, format="parquet", filesystem=fs)
        columns = [c for c in columns if c in dataset.schema.names]
        table = dataset.to_table(columns=columns, filter=wanted)
        return table.take(pc.index_in(keys, value_set=table.column("key")))

    ann = read("annotations", ["key", "caption", "status", "clip_score"])
    images = read("images", ["key", "image"])
    emb = read("embeddings", ["key", "image_emb"])
    n = len(keys)
    score = ann.column("clip_score") if "clip_score" in ann.column_names else pa.nulls(n, pa.float32())
    return pa.table({
        "key": keys,
        "caption": ann.column("caption"),
        "status": ann.column("status"),
        "image": images.column("image") if images is not None else pa.nulls(n, pa.binary()),
        "original_clip_score": pc.cast(score, pa.float32()),
        "image_emb": emb.column("image_emb") if emb is not None else pa.nulls(n, pa.list_(pa.float16())),
    })


class CaptionStage:
    """operators.caption.Captioner for Ray Data; carries the rescore inputs through."""

    def __init__(self, model_path: str, options: CaptionOptions):

        self.captioner = Captioner(model_path, options)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = self.captioner(batch.select(["key", "image", "caption"]))
        return out.append_column("original_clip_score", batch.column("original_clip_score")).append_column(
            "image_emb", batch.column("image_emb"))


class RescoreStage:
    """CLIP score of each new caption: the run's text tower on the new text, cosine with the stored image_emb."""

    def __init__(self, model_path: str | None):

        self.text_tower = ClipTextTower.load(model_path) if model_path else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        """clip_score of each caption; where a row has several candidates, the best-scoring one becomes its
        caption (candidates keeps them all, best first)."""
        n = batch.num_rows
        scores = np.full(n, np.nan, dtype=np.float32)
        captions = batch.column("caption").to_pylist()
        candidates = batch.column("candidates").to_pylist()
        emb = batch.column("image_emb")
        rows = [i for i in range(n) if captions[i] and emb[i].is_valid]
        if self.text_tower is not None and rows:
            texts = [candidates[i] or [captions[i]] for i in rows]
            flat = self.text_tower.encode([t for options in texts for t in options])
            image = to_matrix(emb.take(rows))
            image /= np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-12)
            at = 0
            for j, i in enumerate(rows):
                cos = flat[at:at + len(texts[j])] @ image[j]
                at += len(texts[j])
                order = np.argsort(-cos, kind="stable")
                captions[i], scores[i] = texts[j][order[0]], cos[order[0]]
                if candidates[i]:
                    candidates[i] = [texts[j][o] for o in order]
        batch = batch.drop_columns(["image_emb"])
        batch = batch.set_column(batch.schema.get_field_index("caption"), "caption", pa.array(captions, pa.string()))
        batch = batch.set_column(batch.schema.get_field_index("candidates"), "candidates",
                                 pa.array(candidates, pa.list_(pa.string())))
        return batch.append_column("clip_score", pa.array(scores, pa.float32(), mask=np.isnan(scores)))


def write_part(batch: pa.Table, run: str, name: str) -> pa.Table:
    paths = RunPaths(run)
    part = paths.captions(name).part(f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}")
    paths.write_parquet(batch.select(PART_SCHEMA.names).cast(PART_SCHEMA), part)
    return pa.table({"rows": pa.array([batch.num_rows], pa.int64())})


def _run(items: list[dict], run: str, name: str, config: RecaptionConfig, model_path: str,
         clip_path: str | None, progress: bool) -> int:
    import ray

    from pipelines.core.console import ProgressLine

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = ray_bars(progress)  # beside tailor's line of rows captioned: only under -v
    options = config.captions
    resources = embed_actor_resources(options)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(load_rows, batch_size=1, batch_format="pyarrow", fn_kwargs={"run": run}, num_cpus=0.25)
    ds = ds.map_batches(CaptionStage, batch_size=options.batch_size, batch_format="pyarrow",
                        fn_constructor_kwargs={"model_path": model_path, "options": options},
                        compute=ray.data.ActorPoolStrategy(size=options.num_actors), **resources)
    ds = ds.map_batches(RescoreStage, batch_size=config.write_batch, batch_format="pyarrow",
                        fn_constructor_kwargs={"model_path": clip_path if config.rescore else None},
                        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5)
    ds = ds.map_batches(write_part, batch_size=None, batch_format="pyarrow",
                        fn_kwargs={"run": run, "name": name}, num_cpus=0.25)
    line = ProgressLine(sum(len(item["keys"]) for item in items), label="captioned", show_ok=False) \
        if progress else None
    written = 0
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        rows = int(pc.sum(batch.column("rows")).as_py())
        written += rows
        if line is not None:
            line.update(rows, 0)
    if line is not None:
        line.close()
    return written


# ---------------------------------------------------------------- reading a caption set (materialize's mixing)

def caption_set_parts(paths: RunPaths, name: str) -> list[str]:
    """The part files of caption set NAME, or a one-line error listing the sets there are."""
    captions = paths.captions(name)
    parts = captions.parts()
    if parts and captions.complete:
        return parts
    have = [c.name for c in paths.caption_sets()]
    listed = ", ".join(have) if have else "none yet; make one with `tailor recaption`"
    raise ConfigError(f"captions: {paths.url} has no finished caption set {name!r} (sets: {listed})")


def read_captions(paths: RunPaths, name: str, keys: pa.Array) -> dict[str, str]:
    """key -> new caption, for the `keys` that caption set NAME captioned successfully."""
    fs = None if paths.is_local else paths.fs
    first, last = (v.as_py() for v in pc.min_max(keys).values())
    wanted = ((pc.field("key") >= first) & (pc.field("key") <= last) & pc.field("key").isin(keys)
              & (pc.field("status") == "ok"))
    table = pads.dataset(caption_set_parts(paths, name), format="parquet", filesystem=fs).to_table(
        columns=["key", "caption"], filter=wanted)
    return dict(zip(table.column("key").to_pylist(), table.column("caption").to_pylist(), strict=True))


# ---------------------------------------------------------------- summary and audit (DuckDB)

def _parts(con, paths: RunPaths, name: str) -> None:

    scan(con, paths, paths.captions(name).parts()).create_view("captions")


def concept_audit(run: str, name: str, concepts_name: str) -> tuple[pa.Table, dict]:
    """Per concept over the recaptioned rows: mentions in the original captions and in the new ones, image
    tags, and the pool's tail flag. The run's audit (`tailor audit`, tags reused while its settings hold)
    gives the original captions' concepts, the image tags and the tail; only the new captions are matched here,
    by the same ConceptMatcher rule."""
    paths = RunPaths(run)
    options = AuditOptions(concepts=concepts_name)
    audit = tag_run(run, options)["name"]
    con = connect()
    _parts(con, paths, name)
    scan(con, paths, paths.audit(audit).tag_files()).create_view("audit_tags")
    rows = to_arrow(con.sql("SELECT c.key, t.sha256, c.caption, t.text_concepts AS before, t.image_concepts AS image "
                            "FROM captions AS c JOIN audit_tags AS t USING (key) WHERE c.status = 'ok' ORDER BY key"))
    matcher = ConceptMatcher(load_concepts(concepts_name), options.lang, options.nested)
    after = pa.array([matcher.match(t)[0] for t in rows.column("caption").to_pylist()], IDS)
    con.register("tags", rows.drop_columns(["caption"]).append_column("after", after))
    scan(con, paths, [paths.audit(audit).concepts]).create_view("concepts")
    con.register("pool", concept_counts(run, audit, options).select(["concept_id", "tail"]))
    table = run_sql(con, "recaption_concepts")
    con.register("per_concept", table)
    return table, run_sql(con, "recaption_concepts_summary").to_pylist()[0]


# ---------------------------------------------------------------- the whole call

def recaption(run: str, subset: str, config: RecaptionConfig | None = None, name: str | None = None,
              progress: bool = False) -> dict:
    """Caption the subset's pending keys, rescore, audit; return (and write) the summary."""
    config = config or RecaptionConfig()
    this = Pass(run)
    run, paths = this.run, this.paths
    if not paths.exists(paths.summary):
        raise ConfigError(f"run: {run} has no run.json: annotate it to the end first")
    name = name or f"{subset}.{config.captions.prompt}"
    captions = paths.captions(name)
    _check_engine(config.captions)
    model_path = _check_model(config.captions)
    settings = _settings(config, subset)
    info = captions.settings
    this.settings(info, settings, key=None).refuse(f"captions set {name!r}",
                                                   "pick another --name, or delete the folder to start over")
    pending, facts = plan(paths, subset, name)
    clip_model = run_embed_model(paths)
    clip_path = resolve_model(clip_model) if clip_model else None
    if config.rescore and clip_path is None:
        log.warning("run %s has no embeddings: new captions are not CLIP-scored", run)
    paths.write_json(settings, info)
    items = work_items(pending, config.rows_per_task)
    written = 0
    if items:
        this.start_ray()
        log.info("recaption %s: %d keys in %d tasks (%d already captioned)", name, pending.num_rows, len(items),
                 facts["done"])
        written = _run(items, run, name, config, model_path, clip_path if config.rescore else None, progress)
    if written != pending.num_rows:
        raise RuntimeError(f"wrote {written} caption rows for {pending.num_rows} pending keys")
    con = connect()
    _parts(con, paths, name)
    summary = {"name": name, "out": captions.folder, "subset": subset, "keys": facts["keys"],
               "not_in_run": facts["not_in_run"], "captioned_now": written, "already_captioned": facts["done"],
               "seconds": None, **settings}
    summary["statuses"] = {r["status"]: r["n"] for r in run_sql(con, "recaption_statuses").to_pylist()}
    summary["scores"] = run_sql(con, "recaption_scores").to_pylist()[0]
    summary["warnings"] = []
    if config.concepts:
        table, audit = concept_audit(run, name, config.concepts)
        paths.write_parquet(table, captions.concepts)
        summary["concepts"] = {"list": config.concepts, **audit}
        drop = alignment_drop(audit, summary["scores"])
        summary["concepts"]["confirmed_dropped"] = drop is not None
        if drop:
            summary["warnings"].append(drop)
    summary["seconds"] = round(this.seconds(), 2)
    summary["captions_per_s"] = round(written / summary["seconds"], 2) if written else None
    summary["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    for said in summary["warnings"]:
        log.warning("recaption %s: %s", name, said)
    return this.write_summary(summary, captions.summary)


def alignment_drop(audit: dict, scores: dict) -> str | None:
    """A line where the new captions name fewer concepts the image tags confirm than the originals (a higher CLIP
    score does not make up for it: a captioner can please the CLIP and name the wrong thing); None otherwise."""
    before, after = audit.get("matched_before"), audit.get("matched_after")
    if not audit.get("rows_with_image_tags") or before is None or after is None or after >= before:
        return None
    rose = (scores.get("new_mean") or 0) > (scores.get("original_mean") or 0) and scores.get("rows_scored")
    return (f"alignment dropped: the image tags confirm {after} (image, concept) pairs named by the new captions "
            f"against {before} named by the original ones" + (", although the CLIP score rose" if rose else "")
            + "; read some new captions before mixing them in (materialize --captions)")
