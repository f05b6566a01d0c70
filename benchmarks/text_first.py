"""Curate before download: the text pass's throughput, and text-first vs download-first on a demo web.

1. Text pass (`tailor annotate --text-only`) over the 10k real alt-texts of shared/data/alt-text repeated
   to --rows rows (1M by default), without and with MetaCLIP matching against the default metadata
   (~500k entries): whole-command wall, rows/s and rows/s per core. No network: the hosts are never asked.
2. A --n page demo web (256-1600 px photos, served on 127.0.0.1) and one recipe (basic text conditions +
   metaclip_balance with t chosen so that about a third of the rows is kept + exact_dedup), alternated
   --rounds times:
     download-first: annotate everything, select the recipe;
     text-first:     annotate --text-only, select --steps text, fetch the kept rows, select --steps image.
   Whole-command walls (sum of the commands), requests and bytes the server sent, ratios; the two final
   subsets are checked to hold the same keys. Download + decode only (embed off) on both sides.

    python benchmarks/text_first.py --rows 1000000 --n 5000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from network_guard import install_network_guard

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ALT_TEXT = ROOT.parent / "shared" / "data" / "alt-text" / "alt_text_10k.parquet"
DEMO = str(ROOT / "pipelines" / "configs" / "demo.yaml")
FETCH = ["--set", "embed=null", "--set", "download.timeout=10", "--set", "download.retries=0",
         "--set", "download.threads=32", "--set", "ray.batch_size=128"]


def tailor(*args: str) -> float:
    started = time.time()
    done = subprocess.run([str(BIN / "tailor"), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise RuntimeError(f"tailor {args[0]} failed: {done.stderr[-2000:]}")
    return time.time() - started


def text_pass_throughput(work: Path, rows: int) -> dict:
    source = pq.read_table(ALT_TEXT, columns=["URL", "TEXT"])
    table = pa.concat_tables([source] * math.ceil(rows / source.num_rows)).slice(0, rows)
    urls = work / f"alt-text-{rows}.parquet"
    pq.write_table(table.rename_columns(["url", "caption"]), urls)
    cores = os.cpu_count()
    results = {}
    for label, extra in (("text", []), ("text+metaclip", ["--set", "match.metadata=default"])):
        out = work / f"text-pass-{label}"
        shutil.rmtree(out, ignore_errors=True)
        wall = tailor("annotate", "--config", DEMO, "--input", str(urls), "--output", str(out), "--text-only",
                      "--no-progress", "--set", "input.rows_per_shard=100000", "--set", "ray.batch_size=4096",
                      *extra)
        summary = json.loads((out / "run.json").read_text())
        assert summary["status_counts"] == {"not_fetched": rows}, summary["status_counts"]
        pipeline = summary["seconds"]["pipeline"]
        results[label] = {"rows": rows, "wall_s": round(wall, 1), "pipeline_s": pipeline,
                          "rows_per_s": round(rows / wall), "rows_per_s_per_core": round(rows / wall / cores),
                          "pipeline_rows_per_s_per_core": round(rows / pipeline / cores)}
        print(label, results[label], flush=True)
        shutil.rmtree(out, ignore_errors=True)
    return results


def choose_t(text_run: Path, share: float) -> float:
    """The t at which MetaCLIP balancing keeps about `share` of the rows (expected value, from the counts)."""
    lists = pq.read_table(text_run / "annotations", columns=["metaclip_entries"]).column(0).to_pylist()
    counts = Counter(e for ids in lists for e in ids)
    target = share * len(lists)

    def kept(t: float) -> float:
        return sum(1 - math.prod(1 - min(1.0, t / counts[e]) for e in ids) for ids in lists if ids)

    low, high = 0.01, float(max(counts.values()))
    if kept(high) < target:
        return high
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if kept(middle) < target else (low, middle)
    return round(high, 2)


def served_bytes(run: Path) -> int:
    return sum(v or 0 for v in pq.read_table(run / "annotations", columns=["n_bytes"]).column(0).to_pylist())


def web_comparison(work: Path, n: int, rounds: int) -> dict:
    from download_decode import build_web

    from pipelines.demo.web.serve import DemoWebServer
    from pipelines.demo.web.world import CONCEPTS

    web = build_web(work, n, 11)
    concepts = work / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    match = ["--set", f"match.metadata={concepts}", "--set", "input.rows_per_shard=1000"]
    result: dict = {"pages": n, "download_first": [], "text_first": []}
    finals: list[tuple[str, set[str], dict[str, str]]] = []
    urls = web / "urls.parquet"  # every page, dead links and hostile servers included; written at each start
    with DemoWebServer(web):
        # the recipe's t: a third of the rows kept, from a first text pass's counts
        probe = work / "t-probe"
        shutil.rmtree(probe, ignore_errors=True)
        tailor("annotate", "--config", DEMO, "--input", str(urls), "--output", str(probe), "--text-only",
               "--no-progress", *match)
    t = choose_t(probe, 1 / 3)
    recipe = work / "text-first-recipe.yaml"
    recipe.write_text(yaml.safe_dump({"description": "text-first benchmark", "steps": [
        {"step": "basic", "language": None, "min_words": 2, "min_chars": 5, "min_side": None, "max_aspect": None},
        {"step": "metaclip_balance", "t": t, "seed": 0},
        {"step": "exact_dedup"}]}, sort_keys=False))
    result["t"] = t
    print(f"t = {t}", flush=True)
    for r in range(rounds):
        for way in ("download_first", "text_first") if r % 2 == 0 else ("text_first", "download_first"):
            full, text, fetched = work / "df-run", work / "tf-text", work / "tf-fetched"
            for folder in (full, text, fetched):
                shutil.rmtree(folder, ignore_errors=True)
            # a fresh server for every run: its error_then_ok pages fail only a path's first request
            with DemoWebServer(web) as server:
                if way == "download_first":
                    walls = [tailor("annotate", "--config", DEMO, "--input", str(urls), "--output", str(full),
                                    "--no-progress", *match, *FETCH),
                             tailor("select", str(full), "--recipe", str(recipe), "--name", "final")]
                    final, sent = full / "subsets" / "final", served_bytes(full)
                else:
                    walls = [tailor("annotate", "--config", DEMO, "--input", str(urls), "--output", str(text),
                                    "--text-only", "--no-progress", *match, *FETCH),
                             tailor("select", str(text), "--recipe", str(recipe), "--name", "kept", "--steps", "text"),
                             tailor("fetch", str(text), "--subset", "kept", "--out", str(fetched), "--no-progress"),
                             tailor("select", str(fetched), "--recipe", str(recipe), "--name", "final",
                                    "--steps", "image")]
                    final, sent = fetched / "subsets" / "final", served_bytes(fetched)
                requests = sum(server.request_counts().values())
            keys = pq.read_table(final / "manifest.parquet").column("key").to_pylist()
            run = full if way == "download_first" else fetched
            table = pq.read_table(run / "annotations", columns=["key", "status"])
            statuses = dict(zip(table.column("key").to_pylist(), table.column("status").to_pylist(), strict=True))
            entry = {"wall_s": round(sum(walls), 1), "steps_s": [round(w, 1) for w in walls],
                     "requests": requests, "bytes": sent, "kept": len(keys)}
            result[way].append(entry)
            finals.append((way, set(keys), statuses))
            print(way, entry, flush=True)
    # the same keys, unless a fetch came out differently (a timeout under load): then name those rows
    reference = finals[0][1]
    result["differences"] = []
    for way, keys, statuses in finals[1:]:
        for key in sorted(keys ^ reference):
            result["differences"].append({"way": way, "key": key, "status": statuses.get(key),
                                          "reference_status": finals[0][2].get(key)})
    print("differences:", result["differences"], flush=True)
    df = statistics.median(e["wall_s"] for e in result["download_first"])
    tf = statistics.median(e["wall_s"] for e in result["text_first"])
    result["summary"] = {
        "download_first_wall_s": df, "text_first_wall_s": tf, "speedup": round(df / tf, 2),
        "bytes_ratio": round(result["text_first"][0]["bytes"] / result["download_first"][0]["bytes"], 3),
        "requests_ratio": round(result["text_first"][0]["requests"] / result["download_first"][0]["requests"], 3),
        "kept": result["text_first"][0]["kept"], "same_keys": not result["differences"]}
    print(result["summary"], flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="text pass rows (0: skip)")
    parser.add_argument("--n", type=int, default=5000, help="demo web pages (0: skip)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work")
    args = parser.parse_args()
    refusals = install_network_guard(args.work)
    report = {}
    if args.rows:
        report["text_pass"] = text_pass_throughput(args.work, args.rows)
    if args.n:
        report["web"] = web_comparison(args.work, args.n, args.rounds)
    if refusals.read_text().strip():
        raise SystemExit(f"a connection off the machine was refused: {refusals.read_text()[:2000]}")
    (args.work / "text_first.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v.get("summary", v) for k, v in report.items()}, indent=2))


if __name__ == "__main__":
    main()
