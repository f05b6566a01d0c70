"""Does the curation help? The same proxy CLIP trained on each subset, zero-shot accuracy per concept.

    evaluate(run, ["raw", "clip", "balanced"], EvaluateOptions(eval_path=..., concepts="demo"), ProxyConfig(...))
    writes RUN/evaluate/NAME/:

    shards/SUBSET/        the subset materialized as WebDataset tars (what the proxy reads, as a trainer would)
    per_concept.parquet   subset, concept_id, concept, eval_images, accuracy (mean over seeds), frequency (text
                          mentions in the subset), pool_frequency, tail (the audit's tail of the pool: the
                          bottom tail_fraction of its mentioned concepts)
    runs.parquet          subset, seed, samples, steps, samples_seen, final_loss, train_seconds, samples_per_s,
                          accuracy, head_accuracy, tail_accuracy, unseen_accuracy (classes the pool never mentions)
    summary.json          per subset: samples, overall / head / tail / unseen accuracy (mean and spread over seeds),
                          the log-linear fit of accuracy on ln(frequency) (the audit's analysis); the settings
    comparison.png, accuracy_vs_frequency.png

Evaluation sets: a folder in ImageFolder layout (LABEL/IMAGE; "_" in a folder name reads as a space) or a
Parquet with columns image (bytes) and label. Every label must name a concept of the concept list (or one of
its synonyms): per-concept accuracy is reported beside the concept's frequency. The demo web generator makes
one (`tailor demo-web eval-set`). Images of any size are squashed to the proxy's input, like training images.
A class's zero-shot text embedding averages the prompts of its name and synonyms, as the audit's tagger does.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from PIL import Image

from pipelines.concepts import load_concepts
from pipelines.core.config import ConfigError
from pipelines.core.console import duration
from pipelines.core.engine import cluster_gpus
from pipelines.core.passes import Pass
from pipelines.core.storage import RunPaths
from pipelines.core.verb_options import EvaluateOptions
from pipelines.verbs.audit import AuditOptions, concept_counts, log_linear, tag_run
from pipelines.verbs.evaluate_report import write_plots
from pipelines.verbs.materialize import INDEX, MaterializeOptions, materialize
from pipelines.verbs.proxy import ProxyConfig, read_shards, train, zero_shot

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MIN_EVAL_SIDE = 8


# ---------------------------------------------------------------- evaluation set

def load_eval_set(path: str, concepts) -> tuple[list[bytes], np.ndarray]:
    """(image bytes, concept id per image) of an ImageFolder tree or a Parquet of (image, label)."""
    import fsspec
    import pyarrow.parquet as pq

    fs, root = fsspec.core.url_to_fs(path)
    if not fs.exists(root):
        raise ConfigError(f"--eval: {path} does not exist")
    if fs.isdir(root):
        images, labels = [], []
        for folder in sorted(p for p in fs.ls(root, detail=False) if fs.isdir(p)):
            label = folder.rstrip("/").rsplit("/", 1)[-1].replace("_", " ")
            for file in sorted(fs.ls(folder, detail=False)):
                if file.lower().endswith(IMAGE_SUFFIXES):
                    with fs.open(file, "rb") as f:
                        images.append(f.read())
                    labels.append(label)
        where = [f"{label}/{i}" for i, label in enumerate(labels)]
    else:
        with fs.open(root, "rb") as f:
            table = pq.read_table(f)
        missing = {"image", "label"} - set(table.column_names)
        if missing:
            raise ConfigError(f"--eval: {path} lacks column(s) {', '.join(sorted(missing))} (needs image, label)")
        images, labels = table.column("image").to_pylist(), table.column("label").to_pylist()
        where = [f"row {i}" for i in range(len(images))]
    if not images:
        raise ConfigError(f"--eval: {path} holds no images (ImageFolder: LABEL/*.jpg|png|webp; or a Parquet)")
    ids = _label_ids(labels, concepts, path)
    for image, at in zip(images, where, strict=True):
        _check_image(image, at, path)
    return images, ids


def _label_ids(labels: list[str | None], concepts, path: str) -> np.ndarray:
    lookup = {name.lower(): k for k, name in concepts.variants()}
    unknown = sorted({str(label) for label in labels if label is None or str(label).strip().lower() not in lookup})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        raise ConfigError(f"--eval: {len(unknown)} labels of {path} are not in the concept list ({shown}"
                          f"{', ...' if len(unknown) > 5 else ''}); name each class as a concept or a synonym")
    return np.array([lookup[str(label).strip().lower()] for label in labels], dtype=np.int64)


def _check_image(data: bytes | None, at: str, path: str) -> None:
    try:
        with Image.open(io.BytesIO(data or b"")) as image:
            image.load()
            width, height = image.size
    except Exception as err:  # noqa: BLE001 - any unreadable evaluation image is a config error
        raise ConfigError(f"--eval: image {at} of {path} cannot be decoded: {err}") from None
    if min(width, height) < MIN_EVAL_SIDE:
        raise ConfigError(f"--eval: image {at} of {path} is {width}x{height}; evaluation images need at least "
                          f"{MIN_EVAL_SIDE} px a side")


# ---------------------------------------------------------------- one proxy (a Ray task)

def train_and_score(shards: list[str], eval_images, eval_ids: np.ndarray, classes: list[tuple[str, ...]],
                    config: ProxyConfig, seed: int) -> dict:
    """Train one proxy on the shards; correct zero-shot predictions per class (classes: each one's names)."""
    _, images, captions = read_shards(shards)
    model, tokenizer, info = train(images, captions, config, seed)
    predicted = zero_shot(model, tokenizer, eval_images, classes, config)
    correct = np.zeros(len(classes), dtype=np.int64)
    np.add.at(correct, eval_ids, predicted == eval_ids)
    return {**info, "samples": len(images), "correct": correct.tolist()}


def _gather(refs: dict, samples_seen: int, progress: bool) -> dict:
    """Every proxy's result; with progress, a line as each finishes and one a minute while they train (a
    proxy trains for minutes on CPU, and nothing else would be printed meanwhile)."""
    import ray

    pending = {ref: key for key, ref in refs.items()}
    results: dict = {}
    started = last = time.time()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=5)
        for ref in ready:
            results[pending.pop(ref)] = ray.get(ref)
        if progress and (ready or time.time() - last >= 60):
            last = time.time()
            print(f"evaluate: {len(results)}/{len(refs)} proxies trained ({samples_seen:,} samples each), "
                  f"elapsed {duration(last - started)}", file=sys.stderr, flush=True)
    return results


# ---------------------------------------------------------------- the whole evaluation

def _check_subsets(paths: RunPaths, subsets: list[str]) -> None:
    import pyarrow.parquet as pq

    if not subsets:
        raise ConfigError("--subsets: name at least one subset")
    if len(set(subsets)) != len(subsets):
        raise ConfigError(f"--subsets: a subset is listed twice ({', '.join(subsets)})")
    for name in subsets:
        manifest = paths.complete_subset(name).manifest
        with paths.fs.open(manifest, "rb") as f:
            if pq.read_metadata(f).num_rows == 0:
                raise ConfigError(f"--subsets: subset {name!r} is empty: nothing to train on")


def _frequencies(run: str, subsets: list[str], concepts_name: str) -> tuple[dict, list[dict]]:
    """Text mentions per concept in each subset, and the pool's counts (its tail flag defines the tail)."""
    options = AuditOptions(concepts=concepts_name)
    name = tag_run(run, options)["name"]
    pool = concept_counts(run, name, options).to_pylist()
    per_subset = {s: {r["concept_id"]: r["text_count"] for r in concept_counts(run, name, options, s).to_pylist()}
                  for s in subsets}
    return per_subset, pool


def evaluate(run: str, subsets: list[str], options: EvaluateOptions, config: ProxyConfig | None = None,
             progress: bool = False) -> dict:
    """Train the proxy on each subset and evaluate it; write RUN/evaluate/NAME/ and return the summary.

    options: the evaluation set, concept list and output name (EvaluateOptions' fields and defaults).
    config: the proxy (None: ProxyConfig's defaults).
    """
    import ray

    eval_set, concepts, name = options.eval_path, options.concepts, options.name
    config = config or ProxyConfig()
    this = Pass(run)  # no settings check: every evaluation recomputes its folder
    run, paths = this.run, this.paths
    evaluation = paths.evaluation(name)
    _check_subsets(paths, subsets)
    concept_list = load_concepts(concepts)
    eval_images, eval_ids = load_eval_set(eval_set, concept_list)
    classes = sorted(set(eval_ids.tolist()))
    names = concept_list.all_names()
    class_names = [names[k] for k in classes]  # name and synonyms: the audit's prompt ensemble
    class_index = {k: i for i, k in enumerate(classes)}
    eval_class = np.array([class_index[k] for k in eval_ids.tolist()], dtype=np.int64)
    frequency, pool = _frequencies(run, subsets, concepts)
    tail = {r["concept_id"] for r in pool if r["tail"]}
    pool_frequency = {r["concept_id"]: r["text_count"] for r in pool}
    # the audit takes the tail among mentioned concepts; a concept the pool never mentions is neither head nor
    # tail: no subset of it can teach the proxy that concept from its captions
    unseen = {k for k, n in pool_frequency.items() if n == 0} - tail

    shards = {}
    for subset in subsets:
        m = materialize(run, subset, evaluation.shards(subset),  # skip_missing: keys of failed rows have no image
                        MaterializeOptions(samples_per_shard=2000, parquet=False, skip_missing=True),
                        overwrite=True, progress=progress)
        written = RunPaths(m["out"])
        shards[subset] = [f"{m['out']}/{s['name']}" for s in written.read_json(written.join(INDEX))["shards"]]

    this.start_ray()
    use_gpu = config.device != "cpu" and cluster_gpus() >= 1
    task = ray.remote(train_and_score).options(num_cpus=config.threads, num_gpus=1 if use_gpu else 0)
    images_ref, ids_ref = ray.put(eval_images), ray.put(eval_class)
    refs = {(s, seed): task.remote(shards[s], images_ref, ids_ref, class_names, config, seed)
            for s in subsets for seed in config.seeds}
    results = _gather(refs, config.samples_seen, progress)

    n_eval = np.bincount(eval_class, minlength=len(classes))
    runs, per_concept, summary_subsets = [], [], {}
    for subset in subsets:
        acc_by_seed = []
        for seed in config.seeds:
            r = results[(subset, seed)]
            acc = np.asarray(r["correct"]) / np.maximum(n_eval, 1)
            acc_by_seed.append(acc)
            runs.append({"subset": subset, **{k: r[k] for k in ("seed", "samples", "steps", "samples_seen",
                                                               "final_loss", "train_seconds", "samples_per_s")},
                         **_accuracies(acc, classes, tail, unseen)})
        mean = np.mean(acc_by_seed, axis=0)
        for i, k in enumerate(classes):
            per_concept.append({"subset": subset, "concept_id": k, "concept": concept_list.names[k],
                                "eval_images": int(n_eval[i]), "accuracy": float(mean[i]),
                                "frequency": int(frequency[subset].get(k, 0)),
                                "pool_frequency": int(pool_frequency.get(k, 0)),
                                "tail": k in tail})
        seeds = [_accuracies(a, classes, tail, unseen) for a in acc_by_seed]
        summary_subsets[subset] = {"samples": results[(subset, config.seeds[0])]["samples"],
                                   "loglinear": _loglinear(subset, per_concept)}
        for part in ("overall", "head", "tail", "unseen"):
            values = [s[f"{part}_accuracy"] for s in seeds if s[f"{part}_accuracy"] is not None]
            summary_subsets[subset][f"{part}_accuracy"] = round(float(np.mean(values)), 4) if values else None
            summary_subsets[subset][f"{part}_accuracy_std"] = round(float(np.std(values)), 4) if values else None
    paths.write_parquet(pa.Table.from_pylist(per_concept), evaluation.file("per_concept.parquet"))
    paths.write_parquet(pa.Table.from_pylist(runs), evaluation.file("runs.parquet"))
    summary = {
        "run": run, "name": name, "out": evaluation.folder, "eval_set": eval_set, "eval_images": len(eval_images),
        "eval_classes": len(classes), "concepts": concepts, "tail_concepts_in_eval": len(set(classes) & tail),
        "unseen_concepts_in_eval": len(set(classes) & unseen),
        "proxy": config.model_dump(), "subsets": summary_subsets,
        "samples_per_s": round(float(np.mean([r["samples_per_s"] for r in runs if r["samples_per_s"]])), 1),
        "wall_time_s": round(this.seconds(), 2),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }

    summary["plots"] = write_plots(evaluation, summary, per_concept)
    return this.write_summary(summary, evaluation.summary)


def _accuracies(acc: np.ndarray, classes: list[int], tail: set[int], unseen: set[int]) -> dict:
    """Mean accuracy over all classes, the head, the tail, and the classes the pool never mentions (unseen)."""
    is_tail = np.array([k in tail for k in classes])
    is_unseen = np.array([k in unseen for k in classes])
    is_head = ~is_tail & ~is_unseen
    return {"overall_accuracy": float(acc.mean()),
            "head_accuracy": float(acc[is_head].mean()) if is_head.any() else None,
            "tail_accuracy": float(acc[is_tail].mean()) if is_tail.any() else None,
            "unseen_accuracy": float(acc[is_unseen].mean()) if is_unseen.any() else None}


def _loglinear(subset: str, per_concept: list[dict]) -> dict:
    """The audit's log-linear analysis (pipelines/verbs/loglinear.py: the paper's 12 edges of ln(frequency),
    Pearson r of upper edges and bin means over bins 1..10); r None, with the reason, below 3 usable bins."""
    rows = [r for r in per_concept if r["subset"] == subset]
    counts = pa.table({"concept_id": [r["concept_id"] for r in rows], "concept": [r["concept"] for r in rows],
                       "frequency": [r["frequency"] for r in rows]})
    accuracy = pa.table({"concept": [r["concept"] for r in rows],
                         "accuracy": pa.array([r["accuracy"] for r in rows], pa.float64())})
    try:
        _, fit, _ = log_linear(counts, accuracy, source=f"subset {subset}")
    except ConfigError as err:
        return {"bins_used": None, "pearson_r": None, "slope": None, "intercept": None, "note": str(err)}
    return fit
