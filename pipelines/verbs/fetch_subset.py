"""fetch: download (decode, embed) only what a text pass's subset kept, into a run of its own.

    tailor annotate --config demo --text-only --output text      # text columns and matches, no network
    tailor select text --recipe mine.yaml --steps text --name kept
    tailor fetch text --subset kept --out fetched                 # only the kept rows' images
    tailor select fetched --recipe mine.yaml --steps image --name final

The fetched run is an ordinary annotate run (resumable, every verb reads it) made with the text pass's
config (`--set` overrides apply on top, e.g. download.threads), text_only off. Its input is the subset's
rows of the text pass's planned input, written once to RUN/fetch-inputs/NAME-STAMP.parquet with
their keys: the text pass's decisions, its text columns and the fetched image columns join on key.
FETCHED/fetched_from.json names the text pass, the subset and the subset's recipe.
"""

from __future__ import annotations

import logging

import yaml

from pipelines.core.config import ConfigError, load_config
from pipelines.core.duck import connect, scan, write_query
from pipelines.core.engine import storage_errors
from pipelines.core.storage import RunPaths
from pipelines.verbs.annotate import annotate

log = logging.getLogger(__name__)


def fetch_input(run: str, subset: str) -> tuple[str, dict]:
    """The subset's rows of the text pass's input (key, url, caption, passthrough columns), written once;
    returns the file and the subset's stats."""
    paths = RunPaths(run)
    chosen = paths.subset(subset)
    if not paths.exists(paths.config):
        raise ConfigError(f"{run}: no run here (no config.yaml); make a text pass with "
                          "`tailor annotate --config ... --text-only` first")
    if not paths.is_text_pass():
        raise ConfigError(f"{run} is not a text pass: its images are fetched already (select from it directly)")
    if not chosen.complete:
        raise ConfigError(f"{chosen.url}: no finished subset of that name (select it first, "
                          "e.g. tailor select RUN --recipe R --steps text --name NAME)")
    stats = chosen.info()
    target = paths.fetch_input(subset, stats["made_at"])
    if paths.exists(target):
        return target, stats
    shards = paths.read_json(paths.plan)["shards"]
    with connect() as con:
        scan(con, paths, [s["path"] for s in shards]).create_view("planned")
        scan(con, paths, [chosen.manifest]).create_view("kept")
        rows = con.sql("SELECT count(*) FROM kept").fetchall()[0][0]
        if not rows:
            raise ConfigError(f"{chosen.url} kept no row; nothing to fetch")
        write_query(con, paths, "SELECT p.* FROM planned AS p SEMI JOIN kept USING (key) ORDER BY key", target)
    return target, stats


def fetch_config(run: str, input_path: str, out: str, overrides: list[str] | None = None):
    """The text pass's config with text_only off, the fetch input as its input, OUT as its output."""
    paths = RunPaths(run)
    base = paths.read_config()
    base["input"] = {"path": input_path, "format": "parquet", "url_column": "url", "caption_column": "caption",
                     "key_column": "key", "rows_per_shard": base.get("input", {}).get("rows_per_shard", 10_000)}
    base["output"] = out
    base["text_only"] = False
    return load_config(base=base, overrides=overrides)


def fetch_subset(run: str, subset: str, out: str, overrides: list[str] | None = None, overwrite: bool = False,
                 progress: bool = True, ray_progress: bool = False, retry_transient: bool = True) -> dict:
    """Download a text pass's subset into OUT (an annotate run, resumed when rerun, its rows that failed for a
    moment fetched again unless `retry_transient` is off); returns its summary."""
    run, out = RunPaths.absolute(run), RunPaths.absolute(out)
    if run.rstrip("/") == out.rstrip("/"):
        raise ConfigError("--out: the fetched run needs a folder of its own, not the text pass's")
    with storage_errors(run):
        input_path, stats = fetch_input(run, subset)
    if not overwrite:
        _check_same_subset(out, run, subset, input_path, stats)
    config = fetch_config(run, input_path, out, overrides)
    summary = annotate(config, overwrite=overwrite, progress=progress, ray_progress=ray_progress,
                       retry_transient=retry_transient)
    paths = RunPaths(out)
    paths.write_json({"run": run, "subset": subset, "subset_made_at": stats["made_at"], "input": input_path,
                      "rows": summary["rows_in"], "recipe": subset_recipe(run, subset, stats)}, paths.fetched_from)
    return summary


def _check_same_subset(out: str, run: str, subset: str, input_path: str, stats: dict) -> None:
    """A fetched run resumes only with the subset it was fetched from: one re-selected since (--overwrite)
    may keep other rows, and one run of two inputs would be neither."""
    fetched = RunPaths(out)
    recorded = (fetched.read_config() or {}).get("input", {}).get("path")
    if recorded is None or recorded == input_path:
        return
    source = fetched.read_json(fetched.fetched_from) if fetched.exists(fetched.fetched_from) else {}
    if source and (source.get("run"), source.get("subset")) != (run, subset):
        raise ConfigError(f"--out {out} was fetched from subset {source.get('subset')} of {source.get('run')}, "
                          f"not {subset} of {run}; fetch into a new --out, or pass --overwrite to replace it")
    raise ConfigError(f"--out {out} was fetched from an earlier selection of subset {subset} (input {recorded}); "
                      f"the subset was selected again at {stats['made_at']} (input {input_path}). The fetched run "
                      "stays as it was: fetch into a new --out, or pass --overwrite to refetch into this one")


def subset_recipe(run: str, subset: str, stats: dict) -> dict | None:
    """The resolved recipe a subset was made with (select's recipe.yaml; metaclip-balance's one step)."""
    paths = RunPaths(run)
    path = paths.subset(subset).recipe
    if paths.exists(path):
        with paths.fs.open(path, "r") as f:
            return yaml.safe_load(f.read())
    if isinstance(stats.get("recipe"), dict):
        return {"steps": [stats["recipe"]]}
    return None
