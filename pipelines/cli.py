"""The `tailor` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).parent / "configs"
SEMDEDUP_FLAGS = {"n_clusters": "clusters"}  # flags named as before the options models
DECONTAM_FLAGS = {"eval_path": "eval"}
MATERIALIZE_NOT_ON_CLI = ("caption_source", "window")  # Python-only hooks, as before the options model
EVALUATE_FLAGS = {"eval_path": "eval"}
AUDIT_FLAGS = {"templates": "template", "nested": "--bag"}  # --bag turns the nested-phrase rule off


def _print_summary(summary: dict) -> None:
    rows = summary["rows_in"]
    if summary.get("nothing_to_do"):
        total = summary["shards"]["total"]
        print(f"\nnothing left to do: {total} of {total} shards done already; the figures below and in run.json "
              f"are those of the run that did the work (finished {summary['finished_at']}, wall "
              f"{summary['wall_time_s']} s)\nrows in {rows}, rows out {summary['rows_out']}")
    else:
        print(f"\nrows in {rows}, rows out {summary['rows_out']}, shards {summary['shards']['done']}/"
              f"{summary['shards']['total']} ({summary['shards']['skipped_already_done']} were already done), "
              f"wall {summary['wall_time_s']} s, {summary['rows_per_s_this_run']} rows/s this run")
    print(f"{'status':<20}{'rows':>8}{'share':>9}")
    for status, n in sorted(summary["status_counts"].items(), key=lambda kv: -kv[1]):
        print(f"{status:<20}{n:>8}{n / max(rows, 1):>9.1%}")
    # in pipeline order (a kept run.json, read back, has its keys sorted)
    for stage, counts in sorted(summary["stages"].items(), key=lambda kv: ("download", "decode").index(kv[0])):
        failed = ", ".join(f"{k} {v}" for k, v in counts["failed"].items()) or "none"
        print(f"stage {stage:<9} in {counts['rows_in']:>7}  ok {counts['rows_ok']:>7}  failed: {failed}")
    retried = summary.get("retried")
    if retried:
        resolved = ", ".join(f"{k} {v}" for k, v in retried["resolved"].items()) or "none"
        print(f"rerun: {retried['rows']} rows of {retried['shards']} finished shards had failed for a moment and "
              f"were fetched again: {retried['now_ok']} ok now (statuses gone: {resolved}); --no-retry keeps them")
    elif summary["shards"]["skipped_already_done"] and summary.get("retry_transient"):
        print("rerun: no row of the finished shards had failed for a moment (nothing to fetch again)")
    hosts = summary.get("hosts") if summary.get("rows_processed_this_run") else None  # (a kept run's figures)
    if hosts:
        opted = ", ".join(f"{k} {v}" for k, v in sorted(hosts["opted_out"].items())) or "none"
        print(f"hosts {hosts['hosts']}, requests {hosts['requests']} ({hosts['requests_per_connection']} per "
              f"connection), throttled answers (429/503) {hosts['throttled']}, rate_limited rows "
              f"{hosts['rate_limited']}, opt-outs by signal: {opted}")
        for host in hosts["most_throttled"][:5]:
            print(f"  throttled: {host['host']} {host['throttled']}x, rows {host['rows']} (ok {host['ok']}), "
                  f"waited {host['waited_s']} s, now {host['concurrency']:g} at a time"
                  + (f", {host['rate']:g}/s" if host["rate"] else ""))
    if summary.get("hint"):
        print(f"no row came through: {summary['hint']}")
    if summary.get("text_only"):
        print("a text pass: no image was fetched. Select with text steps (tailor select RUN --recipe R --steps text "
              "--name NAME), then download that subset: tailor fetch RUN --subset NAME --out FETCHED")


NOTHING_CAME_THROUGH = 3  # exit status of annotate and fetch when rows were fetched and not one image came through


def _exit_status(summary: dict) -> int:
    """0, or NOTHING_CAME_THROUGH when the run has rows and none is ok (a text pass fetches nothing: 0), so a
    scheduler can tell a run where every row failed from a good one."""
    failed = summary["rows_out"] and not summary.get("text_only") and not summary["status_counts"].get("ok")
    return NOTHING_CAME_THROUGH if failed else 0


def _annotate(args: argparse.Namespace) -> int:
    from pipelines.core.config import load_config, shipped_or_path
    from pipelines.core.engine import storage_errors
    from pipelines.core.sources import check_input
    from pipelines.core.storage import OUTPUT_KINDS, RunPaths

    overrides = list(args.set or [])
    if args.text_only:
        overrides.append("text_only=true")
    if args.input:
        overrides.append(f"input.path={args.input}")
    if args.output:
        overrides.append(f"output={args.output}")
    config = load_config(shipped_or_path(args.config, CONFIGS, "config"), overrides)
    paths = RunPaths(config.output)
    with storage_errors(config.output):  # no credentials for an s3:// output: one line, before Ray starts
        fresh = args.overwrite or not paths.exists(paths.plan)
    if fresh:
        check_input(config.input)  # a mistake in the input is told in a second, before Ray is even imported
    from pipelines.verbs.annotate import annotate

    summary = annotate(config, overwrite=args.overwrite, progress=not args.no_progress,
                       ray_progress=args.verbose and not args.no_progress, retry_transient=not args.no_retry)
    _print_summary(summary)
    kinds = OUTPUT_KINDS[:1] if config.text_only else OUTPUT_KINDS[:3 if config.embed is not None else 2]
    print(f"outputs in {config.output}: {', '.join(f'{kind}/' for kind in kinds)}, run.json (the summary)")
    return _exit_status(summary)


def _fetch(args: argparse.Namespace) -> int:
    from pipelines.verbs.fetch_subset import fetch_subset

    summary = fetch_subset(args.run, args.subset, args.out, overrides=args.set, overwrite=args.overwrite,
                           progress=not args.no_progress, ray_progress=args.verbose and not args.no_progress,
                           retry_transient=not args.no_retry)
    _print_summary(summary)
    print(f"fetched run: {args.out} (annotations/, images/, run.json; fetched_from.json names {args.run} "
          f"subset {args.subset})")
    return _exit_status(summary)


def _demo_web_build(args: argparse.Namespace) -> int:
    from pipelines.demo.web.build import build_demo_web

    started = time.time()
    info = build_demo_web(Path(args.out), n=args.n, seed=args.seed, min_size=args.min_size, max_size=args.max_size)
    print(f"built a demo web of {args.n} pages in {args.out} ({time.time() - started:.1f} s): {info}")
    return 0


def _wait_for_interrupt() -> None:
    """Block while a server serves in its own thread, until Ctrl-C."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _demo_web_serve(args: argparse.Namespace) -> int:
    from pipelines.demo.web.serve import DemoWebServer

    with DemoWebServer(Path(args.out), host=args.host, port=args.port) as server:
        print(f"serving {args.out} at {server.base_url}; URL table: {args.out}/urls.parquet (Ctrl-C stops)",
              flush=True)
        _wait_for_interrupt()
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Build the demo web (once), serve it on 127.0.0.1, annotate it, check against ground truth."""
    import pyarrow.parquet as pq

    from pipelines.core.config import load_config
    from pipelines.demo.score import check_run, starts_over
    from pipelines.demo.web.build import build_demo_web
    from pipelines.demo.web.serve import DemoWebServer
    from pipelines.verbs.annotate import annotate

    out = Path(args.out)
    web = out / "web"
    if not (web / "truth.parquet").exists():
        print(f"building a demo web of {args.n} pages (seed {args.seed}) in {web} ...", flush=True)
        build_demo_web(web, n=args.n, seed=args.seed)
    with DemoWebServer(web) as server:
        print(f"serving the demo web at {server.base_url}", flush=True)
        config = load_config(CONFIGS / "demo.yaml",
                             [f"input.path={web / 'urls.parquet'}", f"output={out / 'run'}", *(args.set or [])])
        pages = pq.read_metadata(web / "truth.parquet").num_rows
        restart = starts_over(out / "run", config, args.overwrite, pages)
        if restart.why:
            print(f"annotating {out / 'run'} anew ({restart.why})" + (
                f"; removing what was made from it: {', '.join(restart.removed)}" if restart.removed else ""),
                flush=True)
        # a kept run is not retried: its URLs name an earlier server's port, and the demo web fails by design
        summary = annotate(config, overwrite=restart.anew, progress=not args.no_progress,
                           ray_progress=args.verbose and not args.no_progress, retry_transient=False)
    _print_summary(summary)
    check = check_run(out / "run", web)
    print(f"ground truth: status as expected for {check['as_expected']}/{check['rows']} rows")
    if config.embed is not None and check["clip"]:
        clip = check["clip"]
        print(f"CLIP score ({config.embed.model}): matched captions {clip['matched_mean']:.3f}, "
              f"mismatched {clip['mismatched_mean']:.3f}, ROC-AUC {clip['roc_auc']:.3f}")
    print(f"outputs in {out / 'run'}: annotations/, images/, embeddings/, run.json")
    return 0 if check["as_expected"] == check["rows"] else 1


def _status(args: argparse.Namespace) -> int:
    from pipelines.core.storage import RunPaths
    from pipelines.verbs.annotate import run_status

    s = run_status(RunPaths(args.run))
    if s is None:
        print(f"{args.run}: no run here yet (no input plan)")
        return 1
    state = "finished" if s["finished"] else "running or interrupted"
    print(f"{args.run}: {state}; rows done {s['rows_committed'] + s['rows_written']}/{s['rows']} "
          f"({s['rows_committed']} in {s['shards']['committed']}/{s['shards']['total']} committed shards, "
          f"{s['rows_written']} written in unfinished shards: a killed run redoes those)")
    for status, n in s["status_counts"].items():
        print(f"  {status:<20}{n:>8}")
    if s["hosts"]:
        hosts = s["hosts"]
        waiting = ", ".join(f"{host} {n}" for host, n in hosts["waiting"].items()) or "none"
        print(f"hosts (as of {hosts.get('written_at', '?')}): {hosts['waiting_rows']} rows waiting on hosts "
              f"({waiting}); throttled answers {hosts['throttled']}, rate_limited rows {hosts['rate_limited']}")
    return 0


def _match(args: argparse.Namespace) -> int:
    from operators.match import MatchOptions
    from pipelines.core.cli_options import options_from
    from pipelines.core.storage import RunPaths
    from pipelines.verbs.match import match_run

    options = options_from(args, MatchOptions)
    summary = match_run(args.run, options, actors=args.actors, overwrite=args.overwrite,
                        progress=not args.no_progress)
    print(f"matched {summary['rows']} captions ({summary['rows_matched']} with at least one entry, "
          f"{summary['entries_matched']}/{summary['entries']} entries used) in {summary['wall_time_s']} s; "
          f"outputs in {RunPaths(args.run).match}")
    return 0


def _metaclip_balance(args: argparse.Namespace) -> int:
    from pipelines.core.cli_options import options_from
    from pipelines.core.storage import RunPaths
    from pipelines.verbs.metaclip import MetaclipBalanceOptions, balance_subset

    stats = balance_subset(args.run, args.name, options_from(args, MetaclipBalanceOptions), overwrite=args.overwrite)
    captions, before, after = stats["captions"], stats["before"], stats["after"]
    print(f"balanced {stats['recipe']['rows']}: kept {captions['kept']}/{captions['total']} captions "
          f"{captions['by_reason']}; "
          f"head entries (count > t) {stats['entries']['head']}; tail share of matches "
          f"{before['tail_share_of_matches']} -> {after['tail_share_of_matches']}")
    worldwide = stats.get("worldwide")
    if worldwide:  # MetaCLIP 2: English's t fixes the tail proportion p, each language's t follows from it
        print(f"worldwide: t_en {worldwide['t_en']:g} gives English's tail proportion p {worldwide['p']:.4f}; "
              f"images by {worldwide['image']}; per language (t, images kept / picked):")
        for lang, w in sorted(worldwide["languages"].items(), key=lambda kv: -kv[1]["captions"]):
            t = "-" if w["t"] is None else f"{w['t']:g}"
            print(f"  {lang:<8} t {t:>8}  kept {w['kept']:>8} / {w['picked']:<8} ({w['captions']} captions, "
                  f"{w['entries_matched']} of {w['entries']} entries matched)")
    print(f"subset: {RunPaths(args.run).subset(args.name).url} (manifest.parquet, decisions.parquet, stats.json, "
          "entry_counts.png)")
    return 0


def _materialize(args: argparse.Namespace) -> int:
    from pipelines.core.cli_options import options_from
    from pipelines.verbs.materialize import MaterializeOptions, materialize

    options = options_from(args, MaterializeOptions)
    s = materialize(args.run, args.name, args.out, options, overwrite=args.overwrite, progress=not args.no_progress)
    skipped = f", skipped {s['skipped']['keys']} keys without an image" if s["skipped"]["keys"] else ""
    shards = f"{s['shards']} shard{'s' * (s['shards'] != 1)}"
    print(f"wrote {s['samples']} samples in {shards} ({s['bytes'] / 1e6:.1f} MB) to {s['out']} "
          f"in {s['wall_time_s']} s ({s['samples_per_s']} samples/s){skipped}")
    if s["captions"]:
        print(f"captions: {s['recaptioned_samples']} of {s['samples']} samples carry the new caption from set "
              f"{s['captions']['captions']} (p {s['captions']['p']}, seed {s['captions']['seed']})")
    print(f"OpenCLIP: --train-data '{s['train_data']}' --train-num-samples {s['train_num_samples']}")
    return 0


def _select(args: argparse.Namespace) -> int:
    from pipelines.core.cli_options import options_from
    from pipelines.core.storage import RunPaths
    from pipelines.verbs.select import DuckOptions, load_recipe, select

    recipe = load_recipe(args.recipe)
    stats = select(args.run, recipe, args.name, duck=options_from(args, DuckOptions), overwrite=args.overwrite,
                   phase=args.steps)
    if stats["steps"]:
        print(f"{'step':<20}{'in':>10}{'dropped':>10}{'out':>10}  reasons")
    else:
        print("no step ran: every row is kept")
    for step in stats["steps"]:
        ranked = sorted(step["by_reason"].items(), key=lambda kv: (-kv[1], kv[0]))
        reasons = ", ".join(f"{r} {n}" for r, n in ranked[:4])
        if len(ranked) > 4:
            reasons += f", … {len(ranked) - 4} more reasons ({sum(n for _, n in ranked[4:])} rows)"
        print(f"{step['name']:<20}{step['rows_in']:>10}{step['dropped']:>10}{step['rows_out']:>10}  {reasons}")
    print(f"kept {stats['kept']}/{stats['rows']} rows in {stats['seconds']} s; subset: "
          f"{RunPaths(args.run).subset(args.name).url} (manifest.parquet, decisions.parquet, recipe.yaml, stats.json)")
    if stats["deferred"]:
        print("not run here, left to the fetched run (--steps image): "
              + "; ".join(f"{d['step']} ({d['why']})" for d in stats["deferred"]))
        print(f"next: tailor fetch {args.run} --subset {args.name} --out FETCHED, then tailor select FETCHED "
              f"--recipe {args.recipe} --steps image --name NAME")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from pipelines.core.cli_options import options_from
    from pipelines.verbs.audit import AuditOptions, audit_run

    options = options_from(args, AuditOptions, AUDIT_FLAGS)
    s = audit_run(args.run, options, subset=args.subset, accuracy=args.accuracy, progress=not args.no_progress)
    if s["shards"]["total"] and s["shards"]["committed"] < s["shards"]["total"]:
        print(f"note: {args.run} is not finished ({s['shards']['committed']}/{s['shards']['total']} shards "
              "committed): these counts cover the committed shards only; audit again when it finishes")
    tail = s["tail"]
    print(f"{s['concepts']} concepts ({s['settings']['concepts']}), ranked by {s['frequency']} frequency; "
          f"tail {tail['concepts']} of the {tail['mentioned']} mentioned concepts "
          + (f"holding {tail['share_of_mentions']:.1%} of mentions; " if tail["share_of_mentions"] is not None
             else f"(no concept has a {s['frequency']} mention); ")
          + f"never mentioned: {tail['never_mentioned']}; never in captions: {s['concepts_never_in_text']}")
    untagged = not s.get("text_pass") and s["settings"].get("model") is None
    if s.get("text_pass"):  # no image: the image and matched columns would only be zeros
        print(f"{'head concept':<24}{'caption rows':>13}   (text pass: {s['ok_rows']} caption rows, no image "
              "fetched yet)")
        for row in s["head"]:
            print(f"{row['concept']:<24}{row['text_count']:>13}")
    else:
        scope = (f"ok: {s['ok_rows']} caption rows, {s['ok_images']} distinct images by sha256; " +
                 ("no image tagged: the run has no embeddings (annotate with an embed model)" if untagged
                  else "image and matched count images"))
        print(f"{'head concept':<24}{'text rows':>10}{'images':>8}{'matched':>9}   ({scope})")
        for row in s["head"]:
            print(f"{row['concept']:<24}{row['text_count']:>10}{row['image_count']:>8}{row['matched_count']:>9}")
    if s["misalignment"]:
        m = s["misalignment"]
        print(f"misalignment: {m['misaligned']}/{m['images_tagged']} tagged images ({m['misalignment_rate']:.1%}) "
              "have no caption row naming any of their concepts"
              + (" (see the warning: the model's tags mean nothing on these images)" if s.get("warnings") else ""))
    if "subset" in s:
        sub = s["subset"]
        print(f"subset {sub['name']}: tail mentions retained {sub['tail_retained']}, head {sub['head_retained']}; "
              f"tail concepts lost: {', '.join(sub['tail_concepts_lost']) or 'none'}")
    if "loglinear" in s:
        fit = s["loglinear"]
        print(f"log-linear: Pearson r {_number(fit['pearson_r'])} over {fit['bins_used']} bins, "
              f"slope {_number(fit['slope'])} "
              f"(counts: {fit['counts']})")
    print(f"tables in {s['out']}/ (counts.parquet, tags/); report: {s.get('report')}")
    return 0


def _number(value: float | None, spec: str = ".4f") -> str:
    """A fit's number as printed ("-" where there is none)."""
    return "-" if value is None else format(value, spec)


def _loglinear(args: argparse.Namespace) -> int:
    from pipelines.verbs.loglinear import analyse, read_points, write

    result = analyse(read_points(args.file, args.file), source=args.file)
    files = write(result, args.out)
    s = result.summary()
    datasets = f" in {s['datasets']} dataset{'s' if s['datasets'] > 1 else ''}" if s["datasets"] else ""
    print(f"log-linear over {s['points']} rows{datasets}: Pearson r {_number(s['pearson_r'])} over bins "
          f"{s['fit_bins'][0]}..{s['fit_bins'][1]} ({s['bins_used']} non-empty), slope {_number(s['slope'])} per unit "
          f"ln(count), intercept {_number(s['intercept'])}")
    print(f"{'bin':>4}{'upper edge (count)':>20}{'rows':>8}{'mean':>9}{'std':>9}")
    for i, (edge, rows, mean, std) in enumerate(zip(s["edges"], s["rows"], s["means"], s["stds"], strict=True)):
        print(f"{i:>4}{edge:>20.4g}{rows:>8}{_number(mean):>9}{_number(std):>9}")
    print(f"wrote {', '.join(files)}")
    return 0


def _recaption(args: argparse.Namespace) -> int:
    from pipelines.core.config import load_config
    from pipelines.verbs.recaption import RecaptionConfig, recaption

    overrides = list(args.set or [])
    if args.concepts:
        overrides.append(f"concepts={args.concepts}")
    config = load_config(args.config, overrides, model=RecaptionConfig)
    s = recaption(args.run, args.subset, config, name=args.name, progress=not args.no_progress)
    statuses = ", ".join(f"{k} {v}" for k, v in s["statuses"].items())
    print(f"captions set {s['name']} ({s['model']}, prompt {s['prompt_id']}): {s['captioned_now']} captioned now, "
          f"{s['already_captioned']} before; statuses: {statuses}; {s['captions_per_s']} captions/s")
    sc = s["scores"]
    if sc["rows_scored"]:
        print(f"CLIP score over {sc['rows_scored']} rows: mean {sc['original_mean']:.3f} -> {sc['new_mean']:.3f}, "
              f"median {sc['original_median']:.3f} -> {sc['new_median']:.3f}; "
              f"{sc['share_improved']:.1%} of rows improved")
    if "concepts" in s:
        c = s["concepts"]
        print(f"concepts ({c['list']}): named {c['concepts_named_before']} -> {c['concepts_named_after']}; "
              f"mentions the image confirms {c['matched_before']} -> {c['matched_after']}; "
              f"L1 distance of caption counts to image tags {c['l1_to_image_before']} -> {c['l1_to_image_after']}; "
              f"tail concepts named {c['tail_concepts_named_before']} -> {c['tail_concepts_named_after']}")
    if s["not_in_run"]:
        print(f"warning: {s['not_in_run']} keys of the subset are not in the run and were not captioned")
    print(f"captions: {s['out']} (parts/, and the summary _summary.json)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pipelines.core.cli_options import options_from
    from pipelines.core.config import load_config
    from pipelines.verbs.evaluate import EvaluateOptions, evaluate
    from pipelines.verbs.proxy import ProxyConfig

    options = options_from(args, EvaluateOptions, EVALUATE_FLAGS)
    config = load_config(args.config, list(args.set or []), model=ProxyConfig)
    subsets = [s.strip() for s in args.subsets.split(",") if s.strip()]
    s = evaluate(args.run, subsets, options, config, progress=not args.no_progress)
    print(f"proxy CLIP, {config.samples_seen} samples seen per run, seeds {config.seeds}; "
          f"{s['eval_images']} evaluation images, {s['eval_classes']} classes ({s['tail_concepts_in_eval']} tail, "
          f"{s['unseen_concepts_in_eval']} never mentioned in the pool: not in head or tail)")
    print(f"{'subset':<20}{'samples':>9}{'overall':>10}{'head':>8}{'tail':>8}{'log-linear r':>14}")
    for name, r in s["subsets"].items():
        acc = [_number(v, ".3f") for v in (r["overall_accuracy"], r["head_accuracy"], r["tail_accuracy"],
                                           r["loglinear"].get("pearson_r"))]
        print(f"{name:<20}{r['samples']:>9}{acc[0]:>10}{acc[1]:>8}{acc[2]:>8}{acc[3]:>14}")
    print(f"training {s['samples_per_s']} samples/s; tables and plots: {s['out']}/")
    return 0


def _demo_web_eval_set(args: argparse.Namespace) -> int:
    from pipelines.demo.web.evalset import build_eval_set

    s = build_eval_set(args.out, per_concept=args.per_concept, seed=args.seed)
    print(f"wrote {s['images']} images of {s['concepts']} concepts to {s['out']}/CONCEPT/ (seed {s['seed']})")
    return 0


def _semdedup(args: argparse.Namespace) -> int:
    import json

    import fsspec

    from pipelines.core.cli_options import options_from
    from pipelines.verbs.semdedup import SemdedupOptions, semdedup

    options = options_from(args, SemdedupOptions, SEMDEDUP_FLAGS)
    path = semdedup(args.run, options, overwrite=args.overwrite)
    with fsspec.open(path.removesuffix(".parquet") + ".json", "r") as f:
        c = json.load(f)["counts"]
    print(f"semdedup (eps {options.eps}): {c['duplicates']} duplicates of {c['points']} points in {c['clusters']} "
          f"clusters (largest {c['largest_cluster']}, split {c['split_clusters']}); table: {path}")
    return 0


def _decontaminate(args: argparse.Namespace) -> int:
    import fsspec
    import pyarrow.parquet as pq

    from pipelines.core.cli_options import given, options_from
    from pipelines.verbs.decontam import DecontamOptions, decontaminate

    off = {name: None for name, value in given(args, DecontamOptions).items()  # negative on the command line: off
           if name in ("max_cosine", "max_hamming") and value < 0}
    options = options_from(args, DecontamOptions, DECONTAM_FLAGS, **off)
    path = decontaminate(args.run, options, overwrite=args.overwrite)
    with fsspec.open(path, "rb") as f:
        print(f"{pq.read_metadata(f).num_rows} contaminated pool rows; table: {path}")
    return 0


def _browse(args: argparse.Namespace) -> int:
    from pipelines.browse.views import BrowseError
    from pipelines.core.storage import RunPaths

    fragment = ""
    if args.subset:
        RunPaths(args.run).complete_subset(args.subset)  # a one-line error naming the subsets there are
        fragment = f"#grid?subset={args.subset}"
    try:
        if args.out:
            from pipelines.browse.export import export

            s = export(args.run, args.out, limit=args.limit)
            print(f"wrote a static copy of {s['samples']} samples ({s['details']} detail pages, {s['images']} images) "
                  f"to {s['out']}; open file://{Path(s['index']).resolve()}{fragment}")
            return 0
        from pipelines.browse.server import BrowseServer

        server = BrowseServer(args.run, host=args.host, port=args.port)
    except BrowseError as err:
        from pipelines.core.config import ConfigError

        raise ConfigError(str(err)) from None
    with server:
        print(f"browsing {server.browser.run} at {server.url}{fragment} (read-only; Ctrl-C stops)", flush=True)
        _wait_for_interrupt()
    return 0


def _shared(flag: str, help: str, **kwargs) -> argparse.ArgumentParser:
    """A parent parser (`add_parser(..., parents=[...])`) of one option that several verbs take, a switch unless
    `kwargs` say otherwise, shown under "common options" in each verb's --help. argparse shares a parent's
    option among the verbs made from it, help text included: a verb whose help says what the option does
    there has a parent of its own."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument_group("common options").add_argument(flag, help=help, **({"action": "store_true"} | kwargs))
    return parent


def _overwrite(help: str) -> argparse.ArgumentParser:
    return _shared("--overwrite", help)


def _settings(help: str) -> argparse.ArgumentParser:
    return _shared("--set", help, action="append", metavar="FIELD=VALUE")


def build_parser() -> argparse.ArgumentParser:
    from operators.defaults import MatchOptions
    from pipelines.core.cli_options import add_options
    from pipelines.core.verb_options import (
        AuditOptions,
        DecontamOptions,
        DuckOptions,
        EvaluateOptions,
        MaterializeOptions,
        MetaclipBalanceOptions,
        SemdedupOptions,
    )

    parser = argparse.ArgumentParser(prog="tailor", description="Curate web-scale image-text datasets.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    progress = _shared("--no-progress", "no progress bars")
    retry = _shared("--no-retry", "a rerun keeps the rows that failed for a moment (connection errors, timeouts, "
                                  "5xx, rate_limited) as they are; by default it fetches them again")

    p = sub.add_parser("annotate", help="download, decode and hash every input row (Ray Data)", parents=[
        _settings("override any config field, e.g. --set decode.image_size=128 (repeatable)"),
        _overwrite("delete the run folder first instead of resuming"), progress, retry])
    p.add_argument("--config", required=True, help="a shipped config by name (demo, laion-style) or a YAML path")
    p.add_argument("--input", help="override input.path")
    p.add_argument("--output", help="override output (the run folder)")
    p.add_argument("--text-only", action="store_true",
                   help="a text pass: text columns (and matches) of every row, no network; fetch a subset later")
    p.set_defaults(func=_annotate)

    p = sub.add_parser("fetch", help="download only a text pass's subset, same keys, into a run of its own", parents=[
        _settings("override a field of the text pass's config for the fetch, e.g. download.threads=64"),
        _overwrite("delete OUT first instead of resuming"), progress, retry])
    p.add_argument("run", help="a text pass (tailor annotate --text-only)")
    p.add_argument("--subset", required=True, help="the subset of RUN to fetch (RUN/subsets/NAME)")
    p.add_argument("--out", required=True, help="the fetched run's folder (local path or s3://...)")
    p.set_defaults(func=_fetch)

    p = sub.add_parser("demo", help="build + serve the demo web, annotate it, check against ground truth", parents=[
        _settings("override a field of the demo config (configs/demo.yaml), e.g. embed=null (repeatable)"),
        _overwrite("annotate anew even where OUT/run holds a finished demo run of the same settings (else kept)"),
        progress])
    p.add_argument("--out", default="demo", help="folder for the demo web and the run (default: demo)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)

    p = sub.add_parser("status", help="progress of a running or interrupted run")
    p.add_argument("run")
    p.set_defaults(func=_status)

    p = sub.add_parser("match", help="MetaCLIP metadata matching over a run's captions (Ray Data)",
                       parents=[_overwrite("redo all matches instead of resuming"), progress])
    p.add_argument("run")
    add_options(p, MatchOptions)
    p.add_argument("--actors", type=int, help="matcher actors (default: one per CPU)")
    p.set_defaults(func=_match)

    p = sub.add_parser("metaclip-balance", help="MetaCLIP balancing of a matched run into RUN/subsets/NAME",
                       parents=[_overwrite("replace an existing subset of that name")])
    p.add_argument("run")
    p.add_argument("--name", required=True, help="subset name (RUN/subsets/NAME)")
    add_options(p, MetaclipBalanceOptions)
    p.set_defaults(func=_metaclip_balance)

    p = sub.add_parser("materialize", help="write subset NAME of RUN as WebDataset tar shards (+ Parquet copy)",
                       parents=[_overwrite("replace a previous materialize output in OUT"), progress])
    p.add_argument("run")
    p.add_argument("name", help="subset name (RUN/subsets/NAME/manifest.parquet)")
    p.add_argument("--out", required=True, help="output folder, local or fsspec URL (s3://...)")
    add_options(p, MaterializeOptions, skip=MATERIALIZE_NOT_ON_CLI)
    p.set_defaults(func=_materialize)

    p = sub.add_parser("select", help="a curated subset of a run: a recipe of SQL steps (DuckDB)",
                       parents=[_overwrite("replace an existing subset of that name")])
    p.add_argument("run")
    p.add_argument("--recipe", required=True,
                   help="recipe YAML, or a shipped one: laion-style, datacomp-basic, datacomp-clip-top30, "
                        "metaclip-balanced, demo, raw")
    p.add_argument("--name", required=True, help="subset name (RUN/subsets/NAME)")
    add_options(p, DuckOptions)  # --threads, --memory-limit, --temp-directory
    p.add_argument("--steps", choices=["all", "text", "image"], default="all",
                   help="all (default); text: the steps before the first image step (on a text pass, before "
                        "tailor fetch); image: the implicit status step and the image steps (on a fetched run)")
    p.set_defaults(func=_select)

    p = sub.add_parser("audit", help="concept frequencies in captions, images and both; the long tail",
                       parents=[progress])
    p.add_argument("run")
    p.add_argument("--subset", help="also count RUN/subsets/NAME and report what it removed from the tail")
    p.add_argument("--accuracy", help="CSV/TSV/Parquet/JSONL with columns concept, accuracy: log-linear analysis")
    add_options(p, AuditOptions, AUDIT_FLAGS, required=("concepts",))
    p.set_defaults(func=_audit)

    p = sub.add_parser("loglinear", help="the paper's log-linear analysis of per-concept counts and accuracies")
    p.add_argument("file", help="CSV/TSV/Parquet/JSONL with columns concept, count, accuracy (and optionally "
                                "dataset; one row per dataset and concept)")
    p.add_argument("--out", required=True, help="folder for loglinear.json and loglinear.png")
    p.set_defaults(func=_loglinear)

    p = sub.add_parser("recaption", help="new captions for a subset from a vision-language model; rescored, audited",
                       parents=[_settings("override a config field, e.g. captions.prompt=altogether (repeatable)"),
                                progress])
    p.add_argument("run")
    p.add_argument("--subset", required=True, help="subset name (RUN/subsets/NAME/manifest.parquet)")
    p.add_argument("--config", help="recaption YAML (captions: model, prompt, prompts, generation, batch_size, ...)")
    p.add_argument("--name", help="caption set name (RUN/captions/NAME; default SUBSET.PROMPT)")
    p.add_argument("--concepts", help="concept list to audit original vs new captions (demo, coco80, ...)")
    p.set_defaults(func=_recaption)

    p = sub.add_parser("evaluate", help="train the same proxy CLIP on each subset; zero-shot accuracy per concept",
                       parents=[_settings("override a proxy field (repeatable)"), progress])
    p.add_argument("run")
    p.add_argument("--subsets", required=True, help="comma-separated subset names (RUN/subsets/NAME)")
    add_options(p, EvaluateOptions, EVALUATE_FLAGS)
    p.add_argument("--config", help="proxy YAML (image_size, width, samples_seen, batch_size, seeds, ...)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("semdedup", help="SemDeDup over the image embeddings: RUN/dedup/semdedup.parquet",
                       parents=[_overwrite("recompute even when the settings are unchanged")])
    p.add_argument("run")
    add_options(p, SemdedupOptions, SEMDEDUP_FLAGS)
    p.set_defaults(func=_semdedup)

    p = sub.add_parser("decontaminate", help="pool rows near an evaluation image set: RUN/dedup/decontam-*.parquet",
                       parents=[_overwrite("recompute even when the table exists")])
    p.add_argument("run")
    add_options(p, DecontamOptions, DECONTAM_FLAGS)
    p.set_defaults(func=_decontaminate)

    p = sub.add_parser("browse", help="browse a run in a web page on 127.0.0.1 (read-only), or write a static copy")
    p.add_argument("run")
    p.add_argument("--subset", help="open the grid on this subset's decisions (RUN/subsets/NAME)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--out", help="write a static copy of the views to this folder instead of serving")
    p.add_argument("--limit", type=int, default=1000, help="samples in a static copy (the first by key)")
    p.set_defaults(func=_browse)

    web = sub.add_parser("demo-web", help="the generated demo web").add_subparsers(dest="action", required=True)
    p = web.add_parser("build", help="generate pages, images and ground truth")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-size", type=int, default=64)
    p.add_argument("--max-size", type=int, default=1600)
    p.set_defaults(func=_demo_web_build)
    p = web.add_parser("eval-set", help="a balanced, labelled evaluation set (ImageFolder) from a fresh seed")
    p.add_argument("out")
    p.add_argument("--per-concept", type=int, default=10)
    p.add_argument("--seed", type=int, default=100)
    p.set_defaults(func=_demo_web_eval_set)
    p = web.add_parser("serve", help="serve a built demo web on 127.0.0.1 and write OUT/urls.parquet")
    p.add_argument("out")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.set_defaults(func=_demo_web_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `tailor` command. Run as the command (no argv), Ray's native lines go to a log file unless -v;
    called with argv (tests, notebooks), the console is left as it is."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # Ray's and Ray Data's INFO lines (execution plans, auth notes) stay in Ray's logs
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(Path(__file__).parent / "ray_data_logging.yaml"))
        os.environ.setdefault("TAILOR_RAY_LOG_LEVEL", "ERROR")
        os.environ.setdefault("TAILOR_RAY_LOG_TO_DRIVER", "0")  # workers' and raylet's lines stay in Ray's logs
    try:
        if argv is None and not args.verbose:
            return _quiet(args)
        return _dispatch(args)
    except BrokenPipeError:  # `tailor audit RUN | head`: the reader left; not an error of the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush must not fail again
        return 0


_RESUME = "Shards already committed are kept: the same command resumes from them ({} shows progress)."
_STOPPED_HINT = {"annotate": _RESUME.format("`tailor status RUN`"), "fetch": _RESUME.format("`tailor status OUT`")}


def _quiet(args: argparse.Namespace) -> int:
    """Run the command with descriptor 2 in a log file (Ray's C++ lines); Ray is shut down inside, so
    its shutdown lines land there too. The log is deleted after a success; after a failure its tail is
    shown and the file kept."""
    from pipelines.core import engine
    from pipelines.core.console import native_stderr_to

    code = 1
    try:
        with native_stderr_to() as log_path:
            try:
                code = _dispatch(args)
            except KeyboardInterrupt:
                code = 130
            except SystemExit:
                if not engine.stopped_by:
                    raise
                code = 128 + engine.stopped_by
            finally:
                if "ray" in sys.modules and sys.modules["ray"].is_initialized():
                    sys.modules["ray"].shutdown()
    finally:
        if code in (130, 128 + signal.SIGTERM):
            why = "interrupted (Ctrl-C)" if code == 130 else "stopped by SIGTERM"
            print(f"\ntailor: {why}. {_STOPPED_HINT.get(args.command, '')}".rstrip(), file=sys.stderr)
            os.remove(log_path)
        elif code not in (0, NOTHING_CAME_THROUGH) and os.path.getsize(log_path):  # the command failed
            with open(log_path, errors="replace") as f:
                tail = f.readlines()[-20:]
            print(f"tailor: Ray's native log (last {len(tail)} lines, kept in {log_path}):", file=sys.stderr)
            sys.stderr.writelines(tail)
        else:
            os.remove(log_path)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    from pipelines.core.config import ConfigError
    from pipelines.core.sources import InputError
    from pipelines.metadata import MetadataError

    try:
        return args.func(args)
    except (ConfigError, InputError, MetadataError) as err:
        print(f"tailor: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
