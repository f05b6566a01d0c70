"""Independent references for MetaCLIP matching and balancing, for tests only (written from the rules,
not from the operator or the SQL).

`metaclip_substr_matching` is MetaCLIP's own loop over every entry: exact, and slow (~25 ms per
caption against 500k entries). `span_matching` is an exact shortcut for checking many captions: a
padded entry starts and ends with a space, so it occurs in the spaced caption exactly when it equals
some slice of the caption that starts and ends at a space.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

PUNCTS_TO_WRAP = [",", ".", ";", ":", "?", "!", "`"]
CHARS_TO_SPACE = ["\t", "\n", "\r"]


def spacing(text: str) -> str:
    """MetaCLIP's caption spacing, step by step."""
    spaced_text = f" {text} "
    for punct in PUNCTS_TO_WRAP:
        spaced_text = spaced_text.replace(punct, f" {punct} ")
    for char in CHARS_TO_SPACE:
        spaced_text = spaced_text.replace(char, " ")
    return spaced_text


def spaced_entries(entries: list[str], fixed: bool = False) -> list[str]:
    return [spacing(e) if fixed else f" {e} " for e in entries]


def metaclip_substr_matching(text: str | None, spaced_metadata: list[str]) -> list[int]:
    """MetaCLIP's brute force: every entry id whose padded form is a substring of the spaced caption."""
    if not text:
        return []
    text = spacing(text)
    return [entry_id for entry_id, entry in enumerate(spaced_metadata) if entry in text]


class SpanOracle:
    """All captions against all entries, by looking up every space-to-space slice of the caption."""

    def __init__(self, spaced_metadata: list[str]):
        self.ids: dict[str, list[int]] = defaultdict(list)
        for entry_id, entry in enumerate(spaced_metadata):
            self.ids[entry].append(entry_id)
        self.longest = max(len(e) for e in spaced_metadata)

    def __call__(self, text: str | None) -> list[int]:
        if not text:
            return []
        text = spacing(text)
        spaces = [i for i, c in enumerate(text) if c == " "]
        found: set[int] = set()
        for a, start in enumerate(spaces):
            for end in spaces[a + 1:]:
                if end + 1 - start > self.longest:
                    break
                found.update(self.ids.get(text[start:end + 1], ()))
        return sorted(found)


# ---------------------------------------------------------------- balancing

def draw(seed: int, key: str, entry: str) -> float:
    return int(hashlib.md5(f"{seed}|{key}|{entry}".encode()).hexdigest()[:13], 16) / 2**52


def reference_decisions(lists: dict[str, list[int]], entries: list[str], t: float, seed: int,
                        images: dict[str, str] | None = None) -> dict[str, str]:
    """MetaCLIP (and MetaCLIP 2 with `images`) written from the papers' rule, in plain Python."""
    counts: dict[int, int] = defaultdict(int)
    for ids in lists.values():
        for i in set(ids):
            counts[i] += 1

    def kept(key: str) -> bool:
        return any(draw(seed, key, entries[i]) < t / max(counts[i], t) for i in set(lists[key]))

    if images is None:
        return {k: ("no_match" if not ids else "kept" if kept(k) else "balanced_out") for k, ids in lists.items()}
    texts: dict[str, list[str]] = defaultdict(list)
    for key, ids in lists.items():
        if ids:
            texts[images.get(key) or key].append(key)
    picked = {min(keys, key=lambda k, img=img: hashlib.md5(f"{seed}|text|{img}|{k}".encode()).hexdigest())
              for img, keys in texts.items()}
    return {k: ("no_match" if not ids else "other_text" if k not in picked else "kept" if kept(k)
                else "balanced_out") for k, ids in lists.items()}


def reference_worldwide(lists: dict[str, list[int]], langs: dict[str, str], entries: dict[str, list[str]],
                        t_en: float, seed: int, images: dict[str, str | None]) -> dict[str, str]:
    """MetaCLIP 2's worldwide balancing written from its rules in plain Python (no numpy): counts per
    language over every text (each language's whole list, zeros included), English's tail proportion at
    t_en (counts strictly below t_en), every other language's t the sorted count whose cumulative share is
    nearest (first on ties), one matched text per image, kept when any per-entry draw succeeds."""
    counts: dict[str, list[int]] = {lang: [0] * len(entries[lang]) for lang in set(langs.values())}
    for key, ids in lists.items():
        for i in set(ids):
            counts[langs[key]][i] += 1
    english = counts["en"]
    p = sum(c for c in english if c < t_en) / sum(english)

    def nearest(values: list[int]) -> int:
        ordered, total, running, best, best_gap = sorted(values), sum(values), 0, 0, None
        for i, c in enumerate(ordered):
            running += c
            gap = abs(running / total - p)
            if best_gap is None or gap < best_gap:
                best, best_gap = i, gap
        return ordered[best]

    t = {lang: t_en if lang == "en" else nearest(values) for lang, values in counts.items() if sum(values)}

    def kept(key: str) -> bool:
        lang = langs[key]
        return any(draw(seed, key, entries[lang][i]) < t[lang] / max(counts[lang][i], t[lang]) for i in set(lists[key]))

    texts: dict[str, list[str]] = defaultdict(list)
    for key, ids in lists.items():
        if ids:
            texts[images.get(key) or key].append(key)
    picked = {min(keys, key=lambda k, img=img: hashlib.md5(f"{seed}|text|{img}|{k}".encode()).hexdigest())
              for img, keys in texts.items()}
    return {k: ("no_match" if not ids else "other_text" if k not in picked else "kept" if kept(k)
                else "balanced_out") for k, ids in lists.items()}
