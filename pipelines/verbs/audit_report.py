"""The concept audit as a page: RUN/audit/NAME/report/index.html with PNG plots beside it.

    rank_frequency.png   text, image and matched counts against rank, log-log (zero counts left out)
    coverage_delta.png   per concept, frequency in the run against frequency in the subset (with --subset)
    loglinear.png        accuracy against ln(count): concepts, bin means, the fitted line (with --accuracy)

The tables (tail concepts, subset delta, log-linear bins) are HTML tables on the page. Plots are
also usable on their own from a notebook: each `plot_*` function returns a matplotlib Figure.
"""

from __future__ import annotations

import html
import io
import math

import pyarrow as pa

from pipelines.core.storage import Audit, RunPaths


def new_figure(width: float = 7.0, height: float = 4.5):
    """A Figure without pyplot: no backend or global state (a notebook displays it, the CLI saves it)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    return fig, fig.add_subplot()


def plot_rank_frequency(counts: pa.Table):
    fig, ax = new_figure()
    for column, style, label in (("text_count", "-", "text (caption rows)"), ("image_count", "--", "image (images)"),
                                 ("matched_count", ":", "matched (images)")):
        values = sorted((v for v in counts.column(column).to_pylist() if v > 0), reverse=True)
        if values:
            ax.loglog(range(1, len(values) + 1), values, style, marker=".", label=label)
    ax.set_xlabel("rank")
    ax.set_ylabel("caption rows / distinct images")
    ax.set_title("concept frequency by rank (log-log)")
    if ax.get_legend_handles_labels()[0]:  # a run where no concept is counted has no line to label
        ax.legend()
    fig.tight_layout()
    return fig


def plot_coverage_delta(delta: pa.Table):
    fig, ax = new_figure()
    rows = delta.to_pylist()
    for tail, colour, label in ((False, "tab:blue", "head"), (True, "tab:red", "tail")):
        pts = [(r["frequency"] + 1, r["subset_frequency"] + 1) for r in rows if r["tail"] == tail]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=12, c=colour, label=label, alpha=0.7)
    top = max([r["frequency"] + 1 for r in rows] + [2])
    ax.plot([1, top], [1, top], color="grey", lw=0.8, label="kept all")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("frequency in the run + 1")
    ax.set_ylabel("frequency in the subset + 1")
    ax.set_title("coverage per concept: run vs subset")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_loglinear(bins: pa.Table, points: pa.Table, fit: dict):
    """Accuracy against ln(count): the points, each bin's mean (± std) at its upper edge, the fitted line
    over the bins it was fitted on (pipelines/verbs/loglinear.py; the first and last bins are hollow)."""
    fig, ax = new_figure()
    xs = [math.log(max(c, 1)) for c in points.column("count").to_pylist()]
    ax.scatter(xs, points.column("accuracy").to_pylist(), s=8, alpha=0.35, label="concepts")
    rows = [r for r in bins.to_pylist() if r["mean"] is not None]
    last = len(bins) - 1
    used = [r for r in rows if 0 < r["bin"] < last]
    if used:
        ax.errorbar([r["edge"] for r in used], [r["mean"] for r in used], yerr=[r["std"] for r in used], fmt="o-",
                    color="tab:red", capsize=3, label="bin mean ± std (at upper edge)")
    ends = [r for r in rows if r["bin"] in (0, last)]
    if ends:
        ax.plot([r["edge"] for r in ends], [r["mean"] for r in ends], "o", mfc="none", color="tab:red",
                label="first and last bin (not fitted)")
    if fit.get("slope") is not None and fit.get("intercept") is not None and used:
        lo, hi = used[0]["edge"], used[-1]["edge"]
        r = fit.get("pearson_r")
        ax.plot([lo, hi], [fit["intercept"] + fit["slope"] * lo, fit["intercept"] + fit["slope"] * hi], "k--",
                lw=1, label="fit" + (f", r = {r:.3f}" if r is not None else ""))
    ax.set_xlabel("ln(count)  (zero counted as 1)")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs log frequency")
    ax.legend()
    fig.tight_layout()
    return fig


def save_figure(paths: RunPaths, fig, path: str) -> None:
    """A figure as a PNG at PATH, written whole."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    paths.write_bytes(buffer.getvalue(), path)


def _table(rows: list[dict], columns: list[str], limit: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows[:limit]:
        cells = []
        for c in columns:
            v = r.get(c)
            v = f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))
            cells.append(f"<td>{html.escape(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p>… {len(rows) - limit} more rows in the Parquet table.</p>" if limit and len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{more}"


def write_report(audit: Audit, settings: dict, summary: dict, counts: pa.Table,
                 delta: pa.Table | None, bins: pa.Table | None, points: pa.Table | None,
                 fit: dict | None) -> str:
    """Write RUN/audit/NAME/report/index.html and its PNGs; return the page's path."""
    paths = audit.paths
    pngs = {"rank_frequency.png": plot_rank_frequency(counts)}
    if delta is not None:
        pngs["coverage_delta.png"] = plot_coverage_delta(delta)
    if bins is not None and points is not None and fit is not None:
        pngs["loglinear.png"] = plot_loglinear(bins, points, fit)
    for name, fig in pngs.items():
        save_figure(paths, fig, audit.report_file(name))

    rows = counts.to_pylist()
    tagged = bool(settings.get("model"))  # image figures only where images were fetched and tagged
    text_pass = bool(summary.get("text_pass"))
    count_cols = ["concept", "text_count"] + ([] if text_pass else ["text_image_count"]) + (
        ["image_count", "matched_count"] if tagged else []) + ["frequency", "rank", "top_synonym"]
    tail = sorted((r for r in rows if r["tail"]), key=lambda r: (r["frequency"], r["concept_id"]))
    head = sorted(rows, key=lambda r: (r["rank"], r["concept_id"]))
    mis = summary.get("misalignment")
    t = summary["tail"]
    rule = f"bottom {t['fraction']:.0%} of the {t.get('mentioned', summary['concepts'])} mentioned concepts, ties " \
           "included" + (f", or below {t['floor']}" if t["floor"] else "")
    never = t.get("never_mentioned")
    if tagged:
        images = (f"Image tags: tagger {html.escape(str(settings['tagger']))} (threshold "
                  f"{settings['image_threshold']}) on {html.escape(str(settings['model']))}.")
    elif text_pass:
        images = "A text pass: caption rows only, no image fetched yet, so no image counts."
    else:
        images = "No image tagged: the run has no embeddings (annotate with an embed model), so no image counts."
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>tailor concept audit</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}"
        ".warning{border:2px solid #c60;background:#fff4e5;padding:0.5em}</style></head><body>",
        f"<h1>Concept audit: {html.escape(str(settings['concepts']))}</h1>",
        *(f"<p class='warning'>Warning: {html.escape(w)}</p>" for w in summary.get("warnings") or []),
        f"<p>{summary['concepts']} concepts; ranked by {html.escape(summary['frequency'])} frequency. {images} "
        f"Tail: {t['concepts']} concepts ({rule}), "
        + (f"{t['share_of_mentions']:.1%} of all mentions" if t["share_of_mentions"] is not None
           else "no concept is mentioned at all")
        + (f"; {never} concepts never mentioned" if never else "") + ".</p>",
    ]
    caption_rows = summary.get("caption_rows", summary.get("ok_rows"))
    if text_pass:
        parts.append(f"<p>Units: text_count counts caption rows ({caption_rows} caption rows of a text pass, "
                     "none fetched yet).</p>")
    elif caption_rows is not None:
        counted = "text_image_count, image_count and matched_count count" if tagged else "text_image_count counts"
        parts.append(f"<p>Units: text_count counts caption rows ({caption_rows} ok rows); {counted} distinct "
                     f"images by sha256 ({summary['ok_images']} ok images).</p>")
    if mis:
        parts.append(f"<p>Misalignment: {mis['misaligned']} of {mis['images_tagged']} tagged images "
                     f"({mis['misalignment_rate']:.1%}) have no caption row naming any of their concepts.</p>")
    parts += ["<h2>Rank-frequency</h2><img src='rank_frequency.png'>",
              "<h2>Head</h2>", _table(head, count_cols, 20),
              "<h2>Tail</h2>", _table(tail, count_cols, 200)]
    unmentioned = [r["concept"] for r in sorted(rows, key=lambda r: r["concept_id"]) if r["frequency"] == 0]
    if unmentioned:
        shown = ", ".join(unmentioned[:300]) + (f", … {len(unmentioned) - 300} more" if len(unmentioned) > 300 else "")
        parts += [f"<h2>Never mentioned ({len(unmentioned)} concepts, {html.escape(summary['frequency'])} "
                  "frequency 0; not counted in the tail)</h2>", f"<p>{html.escape(shown)}</p>"]
    if delta is not None:
        sub = summary["subset"]
        parts += [f"<h2>Subset {html.escape(sub['name'])}: coverage delta</h2>",
                  f"<p>Tail mentions retained {sub['tail_retained']}, head {sub['head_retained']}; concepts lost "
                  f"{sub['concepts_lost']} (tail: {html.escape(', '.join(sub['tail_concepts_lost']) or 'none')}).</p>",
                  "<img src='coverage_delta.png'>",
                  _table(sorted(delta.to_pylist(), key=lambda r: (r["retained"] is None, r["retained"] or 0)),
                         ["concept", "frequency", "subset_frequency", "retained", "tail", "subset_tail", "lost"], 60)]
    failed = (summary.get("loglinear") or {}).get("error")
    if failed:
        parts += ["<h2>Log-linear analysis</h2>", f"<p class='warning'>Not made: {html.escape(failed)}</p>"]
    if bins is not None and fit is not None:
        r = "undefined" if fit["pearson_r"] is None else f"{fit['pearson_r']:.4f}"
        source = html.escape(str(summary.get("loglinear", {}).get("counts", "")))
        parts += ["<h2>Log-linear analysis</h2>",
                  f"<p>Pearson r between the bins' upper edges (ln count) and their mean accuracy over bins 1.."
                  f"{len(bins) - 2}: {r} ({fit['bins_used']} non-empty bins); slope {fit['slope']} per unit "
                  f"ln(count). Counts: {source}.</p>",
                  "<img src='loglinear.png'>",
                  _table(bins.to_pylist(), ["bin", "edge_count", "edge", "rows", "mean", "std"])]
    parts.append("</body></html>")
    page = audit.report_file("index.html")
    paths.write_text("\n".join(parts), page)
    return page
