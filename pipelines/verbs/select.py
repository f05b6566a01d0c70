"""select: a curated subset of a run, as a chain of SQL steps over its Parquet tables (DuckDB).

    tailor select RUN --recipe datacomp-basic --name basic      # a shipped recipe, or a YAML path

A recipe is a list of steps applied in order to a pool that starts as every annotation row. Each
step is a .sql file in pipelines/sql/ (select_*.sql) that reads the view-like table `pool` and
returns the rows it drops as (key, reason, detail); its parameters are validated by a pydantic
model and bound as named parameters, never formatted into SQL text. A row's decision is the first
step that dropped it.

Text steps and image steps. The steps before the recipe's first image step (one that reads an image
column or the embeddings) are its text steps: they see the pool with the image columns NULL, as on a
text pass (`tailor annotate --text-only`), so they decide the same whether the images were fetched
or not. Then an implicit step drops rows whose status is not ok, and the image steps run. That is
what lets a recipe curate before download: `--steps text` on a text pass, `tailor fetch` of that
subset, `--steps image` on the fetched run give the same keys as the whole recipe on a run that
downloaded everything (tests/test_text_first.py).

Steps (parameters and defaults in the classes below):
    basic             DataComp basic: English caption, > 2 words, > 5 chars, shorter side >= 200, aspect <= 3
    clip_score        absolute threshold (LAION: >= 0.28 with ViT-B/32) or top fraction (DataComp: top 30%)
    exact_dedup       one row per sha256 (highest CLIP score, then smallest key)
    near_dedup        pHash Hamming <= k: multi-index-hashing candidates, connected components, keep one
    boilerplate       ALIGN: alt-texts shared by more than N images, empty and generic alt-texts
    semdedup          SemDeDup over the image embeddings (pipelines/verbs/semdedup.py, faiss)
    metaclip_balance  MetaCLIP balancing of the pool's match lists (pipelines/verbs/metaclip.py's SQL)
    decontaminate     drop images close to an evaluation set's (pipelines/verbs/decontam.py)

Outputs in RUN/subsets/NAME/ (stats.json is written last: a subset is complete when it exists):
    manifest.parquet   key of every kept row
    decisions.parquet  every key: kept, reason ('kept' or why it was dropped), step, detail
    recipe.yaml        the recipe with every parameter resolved (re-running it gives the same subset)
    stats.json         rows in, dropped and out per step, drops per reason, wall time per step

Every step orders its choices (ties broken by key), so a subset does not depend on threads,
shard sizes or machines.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import pyarrow as pa
import yaml
from pydantic import Field, ValidationError, model_validator

from operators.options import Options
from pipelines import PACKAGE
from pipelines.core.config import ConfigError, shipped_or_path
from pipelines.core.duck import DuckOptions, connect, scan, sql, within_memory, write_query
from pipelines.core.storage import RunPaths
from pipelines.core.verb_options import MetaclipDrawOptions
from pipelines.verbs.decontam import DecontamOptions, decontaminate
from pipelines.verbs.metaclip import balance_pool, find_matches
from pipelines.verbs.semdedup import SemdedupOptions, semdedup

log = logging.getLogger(__name__)

RECIPES = PACKAGE / "recipes"

# The pool's columns and their types; a column the annotations lack is NULL (steps that need it refuse).
POOL_COLUMNS: dict[str, str] = {
    "key": "VARCHAR", "status": "VARCHAR", "error": "VARCHAR", "caption": "VARCHAR",
    "caption_lang": "VARCHAR", "caption_lang_score": "DOUBLE", "caption_words": "INTEGER",
    "caption_chars": "INTEGER", "original_width": "INTEGER", "original_height": "INTEGER",
    "sha256": "VARCHAR", "phash": "UBIGINT", "clip_score": "DOUBLE",
}

# What a text pass (annotate with text_only) has not got yet: the columns of the fetched image.
IMAGE_COLUMNS = ("original_width", "original_height", "sha256", "phash", "clip_score")

# Generic alt-texts (RE2, matched whole against the lower-cased caption): camera and file names,
# and words that describe no image in particular.
DEFAULT_BOILERPLATE_PATTERNS = [
    r"(img|dsc|dscn|dscf|dcim|pict|pic|image|photo|screenshot|screen shot)[ _-]?\d+(\.[a-z]{3,4})?",
    r"[\w .-]+\.(jpe?g|png|gif|webp|bmp|tiff?|heic)",
    r"(an? )?(image|photo|picture|pic|img|untitled|thumbnail|thumb|placeholder|banner|logo|icon|"
    r"click here|read more|more|loading|null|undefined|none|no image|default|spacer|blank)s?",
]


class Step(Options):
    """One recipe step: its validated parameters, the columns it needs, the SQL that names its drops."""

    name: ClassVar[str]
    sql_file: ClassVar[str]
    reads_images: ClassVar[bool] = False  # prepare() reads the images or their embeddings

    def image_step(self) -> bool:
        """Whether the step reads anything of the image (then it runs on fetched rows only)."""
        return self.reads_images or any(c in IMAGE_COLUMNS for c in self.needs())

    def needs(self) -> list[str]:
        """Columns the step cannot run without."""
        return []

    def uses(self) -> list[str]:
        """Columns the step reads when the run has them (NULL otherwise)."""
        return []

    def prepare(self, con: duckdb.DuckDBPyConnection, run: str) -> dict | None:
        """Register the tables the SQL joins (a compute pass may run here); figures of the step worth keeping
        in the subset's stats.json (under the step's `figures`), or None."""

    def params(self) -> dict[str, Any]:
        return {}


class Status(Step):
    name: ClassVar[str] = "status"
    sql_file: ClassVar[str] = "select_status"

    def needs(self) -> list[str]:
        return ["status"]


class Basic(Step):
    """DataComp's basic filter. Sizes are the downloaded image's (original_width/height)."""

    name: ClassVar[str] = "basic"
    sql_file: ClassVar[str] = "select_basic"
    language: str | None = Field("en", description="caption_lang to require (ISO 639-1); null: any language")
    min_lang_score: float = Field(0.0, ge=0, le=1, description="minimum caption_lang_score")
    min_words: int = Field(3, ge=0, description="at least this many words (DataComp: more than 2)")
    min_chars: int = Field(6, ge=0, description="at least this many characters (DataComp: more than 5)")
    min_side: int | None = Field(200, ge=0, description="shorter side of the downloaded image, pixels; "
                                 "null: not checked")
    max_aspect: float | None = Field(3.0, ge=1, description="longer side / shorter side; null: not checked")

    def needs(self) -> list[str]:
        text = ["caption_lang", "caption_lang_score"] if self.language is not None else []
        image = ["original_width", "original_height"] if (self.min_side, self.max_aspect) != (None, None) else []
        return [*text, "caption_words", "caption_chars", *image]

    def uses(self) -> list[str]:
        # the SQL names them either way; with language: null, or no image check, they are never compared
        return ["caption_lang", "caption_lang_score", "original_width", "original_height"]

    def split(self) -> list[Basic]:
        """The caption checks, then the image checks, as two steps (one where the step has only one kind): the
        first runs on a text pass, the second on the fetched run. Together they keep the same rows."""
        caption = self.language is not None or self.min_words > 0 or self.min_chars > 0
        if not caption or (self.min_side, self.max_aspect) == (None, None):
            return [self]
        return [self.model_copy(update={"min_side": None, "max_aspect": None}),
                self.model_copy(update={"language": None, "min_lang_score": 0.0, "min_words": 0, "min_chars": 0})]

    def params(self) -> dict[str, Any]:
        return {"check_lang": self.language is not None, "lang": self.language or "",
                "min_lang_score": self.min_lang_score, "min_words": self.min_words, "min_chars": self.min_chars,
                "check_side": self.min_side is not None, "min_side": self.min_side or 0,
                "check_aspect": self.max_aspect is not None, "max_aspect": self.max_aspect or 1.0}


class ClipScore(Step):
    """Exactly one of min_score (absolute cosine) and top_fraction (share of the pool kept)."""

    name: ClassVar[str] = "clip_score"
    min_score: float | None = Field(None, ge=-1, le=1, description="keep clip_score >= this (LAION: 0.28)")
    top_fraction: float | None = Field(None, gt=0, le=1, description="keep the top fraction (DataComp: 0.3)")

    @model_validator(mode="after")
    def _one_mode(self) -> ClipScore:
        if (self.min_score is None) == (self.top_fraction is None):
            raise ValueError("give exactly one of min_score and top_fraction")
        return self

    @property
    def sql_file(self) -> str:  # type: ignore[override]
        return "select_clip_threshold" if self.min_score is not None else "select_clip_top_fraction"

    def needs(self) -> list[str]:
        return ["clip_score"]

    def params(self) -> dict[str, Any]:
        return {"min_score": self.min_score} if self.min_score is not None else {"fraction": self.top_fraction}


class ExactDedup(Step):
    name: ClassVar[str] = "exact_dedup"
    sql_file: ClassVar[str] = "select_exact_dedup"

    def needs(self) -> list[str]:
        return ["sha256"]


class NearDedup(Step):
    name: ClassVar[str] = "near_dedup"
    sql_file: ClassVar[str] = "select_near_dedup"
    max_hamming: int = Field(4, ge=0, le=12, description="pHash bits that may differ (of 64)")

    def needs(self) -> list[str]:
        return ["phash"]

    def prepare(self, con: duckdb.DuckDBPyConnection, run: str) -> None:
        con.register("near_masks", near_masks(self.max_hamming))
        execute_script(con, "select_near_dedup_edges", max_hamming=self.max_hamming)
        rounds = 0
        while True:
            rounds += 1
            execute_script(con, "select_near_dedup_propagate")
            changed = con.sql("SELECT count(*) FROM near_labels_next AS n JOIN near_labels AS l USING (node) "
                              "WHERE n.label <> l.label").fetchall()[0][0]
            con.execute("DROP TABLE near_labels; ALTER TABLE near_labels_next RENAME TO near_labels")
            if changed == 0:
                break
        log.info("near_dedup: components after %d propagation rounds", rounds)


def near_masks(max_hamming: int) -> pa.Table:
    """The C(k+2, 2) masks of multi-index hashing: 64 bits in k+2 near-equal blocks, two blocks per mask."""
    blocks = max_hamming + 2
    bounds = [round(64 * i / blocks) for i in range(blocks + 1)]
    block_masks = [((1 << (bounds[i + 1] - bounds[i])) - 1) << bounds[i] for i in range(blocks)]
    masks = [block_masks[i] | block_masks[j] for i in range(blocks) for j in range(i + 1, blocks)]
    return pa.table({"band": pa.array(range(len(masks)), pa.int32()), "mask": pa.array(masks, pa.uint64())})


class Boilerplate(Step):
    name: ClassVar[str] = "boilerplate"
    sql_file: ClassVar[str] = "select_boilerplate"
    max_images: int = Field(10, ge=1, description="an alt-text shared by more distinct images is dropped (ALIGN)")
    patterns: list[str] | None = Field(None, description="generic alt-texts (RE2, whole caption, lower case); "
                                                         "null: the built-in list, []: none")

    @model_validator(mode="after")
    def _patterns_compile(self) -> Boilerplate:
        for pattern in self.patterns or []:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"patterns: {pattern!r} is not a regular expression ({err})") from None
        return self

    def needs(self) -> list[str]:
        return ["caption"]

    def uses(self) -> list[str]:
        return ["sha256"]  # distinct images share a caption; without hashes every row counts as one

    def params(self) -> dict[str, Any]:
        patterns = DEFAULT_BOILERPLATE_PATTERNS if self.patterns is None else self.patterns
        return {"max_images": self.max_images, "use_patterns": bool(patterns),
                "pattern": "|".join(f"(?:{p})" for p in patterns) or "x"}


class SemDedup(Step, SemdedupOptions):
    """Drop SemDeDup's duplicates; the fields (and their defaults) are SemdedupOptions', as `tailor semdedup`'s."""

    name: ClassVar[str] = "semdedup"
    sql_file: ClassVar[str] = "select_semdedup"
    reads_images: ClassVar[bool] = True

    def prepare(self, con: duckdb.DuckDBPyConnection, run: str) -> None:
        path = semdedup(run, SemdedupOptions(**self.model_dump()))
        scan(con, RunPaths(run), [path]).create_view("semdedup")


class MetaclipBalance(Step, MetaclipDrawOptions):
    """MetaCLIP balancing over the pool: entry counts are the pool's, so earlier filters shape them. The fields
    (t, seed, source) and defaults are MetaclipDrawOptions', as `tailor metaclip-balance`'s.

    Worldwide matches (match_lang): t is English's t_en, each language's t is derived from it, and one matched
    text per image is drawn (pipelines/verbs/metaclip.py's balance_pool). The image is the url while the step is
    a text step (the image columns are not read yet, so a text pass and a fetched run decide alike), the sha256
    once it runs after an image step."""

    name: ClassVar[str] = "metaclip_balance"
    sql_file: ClassVar[str] = "select_metaclip"

    def prepare(self, con: duckdb.DuckDBPyConnection, run: str) -> dict | None:
        paths = RunPaths(run)
        matches = find_matches(run, self.source)
        if matches.worldwide:
            text_phase = con.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'pool_images'").fetchall()
            image = "url" if text_phase[0][0] else "sha256"
            p, thresholds = balance_pool(con, run, matches, self.t, self.seed, image)
            log.info("metaclip_balance: worldwide, English's tail proportion p = %.6g; t per language: %s", p,
                     ", ".join(f"{lang} {t:g}" for lang, t in thresholds.items() if t is not None))
            return {"worldwide": {"t_en": self.t, "p": p, "image": image, "t": thresholds}}
        scan(con, paths, matches.files).select("key, metaclip_entries").create_view("all_matches")
        con.execute("CREATE OR REPLACE TEMP TABLE matches AS SELECT m.key, m.metaclip_entries "
                    "FROM all_matches AS m SEMI JOIN pool USING (key)")
        scan(con, paths, [paths.metadata(matches.metadata_id)]).create_view("entries")
        con.execute(f"CREATE OR REPLACE TEMP TABLE entry_counts AS {sql('metaclip_entry_counts')}")
        con.execute(sql("metaclip_draw"))
        con.execute(f"CREATE OR REPLACE TEMP TABLE metaclip_decisions AS {sql('metaclip_balance')}",
                    {"t": self.t, "seed": self.seed})
        return None


class Decontaminate(Step, DecontamOptions):
    """Drop pool rows near an evaluation image set; the fields (and defaults) are DecontamOptions', as
    `tailor decontaminate`'s."""

    name: ClassVar[str] = "decontaminate"
    sql_file: ClassVar[str] = "select_decontaminate"
    reads_images: ClassVar[bool] = True

    def prepare(self, con: duckdb.DuckDBPyConnection, run: str) -> None:
        path = decontaminate(run, DecontamOptions(**self.model_dump()))
        scan(con, RunPaths(run), [path]).create_view("contaminated")


STEPS: dict[str, type[Step]] = {s.name: s for s in (Basic, ClipScore, ExactDedup, NearDedup, Boilerplate, SemDedup,
                                                   MetaclipBalance, Decontaminate)}


# ---------------------------------------------------------------- recipes

class Recipe:
    """A validated recipe: a description and its steps in order."""

    def __init__(self, steps: list[Step], description: str = "", source: str = "<dict>"):
        self.steps, self.description, self.source = steps, description, source

    def to_dict(self) -> dict:
        return {"description": self.description,
                "steps": [_as_applied(s) for s in self.steps]}


def _field_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "value"
    got = f" (got {first['input']!r})" if first["type"] not in ("missing", "extra_forbidden", "value_error") else ""
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}{got}" if first["type"] != "value_error" else message


def parse_recipe(data: Any, source: str = "<dict>") -> Recipe:
    """Validate a recipe mapping; a problem raises ConfigError naming the step and the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {source}: expected a mapping with 'steps', got {type(data).__name__}")
    unknown = sorted(set(data) - {"description", "steps"})
    if unknown:
        raise ConfigError(f"recipe {source}: unknown field(s) {unknown} (fields: description, steps)")
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list):  # an empty list: only the status step (the `raw` recipe)
        raise ConfigError(f"recipe {source}: 'steps' must be a list of steps")
    steps = []
    for number, raw in enumerate(raw_steps, start=1):
        if not isinstance(raw, dict) or "step" not in raw:
            raise ConfigError(f"recipe {source}: step {number}: expected a mapping with a 'step' name, got {raw!r}")
        params = {k: v for k, v in raw.items() if k != "step"}
        kind = STEPS.get(raw["step"])
        if kind is None:
            raise ConfigError(f"recipe {source}: step {number}: unknown step {raw['step']!r} "
                              f"(steps: {', '.join(STEPS)})")
        try:
            steps.append(kind.model_validate(params))
        except ValidationError as err:
            raise ConfigError(f"recipe {source}: step {number} ({kind.name}): {_field_error(err)}") from None
    return Recipe(steps, str(data.get("description") or ""), source)


def load_recipe(recipe: str | Path) -> Recipe:
    """A shipped recipe by name (`demo`), or a YAML file by path (`./demo.yaml`, `recipes/mine.yml`).

    A bare name (no `/`, no .yaml/.yml suffix) is always a shipped recipe, whatever the working
    directory holds (a `demo/` folder left by `tailor demo` is not a recipe); anything else is a path.
    """
    path = shipped_or_path(recipe, RECIPES, "recipe")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path}: not valid YAML: {str(err).splitlines()[0]}") from None
    return parse_recipe(data, str(path))


# ---------------------------------------------------------------- running a recipe

def execute_script(con: duckdb.DuckDBPyConnection, name: str, **params) -> None:
    """Run every statement of pipelines/sql/NAME.sql, each with the parameters it names."""
    for statement in _statements(sql(name)):
        con.execute(statement, _named_in(statement, params) or None)


def _named_in(statement: str, params: dict) -> dict:
    """The parameters a statement names ($name): DuckDB refuses values for parameters it does not hold."""
    return {k: v for k, v in params.items() if re.search(rf"\${k}\b", statement)}


def _statements(text: str) -> list[str]:
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def _drops_query(step: Step) -> tuple[str, dict]:
    statements = _statements(sql(step.sql_file))
    if len(statements) != 1:
        raise RuntimeError(f"{step.sql_file}.sql: a step's drops are one query, found {len(statements)} statements")
    return statements[0], _named_in(statements[0], step.params())


def _check_run(run: str, paths: RunPaths) -> list[str]:
    files = paths.outputs("annotations")
    if not files:
        raise ConfigError(f"{run}: no annotations (run `tailor annotate` into it first)")
    done, planned = paths.shard_progress()
    if done < planned:
        raise ConfigError(f"{run}: the run is not finished ({done}/{planned} shards); "
                          "rerun annotate to finish it, then select")
    return files


def _load_pool(con: duckdb.DuckDBPyConnection, paths: RunPaths, files: list[str], steps: list[Step],
               run: str, text_first: bool) -> int:
    """The pool table, with only the columns the steps read. `text_first`: the image columns start NULL (the
    text steps see what a text pass has) and are filled in from `pool_images` when the image steps begin."""
    annotations = scan(con, paths, files)
    have = set(annotations.columns)
    for number, step in enumerate(steps):
        missing = [c for c in step.needs() if c not in have]
        if missing:
            hint = ""
            if any(c.startswith("caption_") for c in missing):
                hint = " (annotate with text.language_id on)"
            elif "clip_score" in missing:
                hint = (": the run was annotated without a CLIP model (embed: null). Set embed.model to a CLIP "
                        "checkpoint (a Hugging Face name or local path) in a new run, or select with a recipe "
                        "without CLIP steps (datacomp-basic, raw, or yours)")
            raise ConfigError(f"recipe step {number} ({step.name}): needs column(s) {missing}, which "
                              f"{run}/annotations lacks{hint}")
    # only what the steps read: at a billion rows the captions alone are tens of GB
    wanted = {"key", "status", "error", "clip_score"} | {c for step in steps for c in step.needs() + step.uses()}

    def column(c: str, t: str, null: bool = False) -> str:
        return f"CAST({c} AS {t}) AS {c}" if c in have and not null else f"CAST(NULL AS {t}) AS {c}"

    columns = ", ".join(column(c, t, text_first and c in IMAGE_COLUMNS) for c, t in POOL_COLUMNS.items()
                        if c in wanted)
    annotations.select(columns).create("pool")
    if text_first:
        annotations.select(", ".join(column(c, t) for c, t in POOL_COLUMNS.items()
                                     if c in wanted and (c == "key" or c in IMAGE_COLUMNS))).create("pool_images")
    rows, keys = con.sql("SELECT count(*), count(DISTINCT key) FROM pool").fetchall()[0]
    if rows != keys:
        raise ConfigError(f"{run}/annotations: {rows} rows but {keys} distinct keys; keys must be unique")
    con.execute("CREATE TEMP TABLE decided (key VARCHAR, reason VARCHAR, detail VARCHAR, step INTEGER)")
    return rows


def _unmask_images(con: duckdb.DuckDBPyConnection) -> None:
    """The image steps begin: the pool's image columns get the run's values."""
    names = [c for c in con.table("pool_images").columns if c != "key"]
    if names:
        assignments = ", ".join(f"{c} = i.{c}" for c in names)
        con.execute(f"UPDATE pool SET {assignments} FROM pool_images AS i WHERE pool.key = i.key")
    con.execute("DROP TABLE pool_images")


PHASES = ("all", "text", "image")


def _as_applied(step: Step) -> dict:
    """A step as a subset's recipe.yaml (and so fetched_from.json) records it."""
    return {"step": step.name, **step.model_dump(mode="json")}


def split_steps(steps: list[Step]) -> list[tuple[Step, bool]]:
    """The steps with each basic step cut into its caption and image checks (Basic.split), each with whether it
    is the image half of a step so cut."""
    return [(part, number > 0) for step in steps
            for number, part in enumerate(step.split() if isinstance(step, Basic) else [step])]


def first_image_step(steps: list[Step]) -> int:
    """The index of the first step that reads the image (len(steps) where none does): the text steps end there."""
    return next((i for i, step in enumerate(steps) if step.image_step()), len(steps))


def plan_steps(recipe: Recipe, phase: str, run: str, paths: RunPaths) -> tuple[list[Step], list[Step]]:
    """The recipe's text steps (those before its first image step) and what runs after them: the implicit status
    step and the image steps. Text steps read no image column, so they decide the same on a text pass as on a
    fully fetched run, which is what makes curating before download give the same subset.

    phase: all (text steps, then status, then image steps), text (the text steps only: a text pass's subset to
    fetch), image (status and the image steps: a fetched run, whose text steps ran on its text pass)."""
    if phase not in PHASES:
        raise ConfigError(f"--steps {phase!r}: one of {', '.join(PHASES)}")
    steps = recipe.steps
    if phase == "text" or paths.is_text_pass():  # curating in two passes: caption checks before the download
        steps = [part for part, _ in split_steps(steps)]
    elif phase == "image" and paths.exists(paths.fetched_from):  # the image checks of what the text pass split
        applied = (paths.read_json(paths.fetched_from).get("recipe") or {}).get("steps") or []
        steps = [step.split()[-1] if isinstance(step, Basic) and _as_applied(step) in applied else step
                 for step in steps]
    first_image = first_image_step(steps)
    text, image = steps[:first_image], steps[first_image:]
    listed = ", ".join(s.name for s in image)  # names, not numbers: a split basic step is two of these
    if phase == "text" and not text:  # on a text pass too: a subset keeping every row would fetch them all
        raise ConfigError(f"--steps text: recipe {recipe.source} has no text steps" + (
            f" (its first step, {recipe.steps[0].name}, reads the image)" if recipe.steps else ""))
    if paths.is_text_pass():
        if phase == "image":
            raise ConfigError(f"--steps image: {run} is a text pass (no image fetched); image steps run on the "
                              f"fetched run (`tailor fetch {run} --subset NAME --out FETCHED`)")
        if phase == "all" and image:
            columns = sorted({c for s in image for c in s.needs() if c in IMAGE_COLUMNS}) or ["the embeddings"]
            raise ConfigError(
                f"{run} is a text pass (no image fetched): recipe step(s) {listed} read image columns {columns}. "
                f"Select with the text steps only (--steps text), download that subset with `tailor fetch {run} "
                "--subset NAME --out FETCHED`, then run the image steps there (--steps image)")
        return text, []
    if phase == "text":
        return text, []
    if phase == "image":
        if not image:
            raise ConfigError(f"--steps image: recipe {recipe.source} has no image steps")
        return [], [Status(), *image]
    if text and paths.exists(paths.fetched_from):
        source = paths.read_json(paths.fetched_from)
        applied = (source.get("recipe") or {}).get("steps", [])  # null: a subset of unknown recipe
        if applied[:len(text)] == [_as_applied(s) for s in text]:
            raise ConfigError(
                f"{run} was fetched from subset {source['subset']} of {source['run']}, whose selection ran this "
                f"recipe's text steps already; run its image steps here with --steps image")
    return text, [Status(), *image]


def deferred_steps(recipe: Recipe) -> list[dict]:
    """What `--steps text` leaves to `--steps image` on the fetched run, each with why: the steps from the
    first image step on (a text step after an image step, such as a balance after exact dedup, decides on
    what the image steps keep, so it waits for them too)."""
    parts = split_steps(recipe.steps)
    deferred = []
    for part, image_half in parts[first_image_step([part for part, _ in parts]):]:
        columns = sorted(c for c in part.needs() if c in IMAGE_COLUMNS)
        if part.image_step():
            why = f"reads {', '.join(columns)}" if columns else "reads the image embeddings"
        else:
            why = "a text step after an image step: it decides on the rows the image steps keep"
        deferred.append({"step": f"{part.name}'s image checks" if image_half else part.name, "why": why})
    return deferred


def select(run: str, recipe: Recipe, name: str, duck: DuckOptions | None = None, overwrite: bool = False,
           phase: str = "all") -> dict:
    """Apply a recipe to a finished run and write RUN/subsets/NAME/; returns the stats. `phase`: which of the
    recipe's steps run (plan_steps: all, text or image). `duck`: DuckDB's threads, memory limit and spill folder
    (defaults: pipelines/core/duck.py; the subset does not depend on them)."""
    paths = RunPaths(run)
    subset = paths.subset(name)
    subset.check_free(overwrite)  # before the run is read
    files = _check_run(run, paths)
    text, rest = plan_steps(recipe, phase, run, paths)
    subset.replace(overwrite)
    started = time.time()
    steps: list[Step] = [*text, *rest]
    per_step = []
    with connect(duck) as con, within_memory(duck):
        rows = _load_pool(con, paths, files, steps, run, text_first=bool(text))
        log.info("select: %d rows loaded in %.1f s", rows, time.time() - started)
        for number, step in enumerate(steps):
            began = time.time()
            if text and number == len(text):
                _unmask_images(con)
            rows_in = con.sql("SELECT count(*) FROM pool").fetchall()[0][0]
            figures = step.prepare(con, run)
            query, params = _drops_query(step)
            con.execute(f"CREATE OR REPLACE TEMP TABLE step_drops AS {query}", params or None)
            con.execute(f"INSERT INTO decided SELECT key, reason, detail, {number} FROM step_drops")
            con.execute("DELETE FROM pool USING step_drops WHERE pool.key = step_drops.key")
            reasons = dict(con.sql("SELECT reason, count(*) FROM step_drops GROUP BY ALL ORDER BY reason").fetchall())
            dropped = sum(reasons.values())
            per_step.append({"step": number, "name": step.name, "params": step.model_dump(mode="json"),
                             "phase": "text" if number < len(text) else "image",
                             "rows_in": rows_in, "dropped": dropped, "rows_out": rows_in - dropped,
                             "by_reason": reasons, "seconds": round(time.time() - began, 3)}
                            | ({"figures": figures} if figures else {}))
            log.info("select step %d (%s): %d in, %d dropped", number, step.name, rows_in, dropped)
        names = pa.table({"step": pa.array(range(len(steps)), pa.int32()),
                          "step_name": pa.array([s.name for s in steps], pa.string())})
        con.register("step_names", names)
        kept = con.sql("SELECT count(*) FROM pool").fetchall()[0][0]
        write_query(con, paths, "SELECT key FROM pool ORDER BY key", subset.manifest)
        # every key is in the pool (kept) or in decided (dropped, once): the kept ones join decided, step NULL,
        # rather than every key joining the drops, which at tens of millions of rows took most of the memory and
        # time (and a UNION ALL under ORDER BY runs out of DuckDB's memory limit instead of spilling)
        con.execute("INSERT INTO decided SELECT key, 'kept', NULL, NULL FROM pool")
        write_query(con, paths, "SELECT d.key, d.step IS NULL AS kept, d.reason, n.step_name AS step, d.detail "
                    "FROM decided AS d LEFT JOIN step_names AS n USING (step) ORDER BY d.key", subset.decisions)
    stats = {
        "run": run, "subset": name, "recipe_source": recipe.source, "description": recipe.description,
        "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "annotations_config_hash": paths.read_json(paths.summary).get("config_hash")
        if paths.exists(paths.summary) else None,
        "phase": phase, "text_pass": paths.is_text_pass(),
        "rows": rows, "kept": kept, "dropped": rows - kept,
        "by_reason": _total_reasons(per_step), "steps": per_step,
        # the steps left to `--steps image` on the run fetched from this subset, each with why
        "deferred": deferred_steps(recipe) if not rest else [],
        "seconds": round(time.time() - started, 3),
    }
    paths.write_text(f"# resolved recipe of subset {name!r} of {run} ({stats['made_at']}; --steps {phase})\n"
                     + yaml.safe_dump(recipe.to_dict(), sort_keys=False), subset.recipe)
    paths.write_json(stats, subset.stats)  # last: the subset is complete
    return stats


def _total_reasons(per_step: list[dict]) -> dict[str, int]:
    total: dict[str, int] = {}
    for step in per_step:
        for reason, n in step["by_reason"].items():
            total[reason] = total.get(reason, 0) + n
    return dict(sorted(total.items()))
