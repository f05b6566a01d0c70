"""Worldwide (MetaCLIP 2) matching: throughput against the v1 matcher, and the memory of per-language automata.

1. throughput, one core (this process), batches of 10k captions, median of `--repeats` runs:
   - English only: the 10k real alt-texts of shared/data/alt-text against the shipped default metadata (222k
     entries): v1's `MetaclipMatcher.match` vs `WorldwideMatcher.match` with every row's language `en`
     (routing, grouping and scattering included);
   - a multilingual mix: the alt-texts (language `en`) plus synthetic captions in 9 other languages (3 written
     without spaces: zh, ja, th), each language with synthetic metadata of a realistic size; worldwide (each
     caption against its language's list) vs v1 over the same rows with the English list, and v1 with one list
     of all languages' entries together (the single-list alternative).
2. memory, a fresh process per point: RSS added by building the automata of 10, 50 and 300 languages
   (every language of a batch, no budget), their build time and pyahocorasick's own size count; then 300
   languages under a 2048 MB budget (`--budget`; match.max_automata_mb), where the LRU keeps RSS bounded and
   a second batch of the same languages rebuilds what was evicted.

Synthetic metadata sizes follow MetaCLIP 2's caps (docs/metaclip2.md: unigrams <= 251,465, bigrams
<= 100,646, titles <= 61,235 per language, plus WordNet): English 500k entries (MetaCLIP's list); the other
languages by size rank, log-linear between 400k (rank 1), 250k (20), 100k (60), 20k (150) and 1.5k (329), so
300 languages hold ~18M entries. Entries are words of syllables of a per-language inventory (prefixes are
shared as in real vocabularies), their bigrams and 2-4 word "titles"; CJK-like languages get 1-4 character
words joined without spaces.

Measured on the 2-core development machine (shared, so +-10%), one process:
- English only, 10k alt-texts x 222k entries: v1 311k captions/s, worldwide 291k (-7%: routing, grouping);
- mix of 40k captions in 10 languages (3.1M entries): worldwide 93k/s, v1 with the English list 485k/s
  (most rows then match nothing), v1 with one list of all 3.1M entries 32k/s. The synthetic captions are
  dense in matches (18-46 entries per caption against 2.8 for the real alt-texts), which is what costs:
  en alone 295k/s, de 145k/s, zh 53k/s;
- RSS added by the automata: 10 languages (3.4M entries) 1.2 GB, 50 (11M) 3.9 GB, 300 (17M) 6.0 GB; built
  in ~6-7 us per entry (300 languages: 100 s); pyahocorasick counts ~0.8 of the RSS. 300 languages under
  a 2048 MB budget: 2.5 GB RSS, 256 small automata kept, and a second batch rebuilt the 44 largest (~50 s).

    python benchmarks/metaclip2_match.py                      # all
    python benchmarks/metaclip2_match.py --part throughput    # or: memory
    python benchmarks/metaclip2_match.py --part memory --languages 10 50
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("TAILOR_SHARED_DATA") or ROOT.parent / "shared" / "data")
ALT_TEXT = SHARED / "alt-text" / "alt_text_10k.parquet"
PAGE = os.sysconf("SC_PAGE_SIZE")

ANCHORS = [(1, 400_000), (20, 250_000), (60, 100_000), (150, 20_000), (329, 1_500)]
UNSPACED = {"zh": (0x4E00, 0x9FFF), "ja": (0x4E00, 0x9FFF), "th": (0x0E01, 0x0E2E), "km": (0x1780, 0x17B3),
            "lo": (0x0E81, 0x0EAE), "my": (0x1000, 0x102A), "bo": (0x0F40, 0x0F6C)}
SCRIPTS = [(0x61, 0x7A), (0x430, 0x44F), (0x3B1, 0x3C9), (0x5D0, 0x5EA), (0x627, 0x64A), (0x905, 0x939),
           (0x10D0, 0x10F0), (0x531, 0x556), (0xAC00, 0xD7A3), (0x0B85, 0x0BB9)]  # Latin, Cyrillic, Greek, ...
MIX = ["zh", "ja", "th", "de", "fr", "es", "ru", "ar", "ko"]  # besides en


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def size_of_rank(rank: int) -> int:
    """Entries of the language of size rank `rank` (1: the largest after English)."""
    for (r0, s0), (r1, s1) in zip(ANCHORS, ANCHORS[1:], strict=False):
        if rank <= r1:
            f = (math.log(max(rank, r0)) - math.log(r0)) / (math.log(r1) - math.log(r0))
            return int(math.exp(math.log(s0) + f * (math.log(s1) - math.log(s0))))
    return ANCHORS[-1][1]


def language_codes(n: int) -> list[str]:
    """en, the mix languages, then made-up codes (l000, l001, ...) to n languages."""
    codes = ["en", *MIX][:n]
    return codes + [f"l{i:03d}" for i in range(n - len(codes))]


class Language:
    """A synthetic language: a syllable inventory in one script, a Zipf vocabulary, entries and captions."""

    def __init__(self, code: str, seed: int):
        self.code = code
        rng = random.Random(f"{code}|{seed}")
        self.unspaced = code in UNSPACED or (code.startswith("l") and rng.random() < 0.1)
        low, high = UNSPACED.get(code) or (rng.choice(list(UNSPACED.values())) if self.unspaced
                                           else rng.choice(SCRIPTS))
        chars = [chr(c) for c in range(low, high + 1)]
        if self.unspaced:
            self.syllables = chars if len(chars) < 400 else rng.sample(chars, 3000)
            lengths = (1, 4)
        else:
            self.syllables = list({"".join(rng.choices(chars, k=rng.randint(1, 3))) for _ in range(400)})
            lengths = (1, 4)
        self.vocab = list(dict.fromkeys("".join(rng.choices(self.syllables, k=rng.randint(*lengths)))
                                        for _ in range(60_000)))
        self.join = "" if self.unspaced else " "
        self.rng = rng

    def word(self, rng: random.Random) -> str:
        return self.vocab[min(int(rng.paretovariate(0.9)) - 1, len(self.vocab) - 1)]  # Zipf-like

    def entries(self, n: int) -> list[str]:
        rng = random.Random(f"{self.code}|entries")
        out = dict.fromkeys(self.vocab[: n // 2])  # unigrams (half), bigrams, titles
        while len(out) < n:
            k = 2 if rng.random() < 0.6 else rng.randint(2, 4)
            out[self.join.join(rng.choice(self.vocab) if rng.random() < 0.5 else self.word(rng)
                               for _ in range(k))] = None
        return list(out)[:n]

    def captions(self, n: int) -> list[str]:
        rng = random.Random(f"{self.code}|captions")
        return [self.join.join(self.word(rng) for _ in range(rng.randint(3, 14))) for _ in range(n)]


def alt_texts() -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(ALT_TEXT, columns=["TEXT"]).column("TEXT").to_pylist()


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() over repeats."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def throughput(repeats: int) -> dict:
    import pyarrow as pa

    from operators.match import MetaclipMatcher, WorldwideMatcher
    from pipelines.metadata import load_metadata

    english = load_metadata().entries
    captions = alt_texts()
    n = len(captions)
    caps = pa.array(captions, pa.string())
    v1 = MetaclipMatcher(english)
    ww = WorldwideMatcher.from_lists({"en": english})
    ww.match(caps[:10], ["en"] * 10)  # build outside the timing
    en_codes = pa.array(["en"] * n, pa.string())
    result = {"english_only": {"captions": n, "entries": len(english)}}
    result["english_only"]["v1_captions_per_s"] = round(n / timed(lambda: v1.match(caps), repeats))
    result["english_only"]["worldwide_captions_per_s"] = round(n / timed(lambda: ww.match(caps, en_codes), repeats))

    lists = {"en": english}
    rows, codes = list(captions), ["en"] * n
    for rank, code in enumerate(MIX, start=1):
        language = Language(code, 0)
        lists[code] = language.entries(size_of_rank(rank))
        rows += language.captions(n // 3)
        codes += [code] * (n // 3)
    order = random.Random(0).sample(range(len(rows)), len(rows))  # languages interleaved, as in a crawl
    rows, codes = [rows[i] for i in order], [codes[i] for i in order]
    mixed = pa.array(rows, pa.string())
    mixed_codes = pa.array(codes, pa.string())
    ww = WorldwideMatcher.from_lists(lists, max_automata_mb=1 << 20)
    started = time.perf_counter()
    ww.match(mixed[:0], mixed_codes[:0])
    for code in lists:
        ww.matcher(code)
    build_ww = time.perf_counter() - started
    union = [e for entries in lists.values() for e in entries]
    started = time.perf_counter()
    v1_union = MetaclipMatcher(union, padding="worldwide")
    build_union = time.perf_counter() - started
    batches = [(mixed[i:i + 10_000], mixed_codes[i:i + 10_000]) for i in range(0, len(mixed), 10_000)]
    m = len(mixed)
    mix = {"captions": m, "languages": {c: {"entries": len(e), "captions": codes.count(c)} for c, e in lists.items()},
           "entries": len(union), "build_s": {"worldwide_all": round(build_ww, 1), "v1_union": round(build_union, 1)}}
    mix["worldwide_captions_per_s"] = round(m / timed(lambda: [ww.match(c, k) for c, k in batches], repeats))
    mix["v1_english_list_captions_per_s"] = round(m / timed(lambda: [v1.match(c) for c, _ in batches], repeats))
    mix["v1_union_list_captions_per_s"] = round(m / timed(lambda: [v1_union.match(c) for c, _ in batches], repeats))
    found = ww.match(mixed, mixed_codes)[1].to_pylist()
    for key, of in (("matched_share", bool), ("entries_per_caption", len)):
        mix[key] = {code: round(sum(of(x) for x, k in zip(found, codes, strict=True) if k == code)
                                / codes.count(code), 2) for code in lists}
    single = {}  # one language's captions alone: where the time goes
    for code in ("en", "zh", "de"):
        rows_of = pa.array([r for r, k in zip(rows, codes, strict=True) if k == code], pa.string())
        codes_of = pa.array([code] * len(rows_of), pa.string())
        single[code] = round(len(rows_of) / timed(lambda r=rows_of, k=codes_of: ww.match(r, k), repeats))
    mix["one_language_captions_per_s"] = single
    result["multilingual_mix"] = mix
    return result


def memory_point(n_langs: int, budget_mb: int | None) -> dict:
    """In this (fresh) process: build the automata of n_langs synthetic languages through one batch."""
    import gc

    import pyarrow as pa

    from operators.match import WorldwideMatcher

    codes = language_codes(n_langs)
    sizes = {code: 500_000 if code == "en" else size_of_rank(rank) for rank, code in enumerate(codes)}
    gc.collect()
    before = rss_mb()
    loaded = {"s": 0.0}

    def load(code: str) -> list[str]:
        started = time.perf_counter()
        entries = Language(code, 0).entries(sizes[code])
        loaded["s"] += time.perf_counter() - started
        return entries

    matcher = WorldwideMatcher(codes, load, max_automata_mb=budget_mb if budget_mb else 1 << 30)
    captions = pa.array([f"caption {i}" for i in range(len(codes))], pa.string())
    started = time.perf_counter()
    matcher.match(captions, pa.array(codes, pa.string()))
    seconds = time.perf_counter() - started - loaded["s"]
    gc.collect()
    after = rss_mb()
    point = {"languages": n_langs, "entries": sum(sizes.values()), "budget_mb": budget_mb,
             "automata_kept": len(matcher.cached_languages()),
             "automata_mb_counted": round(matcher.automata_bytes / 2**20), "rss_added_mb": round(after - before),
             "rss_mb": round(after), "build_s": round(matcher.build_seconds, 1),
             "match_s_excluding_list_generation": round(seconds, 1)}
    if budget_mb:  # a second batch of the same languages: what the LRU rebuilds
        builds = sum(matcher.builds.values())
        started = time.perf_counter()
        matcher.match(captions, pa.array(codes, pa.string()))
        point["second_batch_rebuilds"] = sum(matcher.builds.values()) - builds
        point["second_batch_s"] = round(time.perf_counter() - started, 1)
        point["rss_after_second_batch_mb"] = round(rss_mb())
    return point


def memory(languages: list[int], budget: int) -> list[dict]:
    points = []
    runs = [(n, None) for n in languages] + [(max(languages), budget)]
    for n, budget_mb in runs:
        command = [sys.executable, __file__, "--point", str(n), "--budget", str(budget_mb or 0)]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        point = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(point), file=sys.stderr)
        points.append(point)
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["all", "throughput", "memory"], default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--languages", type=int, nargs="+", default=[10, 50, 300])
    parser.add_argument("--budget", type=int, default=2048, help="MB of automata for the bounded run")
    parser.add_argument("--point", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(memory_point(args.point, args.budget if args.budget > 0 else None)))
        return
    report = {"cpu": os.cpu_count()}
    if args.part in ("all", "throughput"):
        report["throughput_one_core"] = throughput(args.repeats)
        print(json.dumps(report["throughput_one_core"], indent=1), file=sys.stderr)
    if args.part in ("all", "memory"):
        report["memory"] = memory(args.languages, args.budget)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
