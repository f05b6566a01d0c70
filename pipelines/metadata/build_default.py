"""Rebuild pipelines/metadata/default.txt.gz, the offline MetaCLIP-style metadata shipped with tailor.

MetaCLIP's metadata (Demystifying CLIP Data, ~500k entries) has four sources: WordNet synsets,
Wikipedia unigrams (count >= 100), Wikipedia bigrams (PMI >= 30) and popular Wikipedia titles,
plus the numbers 0-99. Offline we can rebuild two of them and stand in for a third:

- WordNet 3.0 synset head names: the part of the synset name before the first '.', underscores
  as spaces ("hot_dog.n.01" -> "hot dog"), read with NLTK's WordNet reader from Debian's
  `wordnet-base` files (/usr/share/wordnet);
- frequent English unigrams from wordfreq's "large" English list (Zipf frequency >= 1.5, about
  3 per 100M words: roughly Wikipedia's count >= 100 over its ~3B words), tokens with a letter
  or digit only;
- the numbers 0-99.

Wikipedia bigrams and titles need a Wikipedia dump and are left out; on a cluster, pass
MetaCLIP's own metadata.json (`match.metadata: s3://.../metadata.json`).

Neither NLTK nor wordfreq is needed at run time or in CI; only this script uses them:

    apt-get install -y wordnet-base
    pip install -e ".[metadata]"
    python -m pipelines.metadata.build_default
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import tempfile
from pathlib import Path

from pipelines.metadata import DEFAULT

WORDNET_DIR = "/usr/share/wordnet"
LEXNAMES_MAN = "/usr/share/man/man5/lexnames.5WN.gz"
MIN_ZIPF = 1.5
_HAS_WORD_CHAR = re.compile(r"\w")


def _nltk_wordnet_dir(root: str, work: Path) -> str:
    """NLTK's reader also wants `lexnames`, which Debian ships only as a man page: rebuild it beside copies
    of the database files (copies, not links: NLTK refuses paths that resolve outside its root)."""
    for name in os.listdir(root):
        if os.path.isfile(os.path.join(root, name)):
            shutil.copy(os.path.join(root, name), work / name)
    with gzip.open(LEXNAMES_MAN, "rt") as f:
        rows = re.findall(r"^(\d\d)\t(\S+)", f.read(), flags=re.MULTILINE)
    category = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
    (work / "lexnames").write_text("".join(f"{n}\t{name}\t{category[name.split('.')[0]]}\n" for n, name in rows))
    return str(work)


def wordnet_heads(root: str = WORDNET_DIR) -> list[str]:
    """Synset head names in WordNet's own order (by part of speech, then file offset)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class Reader(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            return None  # these files are WordNet 3.0 itself (Debian's headers just omit the version line)

    with tempfile.TemporaryDirectory() as work:
        folder = _nltk_wordnet_dir(root, Path(work))
        nltk.data.path.append(folder)  # NLTK reads only from its data paths
        reader = Reader(folder, None)
        heads = []
        for pos in ("n", "v", "a", "r"):  # satellites ('s') come with the adjectives
            for synset in reader.all_synsets(pos):
                heads.append(synset.name().split(".", 1)[0].replace("_", " "))
    return heads


def frequent_unigrams(min_zipf: float = MIN_ZIPF) -> list[str]:
    """English words from wordfreq's large list, most frequent first, down to `min_zipf`."""
    from wordfreq import top_n_list, zipf_frequency

    words = []
    for word in top_n_list("en", 10**7, wordlist="large"):
        if zipf_frequency(word, "en", wordlist="large") < min_zipf:
            break
        if _HAS_WORD_CHAR.search(word):
            words.append(word)
    return words


def build(out: Path = DEFAULT, min_zipf: float = MIN_ZIPF) -> dict[str, int]:
    sources = {
        "wordnet": wordnet_heads(),
        "unigrams": frequent_unigrams(min_zipf),
        "numbers": [str(i) for i in range(100)],
    }
    seen: set[str] = set()
    entries = []
    for values in sources.values():
        for value in values:
            if value and "\n" not in value and value not in seen:
                seen.add(value)
                entries.append(value)
    # no name, mtime=0: the same entries give the same bytes
    with open(out, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(("\n".join(entries) + "\n").encode("utf-8"))
    return {**{name: len(values) for name, values in sources.items()}, "entries": len(entries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT)
    parser.add_argument("--min-zipf", type=float, default=MIN_ZIPF)
    args = parser.parse_args()
    counts = build(args.out, args.min_zipf)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {counts}")


if __name__ == "__main__":
    main()
