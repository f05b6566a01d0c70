"""The automaton returns exactly MetaCLIP's entry sets: 10k real alt-texts against ~500k entries.

The metadata is the shipped default plus n-grams of the captions themselves (so many of them match,
including ones that hold punctuation, like "Vol. 8", which only the fixed mode can match). Every
caption is checked against an exact span-lookup oracle, and a sample (plus hand-made hard cases)
against MetaCLIP's literal loop over all entries.
"""

from __future__ import annotations

import random
import re

import pyarrow.parquet as pq
import pytest
from helpers import shared_data
from match_oracle import PUNCTS_TO_WRAP, SpanOracle, metaclip_substr_matching, spaced_entries

from operators.match import MetaclipMatcher
from pipelines.metadata import load_metadata

pytestmark = pytest.mark.slow

PUNCTS = re.escape("".join(PUNCTS_TO_WRAP))

ALT_TEXT = shared_data() / "alt-text" / "alt_text_10k.parquet"
N_ENTRIES = 500_000
HARD_CAPTIONS = [
    None, "", " ", "  ", "dog", " dog ", "dog  dog", "hot\tdog", "hot\ndog\r", "hot  dog", "St. Louis, MO",
    "Vol. 8: the end?!", "`quoted`", "a,b;c:d?e!f.g", "...", "Café Müller — 東京 2019 😀", "ДОМ дом", "e.g. i.e.",
    "The  the THE", "1 2 3 10 99 100", "new\u00a0york", "x\u2028y", "tab\t\ttab",
]


def synthetic_entries(captions: list[str], needed: int, seed: int = 0) -> list[str]:
    """n-grams (1-6 words, split on single spaces too, so runs of spaces survive) of the captions and their
    lower-cased forms, plus odd ones. Some repeat default entries: duplicates must all match, as in MetaCLIP."""
    grams: dict[str, None] = {}
    for caption in captions:
        for words in (caption.split(" "), caption.split()):
            for n in range(1, 7):
                for i in range(len(words) - n + 1):
                    gram = " ".join(words[i:i + n])
                    if gram:
                        grams[gram] = None
                        grams[gram.lower()] = None
    rng = random.Random(seed)
    odd = ["St. Louis", "Vol.", "e.g", "a,b", "hot\tdog", " dog", "dog ", "dog  dog", "東京", "😀", "ДОМ", "?", "!",
           "tab\t\ttab", "new\u00a0york", "x\u2028y"]
    pool = list(grams)
    rng.shuffle(pool)
    return odd + pool[:needed - len(odd)]


@pytest.fixture(scope="module")
def corpus():
    captions = pq.read_table(ALT_TEXT, columns=["TEXT"]).column("TEXT").to_pylist() + HARD_CAPTIONS
    default = load_metadata().entries
    entries = default + synthetic_entries([c for c in captions if c], N_ENTRIES - len(default))
    assert len(entries) == N_ENTRIES
    return captions, entries


@pytest.mark.parametrize("mode", ["faithful", "fixed"])
def test_automaton_equals_metaclip_on_10k_real_captions(corpus, mode):
    captions, entries = corpus
    got = MetaclipMatcher(entries, mode).match(captions).to_pylist()
    spaced = spaced_entries(entries, fixed=mode == "fixed")

    oracle = SpanOracle(spaced)
    wrong = [(c, g, oracle(c)) for c, g in zip(captions, got, strict=True) if g != oracle(c)]
    assert not wrong, wrong[:3]

    rng = random.Random(1)
    sample = rng.sample(range(len(captions) - len(HARD_CAPTIONS)), 100) + list(
        range(len(captions) - len(HARD_CAPTIONS), len(captions)))
    for i in sample:
        assert got[i] == metaclip_substr_matching(captions[i], spaced), captions[i]

    # not vacuous: nearly every caption matches, and punctuation entries match only when fixed
    assert sum(bool(g) for g in got) > 0.95 * len(captions)
    assert sum(len(g) for g in got) > 10 * len(captions)
    # MetaCLIP's quirk: a mark with no space on some side, or a tab/newline/CR, can never be in a spaced caption
    quirk = re.compile(f"[^ ][{PUNCTS}]|[{PUNCTS}][^ ]|[\t\n\r]")
    unmatchable = {i for i, e in enumerate(entries) if quirk.search(f" {e} ")}
    hits = sum(1 for g in got for i in g if i in unmatchable)
    assert (hits == 0) if mode == "faithful" else (hits > 1000)
