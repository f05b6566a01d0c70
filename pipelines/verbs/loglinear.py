"""The log-linear analysis of *No "Zero-Shot" Without Exponential Data*, as the authors' released code does it.

Points are one row per (dataset, concept), never merged by name: a count (pretraining frequency) and
an accuracy. x = ln(count), with a zero count set to 1; 12 edges `numpy.linspace(min x, max x, 12)`;
`numpy.digitize(x, edges, right=True)`, so bin 0 holds only x = min and bin i holds
edges[i-1] < x <= edges[i] (labelled by its upper edge); mean and std (ddof 0) of accuracy per bin;
Pearson r between the upper edges (ln count) and the bin means over bins 1..10, the first and last
left out, with the least-squares line through the same points.

The binning and the fit are DuckDB SQL like every other statistic of the project
(sql/audit_loglinear.sql, sql/audit_loglinear_fit.sql): the edges are computed as linspace computes
them and a point's bin is the number of edges below it, which is digitize(right=True) word for word.

    points = read_points("acc.csv", "loglinear")        # concept, count, accuracy[, dataset]
    result = analyse(points, source="acc.csv")          # ConfigError when fewer than 3 bins are usable
    write(result, "out/")                               # out/loglinear.json, out/loglinear.png

`tailor loglinear FILE --out DIR` is that; `tailor audit --accuracy FILE` uses the same code, with
the file's `count` column when it has one and the run's own frequency otherwise.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.config import ConfigError
from pipelines.core.duck import connect, run_sql, to_arrow
from pipelines.core.storage import RunPaths
from pipelines.verbs.audit_report import plot_loglinear, save_figure

EDGES = 12  # the paper's numpy.linspace(..., num=12)
MIN_BINS = 3  # non-empty bins among 1..EDGES-2 needed for a correlation worth the name
POINTS_SCHEMA = pa.schema([("dataset", pa.string()), ("concept", pa.string()), ("count", pa.float64()),
                           ("accuracy", pa.float64())])


def read_points(path: str, label: str, count_required: bool = True) -> pa.Table:
    """A per-concept file (CSV, TSV, Parquet, JSON lines) with columns concept, accuracy, count (unless
    not required) and optionally dataset. Returns dataset (string, null without the column), concept,
    accuracy, and count (double) when the file has it; errors are ConfigErrors that start with `label`."""
    import fsspec
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    try:
        with fsspec.open(path, "rb") as f:
            if path.endswith(".parquet"):
                table = pq.read_table(f)
            elif path.endswith((".json", ".jsonl")):
                table = pjson.read_json(f)
            else:
                delimiter = "\t" if path.endswith(".tsv") else ","
                table = pcsv.read_csv(f, parse_options=pcsv.ParseOptions(delimiter=delimiter))
    except (FileNotFoundError, IsADirectoryError, pa.ArrowInvalid) as err:
        raise ConfigError(f"{label}: cannot read {path}: {err}") from err
    needed = ["concept", "count", "accuracy"] if count_required else ["concept", "accuracy"]
    missing = set(needed) - set(table.column_names)
    if missing:
        raise ConfigError(f"{label}: {path} lacks column(s) {', '.join(sorted(missing))} "
                          f"(needs {', '.join(needed)}; dataset optional)")
    if "dataset" not in table.column_names:
        table = table.append_column("dataset", pa.nulls(table.num_rows, pa.string()))
    pairs = collections.Counter(zip(table.column("dataset").to_pylist(), table.column("concept").to_pylist(),
                                    strict=True))
    (dataset, concept), times = pairs.most_common(1)[0] if pairs else ((None, None), 0)
    if times > 1:  # e.g. evaluate's per_concept.parquet: one row per subset, and no dataset column to say so
        raise ConfigError(f"{label}: {path} lists concept {concept!r} {times} times"
                          + (f" in dataset {dataset!r}" if dataset is not None else "")
                          + "; give one row per concept (a `dataset` column keeps several evaluations apart)")
    names = [n for n in POINTS_SCHEMA.names if n in table.column_names]
    try:
        return table.select(names).cast(pa.schema([POINTS_SCHEMA.field(n) for n in names]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise ConfigError(f"{label}: {path}: {err} (count and accuracy must be numbers)") from err


def run_points(counts: pa.Table, accuracy: pa.Table) -> pa.Table:
    """Points of an audit: the accuracy file's own counts when it has a `count` column, else the run's
    `frequency` (an audit's counts table: concept_id, concept, frequency) joined by concept name."""
    if "dataset" not in accuracy.column_names:
        accuracy = accuracy.append_column("dataset", pa.nulls(accuracy.num_rows, pa.string()))
    if "count" in accuracy.column_names:
        return accuracy.select(POINTS_SCHEMA.names).cast(POINTS_SCHEMA)
    con = connect()
    con.register("counts", counts)
    con.register("accuracy", accuracy)
    rel = con.sql("SELECT a.dataset, a.concept, CAST(c.frequency AS DOUBLE) AS count, a.accuracy "
                  "FROM counts AS c JOIN accuracy AS a USING (concept) ORDER BY c.concept_id, a.dataset")
    return to_arrow(rel).cast(POINTS_SCHEMA)


@dataclass
class LogLinear:
    bins: pa.Table  # bin, edge (ln count), edge_count, rows, mean, std
    fit: dict  # bins_used, pearson_r, slope, intercept
    points: pa.Table  # dataset, concept, count, accuracy
    edges: int = EDGES

    def summary(self) -> dict:
        """What loglinear.json holds: the edges as counts, rows, means and stds per bin, and the fit."""
        b = self.bins.to_pylist()
        return {"edges": [r["edge_count"] for r in b], "ln_edges": [r["edge"] for r in b],
                "rows": [r["rows"] for r in b], "means": [_number(r["mean"]) for r in b],
                "stds": [_number(r["std"]) for r in b], **self.fit,
                "fit_bins": [1, self.edges - 2], "points": self.points.num_rows,
                "datasets": len({d for d in self.points.column("dataset").to_pylist() if d is not None})}


def analyse(points: pa.Table, edges: int = EDGES, source: str = "log-linear") -> LogLinear:
    """Bin and fit `points` (POINTS_SCHEMA); a ConfigError naming `source` when fewer than MIN_BINS of
    bins 1..edges-2 hold a point (no correlation to speak of), never a crash."""
    if edges < MIN_BINS + 2:
        raise ConfigError(f"{source}: log-linear analysis needs at least {MIN_BINS + 2} edges, got {edges}")
    con = connect()
    con.register("points", points)
    bins = run_sql(con, "audit_loglinear", edges=edges)
    con.register("bins", bins)
    fit = {k: _number(v) for k, v in run_sql(con, "audit_loglinear_fit", edges=edges).to_pylist()[0].items()}
    if fit["bins_used"] < MIN_BINS:
        used = sum(bins.column("rows").to_pylist())
        if not used:
            why = "no row has both a count and an accuracy"
        else:
            lo, hi = bins.column("edge")[0].as_py(), bins.column("edge")[-1].as_py()
            span = "every count is 0 or 1" if hi == 0 else (
                f"every count is {math.exp(hi):.4g}" if hi == lo else
                f"counts from {math.exp(lo):.4g} to {math.exp(hi):.4g}")
            why = f"its {used} rows fill {fit['bins_used']} ({span})"
        raise ConfigError(f"{source}: log-linear analysis needs at least {MIN_BINS} non-empty bins among bins "
                          f"1..{edges - 2} (the first and last are left out); {why}")
    return LogLinear(bins=bins, fit=fit, points=points.select(POINTS_SCHEMA.names), edges=edges)


def write(result: LogLinear, out: str) -> list[str]:
    """OUT/loglinear.json (LogLinear.summary) and OUT/loglinear.png; OUT a folder or fsspec URL."""
    paths = RunPaths(out)
    files = [paths.join("loglinear.json"), paths.join("loglinear.png")]
    paths.write_json(result.summary(), files[0])
    save_figure(paths, plot_loglinear(result.bins, result.points, result.fit), files[1])
    return files


def _number(v):
    return None if isinstance(v, float) and math.isnan(v) else v
