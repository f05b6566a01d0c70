"""Concept tags of a caption (its words and their inflections) and of an image (zero-shot on its CLIP embedding).

Text (*No "Zero-Shot" Without Exponential Data*): a caption contains a concept when all of the
words of the concept's name, or of one of its synonyms, occur among the caption's words (a bag of
words within one caption, not an exact phrase). Captions and concept names are lower-cased and cut
into word tokens (`[^\\W_]+`, so "hot-dog" is two tokens and "hotdog" one).

A caption word counts for a concept word when it is that word or one of its inflections, built from
the concept word by English spelling rules (`english_forms`): noun plurals, regular (dogs, buses,
bushes, puppies, tomatoes) and irregular (men, women, people, children, feet, teeth, geese, mice, oxen,
knives, wolves, cacti, larvae). An -ing/-ed form of a noun is a different word more often than not
("training" is no train, "shipping" no ship, "bearing" no bear, "flying" no fly, "plated" no plate), so
those count only where `VERB_FORMS` lists them: the forms that named the concept in real captions
(skiing: on skis; benchmarks/ing_forms.py measures them). Matching goes from the concept word to its
forms, never from a caption word to its lemma, so a concept never matches a different word that shares a
lemma with it: "lighter" matches lighter and lighters, not "light"; likewise eraser/erase, tights/tight,
clogs/clog and clogging, moped/mope. A concept name written as a plural ("skis", "scissors") matches
itself only (and its own forms); list the singular as a synonym when it should count (coco80 does for
skis). One-letter words and function words (the, of, and, ...) match only themselves. For a `lang`
other than "en" both sides are lemmatized with simplemma instead (the paper's rule, lemma collisions
included).

One refinement, `nested` (on by default): the words of a longer concept written as a phrase do
not also count for a shorter concept whose words they contain. "a hot dog" names the food, not
the animal, so it counts for "hot dog" and not for "dog"; "a dog and a hot dog" counts for both;
"a hot day with my dog" counts for both under either rule (the bag rule cannot tell). The pure
bag-of-words ids are kept as `text_concepts_bag`, so both definitions can be counted.

`ConceptMatcher` — columns in: `caption` (string, may be null). Columns added:
`text_concepts` (list<int32>: sorted unique concept ids, nested rule), `text_concepts_bag`
(list<int32>: the paper's pure bag rule), `text_variants` (list<int32>: the names/synonyms that
matched, nested rule; a variant id indexes `Concepts.variants()`).

Image: concept text embeddings (operators/clip.py ClipTextTower.ensemble: prompt templates, e.g.
"a photo of a {}.", averaged over a concept's name and synonyms) against each stored, L2-normalised
image embedding; no image is read again.
Taggers are pluggable (`TAGGERS`): `softmax` tags a concept when softmax(temperature * cosine)
over the concept list is >= threshold (the paper's "probability >= 0.7" with CLIP zero-shot as
the tagger), `cosine` when the cosine itself is >= threshold.

`ImageConceptTagger` — columns in: `image_emb` (fixed-size list, null for rows without an
image). Columns added: `image_concepts` (list<int32>, null without an embedding), `image_top`
(int32: the best-scoring concept), `image_top_score` (float32: its probability or cosine).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
import pyarrow as pa

from operators.clip import softmax, to_matrix
from operators.table import replace_columns, require_columns

log = logging.getLogger(__name__)

IDS = pa.list_(pa.int32())
_TOKEN = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Concepts:
    """A concept list: concept k is `names[k]`; `synonyms[k]` are its other names."""

    names: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.names) != len(self.synonyms):
            raise ValueError("one synonym tuple per concept")
        seen: dict[str, int] = {}
        for k, name in enumerate(self.names):
            if not name.strip():
                raise ValueError(f"concept {k} has an empty name")
            if name in seen:
                raise ValueError(f"concept {name!r} is listed twice (ids {seen[name]} and {k})")
            seen[name] = k

    def __len__(self) -> int:
        return len(self.names)

    def variants(self) -> list[tuple[int, str]]:
        """(concept id, text) for every name then synonym; the list index is the variant id."""
        return [(k, text) for k, name in enumerate(self.names) for text in (name, *self.synonyms[k])]

    def all_names(self) -> list[tuple[str, ...]]:
        """Per concept, its name then its synonyms (what a prompt ensemble averages over)."""
        return [(name, *synonyms) for name, synonyms in zip(self.names, self.synonyms, strict=True)]

    @property
    def id(self) -> str:
        """A content hash: the same names and synonyms give the same id."""
        digest = hashlib.sha256()
        for name, syns in zip(self.names, self.synonyms, strict=True):
            digest.update(("\x1f".join((name, *syns)) + "\x1e").encode())
        return digest.hexdigest()[:16]


class Lemmatizer:
    """Lower-cased word tokens -> lemmas (simplemma, offline); a per-process cache of words."""

    def __init__(self, lang: str = "en"):
        import simplemma

        self.lang = lang
        self._lemma = lru_cache(maxsize=500_000)(lambda word: simplemma.lemmatize(word, lang=lang).lower())

    def __call__(self, text: str | None) -> list[str]:
        if not text:
            return []
        return [self._lemma(word) for word in _TOKEN.findall(text.lower())]

    def word(self, word: str) -> str:
        return self._lemma(word)


_VOWELS = frozenset("aeiou")
# irregular English plurals: of a whole word or of a compound's last part (women, policemen, grandchildren) ...
_IRREGULAR = {"man": "men", "person": "people", "child": "children", "foot": "feet", "tooth": "teeth",
              "goose": "geese", "mouse": "mice", "louse": "lice"}
_IRREGULAR_WORDS = {"ox": "oxen", "die": "dice"}
# ... and Latin/Greek/-f endings after a stem of three letters or more (cacti, larvae, knives; "bus" has no "bi")
_IRREGULAR_ENDINGS = (("fe", "ves"), ("f", "ves"), ("us", "i"), ("um", "a"), ("a", "ae"), ("is", "es"),
                      ("ex", "ices"), ("ix", "ices"))
_UNINFLECTED = frozenset({"a", "an", "the", "of", "and", "or", "in", "on", "at", "to", "for", "with", "by",
                          "from", "de", "la", "le", "du", "del", "von", "van"})


def _syllables(word: str) -> int:
    return len(re.findall(r"[aeiou]+|(?<=[^aeiou])y", word))


def english_forms(word: str) -> tuple[set[str], set[str]]:
    """(the word and its noun plurals / third person forms, its -ing and -ed forms) by English spelling rules.

    -s; -es after s/x/z/ch/sh/o; consonant + y -> -ies; the irregular plurals above. -ing/-ed drop a
    final e (skate: skating, skated), turn a consonant's y into ied (carry: carried), ie into ying (tie:
    tying), and double the final consonant of a one-syllable consonant-vowel-consonant word (mop: mopping,
    mopped; never "moped"); longer words of that shape get both (travelling, traveling).
    """
    plurals = {word}
    if len(word) < 2 or not word.isalpha() or word in _UNINFLECTED:
        return plurals, set()
    last, before = word[-1], word[-2]
    short_cvc = (last not in _VOWELS and last not in "wxy" and before in _VOWELS
                 and (len(word) < 3 or word[-3] not in _VOWELS))
    one_syllable = _syllables(word) == 1
    if word.endswith(("s", "x", "z", "ch", "sh")):
        plurals.add(word + "es")
        if last in "sz" and short_cvc and one_syllable:
            plurals.add(word + last + "es")                          # busses, quizzes
    elif last == "y" and before not in _VOWELS:
        plurals.add(word[:-1] + "ies")                               # puppies
    else:
        plurals.add(word + "s")
        if last == "o":
            plurals.add(word + "es")                                 # tomatoes
    for base, plural in _IRREGULAR.items():
        if word.endswith(base):
            plurals.add(word[:-len(base)] + plural)
    if word in _IRREGULAR_WORDS:
        plurals.add(_IRREGULAR_WORDS[word])
    for ending, plural in _IRREGULAR_ENDINGS:
        if word.endswith(ending) and len(word) - len(ending) >= 3:
            plurals.add(word[:-len(ending)] + plural)
    if not _syllables(word):                                         # tv, cd: plurals only
        return plurals, set()
    if word.endswith("ie"):
        stems = [(word[:-2] + "y", word[:-1])]                      # tying, tied
    elif last == "e":
        stems = [(word if before in "eoy" else word[:-1], word[:-1])]  # skating, skated; seeing, seed
    elif last == "y" and before not in _VOWELS:
        stems = [(word, word[:-1] + "i")]                            # carrying, carried
    elif short_cvc:
        doubled = (word + last, word + last)                         # mopping, mopped
        stems = [doubled] if one_syllable else [doubled, (word, word)]  # travelling, traveling
    else:
        stems = [(word, word)]                                       # skiing, skied
    return plurals, {form for ing, ed in stems for form in (ing + "ing", ed + "ed")}


# The -ing/-ed forms that count for a concept word (English). Issue 29 read every caption of the 10k real
# alt-texts and of COCO's captions that a coco80, imagenet1k or demo concept matched only through an -ing/-ed
# form of one of its words (benchmarks/ing_forms.py, which holds the judgements): 153 such (form, caption)
# pairs, 21 of them naming the concept. A form is listed where it named the concept's thing, or an activity
# done with it, in at least 80% of at least two captions. Not listed, among others: training (0 of 24),
# shipping for ship (0 of 38), flying for the insect fly (0 of 20), bearing (1 of 9), plated (0 of 8), dressed
# (0 of 6), monitoring (0 of 5), quilted (0 of 4), crowned (1 of 2); and the forms seen once, right or wrong
# (bicycling, boating, birding, batting, flowering, ...; skied and skating were never seen).
VERB_FORMS: dict[str, tuple[str, ...]] = {
    "ski": ("skiing",),                  # 6 of 6: a person skiing down a slope
    "skateboard": ("skateboarding",),    # 3 of 3: a skateboarding trick, skateboarding shoes
    "bike": ("biking",),                 # 2 of 2: a biking tour, a biking outfit
}


class WordForms:
    """Caption word -> the concept words it is a form of, through one dict built from the concept words.

    English: each concept word's plurals, and the -ing/-ed forms `verb_forms` lists for it (by default
    `VERB_FORMS`; benchmarks/ing_forms.py passes others to measure them). Other languages: simplemma lemmas
    on both sides (a per-process cache of words). `key(word)` is how a concept word is written in the index
    (itself; its lemma for other languages).
    """

    def __init__(self, concept_words: Sequence[str], lang: str = "en",
                 verb_forms: Mapping[str, Collection[str]] | None = None):
        self.lang = lang
        self.lemmatize = Lemmatizer(lang)
        self.forms: dict[str, tuple[str, ...]] = {}
        if lang != "en":
            return
        verb_forms = VERB_FORMS if verb_forms is None else verb_forms
        table: dict[str, set[str]] = {}
        for word in set(concept_words):
            plurals, _ = english_forms(word)
            for form in plurals | set(verb_forms.get(word, ())):
                table.setdefault(form, set()).add(word)
        self.forms = {form: tuple(sorted(words)) for form, words in table.items()}

    def key(self, word: str) -> str:
        return word if self.lang == "en" else self.lemmatize.word(word)

    def __call__(self, text: str | None) -> list[tuple[str, ...]]:
        """Per word token of the text: the concept words (index keys) it can stand for; () for most."""
        if not text:
            return []
        words = _TOKEN.findall(text.lower())
        if self.lang == "en":
            return [self.forms.get(word, ()) for word in words]
        return [(self.lemmatize.word(word),) for word in words]


def _occurrences(sequence: list[tuple[str, ...]], phrase: tuple[str, ...]) -> list[int]:
    n = len(phrase)
    return [i for i in range(len(sequence) - n + 1) if all(phrase[j] in sequence[i + j] for j in range(n))]


class ConceptMatcher:
    """Bag-of-words concept matching through an inverted index (concept word -> variants holding it).

    `verb_forms` (English): concept word -> the -ing/-ed forms that count for it; `VERB_FORMS` by default."""

    def __init__(self, concepts: Concepts, lang: str = "en", nested: bool = True,
                 verb_forms: Mapping[str, Collection[str]] | None = None):
        self.concepts = concepts
        self.nested = nested
        variants = concepts.variants()
        written = [tuple(_TOKEN.findall(text.lower())) for _, text in variants]
        self.words = WordForms([w for words in written for w in words], lang, verb_forms)
        self.variant_concept = np.array([k for k, _ in variants], dtype=np.int32)
        self.variant_words: list[tuple[str, ...]] = [tuple(self.words.key(w) for w in words) for words in written]
        self.variant_sets = [frozenset(lemmas) for lemmas in self.variant_words]
        self.index: dict[str, list[int]] = {}
        for v, lemmas in enumerate(self.variant_words):
            if not lemmas:
                log.warning("concept name %r has no word tokens; it never matches", variants[v][1])
                continue
            self.index.setdefault(lemmas[0], []).append(v)
        # variants whose word set strictly contains v's: a phrase of one of them can hide v
        self.containers: list[tuple[int, ...]] = [() for _ in variants]
        holders: dict[str, set[int]] = {}
        for v, lemmas in enumerate(self.variant_sets):
            for lemma in lemmas:
                holders.setdefault(lemma, set()).add(v)
        for w, lemmas in enumerate(self.variant_sets):
            if len(lemmas) < 2:
                continue
            for v in set().union(*(holders[lemma] for lemma in lemmas)):
                if self.variant_sets[v] and self.variant_sets[v] < lemmas:
                    self.containers[v] += (w,)

    def match(self, caption: str | None) -> tuple[list[int], list[int], list[int]]:
        """(concept ids by the nested rule, concept ids by the bag rule, matched variant ids)."""
        sequence = self.words(caption)
        present = {key for keys in sequence for key in keys}
        bag = sorted({v for key in present for v in self.index.get(key, ())
                      if self.variant_sets[v] <= present})
        kept = bag
        if self.nested and bag:
            matched = set(bag)
            kept = [v for v in bag if not self._hidden(v, sequence, matched)]
        concepts = sorted({int(self.variant_concept[v]) for v in kept})
        concepts_bag = sorted({int(self.variant_concept[v]) for v in bag})
        return concepts, concepts_bag, kept

    def _hidden(self, v: int, sequence: list[tuple[str, ...]], matched: set[int]) -> bool:
        """True when v's words occur only inside phrases of longer matched variants."""
        covered: set[int] = set()
        for w in self.containers[v]:
            if w in matched:
                phrase = self.variant_words[w]
                for start in _occurrences(sequence, phrase):
                    covered.update(range(start, start + len(phrase)))
        if not covered:
            return False
        remaining = {key for i, keys in enumerate(sequence) if i not in covered for key in keys}
        return not self.variant_sets[v] <= remaining

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, ("caption",), "concept matching")
        nested, bag, variants = [], [], []
        for caption in batch.column("caption").to_pylist():
            c, b, v = self.match(caption)
            nested.append(c)
            bag.append(b)
            variants.append(v)
        return replace_columns(batch, {"text_concepts": pa.array(nested, IDS),
                                       "text_concepts_bag": pa.array(bag, IDS),
                                       "text_variants": pa.array(variants, IDS)})


# ---------------------------------------------------------------- image side

class ImageTagger(Protocol):
    """Scores (n, C) -> boolean tags (n, C) and the per-image score of the best concept."""

    name: str

    def scores(self, cosine: np.ndarray) -> np.ndarray: ...

    def tags(self, scores: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class SoftmaxTagger:
    """CLIP zero-shot probability over the concept list; tag when it is >= threshold."""

    threshold: float = 0.7
    temperature: float = 100.0
    name: str = "softmax"

    def scores(self, cosine: np.ndarray) -> np.ndarray:
        return softmax(self.temperature * cosine, axis=1)

    def tags(self, scores: np.ndarray) -> np.ndarray:
        return scores >= self.threshold


@dataclass(frozen=True)
class CosineTagger:
    """Tag when the cosine of image and concept embedding is >= threshold (multi-label)."""

    threshold: float = 0.3
    name: str = "cosine"

    def scores(self, cosine: np.ndarray) -> np.ndarray:
        return cosine

    def tags(self, scores: np.ndarray) -> np.ndarray:
        return scores >= self.threshold


TAGGERS = {"softmax": SoftmaxTagger, "cosine": CosineTagger}


def make_tagger(name: str, threshold: float | None = None, temperature: float | None = None) -> ImageTagger:
    if name not in TAGGERS:
        raise ValueError(f"unknown image tagger {name!r} (known: {', '.join(TAGGERS)})")
    kwargs: dict = {}
    if threshold is not None:
        kwargs["threshold"] = threshold
    if temperature is not None and name == "softmax":
        kwargs["temperature"] = temperature
    return TAGGERS[name](**kwargs)


class ImageConceptTagger:
    """Concept tags from stored image embeddings and a (C, D) matrix of concept text embeddings."""

    def __init__(self, concept_emb: np.ndarray, tagger: ImageTagger):
        self.concept_emb = np.asarray(concept_emb, dtype=np.float32)
        self.tagger = tagger

    def tag(self, image_emb: np.ndarray) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
        """(n, D) float embeddings -> per-image concept ids, best concept, its score."""
        scores = self.tagger.scores(image_emb.astype(np.float32) @ self.concept_emb.T)
        tags = self.tagger.tags(scores)
        rows, cols = np.nonzero(tags)
        ids: list[list[int]] = [[] for _ in range(len(image_emb))]
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            ids[r].append(c)
        top = scores.argmax(axis=1) if scores.size else np.zeros(len(image_emb), dtype=np.int64)
        best = scores[np.arange(len(image_emb)), top] if scores.size else np.zeros(len(image_emb))
        return ids, top.astype(np.int32), best.astype(np.float32)

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, ("image_emb",), "image concept tagging")
        column = batch.column("image_emb").combine_chunks()
        n = batch.num_rows
        valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        ids: list[list[int] | None] = [None] * n
        top = np.zeros(n, dtype=np.int32)
        best = np.zeros(n, dtype=np.float32)
        rows = np.flatnonzero(valid)
        if len(rows):
            tagged, top[rows], best[rows] = self.tag(to_matrix(column.take(pa.array(rows))))
            for r, t in zip(rows.tolist(), tagged, strict=True):
                ids[r] = t
        return replace_columns(batch, {"image_concepts": pa.array(ids, IDS),
                                       "image_top": pa.array(top, pa.int32(), mask=~valid),
                                       "image_top_score": pa.array(best, pa.float32(), mask=~valid)})
