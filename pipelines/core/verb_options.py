"""The options of the pass verbs (semdedup, decontaminate, materialize, metaclip-balance, audit, evaluate): one model
per verb, read by the `tailor` subcommand (pipelines/core/cli_options.py builds its options from the model), the
Python function and the select step alike, so each default is written once (issue 18).

Kept apart from the passes themselves: this imports pydantic only, so building the command line
(`tailor --help`) does not import numpy, pyarrow or Ray. Each pass module re-exports its model.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from operators.defaults import DEFAULT_TEMPLATES
from operators.options import Options

# DuckDB's memory units (1000^i and 1024^i), or a share of the machine's memory
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*(b|bytes|kb|mb|gb|tb|kib|mib|gib|tib|%)", re.IGNORECASE)
_UNITS = {"b": 1, "bytes": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}
MIN_MEMORY = 32 * 10**6  # bytes: below it DuckDB fails before any query (a few blocks per thread)
# memory_limit's default: a share of the machine's (or container's) memory, at most the cap. DuckDB's own, 80%,
# let basic + CLIP score + exact dedup reach 14 GB at 40M rows; at 2 GB it stays flat (benchmarks/select_steps.py)
DEFAULT_MEMORY_SHARE = 0.25
DEFAULT_MEMORY_CAP = 2 * 10**9  # bytes


class DuckOptions(Options):
    """DuckDB's settings where a verb queries a run's tables (pipelines/core/duck.py's connect() reads them; select and
    metaclip-balance take them, other verbs get the defaults). A verb's options that hold them subclass this, so
    each default is written once. None is the default rule, resolved where the connection opens (duck.resolved)."""

    threads: int | None = Field(None, gt=0, description="DuckDB threads (default: one per CPU; results do not "
                                "depend on it)")
    memory_limit: str | None = Field(None, description="DuckDB memory limit, e.g. 4GB, 3GiB or 25% (of the "
                                     "machine's or container's memory); past it sorts, joins and windows spill "
                                     f"to temp_directory (default: {DEFAULT_MEMORY_SHARE:.0%} of the memory, at "
                                     f"most {DEFAULT_MEMORY_CAP // 10**9}GB)")
    temp_directory: str | None = Field(None, description="local folder DuckDB spills to (default: the system "
                                       "temp folder, TMPDIR)")

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _MEMORY.fullmatch(value.strip())
        if not match or float(match[1]) <= 0 or (match[2] == "%" and float(match[1]) > 100):
            raise ValueError("a size such as 500MB, 4GB, 3GiB or a share such as 25% (units: B, KB, MB, GB, TB, "
                             "KiB, MiB, GiB, TiB)")
        if match[2] != "%" and float(match[1]) * _UNITS[match[2].lower()] < MIN_MEMORY:
            raise ValueError(f"at least {MIN_MEMORY // 10**6}MB")
        return value.strip()

    def duck(self) -> DuckOptions:
        """Only the DuckDB settings (of a verb's options that subclass this)."""
        return DuckOptions(**{name: getattr(self, name) for name in DuckOptions.model_fields})


class SemdedupOptions(Options):
    """The settings of a semdedup pass: `tailor semdedup`'s options, semdedup()'s and the select step's."""

    eps: float = Field(0.05, ge=0, lt=2, description="duplicate when cosine to a kept point > 1 - eps")
    n_clusters: int | None = Field(None, gt=0, description="k-means clusters (default about sqrt(points))")
    seed: int = Field(0, description="k-means (and cluster split) seed")
    max_cluster_size: int = Field(20_000, ge=2, description="larger clusters are split")
    niter: int = Field(20, ge=1, description="k-means iterations")
    buckets: int | None = Field(None, gt=0, description="dedup tasks (default: by vector bytes and CPUs); "
                                                        "changes no result")


class DecontamOptions(Options):
    """The settings of a decontaminate pass: `tailor decontaminate`'s options, decontaminate()'s and the
    select step's."""

    eval_path: str = Field(description="folder of images (local or fsspec URL) or a Parquet with images")
    max_cosine: float | None = Field(0.95, ge=-1, le=1, description="flag at image-embedding cosine >= this "
                                     "(off: null in a recipe, negative on the command line)")
    max_hamming: int | None = Field(4, ge=0, le=64, description="flag at pHash distance <= this "
                                    "(off: null in a recipe, negative on the command line)")

    @model_validator(mode="after")
    def _one_test(self) -> DecontamOptions:
        if self.max_cosine is None and self.max_hamming is None:
            raise ValueError("set max_cosine, max_hamming or both")
        return self


class MaterializeOptions(Options):
    """How `tailor materialize` and materialize() write a subset as WebDataset shards."""

    samples_per_shard: int = Field(10000, ge=1, description="samples per tar shard")
    parquet: bool = Field(True, description="write an OUT/parquet/ copy beside the tars")
    skip_missing: bool = Field(False, description="leave out (and count) subset keys without a stored image "
                                                  "instead of failing")
    caption_source: str = Field("caption", description="the annotation column written as KEY.txt")
    window: int | None = Field(None, gt=0, description="output shards in flight at once (default: twice the "
                                                       "cluster's CPUs)")
    captions: str | None = Field(None, description="caption set of RUN (tailor recaption) to mix into KEY.txt")
    mix: float = Field(0.8, ge=0, le=1, description="share of samples given the new caption")
    mix_seed: int = Field(0, description="seed of the per-key choice")


MetaclipSource = Literal["auto", "match", "annotations"]


class MetaclipDrawOptions(Options):
    """What MetaCLIP balancing draws with, the same in `tailor metaclip-balance` and select's metaclip_balance
    step (its fields: t, seed, source, with these defaults)."""

    t: float = Field(gt=0, description="entry cap: each entry keeps about t captions (MetaCLIP 400M: 20000, "
                     "2.5B: 170000); with worldwide matches (match_lang) English's, t_en, from whose tail "
                     "proportion every other language's t is derived (MetaCLIP 2: 170000)")
    seed: int = Field(0, description="seed of the per-(seed, key, entry) draws")
    source: MetaclipSource = Field("auto", description="match lists from RUN/match (tailor match) or "
                                   "RUN/annotations (annotate's match stage); auto: RUN/match when it finished")


class MetaclipBalanceOptions(DuckOptions, MetaclipDrawOptions):
    """The settings of `tailor metaclip-balance` and balance_subset() (DuckOptions: threads, memory_limit,
    temp_directory)."""

    group_by: str | None = Field(None, description="annotation column naming the image (MetaCLIP 2: one text "
                                 "per image); worldwide matches are always balanced per image, by default by "
                                 "sha256, or by url with text_only or on a text pass")
    text_only: bool = Field(False, description="balance every caption, fetched or not (default: only rows whose "
                            "image downloaded; a text pass is always balanced so)")


# Zero-shot thresholds that suit a model, used when none is given. The paper's 0.7 is a RAM++
# probability; a CLIP softmax over many concepts rarely reaches it unless the model is strong.
# The demo CLIP (1.5M parameters, top-1 about 72% over the 136 demo concepts on the demo web) gets 0.3.
DEFAULT_THRESHOLD = {"softmax": 0.7, "cosine": 0.3}
MODEL_THRESHOLD = {("builtin:demo-clip", "softmax"): 0.3}


class AuditOptions(Options):
    """The settings of a concept audit: `tailor audit`'s options and audit_run()'s (pipelines/verbs/audit.py)."""

    concepts: str = Field("coco80", description="concept list: imagenet1k, coco80, demo (built in), or a file "
                          "path/URL (one concept per line, or YAML concept: [synonyms])")
    lang: str = Field("en", description="caption language: en matches inflections; others simplemma lemmas")
    nested: bool = Field(True, description="words of a longer concept's phrase do not count for a shorter one "
                         "(off: the pure bag-of-lemmas text rule)")
    tagger: Literal["softmax", "cosine"] = Field("softmax", description="image tagger: softmax over the concepts, "
                                                 "or cosine to each")
    image_threshold: float | None = Field(None, description="image tag threshold (default: per tagger and model)")
    temperature: float = Field(100.0, gt=0, description="softmax logit scale (CLIP's is 100)")
    templates: list[str] = Field(list(DEFAULT_TEMPLATES), min_length=1, description="prompt template with one {}")
    frequency: Literal["text", "image", "matched"] = Field("text", description="the count that ranks concepts")
    tail_fraction: float = Field(0.2, ge=0, le=1, description="the bottom share of the mentioned concepts that "
                                 "is the tail (ties included; never-mentioned concepts are counted apart)")
    tail_floor: int = Field(0, ge=0, description="concepts with frequency below this are tail too")
    bins: int = Field(12, ge=5, description="edges (= bins) of the log-linear analysis; the paper's 12")
    engine: Literal["auto", "local", "ray"] = Field("auto", description="where tagging runs (auto: in this "
                                                    "process for small runs, else a Ray actor pool)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="device of the CLIP text tower")

    def threshold_for(self, model: str) -> float:
        if self.image_threshold is not None:
            return self.image_threshold
        return MODEL_THRESHOLD.get((model, self.tagger), DEFAULT_THRESHOLD[self.tagger])


class EvaluateOptions(Options):
    """What `tailor evaluate` and evaluate() evaluate against and where they write; the proxy's own settings
    are a ProxyConfig (pipelines/verbs/proxy.py: --config and --set)."""

    eval_path: str = Field(description="evaluation set: ImageFolder (LABEL/IMAGE) or Parquet (image, label)")
    concepts: str = Field("demo", description="concept list for frequencies and the tail")
    name: str = Field("default", description="output folder RUN/evaluate/NAME")
