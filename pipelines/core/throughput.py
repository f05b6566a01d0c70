"""Per-stage throughput of a run, read from Ray Data's execution stats (`Dataset.stats()`).

For each stage (load, fetch = download + decode, decode, preprocess, embed, match, write): the rows through
it, the wall time of the stage, the summed time of its tasks, and from those `rows_per_s` (the whole stage) and
`rows_per_task_s` (per task or actor: about rows/s per CPU for the CPU stages, per replica for a model).
Ray Data fuses consecutive operators into one task (decode -> preprocess -> embed on a CPU-only node);
the stages of a fused operator share its numbers and name each other under `fused_with`.
Text this parser cannot read raises `StatsFormatError` (a Ray upgrade that changes the format shows up in
the tests, not as silently missing numbers); annotate records the error in run.json instead of failing.
"""

from __future__ import annotations

import re

STAGE_OF_FUNCTION = {
    "load_pieces": "load",
    "download_batch": "download",
    "fetch_batch": "fetch",
    "decode_batch": "decode",
    "preprocess_batch": "preprocess",
    "ClipEmbedder": "embed",
    "MatchStage": "match",
    "write_parts": "write",
}
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_OPERATOR = re.compile(r"^Operator \d+ (?P<name>.+?): .*? produced in (?P<wall>[\d.]+\s*\w+)", re.M)
_TOTAL = re.compile(r"Remote wall time: .*?, (?P<total>[\d.]+\s*\w+) total")
_ROWS = re.compile(r"Total (?P<which>input|output) num rows: (?P<n>\d+) rows")


class StatsFormatError(ValueError):
    """Ray Data's stats text is not in the format this parser reads."""


def _seconds(text: str) -> float | None:
    match = re.fullmatch(r"([\d.]+)\s*(\w+)", text.strip())
    if not match or match.group(2) not in _UNITS:
        return None
    return float(match.group(1)) * _UNITS[match.group(2)]


def stage_throughput(stats: str, rows_in: int | None = None) -> dict[str, dict]:
    """{stage: {rows, wall_s, task_s, rows_per_s, rows_per_task_s[, fused_with]}} from Ray Data stats text.

    An operator that starts with `load` reads work items (pieces of shards), not rows: given `rows_in`
    (the rows those pieces hold), its numbers are per input row.
    """
    found: dict[str, dict] = {}
    matches = list(_OPERATOR.finditer(stats or ""))
    if stats and stats.strip() and not matches:
        raise StatsFormatError(f"no 'Operator N name: ... produced in T' line in Ray Data stats: {stats[:80]!r}")
    for i, op in enumerate(matches):
        body = stats[op.end(): matches[i + 1].start() if i + 1 < len(matches) else len(stats)]
        body = body.split("\nDataset throughput", 1)[0]
        stages = [STAGE_OF_FUNCTION[f] for f in re.findall(r"\((\w+)\)", op.group("name")) if f in STAGE_OF_FUNCTION]
        if not stages:
            continue
        rows = max((int(m.group("n")) for m in _ROWS.finditer(body)), default=None)
        if stages[0] == "load" and rows_in is not None:
            rows = rows_in
        wall = _seconds(op.group("wall"))
        total = _TOTAL.search(body)
        task_s = _seconds(total.group("total")) if total else None
        if rows is None or wall is None or task_s is None:
            raise StatsFormatError(f"operator {op.group('name')!r}: rows, wall time or task time unreadable in "
                                   f"{body.strip()[:200]!r}")
        entry = {"rows": rows, "wall_s": round(wall, 3), "rows_per_s": round(rows / wall, 1) if wall else None,
                 "task_s": round(task_s, 3), "rows_per_task_s": round(rows / task_s, 1) if task_s else None}
        for stage in stages:
            fused = [s for s in stages if s != stage]
            found[stage] = entry | ({"fused_with": fused} if fused else {})
    return found
