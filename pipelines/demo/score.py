"""`tailor demo`'s run judged against the demo web's ground truth, and whether a second `tailor demo` keeps it.

    check = check_run(OUT / "run", OUT / "web")   # statuses as expected; CLIP scores: matched vs mismatched
    restart = starts_over(OUT / "run", config, overwrite, pages)

The demo web (pipelines/demo/web) writes truth.parquet: per page its expected status, whether its caption
names another concept than its image (`mismatch`) and whether the caption is boilerplate. `roc_auc` is the
separation the tests check too.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

# what annotate writes in a run folder; any other folder there (subsets/, captions/, audit/, ...) was made from it
ANNOTATE_OUTPUTS = {"annotations", "images", "embeddings", "input", "logs", "metadata", "_done", "_staging"}


def roc_auc(positive, negative) -> float:
    """The chance that a score of `positive` is above one of `negative`, ties counting half: the area under
    the ROC curve, over every pair (exact, in O((n + m) log m))."""
    import numpy as np

    pos, neg = np.asarray(positive, dtype=float), np.sort(np.asarray(negative, dtype=float))
    if not len(pos) or not len(neg):
        raise ValueError("roc_auc: positive and negative scores both needed")
    below, up_to = np.searchsorted(neg, pos, "left"), np.searchsorted(neg, pos, "right")
    return float((below.sum() + 0.5 * (up_to - below).sum()) / (len(pos) * len(neg)))


def check_run(run: Path, web: Path) -> dict:
    """The demo run in `run` against the ground truth of the demo web in `web`:

    rows: pages in the web; as_expected: rows whose status is the one the web meant; clip: None without CLIP
    scores (or without a matched or a mismatched caption among the scored rows), else the mean score of
    matched and of mismatched captions, their row counts and the ROC-AUC separating them (boilerplate
    captions left out: they name no concept)."""
    import pyarrow.parquet as pq

    annotations = pq.read_table(run / "annotations").to_pylist()
    truth = {r["demo_id"]: r for r in pq.read_table(web / "truth.parquet").to_pylist()}
    agree = sum(truth[r["demo_id"]]["expected_status"] == r["status"] for r in annotations)
    scored = [(r["clip_score"], truth[r["demo_id"]]["mismatch"]) for r in annotations
              if r.get("clip_score") is not None and not truth[r["demo_id"]]["boilerplate"]]
    matched = [s for s, mismatch in scored if not mismatch]
    mismatched = [s for s, mismatch in scored if mismatch]
    clip = None
    if matched and mismatched:
        clip = {"matched_rows": len(matched), "mismatched_rows": len(mismatched),
                "matched_mean": sum(matched) / len(matched), "mismatched_mean": sum(mismatched) / len(mismatched),
                "roc_auc": roc_auc(matched, mismatched)}
    return {"rows": len(truth), "as_expected": agree, "clip": clip}


class Restart(NamedTuple):
    """Whether `tailor demo` annotates anew; why (None for a first run, and where the run is kept); the
    folders made from the old run that go with it (`name/`)."""
    anew: bool
    why: str | None = None
    removed: tuple[str, ...] = ()


def starts_over(run: Path, config, overwrite: bool, pages: int) -> Restart:
    """A finished demo run of this web (`pages` rows) made with the same settings is kept as it is, with the
    subsets, audits and captions made from it; otherwise (other settings, an unfinished run, whose planned
    URLs name the port of an earlier server, or --overwrite) the web is annotated anew, and what goes with it
    is named."""
    from pipelines.core.storage import RunPaths
    from pipelines.verbs.annotate import recorded_config

    paths = RunPaths(str(run))
    previous = recorded_config(paths)
    if previous is None:
        return Restart(True)
    done, planned = paths.shard_progress()
    finished = 0 < done == planned and sum(paths.committed_shards().values()) == pages
    same = previous.fingerprint() == config.fingerprint()
    if same and finished and not overwrite:
        return Restart(False)
    derived = tuple(sorted(p.name + "/" for p in run.iterdir() if p.is_dir() and p.name not in ANNOTATE_OUTPUTS))
    why = ("--overwrite" if overwrite else "an unfinished run, or one of another demo web" if same
           else "other settings: " + "; ".join(previous.differences(config)[:3]))
    return Restart(True, why, derived)
