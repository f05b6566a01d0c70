"""MetaCLIP curation over a run's match lists, in DuckDB: entry counts, balancing, statistics.

The SQL lives in pipelines/sql/ (metaclip_entry_counts, metaclip_balance, metaclip2_balance,
metaclip_entry_stats, metaclip_match_summary); this module only finds the inputs, registers them
as the views those files name (`matches`, `entries`, `entry_counts`, `decisions`) and binds
`$t` and `$seed`. Match lists come from RUN/match/shards (`tailor match`) or, when annotate
ran with a `match:` section, from RUN/annotations.

    balance(run, t, seed)            -> key, kept, reason for every caption
    balance_subset(run, name, MetaclipBalanceOptions(t=..., seed=...)) writes RUN/subsets/NAME/:
        manifest.parquet     the kept keys
        decisions.parquet    every key: kept, reason ('kept', 'balanced_out', 'no_match', 'other_text',
                             'no_image': the download failed; only with text_only=False, the default),
                             step (metaclip_balance / metaclip2_balance where dropped, status for
                             no_image), detail (null)
        entry_stats.parquet  per entry: count before, kept_count after, head, p
        stats.json           the summary below, before and after balancing; rows, kept, dropped and
                             steps (rows in/out and drops per reason) as select writes them
        entry_counts.png     rank-frequency and count distribution, before and after
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.core.config import ConfigError
from pipelines.core.duck import connect, run_sql, scan, sql, to_arrow, within_memory
from pipelines.core.storage import RunPaths
from pipelines.core.verb_options import MetaclipBalanceOptions
from pipelines.core.verb_options import MetaclipSource as Source

log = logging.getLogger(__name__)

DECISIONS_SCHEMA = pa.schema([("key", pa.string()), ("kept", pa.bool_()), ("reason", pa.string())])


@dataclass(frozen=True)
class Matches:
    """Where a run's match lists are: which files, which table kind, which metadata."""

    kind: Literal["match", "annotations"]
    files: list[str]
    metadata_id: str


def find_matches(run: str, source: Source = "auto") -> Matches:
    """RUN/match/shards when the standalone pass finished (preferred), else annotations with match lists."""
    paths = RunPaths(run)
    if source in ("auto", "match") and paths.exists(paths.match_info):
        info = paths.read_json(paths.match_info)
        if info.get("summary") is not None:
            return Matches("match", paths.match_shards(), info["settings"]["metadata_id"])
        if source == "match":
            raise ConfigError(f"{run}: `tailor match` has not finished on this run; rerun it to resume")
    if source == "match":
        raise ConfigError(f"{run}: no matches (run `tailor match {run}` first)")
    files = paths.outputs("annotations")
    if files:
        with paths.fs.open(files[0], "rb") as f:
            schema = pq.read_schema(f)
        if "metaclip_entries" in schema.names:
            with duckdb.connect() as con:
                ids = scan(con, paths, files).select("metadata_id").distinct().fetchall()
            if len(ids) != 1:
                raise ConfigError(f"{run}: annotations were matched against {len(ids)} metadata lists; expected 1")
            return Matches("annotations", files, ids[0][0])
    raise ConfigError(f"{run}: no match lists: run `tailor match {run}`, or annotate with a `match:` section")


def register_matches(con: duckdb.DuckDBPyConnection, run: str, matches: Matches, every_caption: bool,
                     group_by: str | None = None) -> None:
    """Views `matches` (key, metaclip_entries[, image]) and `entries` (entry_id, entry).

    `every_caption`: every caption, fetched or not (the option text_only). Else `matches` holds only rows
    whose image downloaded (status ok) and view `no_image` (key, status) the others: balancing a dataset is
    balancing what it can train on.
    """
    paths = RunPaths(run)
    rel = scan(con, paths, matches.files).select("key, metaclip_entries")
    if not every_caption:
        annotations = scan(con, paths, paths.outputs("annotations"))
        if "status" not in annotations.columns:
            raise ConfigError(f"{run}/annotations has no status column (no image was fetched); balance the "
                              "captions alone with --text-only, or annotate with download on first")
        status = annotations.select(duckdb.ColumnExpression("key").alias("status_key"),
                                    duckdb.ColumnExpression("status"))
        joined = rel.join(status, "key = status_key", how="left")
        joined.filter("status IS DISTINCT FROM 'ok'").select("key, coalesce(status, 'not_annotated') AS status") \
            .create_view("no_image")
        rel = joined.filter("status = 'ok'").select("key, metaclip_entries")
    if group_by is not None:
        annotations = scan(con, paths, paths.outputs("annotations"))
        if group_by not in annotations.columns:
            raise ConfigError(f"group_by: no column {group_by!r} in {run}/annotations "
                              f"(columns: {', '.join(annotations.columns)})")
        image = annotations.select(duckdb.ColumnExpression("key").alias("image_key"),
                                   duckdb.ColumnExpression(group_by).cast(duckdb.sqltype("VARCHAR")).alias("image"))
        rel = rel.join(image, "key = image_key", how="left").select("key, image, metaclip_entries")
    rel.create_view("matches")
    scan(con, paths, [paths.metadata(matches.metadata_id)]).create_view("entries")


def entry_counts(run: str, source: Source = "auto", threads: int | None = None) -> pa.Table:
    """entry_id, entry, count over the run's match lists (sql/metaclip_entry_counts.sql)."""
    matches = find_matches(run, source)
    with connect(threads) as con:
        register_matches(con, run, matches, every_caption=True)
        return run_sql(con, "metaclip_entry_counts")


def write_entry_counts(run: str) -> dict:
    """After `tailor match`: RUN/match/entry_counts.parquet, and the totals of the matching."""
    paths = RunPaths(run)
    matches = Matches("match", paths.match_shards(),
                      paths.read_json(paths.match_info)["settings"]["metadata_id"])
    with connect() as con:
        register_matches(con, run, matches, every_caption=True)
        counts = run_sql(con, "metaclip_entry_counts")
        totals = run_sql(con, "metaclip_match_summary").to_pylist()[0]
    paths.write_parquet(counts, paths.entry_counts)
    matched_entries = int(np.count_nonzero(counts.column("count").to_numpy()))
    return {**totals, "entries": counts.num_rows, "entries_matched": matched_entries}


def _counts_for(con: duckdb.DuckDBPyConnection, run: str, matches: Matches, every_caption: bool) -> None:
    """View `entry_counts`: the stored table of the standalone pass (all captions), else computed now."""
    paths = RunPaths(run)
    stored = paths.entry_counts
    if every_caption and matches.kind == "match" and paths.exists(stored):
        scan(con, paths, [stored]).create_view("entry_counts")
    else:
        con.register("entry_counts", run_sql(con, "metaclip_entry_counts"))  # computed once, used twice


def balance(run: str, t: float, seed: int, **options) -> pa.Table:
    """MetaCLIP balancing of a run's captions: a table of key, kept, reason (one row per caption).
    `options`: the other fields of MetaclipBalanceOptions (group_by, source, text_only, threads), its defaults.

    By default only rows whose image downloaded (status ok) are balanced and counted; the others
    are decided 'no_image'. `text_only` balances every caption, fetched or not (MetaCLIP's own
    order: curate the text, then download what was kept).

    `t` caps each entry at about t captions; `seed` makes the per-(seed, key, entry) draws.
    With `group_by` (a column of the annotations naming the image, e.g. sha256 or url), the MetaCLIP 2
    variant: one matched text per image is picked at random and the image kept with its probability.
    The result does not depend on `threads` or on how the matches were computed.
    """
    if not t > 0:
        raise ConfigError(f"t: must be > 0 (got {t!r})")
    if not isinstance(seed, int | np.integer):
        raise ConfigError(f"seed: must be an integer (got {seed!r})")
    settings = MetaclipBalanceOptions(t=t, seed=int(seed), **options)
    with connect(settings.duck()) as con:
        return _balance(con, run, settings, find_matches(run, settings.source), settings.text_only)


def _balance(con: duckdb.DuckDBPyConnection, run: str, options: MetaclipBalanceOptions, matches: Matches,
             every_caption: bool) -> pa.Table:
    register_matches(con, run, matches, every_caption, options.group_by)
    _counts_for(con, run, matches, every_caption)
    con.execute(sql("metaclip_draw"))
    name = "metaclip2_balance" if options.group_by else "metaclip_balance"
    decided = run_sql(con, name, t=options.t, seed=options.seed).cast(DECISIONS_SCHEMA)
    if every_caption:
        return decided
    con.register("balanced", decided)
    return to_arrow(con.sql("SELECT key, kept, reason FROM balanced UNION ALL "
                            "SELECT key, false, 'no_image' FROM no_image ORDER BY key")).cast(DECISIONS_SCHEMA)


def balance_subset(run: str, name: str, options: MetaclipBalanceOptions, plot: bool = True,
                   overwrite: bool = False) -> dict:
    """Balance and write RUN/subsets/NAME/ (manifest, decisions, entry_stats, plot, stats.json last).

    options: t, seed, group_by, source, text_only, threads (MetaclipBalanceOptions' fields and defaults;
    as balance() reads them). plot: write entry_counts.png. A subset NAME already there (made by select or
    by this) is refused unless `overwrite`, which replaces it whole.
    """
    paths = RunPaths(run)
    subset = paths.subset(name)
    subset.check_free(overwrite)
    every_caption = options.text_only
    if not every_caption and paths.is_text_pass():
        log.info("%s is a text pass (no image fetched yet): balancing every caption (text_only)", run)
        every_caption = True
    matches = find_matches(run, options.source)
    t, group_by = options.t, options.group_by
    with connect(options.duck()) as con, within_memory(options.duck()):
        decisions = _balance(con, run, options, matches, every_caption)
        con.register("decisions", decisions)
        per_entry = run_sql(con, "metaclip_entry_stats", t=t)
    step_name = "metaclip_balance" if not group_by else "metaclip2_balance"
    stats = {
        "recipe": {"step": step_name, "t": t, "seed": options.seed,
                   "group_by": group_by, "source": matches.kind, "metadata_id": matches.metadata_id,
                   "rows": "all captions (text only)" if every_caption else "ok rows (image downloaded)"},
        "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **balance_stats(per_entry, decisions, t),
    }
    # select's summary keys too (browse and `tailor subsets` read them)
    stats.update(rows=stats["captions"]["total"], kept=stats["captions"]["kept"],
                 dropped=stats["captions"]["total"] - stats["captions"]["kept"],
                 steps=_steps(stats["captions"], step_name))
    subset.replace(overwrite)
    paths.write_parquet(decisions.filter(decisions.column("kept")).select(["key"]), subset.manifest)
    # the columns select's decisions have (browse reads both): the step that dropped a row, no detail
    # (a failed download is select's implicit `status` step)
    step = pc.if_else(decisions.column("kept"), pa.scalar(None, pa.string()),
                      pc.if_else(pc.equal(decisions.column("reason"), "no_image"), "status", step_name))
    paths.write_parquet(decisions.append_column("step", step).append_column(
        "detail", pa.nulls(decisions.num_rows, pa.string())), subset.decisions)
    paths.write_parquet(per_entry, subset.file("entry_stats.parquet"))
    if plot:
        paths.write_bytes(plot_entry_counts(per_entry, t), subset.file("entry_counts.png"))
    paths.write_json(stats, subset.stats)  # last: the subset is complete
    return stats


# ---------------------------------------------------------------- statistics

def _distribution(counts: np.ndarray) -> dict[str, int]:
    """Entries per count bucket: 0, 1, 2-9, 10-99, 100-999, ..."""
    out = {"0": int(np.count_nonzero(counts == 0)), "1": int(np.count_nonzero(counts == 1))}
    low = 2
    top = int(counts.max()) if counts.size else 0
    while low <= top:
        high = 10 if low == 2 else low * 10
        out[f"{low}-{high - 1}"] = int(np.count_nonzero((counts >= low) & (counts < high)))
        low = high
    return out


def _side(counts: np.ndarray, head: np.ndarray, entries: np.ndarray, t: float) -> dict:
    total = int(counts.sum())
    top = np.argsort(-counts, kind="stable")[:10]
    return {
        "matches": total,  # (caption, entry) pairs
        "entries_matched": int(np.count_nonzero(counts)),
        "head_matches": int(counts[head].sum()),
        "tail_matches": int(counts[~head].sum()),
        "tail_share_of_matches": round(float(counts[~head].sum()) / total, 6) if total else None,
        "max_count": int(counts.max()) if counts.size else 0,
        "entries_over_t": int(np.count_nonzero(counts > t)),
        "count_distribution": _distribution(counts),
        "top_entries": [{"entry": str(entries[i]), "count": int(counts[i])} for i in top if counts[i] > 0],
    }


def balance_stats(per_entry: pa.Table, decisions: pa.Table, t: float) -> dict:
    """Entry-count distribution, head/tail split at t, tail share of matches, before and after."""
    counts = per_entry.column("count").to_numpy()
    kept = per_entry.column("kept_count").to_numpy()
    head = per_entry.column("head").to_numpy(zero_copy_only=False)
    entries = np.asarray(per_entry.column("entry").to_pylist(), dtype=object)
    reasons = decisions.group_by("reason").aggregate([("key", "count")]).to_pylist()
    n_kept = int(np.count_nonzero(decisions.column("kept").to_numpy(zero_copy_only=False)))
    head_kept = kept[head]
    return {
        "captions": {"total": decisions.num_rows, "kept": n_kept,
                     "by_reason": {r["reason"]: r["key_count"] for r in sorted(reasons, key=lambda r: r["reason"])}},
        "entries": {"total": per_entry.num_rows, "head": int(np.count_nonzero(head)),
                    "tail_matched": int(np.count_nonzero(~head & (counts > 0)))},
        "head_entries_after": {
            "mean_kept_count": round(float(head_kept.mean()), 3) if head_kept.size else None,
            "min_kept_count": int(head_kept.min()) if head_kept.size else None,
            "max_kept_count": int(head_kept.max()) if head_kept.size else None,
        },
        "before": _side(counts, head, entries, t),
        "after": _side(kept, head, entries, t),
    }


def _steps(captions: dict, step_name: str) -> list[dict]:
    """select's per-step summary for the two steps a balanced subset has (browse lists steps and reasons
    from it): `status` drops rows with no image (absent on a text pass), then the balancing step."""
    by_reason = {r: n for r, n in captions["by_reason"].items() if r != "kept"}
    steps, rows = [], captions["total"]
    for name, reasons in (("status", {r: n for r, n in by_reason.items() if r == "no_image"}),
                          (step_name, {r: n for r, n in by_reason.items() if r != "no_image"})):
        if name == "status" and not reasons:
            continue
        dropped = sum(reasons.values())
        steps.append({"step": len(steps), "name": name, "rows_in": rows, "dropped": dropped,
                      "rows_out": rows - dropped, "by_reason": reasons})
        rows -= dropped
    return steps


def plot_entry_counts(per_entry: pa.Table, t: float) -> bytes:
    """PNG: entries by rank (log-log) and entries per count bucket, before and after balancing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = per_entry.column("count").to_numpy()
    kept = per_entry.column("kept_count").to_numpy()
    fig, (rank_ax, hist_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for values, label in ((counts, "before"), (kept, "after balancing")):
        ranked = np.sort(values[values > 0])[::-1]
        rank_ax.loglog(np.arange(1, ranked.size + 1), ranked, label=label)
    rank_ax.axhline(t, color="grey", linestyle="--", linewidth=1, label=f"t = {t:g}")
    rank_ax.set(xlabel="entry rank", ylabel="captions holding the entry", title="entry counts by rank")
    rank_ax.legend()
    before, after = _distribution(counts), _distribution(kept)
    buckets = [b for b in before if b != "0"]
    x = np.arange(len(buckets))
    hist_ax.bar(x - 0.2, [before[b] for b in buckets], width=0.4, label="before")
    hist_ax.bar(x + 0.2, [after.get(b, 0) for b in buckets], width=0.4, label="after balancing")
    hist_ax.set_xticks(x, buckets, rotation=30)
    hist_ax.set_yscale("log")
    hist_ax.set(xlabel="captions holding the entry", ylabel="entries", title="entry-count distribution")
    hist_ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
