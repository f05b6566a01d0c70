"""MetaCLIP metadata matching: the Aho–Corasick operator vs MetaCLIP's brute-force loop, and a 1M-caption
Ray Data pass.

Captions: the 10k real alt-texts of shared/data/alt-text. Metadata, as large as MetaCLIP's own list:
the shipped default plus n-grams of alt-texts up to 500k entries, either of the other half of the
alt-texts (held out: a realistic number of matches) or of the very captions matched (the worst case:
every caption holds all its own n-grams); and the default alone (222k).

1. build: automaton build time and the memory it adds to the process (RSS);
2. throughput on one core: captions/s of `MetaclipMatcher.match` (batches of 10k), and of MetaCLIP's
   `substr_matching` loop (every padded entry `in` the spaced caption) on a sample, and the ratio;
3. scale: `tailor match` (Ray Data, actor pool) over a run of 1M captions (the 10k alt-texts x 100,
   shards of 10k), sampling the memory of the machine and of each matcher actor every 0.5 s;
   then the entry counts and `metaclip-balance` SQL over the 1M match lists.

    python benchmarks/metaclip_match.py                 # all three
    python benchmarks/metaclip_match.py --rows 200000   # a smaller scale run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("TAILOR_SHARED_DATA") or ROOT.parent / "shared" / "data")
ALT_TEXT = SHARED / "alt-text" / "alt_text_10k.parquet"
N_ENTRIES = 500_000
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def used_mb() -> float:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, value = line.split(":", 1)
            info[name] = int(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def metadata_500k(source_captions: list[str]) -> list[str]:
    """The shipped default, then n-grams (1-6 words, and lower-cased) of `source_captions`, to 500k entries."""
    from pipelines.metadata import load_metadata

    entries = list(load_metadata().entries)
    seen = set(entries)
    grams = []
    for caption in source_captions:
        words = caption.split()
        for n in range(1, 7):
            for i in range(len(words) - n + 1):
                for gram in (" ".join(words[i:i + n]), " ".join(words[i:i + n]).lower()):
                    if gram not in seen:
                        seen.add(gram)
                        grams.append(gram)
    random.Random(0).shuffle(grams)
    return entries + grams[:N_ENTRIES - len(entries)]


def spacing(text: str) -> str:
    """MetaCLIP's reference: pad, space punctuation, tabs/newlines as spaces."""
    text = f" {text} "
    for punct in [",", ".", ";", ":", "?", "!", "`"]:
        text = text.replace(punct, f" {punct} ")
    for char in ["\t", "\n", "\r"]:
        text = text.replace(char, " ")
    return text


def brute_force(captions: list[str], entries: list[str]) -> list[list[int]]:
    spaced_entries = [f" {e} " for e in entries]
    found = []
    for caption in captions:
        text = spacing(caption)
        found.append([i for i, e in enumerate(spaced_entries) if e in text])
    return found


def throughput(matcher, captions: list[str], seconds: float = 4.0) -> float:
    """Captions per second of `matcher.match` on one core, in batches of 10k."""
    column = pa.array(captions, pa.string())
    matcher.match(column.slice(0, 1000))  # warm
    rounds, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for start in range(0, len(column), 10_000):
            matcher.match(column.slice(start, 10_000))
        rounds += 1
    return rounds * len(column) / (time.perf_counter() - started)


def single_core(captions: list[str], brute_sample: int) -> dict:
    """Three metadata lists: 500k with n-grams of other captions (held out), 500k with n-grams of the very
    captions matched (every caption holds many entries: the worst case), and the shipped default alone."""
    from operators.match import MetaclipMatcher
    from pipelines.metadata import load_metadata

    half = len(captions) // 2
    test, held_out = captions[:half], captions[half:]
    results = {}
    for name, entries, texts in (("500k_held_out", metadata_500k(held_out), test),
                                 ("500k_in_sample", metadata_500k(captions), captions),
                                 ("default_222k", list(load_metadata().entries), captions)):
        gc.collect()
        before = rss_mb()
        started = time.perf_counter()
        matcher = MetaclipMatcher(entries)
        build_s = time.perf_counter() - started
        gc.collect()
        grown = rss_mb() - before
        rate = throughput(matcher, texts)
        per_caption = sum(len(ids) for ids in matcher.match(texts).to_pylist()) / len(texts)
        result = {"entries": len(entries), "build_s": round(build_s, 2), "rss_growth_mb": round(grown),
                  "captions_per_s_core": round(rate), "entries_matched_per_caption": round(per_caption, 2)}
        print(f"{name}: {len(entries)} entries, automaton built in {build_s:.2f} s (+{grown:.0f} MB RSS); "
              f"{rate:,.0f} captions/s on one core; {per_caption:.1f} entries matched per caption", flush=True)
        if name == "500k_held_out":
            sample = random.Random(1).sample(texts, brute_sample)
            started = time.perf_counter()
            reference = brute_force(sample, entries)
            brute_rate = brute_sample / (time.perf_counter() - started)
            agree = reference == matcher.match(sample).to_pylist()
            result |= {"brute_force_captions_per_s_core": round(brute_rate, 2), "ratio": round(rate / brute_rate),
                       "brute_force_sample": brute_sample, "brute_force_agrees": agree}
            print(f"  brute force (MetaCLIP's loop): {brute_rate:,.2f} captions/s on one core; automaton "
                  f"{rate / brute_rate:,.0f}x faster; same entry sets on {brute_sample} captions: {agree}", flush=True)
        results[name] = result
        del matcher
    return results


def make_run(folder: Path, captions: list[str], rows: int, rows_per_shard: int = 10_000) -> None:
    """A run folder with text-only annotation shards and their _done markers, as annotate leaves them."""
    if (folder / "_done").exists() and len(list((folder / "_done").iterdir())) == -(-rows // rows_per_shard):
        return
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "annotations").mkdir(parents=True)
    (folder / "_done").mkdir()
    for number, start in enumerate(range(0, rows, rows_per_shard)):
        shard = f"{number:05d}"
        n = min(rows_per_shard, rows - start)
        part = [captions[(start + i) % len(captions)] for i in range(n)]
        keys = [f"{shard}{i:07d}" for i in range(n)]
        pq.write_table(pa.table({"key": keys, "caption": part}), folder / "annotations" / f"{shard}.parquet")
        (folder / "_done" / f"{shard}.json").write_text(json.dumps({"shard": shard, "rows": n}))


class MemorySampler(threading.Thread):
    """Machine memory in use, and the RSS of each Ray Data map worker, every 0.5 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float, dict[int, float]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            workers = {}
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if b"MapWorker" in f.read():
                            workers[int(pid)] = rss_mb(pid)
                except OSError:
                    continue
            self.samples.append((time.time(), used_mb(), workers))
            self.stop.wait(0.5)


def scale(captions: list[str], entries: list[str], rows: int, work: Path, actors: int) -> dict:
    import ray

    from operators.match import MatchOptions
    from pipelines.verbs.match import match_run
    from pipelines.verbs.metaclip import balance

    run = work / f"metaclip-run-{rows}"
    started = time.time()
    make_run(run, captions, rows)
    metadata = work / "metadata-500k.json"
    metadata.write_text(json.dumps(entries))
    print(f"run of {rows} captions ready in {time.time() - started:.0f} s", flush=True)
    ray.init(num_cpus=actors, include_dashboard=False, configure_logging=False)
    baseline = used_mb()
    sampler = MemorySampler()
    sampler.start()
    summary = match_run(str(run), MatchOptions(metadata=str(metadata)), actors=actors, overwrite=True, progress=False)
    sampler.stop.set()
    sampler.join()
    ray.shutdown()
    used = [s[1] for s in sampler.samples]
    worker_peak = max((max(s[2].values()) for s in sampler.samples if s[2]), default=0.0)
    quarters = [round(used[min(len(used) - 1, int(q * len(used)))]) for q in (0.25, 0.5, 0.75, 0.99)]
    print(f"match pass: {summary['rows']} captions in {summary['wall_time_s']} s "
          f"({summary['rows_per_s_this_run']:,.0f} captions/s with {actors} actors, start-up and entry counts "
          f"included (counts {summary['entry_counts_s']} s); {summary['rows_per_actor_s']:,.0f} captions per "
          "actor-second reading, matching, writing); "
          f"machine memory in use: {baseline:.0f} MB before, peak {max(used):.0f} MB, at 25/50/75/99% of the run "
          f"{quarters} MB; peak RSS of one matcher actor {worker_peak:.0f} MB", flush=True)

    started = time.time()
    decisions = balance(str(run), t=20_000, seed=0)
    balance_s = time.time() - started
    kept = sum(decisions.column("kept").to_pylist())
    print(f"metaclip-balance SQL over {decisions.num_rows} captions: {balance_s:.1f} s ({kept} kept at t=20000)",
          flush=True)
    return {"rows": summary["rows"], "actors": actors, "wall_s": summary["wall_time_s"],
            "captions_per_s": summary["rows_per_s_this_run"], "captions_per_actor_s": summary["rows_per_actor_s"],
            "memory_used_before_mb": round(baseline),
            "memory_used_peak_mb": round(max(used)), "memory_used_quarters_mb": quarters,
            "actor_peak_rss_mb": round(worker_peak), "balance_sql_s": round(balance_s, 2), "kept_t20000": kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="captions in the Ray Data run (0: skip)")
    parser.add_argument("--actors", type=int, default=os.cpu_count())
    parser.add_argument("--brute-sample", type=int, default=40, help="captions for the brute-force reference")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args.work.mkdir(parents=True, exist_ok=True)
    captions = [c for c in pq.read_table(ALT_TEXT, columns=["TEXT"]).column("TEXT").to_pylist() if c]
    results = {"single_core": single_core(captions, args.brute_sample)}
    if args.rows:
        results["ray_data"] = scale(captions, metadata_500k(captions), args.rows, args.work, args.actors)
    out = args.work / "metaclip_match.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results in {out}")


if __name__ == "__main__":
    main()
