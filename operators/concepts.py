"""Concept tags of a caption (lemmas) and of an image (zero-shot on its stored CLIP embedding).

Text (*No "Zero-Shot" Without Exponential Data*): a caption contains a concept when all of the
lemmas of the concept's name, or of one of its synonyms, occur among the caption's lemmas (a bag
of lemmas within one caption, not an exact phrase). Captions and concept names are lower-cased,
cut into word tokens (`[^\\W_]+`, so "hot-dog" is two tokens and "hotdog" one) and lemmatized
offline with simplemma ("dogs" -> dog, "mice" -> mouse).

One refinement, `nested` (on by default): the words of a longer concept written as a phrase do
not also count for a shorter concept whose lemmas they contain. "a hot dog" names the food, not
the animal, so it counts for "hot dog" and not for "dog"; "a dog and a hot dog" counts for both;
"a hot day with my dog" counts for both under either rule (the bag rule cannot tell). The pure
bag-of-lemmas ids are kept as `text_concepts_bag`, so both definitions can be counted.

`ConceptMatcher` — columns in: `caption` (string, may be null). Columns added:
`text_concepts` (list<int32>: sorted unique concept ids, nested rule), `text_concepts_bag`
(list<int32>: the paper's pure bag rule), `text_variants` (list<int32>: the names/synonyms that
matched, nested rule; a variant id indexes `Concepts.variants()`).

Image: concept text embeddings (prompt templates averaged over a concept's names, e.g.
"a photo of a {}.") against each stored, L2-normalised image embedding; no image is read again.
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
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
import pyarrow as pa

from operators.table import replace_columns

log = logging.getLogger(__name__)

IDS = pa.list_(pa.int32())
_TOKEN = re.compile(r"[^\W_]+")
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


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


def _occurrences(sequence: list[str], phrase: tuple[str, ...]) -> list[int]:
    n = len(phrase)
    return [i for i in range(len(sequence) - n + 1) if tuple(sequence[i:i + n]) == phrase]


class ConceptMatcher:
    """Bag-of-lemmas concept matching through an inverted index (lemma -> variants holding it)."""

    def __init__(self, concepts: Concepts, lang: str = "en", nested: bool = True):
        self.concepts = concepts
        self.nested = nested
        self.lemmatize = Lemmatizer(lang)
        variants = concepts.variants()
        self.variant_concept = np.array([k for k, _ in variants], dtype=np.int32)
        self.variant_lemmas: list[tuple[str, ...]] = [tuple(self.lemmatize(text)) for _, text in variants]
        self.variant_sets = [frozenset(lemmas) for lemmas in self.variant_lemmas]
        self.index: dict[str, list[int]] = {}
        for v, lemmas in enumerate(self.variant_lemmas):
            if not lemmas:
                log.warning("concept name %r has no word tokens; it never matches", variants[v][1])
                continue
            self.index.setdefault(lemmas[0], []).append(v)
        # variants whose lemma set strictly contains v's: a phrase of one of them can hide v
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
        sequence = self.lemmatize(caption)
        present = set(sequence)
        bag = sorted({v for lemma in present for v in self.index.get(lemma, ())
                      if self.variant_sets[v] <= present})
        kept = bag
        if self.nested and bag:
            matched = set(bag)
            kept = [v for v in bag if not self._hidden(v, sequence, matched)]
        concepts = sorted({int(self.variant_concept[v]) for v in kept})
        concepts_bag = sorted({int(self.variant_concept[v]) for v in bag})
        return concepts, concepts_bag, kept

    def _hidden(self, v: int, sequence: list[str], matched: set[int]) -> bool:
        """True when v's lemmas occur only inside phrases of longer matched variants."""
        covered: set[int] = set()
        for w in self.containers[v]:
            if w in matched:
                phrase = self.variant_lemmas[w]
                for start in _occurrences(sequence, phrase):
                    covered.update(range(start, start + len(phrase)))
        if not covered:
            return False
        remaining = {lemma for i, lemma in enumerate(sequence) if i not in covered}
        return not self.variant_sets[v] <= remaining

    def __call__(self, batch: pa.Table) -> pa.Table:
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
        logits = self.temperature * cosine
        logits -= logits.max(axis=1, keepdims=True)
        prob = np.exp(logits)
        return prob / prob.sum(axis=1, keepdims=True)

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
        column = batch.column("image_emb").combine_chunks()
        n = batch.num_rows
        valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        ids: list[list[int] | None] = [None] * n
        top = np.zeros(n, dtype=np.int32)
        best = np.zeros(n, dtype=np.float32)
        rows = np.flatnonzero(valid)
        if len(rows):
            dim = column.type.list_size
            flat = column.take(pa.array(rows)).flatten().to_numpy(zero_copy_only=False)
            tagged, top[rows], best[rows] = self.tag(np.asarray(flat, dtype=np.float32).reshape(len(rows), dim))
            for r, t in zip(rows.tolist(), tagged, strict=True):
                ids[r] = t
        return replace_columns(batch, {"image_concepts": pa.array(ids, IDS),
                                       "image_top": pa.array(top, pa.int32(), mask=~valid),
                                       "image_top_score": pa.array(best, pa.float32(), mask=~valid)})


class ConceptTextEncoder:
    """A CLIP-family checkpoint's text tower: prompt templates x names -> one unit vector per concept."""

    def __init__(self, model_path: str, device: str = "cpu"):
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.torch = torch
        self.device = "cuda" if device == "auto" and torch.cuda.is_available() else (
            "cpu" if device == "auto" else device)
        self.model = AutoModel.from_pretrained(model_path).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        config = AutoConfig.from_pretrained(model_path)
        self.pad_to_max = getattr(config, "model_type", "") in {"siglip", "siglip2"}
        scale = getattr(self.model, "logit_scale", None)
        self.logit_scale = float(scale.detach().exp()) if scale is not None else None

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        from operators.embed import _features

        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size]), truncation=True, return_tensors="pt",
                                    padding="max_length" if self.pad_to_max else True)
            inputs = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            with self.torch.inference_mode():
                emb = _features(self.model.get_text_features(**inputs)).float()
            out.append(self.torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    def concepts(self, concepts: Concepts, templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
        """Mean of the prompt embeddings of every name and synonym of a concept, re-normalised: (C, D)."""
        variants = concepts.variants()
        prompts = [template.format(text) for _, text in variants for template in templates]
        emb = self.encode(prompts)
        owner = np.repeat(np.array([k for k, _ in variants]), len(templates))
        sums = np.zeros((len(concepts), emb.shape[1]), dtype=np.float64)
        np.add.at(sums, owner, emb)
        sums /= np.linalg.norm(sums, axis=1, keepdims=True)
        return sums.astype(np.float32)
