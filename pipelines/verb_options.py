"""The options of the pass verbs (semdedup, metaclip-balance, ...): one model per verb, read by the `tailor` subcommand
(pipelines/cli_options.py builds its options from the model), the Python function and the select
step alike, so each default is written once (issue 18).

Kept apart from the passes themselves: this imports pydantic only, so building the command line
(`tailor --help`) does not import numpy, pyarrow or Ray. Each pass module re-exports its model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from operators.options import Options


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

    t: float = Field(gt=0, description="entry cap: each entry keeps about t captions (MetaCLIP 400M: 20000)")
    seed: int = Field(0, description="seed of the per-(seed, key, entry) draws")
    source: MetaclipSource = Field("auto", description="match lists from RUN/match (tailor match) or "
                                   "RUN/annotations (annotate's match stage); auto: RUN/match when it finished")


class MetaclipBalanceOptions(MetaclipDrawOptions):
    """The settings of `tailor metaclip-balance` and balance_subset()."""

    group_by: str | None = Field(None, description="annotation column naming the image (MetaCLIP 2: one text "
                                 "per image)")
    text_only: bool = Field(False, description="balance every caption, fetched or not (default: only rows whose "
                            "image downloaded; a text pass is always balanced so)")
    threads: int | None = Field(None, gt=0, description="DuckDB threads (results do not depend on it)")
