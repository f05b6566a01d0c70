"""-ing/-ed forms of concept words on real captions: which of them name the concept (issue 29).

Until issue 29 the audit's caption matching (operators/concepts.py) counted every -ing/-ed form of a
concept word that simplemma reads as that word: "training" counted for the vehicle "train", "shipping"
for "ship" (coco80's boat). This script takes those candidate forms (`english_forms` + the simplemma
check, the old rule) for every word of the coco80, imagenet1k and demo concept lists and, on real
captions (the 10k alt-texts of shared/data/alt-text, COCO's captions of shared/data/coco-mini), finds the
captions where a concept matches only through such a form: they match with the candidate forms and not
with plurals alone. Per (concept, form) it prints how many, the captions (the samples an annotator reads),
and, from the judgements below, how many name the concept; then each affected concept's text count
before (every candidate form), with nouns only, and with the shipped rule (`VERB_FORMS`).

The judgement (criterion): a form names the concept in a caption when it means the concept's thing or an
activity done with that very thing, so that the caption says the thing is there: "skiing" is moving on
skis, "skateboarding" riding a skateboard, "biking" riding a bike. A different word that only shares the
spelling does not ("training" session, free "shipping", ball "bearing", "flying" for the insect fly,
silver "plated", a necktie for "tied"), nor a sense that leaves the thing out (a "bowling" green, a
"benching" desk system is no bench; a "dressed" woman wears no dress). `JUDGED` holds the verdict per
(concept word, form) and `EXCEPTIONS` the captions read otherwise; a form met that neither covers prints
"?" so a run on other captions shows what is left to read. The rule kept from it (operators/concepts.py
`VERB_FORMS`): a form counts where it named the concept in at least 80% of at least two captions.

    python benchmarks/ing_forms.py                       # all lists, both caption sets, every sample
    python benchmarks/ing_forms.py --samples 3 --lists coco80
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("TAILOR_SHARED_DATA") or ROOT.parent / "shared" / "data")
ALT_TEXT = SHARED / "alt-text" / "alt_text_10k.parquet"
COCO = SHARED / "coco-mini" / "captions_train2017.json"

# (concept, form) -> does the form name the concept (the criterion above); read from the printed samples
JUDGED: dict[tuple[str, str], bool] = {
    ("boat", "shipping"): False,         # "free shipping": sending goods (38 of 38)
    ("train", "training"): False,        # instruction, exercise; a "training aircraft", a navy "training exercise"
    ("fly", "flying"): False,            # imagenet's fly is the insect; flying birds, kites, planes, jackets
    ("bear", "bearing"): False,          # ball, roller, wheel, fan bearings
    ("teddy bear", "bearing"): False,    # (but see EXCEPTIONS)
    ("plate", "plated"): False,          # silver/gold/nickel plated
    ("skis", "skiing"): True,
    ("ski", "skiing"): True,
    ("dress", "dressed"): False,         # well-dressed, dressed in leather, a "dressed" engine
    ("monitor", "monitoring"): False,    # watching over (network, forest fire, health monitoring)
    ("monitor", "monitored"): False,
    ("quilt", "quilted"): False,         # quilted jackets and bags: a stitching, not a quilt
    ("quilt", "quilting"): False,        # quilting fabric, a craft keyword: no quilt
    ("skateboard", "skateboarding"): True,   # a trick, a boy skateboarding, skateboarding shoes (as "skateboard shoes")
    ("bicycle", "biking"): True,         # a biking outfit, a biking tour
    ("sink", "sinking"): False,          # sinking lures, sinking a putt
    ("crown", "crowned"): False,         # crowned kings of Europe (but see EXCEPTIONS)
    ("baseball bat", "batting"): True,   # a baseball batting cage: batting is swinging the bat
    ("bench", "benching"): False,        # "benching": the furniture trade's bench desk/table systems
    ("bicycle", "bicycling"): True,
    ("bird", "birding"): True,           # birding trails: watching birds
    ("boat", "boating"): True,           # a boating accident
    ("bowl", "bowling"): False,          # a bowling green
    ("tie", "tied"): False,              # a pre-tied bandana: no necktie
    ("tie", "tying"): False,             # tying shoes
    ("buckle", "buckled"): True,         # a buckled vest has buckles
    ("dock", "docking"): False,          # an iPad docking station, not a pier
    ("dome", "domed"): True,             # a domed passenger car: a vista dome
    ("flute", "fluted"): False,          # fluted (grooved) mountains, not the instrument
    ("knee pad", "padded"): False,       # jeans with padded knees
    ("knot", "knotted"): True,           # a knotted T-shirt is tied in a knot
    ("mask", "masking"): False,          # masking film
    ("motorboat", "motorboating"): False,    # the T-shirt's slang
    ("race car", "racing"): False,       # "Car / Racing Trailer": a trailer, no race car named
    ("stage", "staging"): False,         # home staging
    ("water bottle", "watering"): False,     # a self-watering planter from a wine bottle
    ("anchor", "anchoring"): False,      # a drilling rig anchoring machine
    ("flower", "flowering"): True,       # a flowering ice plant
}
# (concept, form, a piece of the caption) -> the verdict for that caption, where it differs from JUDGED
EXCEPTIONS: dict[tuple[str, str, str], bool] = {
    ("teddy bear", "bearing", "two teddy bearing sharing"): True,   # a typo for "teddy bears"
    ("crown", "crowned", "crowned miss grand england"): True,       # a pageant winner is crowned with a crown
}
KEEP_PRECISION, KEEP_MIN = 0.8, 2


def read_captions() -> dict[str, list[str]]:
    alt = [t for t in pq.read_table(ALT_TEXT, columns=["TEXT"]).column("TEXT").to_pylist() if t]
    coco = [a["caption"] for a in json.loads(COCO.read_text())["annotations"]]
    return {"alt-text 10k": alt, "COCO captions": coco}


def candidate_forms(words: set[str]) -> dict[str, tuple[str, ...]]:
    """The old rule: each word's -ing/-ed forms (English spelling rules) that simplemma reads as the word."""
    from operators.concepts import Lemmatizer, english_forms

    lemma = Lemmatizer("en")
    out = {}
    for word in words:
        forms = tuple(sorted(v for v in english_forms(word)[1] if lemma.word(v) == word))
        if forms:
            out[word] = forms
    return out


def verdict(concept: str, form: str, caption: str) -> bool | None:
    for (c, f, piece), value in EXCEPTIONS.items():
        if c == concept and f == form and piece in caption.lower():
            return value
    return JUDGED.get((concept, form))


def measure(list_name: str, corpora: dict[str, list[str]], samples: int) -> list[dict]:
    """Per (corpus, concept, form): the captions (indices) matched only through the form, and the counts."""
    from operators.concepts import _TOKEN, ConceptMatcher
    from pipelines.concepts import load_concepts

    concepts = load_concepts(list_name)
    concept_words: dict[int, set[str]] = defaultdict(set)
    for k, text in concepts.variants():
        concept_words[k] |= set(_TOKEN.findall(text.lower()))
    candidates = candidate_forms(set().union(*concept_words.values()))
    form_words: dict[str, set[str]] = defaultdict(set)
    for word, forms in candidates.items():
        for form in forms:
            form_words[form].add(word)
    matchers = {"before": ConceptMatcher(concepts, verb_forms=candidates),   # the rule until issue 29
                "nouns": ConceptMatcher(concepts, verb_forms={}),             # plurals only
                "shipped": ConceptMatcher(concepts)}                          # VERB_FORMS
    print(f"\n=== {list_name}: {len(concepts)} concepts, {len(candidates)} concept words with "
          f"{sum(map(len, candidates.values()))} candidate -ing/-ed forms")

    rows = []
    for corpus, captions in corpora.items():
        found: dict[tuple[str, str, str], list[int]] = defaultdict(list)   # (concept, word, form) -> captions
        counts = {rule: defaultdict(int) for rule in matchers}
        for i, caption in enumerate(captions):
            matched = {rule: set(m.match(caption)[0]) for rule, m in matchers.items()}
            for rule, ids in matched.items():
                for k in ids:
                    counts[rule][k] += 1
            tokens = set(_TOKEN.findall(caption.lower())) & form_words.keys()
            for k in matched["before"] - matched["nouns"]:
                for form in sorted(tokens):
                    for word in sorted(form_words[form] & concept_words[k]):
                        found[(concepts.names[k], word, form)].append(i)
        print(f"\n--- {list_name} on {corpus} ({len(captions)} captions): captions matched only through a form")
        for (name, word, form), found_in in sorted(found.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            k = concepts.names.index(name)
            verdicts = [verdict(name, form, captions[i]) for i in found_in]
            named = None if None in verdicts else sum(verdicts)
            rows.append({"list": list_name, "corpus": corpus, "concept": name, "word": word, "form": form,
                         "captions": found_in, "verdicts": verdicts, "n": len(found_in), "named": named,
                         **{rule: counts[rule][k] for rule in matchers}})
            print(f"{name!r} via {form!r} ({word}): {len(found_in)}, named the concept: "
                  f"{'?' if named is None else named}; text count {counts['before'][k]} before, "
                  f"{counts['nouns'][k]} nouns only, {counts['shipped'][k]} shipped rule")
            for i, v in list(zip(found_in, verdicts, strict=True))[:samples]:
                print(f"    {'?' if v is None else '+' if v else '-'} {captions[i][:160]!r}")
    return rows


def summarize(rows: list[dict], corpora: list[str]) -> None:
    """Per form, pooled over the lists whose concepts hold its word (each caption once); the keep rule."""
    from operators.concepts import VERB_FORMS

    pooled: dict[tuple[str, str], dict] = {}
    for r in rows:
        entry = pooled.setdefault((r["word"], r["form"]), {"concepts": set(), **{c: {} for c in corpora}})
        entry["concepts"].add(f"{r['list']}:{r['concept']}")
        for i, v in zip(r["captions"], r["verdicts"], strict=True):
            known = entry[r["corpus"]].get(i)
            entry[r["corpus"]][i] = v if known is None else known or v   # named under one of its concepts
    print(f"\n=== per form: captions matched only through it / of them naming the concept; keep when >= "
          f"{KEEP_PRECISION:.0%} of >= {KEEP_MIN}")
    print(f"{'word':12} {'form':14} " + " ".join(f"{c:>16}" for c in corpora)
          + "  precision  rule  shipped  concepts")
    disagree = []
    totals = {c: {"all": [0, 0], "shipped": [0, 0]} for c in corpora}
    for (word, form), entry in sorted(pooled.items(), key=lambda kv: (-sum(len(kv[1][c]) for c in corpora), kv[0])):
        cells, verdicts = [], []
        for c in corpora:
            vs = list(entry[c].values())
            verdicts += vs
            for which in ("all", "shipped") if form in VERB_FORMS.get(word, ()) else ("all",):
                totals[c][which][0] += len(vs)
                totals[c][which][1] += sum(v is True for v in vs)
            cells.append(f"{len(vs):>4} / {'?' if None in vs else sum(vs)}")
        judged = None not in verdicts
        precision = sum(verdicts) / len(verdicts) if judged else None
        rule = judged and len(verdicts) >= KEEP_MIN and precision >= KEEP_PRECISION
        shipped = form in VERB_FORMS.get(word, ())
        if rule != shipped:
            disagree.append(f"{word}/{form}")
        print(f"{word:12} {form:14} " + " ".join(f"{cell:>16}" for cell in cells)
              + f"  {'?' if precision is None else f'{precision:.0%}':>9}  {'keep' if rule else 'drop':>4}  "
              f"{'kept' if shipped else '-':>7}  {', '.join(sorted(entry['concepts']))}")
    print("shipped VERB_FORMS and the rule " + (f"disagree on: {', '.join(disagree)}" if disagree else "agree"))
    for c in corpora:
        (n, ok), (kept, kept_ok) = totals[c]["all"], totals[c]["shipped"]
        print(f"{c}: every candidate form matched {n} (form, caption) pairs nothing else matched, {ok} naming the "
              f"concept ({ok / max(n, 1):.0%}); the shipped forms keep {kept}, {kept_ok} naming it")

    print("\n=== text counts of the affected concepts (caption rows): before (every candidate form) -> "
          "nouns only -> shipped rule")
    seen = set()
    for r in rows:
        if (r["list"], r["corpus"], r["concept"]) not in seen:
            seen.add((r["list"], r["corpus"], r["concept"]))
            print(f"{r['list']:11} {r['corpus']:14} {r['concept']:14} {r['before']:>5} -> {r['nouns']:>5} -> "
                  f"{r['shipped']:>5}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lists", nargs="+", default=["coco80", "imagenet1k", "demo"])
    parser.add_argument("--samples", type=int, default=1_000, help="captions printed per (concept, form)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "ing_forms")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from network_guard import install_network_guard

    refusals = install_network_guard(args.work)
    corpora = read_captions()
    rows = [row for name in args.lists for row in measure(name, corpora, args.samples)]
    summarize(rows, list(corpora))
    (args.work / "ing_forms.json").write_text(json.dumps(rows, indent=1))
    if refusals.read_text().strip():
        raise SystemExit(f"a connection off the machine was refused: {refusals.read_text()[:2000]}")


if __name__ == "__main__":
    main()
