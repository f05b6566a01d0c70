"""MetaCLIP curation over a run's match lists, in DuckDB: entry counts, balancing, statistics.

The SQL lives in pipelines/sql/ (metaclip_entry_counts, metaclip_balance, metaclip2_balance,
metaclip_entry_stats, metaclip_match_summary); this module only finds the inputs, registers them
as the views those files name (`matches`, `entries`, `entry_counts`, `decisions`) and binds
`$t` and `$seed`. Match lists come from RUN/match/shards (`tailor match`) or, when annotate
ran with a `match:` section, from RUN/annotations.

Worldwide (MetaCLIP 2) matches, rows that carry `match_lang` (the metadata language they were matched in;
`metaclip_entries` are ids within that language's list, RUN/metadata/ID.parquet has entry_id, entry, lang),
are balanced per language and per image (metaclip_ww_*.sql): `t` is English's, t_en; p = t_to_p(English's
counts, t_en) is English's tail proportion and every other language gets t = p_to_t(its counts, p), as
MetaCLIP 2's metaclip/curation/curate.py does; one matched text per image is picked at random (the image:
sha256 after download, url on a text pass or with text_only) and the image kept with that text's
probability. Without `match_lang` the balancing is MetaCLIP's v1, unchanged.

    balance(run, t, seed)            -> key, kept, reason for every caption
    balance_subset(run, name, MetaclipBalanceOptions(t=..., seed=...)) writes RUN/subsets/NAME/:
        manifest.parquet     the kept keys
        decisions.parquet    every key: kept, reason ('kept', 'balanced_out', 'no_match', 'other_text',
                             'no_image': the download failed; only with text_only=False, the default),
                             step (metaclip_balance / metaclip2_balance where dropped, status for
                             no_image), detail (null)
        entry_stats.parquet  per entry: count before, kept_count after, head, p (worldwide: per lang, entry, with t)
        stats.json           the summary below, before and after balancing; rows, kept, dropped and
                             steps (rows in/out and drops per reason) as select writes them
        entry_counts.png     rank-frequency and count distribution, before and after
    stats.json of a worldwide balancing adds `worldwide`: t_en, p, the image column, and per language its
    t, p (the share of its matches in entries counted below its t), entries, matches, captions and kept rows.
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
    worldwide: bool = False  # the rows carry match_lang (MetaCLIP 2's per-language lists)


def _has_lang(paths: RunPaths, files: list[str]) -> bool:
    """Whether match lists are worldwide: their rows name the language they were matched in (match_lang)."""
    if not files:
        return False
    with paths.fs.open(files[0], "rb") as f:
        return "match_lang" in pq.read_schema(f).names


def find_matches(run: str, source: Source = "auto") -> Matches:
    """RUN/match/shards when the standalone pass finished (preferred), else annotations with match lists."""
    paths = RunPaths(run)
    if source in ("auto", "match") and paths.exists(paths.match_info):
        info = paths.read_json(paths.match_info)
        if info.get("summary") is not None:
            shards = paths.match_shards()
            return Matches("match", shards, info["settings"]["metadata_id"], _has_lang(paths, shards))
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
            return Matches("annotations", files, ids[0][0], "match_lang" in schema.names)
    raise ConfigError(f"{run}: no match lists: run `tailor match {run}`, or annotate with a `match:` section")


def register_matches(con: duckdb.DuckDBPyConnection, run: str, matches: Matches, every_caption: bool,
                     group_by: str | None = None) -> None:
    """Views `matches` (key[, lang], metaclip_entries[, image]) and `entries` (entry_id, entry[, lang]).

    `every_caption`: every caption, fetched or not (the option text_only). Else `matches` holds only rows
    whose image downloaded (status ok) and view `no_image` (key, status) the others: balancing a dataset is
    balancing what it can train on. Worldwide matches (match_lang) carry their language as `lang`.
    """
    paths = RunPaths(run)
    columns = "key, match_lang AS lang, metaclip_entries" if matches.worldwide else "key, metaclip_entries"
    rel = scan(con, paths, matches.files).select(columns)
    columns = columns.replace("match_lang AS lang", "lang")
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
        rel = joined.filter("status = 'ok'").select(columns)
    if group_by is not None:
        annotations = scan(con, paths, paths.outputs("annotations"))
        if group_by not in annotations.columns:
            raise ConfigError(f"group_by: no column {group_by!r} in {run}/annotations "
                              f"(columns: {', '.join(annotations.columns)})")
        image = annotations.select(duckdb.ColumnExpression("key").alias("image_key"),
                                   duckdb.ColumnExpression(group_by).cast(duckdb.sqltype("VARCHAR")).alias("image"))
        rel = rel.join(image, "key = image_key", how="left").select(f"{columns}, image")
    rel.create_view("matches")
    metadata = scan(con, paths, [paths.metadata(matches.metadata_id)])
    if matches.worldwide and "lang" not in metadata.columns:
        raise ConfigError(f"{run}: the match lists name languages (match_lang) but metadata/"
                          f"{matches.metadata_id}.parquet has no lang column (worldwide metadata has entry_id, "
                          "entry, lang)")
    metadata.create_view("entries")


def entry_counts(run: str, source: Source = "auto", threads: int | None = None) -> pa.Table:
    """entry_id, entry, count over the run's match lists (sql/metaclip_entry_counts.sql); for worldwide
    matches lang, entry_id, entry, count (sql/metaclip_ww_entry_counts.sql)."""
    matches = find_matches(run, source)
    with connect(threads) as con:
        register_matches(con, run, matches, every_caption=True)
        return _count(con, run, matches)


def _count(con: duckdb.DuckDBPyConnection, run: str, matches: Matches) -> pa.Table:
    if not matches.worldwide:
        return run_sql(con, "metaclip_entry_counts")
    counts = run_sql(con, "metaclip_ww_entry_counts")
    unknown = counts.filter(pc.is_null(counts.column("entry")))
    if unknown.num_rows:
        first = unknown.slice(0, 3).to_pylist()
        raise ConfigError(f"{run}: {unknown.num_rows} matched (match_lang, entry id) pair(s) are not in metadata/"
                          f"{matches.metadata_id}.parquet, e.g. "
                          + ", ".join(f"({r['lang']!r}, {r['entry_id']})" for r in first))
    return counts


def write_entry_counts(run: str) -> dict:
    """After `tailor match`: RUN/match/entry_counts.parquet (with lang for worldwide matches), and the totals."""
    paths = RunPaths(run)
    shards = paths.match_shards()
    matches = Matches("match", shards, paths.read_json(paths.match_info)["settings"]["metadata_id"],
                      _has_lang(paths, shards))
    with connect() as con:
        register_matches(con, run, matches, every_caption=True)
        counts = _count(con, run, matches)
        totals = run_sql(con, "metaclip_match_summary").to_pylist()[0]
    paths.write_parquet(counts, paths.entry_counts)
    matched_entries = int(np.count_nonzero(counts.column("count").to_numpy()))
    return {**totals, "entries": counts.num_rows, "entries_matched": matched_entries}


def _counts_for(con: duckdb.DuckDBPyConnection, run: str, matches: Matches, every_caption: bool) -> None:
    """View `entry_counts`: the stored table of the standalone pass (all captions), else computed now."""
    paths = RunPaths(run)
    stored = paths.entry_counts
    if every_caption and matches.kind == "match" and paths.exists(stored):
        table = scan(con, paths, [stored])
        if not matches.worldwide:
            table.create_view("entry_counts")
            return
        if "lang" in table.columns:  # every language of the metadata: keep those some row was matched in
            table.select("lang, entry_id, entry, count").create_view("stored_entry_counts")
            con.execute("CREATE OR REPLACE TEMP VIEW entry_counts AS SELECT * FROM stored_entry_counts "
                        "SEMI JOIN (SELECT DISTINCT lang FROM matches) USING (lang)")
            return
    con.register("entry_counts", _count(con, run, matches))  # computed once, used twice


def balance(run: str, t: float, seed: int, **options) -> pa.Table:
    """MetaCLIP balancing of a run's captions: a table of key, kept, reason (one row per caption).
    `options`: the other fields of MetaclipBalanceOptions (group_by, source, text_only, threads), its defaults.

    By default only rows whose image downloaded (status ok) are balanced and counted; the others
    are decided 'no_image'. `text_only` balances every caption, fetched or not (MetaCLIP's own
    order: curate the text, then download what was kept).

    `t` caps each entry at about t captions; `seed` makes the per-(seed, key, entry) draws.
    With `group_by` (a column of the annotations naming the image, e.g. sha256 or url), the MetaCLIP 2
    variant: one matched text per image is picked at random and the image kept with its probability.
    With worldwide matches (match_lang) `t` is English's t_en, each language's t is derived from it
    (worldwide_thresholds), and the balance is always per image (group_by's default: sha256, or url with
    text_only). The result does not depend on `threads` or on how the matches were computed.
    """
    if not t > 0:
        raise ConfigError(f"t: must be > 0 (got {t!r})")
    if not isinstance(seed, int | np.integer):
        raise ConfigError(f"seed: must be an integer (got {seed!r})")
    settings = MetaclipBalanceOptions(t=t, seed=int(seed), **options)
    with connect(settings.duck()) as con:
        decided, _ = _balance(con, run, settings, find_matches(run, settings.source), settings.text_only)
        return decided.select(DECISIONS_SCHEMA.names).cast(DECISIONS_SCHEMA)


def _balance(con: duckdb.DuckDBPyConnection, run: str, options: MetaclipBalanceOptions, matches: Matches,
             every_caption: bool) -> tuple[pa.Table, dict | None]:
    """Decisions (key, kept, reason; worldwide: and lang) and, for worldwide matches, what stats.json
    says of the thresholds (t_en, p, image column); v1: None."""
    if matches.worldwide:
        return _balance_worldwide(con, run, options, matches, every_caption)
    register_matches(con, run, matches, every_caption, options.group_by)
    _counts_for(con, run, matches, every_caption)
    con.execute(sql("metaclip_draw"))
    name = "metaclip2_balance" if options.group_by else "metaclip_balance"
    decided = run_sql(con, name, t=options.t, seed=options.seed).cast(DECISIONS_SCHEMA)
    if every_caption:
        return decided, None
    con.register("balanced", decided)
    return to_arrow(con.sql("SELECT key, kept, reason FROM balanced UNION ALL "
                            "SELECT key, false, 'no_image' FROM no_image ORDER BY key")).cast(DECISIONS_SCHEMA), None


# ---------------------------------------------------------------- worldwide (MetaCLIP 2)

ENGLISH = "en"  # the language whose t is given (t_en) and whose tail proportion every other language follows
WW_DECISIONS_SCHEMA = pa.schema([*DECISIONS_SCHEMA, ("lang", pa.string())])


def t_to_p(counts: np.ndarray, t: float) -> float:
    """The tail proportion at threshold t: the share of all matches that fall in entries whose count is
    below t (strictly; an entry counted exactly t is head), as MetaCLIP 2's curate.py computes it.
    Zero counts add nothing. No match at all leaves it undefined (ValueError)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = counts.sum()
    if total == 0:
        raise ValueError("t_to_p: no matches, the tail proportion is undefined")
    return float(counts[counts < t].sum() / total)


def p_to_t(counts: np.ndarray, p: float) -> int | None:
    """The threshold whose tail proportion is nearest p, as MetaCLIP 2's curate.py finds it: counts sorted
    ascending (the language's whole list, zeros included), their cumulative share of the matches, and the
    count at the first position where |share - p| is smallest (ties: the earlier, smaller count). A zero
    count can be the answer (p nearer 0 than the smallest count's share): that language then keeps nothing.
    None where the counts hold no match (the language needs no threshold)."""
    ordered = np.sort(np.asarray(counts, dtype=np.int64))
    total = ordered.sum()
    if total == 0:
        return None
    share = np.cumsum(ordered) / total
    return int(ordered[int(np.argmin(np.abs(share - p)))])


def _by_language(counts: pa.Table, column: str = "count") -> dict[str, np.ndarray]:
    """Each language's counts (its whole list) from a table with lang and `column` (entry_counts, entry_stats)."""
    counts = counts.filter(pc.is_valid(counts.column("lang")))
    if counts.num_rows == 0:
        return {}
    lang = counts.column("lang").combine_chunks().dictionary_encode()
    codes = lang.indices.to_numpy(zero_copy_only=False)
    names = lang.dictionary.to_pylist()
    values = counts.column(column).to_numpy()
    order = np.argsort(codes, kind="stable")
    codes, values = codes[order], values[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], codes.size]
    return {names[codes[a]]: values[a:b] for a, b in zip(starts, ends, strict=True) if names[codes[a]] is not None}


def language_thresholds(counts: dict[str, np.ndarray], t_en: float) -> tuple[float, dict[str, float | None]]:
    """English's tail proportion p = t_to_p(English's counts, t_en), and every language's t: t_en for English,
    p_to_t(its counts, p) for the others (None for a language nothing matched in)."""
    english = counts.get(ENGLISH)
    if english is None or english.sum() == 0:
        raise ConfigError(f"worldwide balancing derives each language's t from English's tail proportion at t "
                          f"(t_en), and no English caption (match_lang {ENGLISH!r}) matched an entry; languages "
                          f"matched: {', '.join(sorted(counts)) or 'none'}")
    p = t_to_p(english, t_en)
    return p, {lang: (t_en if lang == ENGLISH else p_to_t(values, p)) for lang, values in sorted(counts.items())}


def worldwide_thresholds(con: duckdb.DuckDBPyConnection, t_en: float) -> tuple[float, dict[str, float | None]]:
    """Given view entry_counts (lang, entry_id, entry, count): table `thresholds` (lang, t) for
    metaclip_ww_balance.sql; returns English's p and each language's t."""
    p, thresholds = language_thresholds(_by_language(to_arrow(con.sql("SELECT lang, count FROM entry_counts"))),
                                        t_en)
    con.register("thresholds", pa.table({"lang": pa.array(list(thresholds), pa.string()),
                                         "t": pa.array(list(thresholds.values()), pa.float64())}))
    return p, thresholds


def worldwide_decisions(con: duckdb.DuckDBPyConnection, seed: int) -> pa.Table:
    """metaclip_ww_balance.sql over views matches (key, image, lang, metaclip_entries), entry_counts and
    thresholds: key, kept, reason, lang for every text."""
    con.execute(sql("metaclip_draw"))
    return run_sql(con, "metaclip_ww_balance", seed=seed).cast(WW_DECISIONS_SCHEMA)


def image_column(con: duckdb.DuckDBPyConnection, run: str, group_by: str | None, every_caption: bool) -> str:
    """What names an image in a worldwide balance: group_by when given; else sha256 where the images were
    fetched and url where the captions are balanced before download (a text pass, text_only). A run whose
    annotations lack that column balances each text as its own image (key), which the log and stats.json say."""
    if group_by is not None:
        return group_by
    column = "url" if every_caption else "sha256"
    paths = RunPaths(run)
    if column in scan(con, paths, paths.outputs("annotations")).columns:
        return column
    log.warning("%s/annotations has no %s column: each text is balanced as its own image (key)", run, column)
    return "key"


def _balance_worldwide(con: duckdb.DuckDBPyConnection, run: str, options: MetaclipBalanceOptions, matches: Matches,
                       every_caption: bool) -> tuple[pa.Table, dict]:
    image = image_column(con, run, options.group_by, every_caption)
    register_matches(con, run, matches, every_caption, image)
    _counts_for(con, run, matches, every_caption)
    p, thresholds = worldwide_thresholds(con, options.t)
    decided = worldwide_decisions(con, options.seed)
    info = {"t_en": options.t, "p": p, "image": image, "thresholds": thresholds}
    if every_caption:
        return decided, info
    con.register("balanced", decided)
    return to_arrow(con.sql("SELECT key, kept, reason, lang FROM balanced UNION ALL "
                            "SELECT key, false, 'no_image', NULL FROM no_image ORDER BY key")
                    ).cast(WW_DECISIONS_SCHEMA), info


def balance_pool(con: duckdb.DuckDBPyConnection, run: str, matches: Matches, t_en: float, seed: int,
                 image: str) -> tuple[float, dict[str, float | None]]:
    """select's metaclip_balance step over worldwide matches: the match lists of the rows of table `pool`,
    counted and balanced per language as balance() does, into temp table metaclip_decisions (key, kept,
    reason, lang). `image`: the annotation column naming the image (key when the annotations lack it).
    Returns English's p and each language's t."""
    paths = RunPaths(run)
    scan(con, paths, matches.files).select("key, match_lang AS lang, metaclip_entries").create_view("all_matches")
    annotations = scan(con, paths, paths.outputs("annotations"))
    if image not in annotations.columns:
        log.warning("%s/annotations has no %s column: each text is balanced as its own image (key)", run, image)
        image = "key"
    annotations.select(duckdb.ColumnExpression("key").alias("image_key"),
                       duckdb.ColumnExpression(image).cast(duckdb.sqltype("VARCHAR")).alias("image")) \
        .create_view("pool_image")
    con.execute("CREATE OR REPLACE TEMP TABLE matches AS SELECT m.key, m.lang, m.metaclip_entries, i.image "
                "FROM all_matches AS m SEMI JOIN pool USING (key) LEFT JOIN pool_image AS i ON m.key = i.image_key")
    metadata = scan(con, paths, [paths.metadata(matches.metadata_id)])
    if "lang" not in metadata.columns:
        raise ConfigError(f"{run}: the match lists name languages (match_lang) but metadata/"
                          f"{matches.metadata_id}.parquet has no lang column")
    metadata.create_view("entries")
    con.register("ww_counts", _count(con, run, matches))
    con.execute("CREATE OR REPLACE TEMP TABLE entry_counts AS SELECT * FROM ww_counts")
    p, thresholds = worldwide_thresholds(con, t_en)
    con.register("ww_decisions", worldwide_decisions(con, seed))
    con.execute("CREATE OR REPLACE TEMP TABLE metaclip_decisions AS SELECT * FROM ww_decisions")
    return p, thresholds


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
        decisions, worldwide = _balance(con, run, options, matches, every_caption)
        con.register("decisions", decisions)
        per_entry = run_sql(con, "metaclip_ww_entry_stats" if worldwide else "metaclip_entry_stats",
                            **({} if worldwide else {"t": t}))
    if worldwide:
        group_by = worldwide["image"]
        step_name = "metaclip2_balance"
        entry_t = per_entry.column("t").to_numpy(zero_copy_only=False).astype(np.float64)  # NaN: no t
        summary = balance_stats(per_entry, decisions, entry_t, langs=per_entry.column("lang"))
        summary["worldwide"] = {"t_en": t, "p": round(worldwide["p"], 9), "image": group_by,
                                "languages": language_stats(per_entry, decisions)}
        decisions = decisions.select(DECISIONS_SCHEMA.names)
    else:
        step_name = "metaclip_balance" if not group_by else "metaclip2_balance"
        summary = balance_stats(per_entry, decisions, t)
    stats = {
        "recipe": {"step": step_name, "t": t, "seed": options.seed,
                   "group_by": group_by, "source": matches.kind, "metadata_id": matches.metadata_id,
                   "rows": "all captions (text only)" if every_caption else "ok rows (image downloaded)"},
        "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **summary,
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


def _side(counts: np.ndarray, head: np.ndarray, entries: np.ndarray, t: float | np.ndarray,
          langs: pa.ChunkedArray | None = None) -> dict:
    """One side (before or after) of a balancing. `t`: one threshold, or one per entry (worldwide: its language's,
    NaN where the language has none); `langs`: each entry's language, named beside it in top_entries."""
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
        "top_entries": [{"entry": str(entries[i]), **({"lang": langs[int(i)].as_py()} if langs is not None else {}),
                         "count": int(counts[i])} for i in top if counts[i] > 0],
    }


def balance_stats(per_entry: pa.Table, decisions: pa.Table, t: float | np.ndarray,
                  langs: pa.ChunkedArray | None = None) -> dict:
    """Entry-count distribution, head/tail split at t, tail share of matches, before and after. Worldwide: `t`
    per entry (its language's) and `langs`, each entry's language."""
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
        "before": _side(counts, head, entries, t, langs),
        "after": _side(kept, head, entries, t, langs),
    }


def language_stats(per_entry: pa.Table, decisions: pa.Table) -> dict[str, dict]:
    """Per language of a worldwide balancing (by language code): its t and p (t_to_p of its counts at its t:
    English's is the p every other language is matched to), its list's entries (matched, head: count > t), the
    matches (caption, entry pairs) before and after, its captions (matched; picked: the texts drawn for their
    image) and the kept rows."""
    counts = _by_language(per_entry)
    kept_matches = _by_language(per_entry, "kept_count")
    languages = per_entry.select(["lang", "t"]).group_by(["lang", "t"]).aggregate([])
    t_of = dict(zip(languages.column("lang").to_pylist(), languages.column("t").to_pylist(), strict=True))
    rows = decisions.filter(pc.is_valid(decisions.column("lang")))
    reason = rows.column("reason")
    flags = pa.table({
        "lang": rows.column("lang"),
        "matched": pc.cast(pc.not_equal(reason, "no_match"), pa.int64()),
        "picked": pc.cast(pc.is_in(reason, pa.array(["kept", "balanced_out"])), pa.int64()),
        "kept": pc.cast(rows.column("kept"), pa.int64()),
    })
    texts = {r["lang"]: r for r in flags.group_by("lang").aggregate(
        [("matched", "count"), ("matched", "sum"), ("picked", "sum"), ("kept", "sum")]).to_pylist()}
    out = {}
    for lang in sorted(set(counts) | set(texts)):
        values = counts.get(lang, np.zeros(0, np.int64))
        t = t_of.get(lang)
        t = None if t is None or np.isnan(t) else (int(t) if float(t).is_integer() else t)
        text = texts.get(lang, {})
        out[lang] = {
            "t": t,
            "p": round(t_to_p(values, t), 9) if t is not None and values.sum() else None,
            "entries": int(values.size),
            "entries_matched": int(np.count_nonzero(values)),
            "head_entries": int(np.count_nonzero(values > t)) if t is not None else 0,
            "matches": int(values.sum()),
            "matches_kept": int(kept_matches.get(lang, np.zeros(0, np.int64)).sum()),
            "captions": int(text.get("matched_count", 0)),
            "captions_matched": int(text.get("matched_sum") or 0),
            "picked": int(text.get("picked_sum") or 0),
            "kept": int(text.get("kept_sum") or 0),
        }
    return out


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
