"""MetaCLIP metadata matching: which metadata entries does each caption contain?

Columns in: `caption` (string, may be null). Columns added: `metaclip_entries`
(list<int32>: the sorted, unique ids of the entries the caption contains; empty for a null or
empty caption, or one that matches nothing).

The rule is MetaCLIP's substring matching (Demystifying CLIP Data, `substr_matching`):

- the caption is padded with one space at each end; each of `, . ; : ? !` and the backtick
  gets a space before and after it; tab, newline and CR become spaces;
- each entry is padded with one space at each end;
- an entry matches when its padded form is a substring of the padded caption (case-sensitive;
  repeated spaces are not collapsed).

With `punctuation="faithful"` (the default) an entry that itself holds one of the padded
punctuation marks (e.g. "St. Louis") can never match, exactly as in MetaCLIP. With
`punctuation="fixed"` entries get the same punctuation spacing as captions, so they can.

MetaCLIP loops over all ~500k entries for every caption. Here the padded entries go into one
Aho–Corasick automaton, built once per worker; a batch of captions is joined into one string
(a separator no entry contains keeps matches from crossing captions) and scanned once, and the
(caption, entry) pairs are deduplicated with numpy. The result is the same set of ids, orders
of magnitude faster.

Worldwide matching (MetaCLIP 2, "A Worldwide Scaling Recipe", 2025; `WorldwideMatcher`)
---------------------------------------------------------------------------------------
Metadata: one entry list per language (Wikipedia codes: `en`, `zh`, `no`, ..., and `other`, the list
for captions whose language has none; pipelines/metadata reads a folder of `<lang>.json`).

Columns in: `caption`, and the language column (`caption_lang` from annotate's text stage, or any
column that stands in for language ID, e.g. LAION-5B's `LANGUAGE`). Columns added:
- `match_lang` (string): the metadata language the caption was matched in. The row's language code is
  mapped to the metadata's codes (`metadata_language`: LID_TO_WIKI, then the code itself, then its
  base before `-`/`_`: `zh-TW` -> `zh`, `nb` -> `no`, `cmn` -> `zh`, `eng` -> `en`); a null, unknown or
  unmapped code goes to `other`, and is null (with no entries) only when the metadata has no `other`
  list. A null caption is routed like any other (its language is null: `other`) and matches nothing.
- `metaclip_entries` (list<int32>): the sorted unique ids of the entries matched, ids being positions
  within THAT language's list.

Contract with balancing (the worldwide balance reads exactly these): per caption `key`, `match_lang`,
`metaclip_entries` (with `sha256`/`url` of the annotations to group texts by image); the id table
RUN/metadata/ID.parquet holds `lang`, `entry_id`, `entry`, so (lang, entry_id) names one entry and
(match_lang, each id of metaclip_entries) joins it. A single-list (v1) metadata keeps v1's columns
and id table exactly (no `match_lang`, no `lang`).

The rule per language (MetaCLIP's metaclip/curation/substr_matching.py, `get_spaced_metadata`):
the caption is spaced as in v1 (`spaced_text`); an entry is padded with a space on a side only when
the character on that side is not "CJK-like" (`unspaced_or_punctuation`: CJK ideographs and radicals,
Thai, Lao, Burmese, Khmer, Tibetan, or punctuation: ASCII `string.punctuation` and the full-width
marks of ADDITIONAL_PUNCTUATION). So entries of languages written without spaces match inside words
("東京" in "東京タワー"), Latin entries only at word boundaries, and an entry ending in punctuation
("info@", "April Fools'") is not padded on that side. Two consequences, both MetaCLIP 2's own:
Japanese kana (U+3040-30FF) and Hangul are not in the ranges, so kana entries are padded like Latin;
and for English the rule equals v1's except for entries that begin or end with punctuation (7 of the
222k of the shipped default list: "'hood", "april fools'", "_", "info@", ...).
`punctuation="fixed"` spaces the entry's punctuation as captions are spaced, then pads by the rule.

Automata are built lazily, one per language the batches hold, and kept in an LRU bounded by
`max_automata_mb` (pyahocorasick's own size count); an evicted language is rebuilt from its list
when it comes back (logged, with the advice to raise the budget).
"""

from __future__ import annotations

import itertools
import logging
import string
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import ahocorasick
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.defaults import MatchOptions, Punctuation  # noqa: F401  (MatchOptions: re-exported)
from operators.table import replace_columns, require_columns

log = logging.getLogger(__name__)

PUNCTUATION = ",.;:?!`"  # each gets a space before and after it
SPACE_CHARS = "\t\n\r"  # each becomes a space
ENTRIES_TYPE = pa.list_(pa.int32())

_SPACING = str.maketrans({**{c: f" {c} " for c in PUNCTUATION}, **{c: " " for c in SPACE_CHARS}})
# the same rule as RE2 patterns, for whole Arrow columns
_PUNCT_RE = "([,.;:?!`])"
_SPACE_RE = "[\t\n\r]"
_SEPARATORS = "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\ufdd0\ufdd1\ufdd2\ufdd3"

Padding = Literal["v1", "worldwide"]


def spaced_text(text: str) -> str:
    """A caption as MetaCLIP matches against it: padded, punctuation spaced, tab/newline/CR as spaces."""
    return f" {text.translate(_SPACING)} "


def padded_entry(entry: str, punctuation: Punctuation = "faithful") -> str:
    """An entry as MetaCLIP looks for it in a spaced caption."""
    return spaced_text(entry) if punctuation == "fixed" else f" {entry} "


# ---------------------------------------------------------------- worldwide (MetaCLIP 2)

# Full-width and typographic punctuation that MetaCLIP 2 counts as punctuation besides ASCII's
# (metaclip/curation/substr_matching.py, `additional_punctuation`; metaclip/metadata/build_metadata.py's copy
# also lists the inverted question mark, which the matcher's does not: the matcher's list is the rule).
ADDITIONAL_PUNCTUATION = "，。、；：？！“”‘’（）【】《》〈〉「」『』～—"
_PUNCTUATION_CHARS = frozenset(string.punctuation) | frozenset(ADDITIONAL_PUNCTUATION)
# Code point ranges of scripts written without spaces between words (the same source, `is_cjk_or_similar`)
UNSPACED_RANGES: tuple[tuple[int, int], ...] = (
    (0x4E00, 0x9FFF),    # CJK Unified Ideographs
    (0x3400, 0x4DBF),    # Extension A
    (0x20000, 0x2A6DF),  # Extension B
    (0x2A700, 0x2B73F),  # Extension C
    (0x2B740, 0x2B81F),  # Extension D
    (0x2B820, 0x2CEAF),  # Extension E
    (0x2CEB0, 0x2EBEF),  # Extension F
    (0xF900, 0xFAFF),    # CJK Compatibility Ideographs
    (0x2E80, 0x2EFF),    # CJK Radicals Supplement
    (0x2F00, 0x2FDF),    # Kangxi Radicals
    (0x2FF0, 0x2FFF),    # Ideographic Description Characters
    (0x0E00, 0x0E7F),    # Thai
    (0x0E80, 0x0EFF),    # Lao
    (0x1000, 0x109F),    # Myanmar (Burmese)
    (0x1780, 0x17FF),    # Khmer
    (0x0F00, 0x0FFF),    # Tibetan
)


def unspaced_or_punctuation(char: str) -> bool:
    """MetaCLIP 2's `is_cjk_or_similar`: a character of an unspaced script, or punctuation. An entry is not
    padded on a side whose character is one of these."""
    code = ord(char)
    return any(low <= code <= high for low, high in UNSPACED_RANGES) or char in _PUNCTUATION_CHARS


def worldwide_padded_entry(entry: str, punctuation: Punctuation = "faithful") -> str | None:
    """An entry as MetaCLIP 2 looks for it in a spaced caption: a space added on each side whose character is
    not `unspaced_or_punctuation`. None for an empty entry (it never matches). With punctuation="fixed" the
    entry's own punctuation is spaced first, as a caption's is."""
    if not entry:
        return None
    core = entry
    if punctuation == "fixed":
        core = entry.translate(_SPACING)
        if entry[0] in PUNCTUATION:  # the space the spacing put before a leading mark: the rule decides
            core = core[1:]
        if entry[-1] in PUNCTUATION:
            core = core[:-1]
    left = "" if unspaced_or_punctuation(entry[0]) else " "
    right = "" if unspaced_or_punctuation(entry[-1]) else " "
    return f"{left}{core}{right}"


def _spaced_column(captions: pa.Array) -> pa.Array:
    """spaced_text over a whole string column (null -> ""), vectorised in Arrow."""
    text = pc.fill_null(captions.cast(pa.large_string()), "")
    text = pc.replace_substring_regex(text, _PUNCT_RE, r" \1 ")
    text = pc.replace_substring_regex(text, _SPACE_RE, " ")
    edge = pa.scalar("", pa.large_string())
    return pc.binary_join_element_wise(edge, text, edge, pa.scalar(" ", pa.large_string()))  # " " + text + " "


class MetaclipMatcher:
    """Callable operator: batch -> batch with `metaclip_entries` (see the module docstring).

    Entry ids are positions in `entries`. Entries whose padded forms coincide (duplicates, or
    "St. Louis" / "St . Louis" in fixed mode) all match together, as in MetaCLIP's loop.
    """

    def __init__(self, entries: Sequence[str], punctuation: Punctuation = "faithful",
                 caption_column: str = "caption", output_column: str = "metaclip_entries",
                 padding: Padding = "v1"):
        if punctuation not in ("faithful", "fixed"):
            raise ValueError(f"punctuation must be 'faithful' or 'fixed', got {punctuation!r}")
        if padding not in ("v1", "worldwide"):
            raise ValueError(f"padding must be 'v1' or 'worldwide', got {padding!r}")
        self.punctuation = punctuation
        self.padding = padding
        pad = padded_entry if padding == "v1" else worldwide_padded_entry
        self.caption_column = caption_column
        self.output_column = output_column
        self.n_entries = len(entries)
        if self.n_entries >= 2**31:
            raise ValueError(f"{self.n_entries} entries do not fit int32 ids")
        first_id: dict[str, int] = {}
        self._also: dict[int, list[int]] = {}  # first id of a padded form -> the other ids with that form
        for entry_id, entry in enumerate(entries):
            padded = pad(entry, punctuation)
            if padded is None:  # an empty entry under the worldwide rule: never matches
                continue
            first = first_id.setdefault(padded, entry_id)
            if first != entry_id:
                self._also.setdefault(first, []).append(entry_id)
        if not first_id:
            raise ValueError("no metadata entries to match")
        automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        # Sorted insertion lays trie nodes out in depth-first order: a scan touches memory close to the
        # last node it visited, about twice as fast on 500k entries as the metadata's own order.
        for pattern in sorted(first_id):
            automaton.add_word(pattern, first_id[pattern])
        automaton.make_automaton()
        used_chars = set().union(*first_id)
        self._automaton = automaton
        # No pattern holds the separator, so no match can span two captions.
        self._separator = next((c for c in _SEPARATORS if c not in used_chars), None)
        if self._separator is None:
            raise ValueError("every candidate separator character occurs in some entry")
        if self._also:
            log.info("%d metadata entries share their padded form with an earlier entry",
                     sum(len(v) for v in self._also.values()))

    @property
    def automaton_bytes(self) -> int:
        """The automaton's size as pyahocorasick counts it (about 4/5 of what it adds to RSS)."""
        return int(self._automaton.get_stats()["total_size"])

    def match(self, captions: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> pa.ListArray:
        """The list<int32> of matched entry ids for each caption."""
        if isinstance(captions, pa.ChunkedArray):
            captions = captions.combine_chunks()
        elif not isinstance(captions, pa.Array):
            captions = pa.array(captions, pa.string())
        n = len(captions)
        if n == 0:
            return pa.array([], ENTRIES_TYPE)
        spaced = _spaced_column(captions)
        # one string: spaced captions, each followed by the separator
        joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, n], pa.int32()), spaced),
                                pa.scalar(self._separator, pa.large_string()))[0].as_py() + self._separator
        lengths = pc.utf8_length(spaced).to_numpy(zero_copy_only=False).astype(np.int64) + 1
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        flat = np.fromiter(itertools.chain.from_iterable(self._automaton.iter(joined)), dtype=np.int64)
        ends, ids = flat[0::2], flat[1::2]
        rows = np.searchsorted(starts, ends, side="right") - 1
        if self._also:
            rows, ids = self._add_shared(rows, ids)
        # a null or empty caption matches nothing (its padded form is only two spaces)
        empty = pc.fill_null(pc.equal(pc.binary_length(captions), 0), True).to_numpy(zero_copy_only=False)
        if empty.any():
            keep = ~empty[rows]
            rows, ids = rows[keep], ids[keep]
        pairs = np.sort((rows << 32) | ids)  # by caption, then id (np.sort: much faster than np.unique)
        pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))] if pairs.size else pairs
        rows, ids = pairs >> 32, (pairs & 0xFFFFFFFF).astype(np.int32)
        offsets = np.searchsorted(rows, np.arange(n + 1)).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids, pa.int32()))

    def _add_shared(self, rows: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shared = np.isin(ids, np.fromiter(self._also, dtype=np.int64))
        extra_rows, extra_ids = [], []
        for row, entry_id in zip(rows[shared].tolist(), ids[shared].tolist(), strict=True):
            others = self._also[entry_id]
            extra_rows.extend([row] * len(others))
            extra_ids.extend(others)
        return (np.concatenate([rows, np.array(extra_rows, np.int64)]),
                np.concatenate([ids, np.array(extra_ids, np.int64)]))

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, (self.caption_column,), "metadata matching")
        return replace_columns(batch, {self.output_column: self.match(batch.column(self.caption_column))})



# ---------------------------------------------------------------- routing: language ID code -> metadata code

# MetaCLIP 2 routes a caption by its language ID through `lid_to_wiki` (metaclip/curation/substr_matching.py),
# which the release leaves empty ("customize your LID lang set to metadata/wiki lang set"); its
# metadata/align_lid_to_wiki.py merges Wikipedia variants into their base code (zh_yue, zh_classical,
# zh_min_nan -> zh; be_tarask -> be) and Wikipedias no LID code maps to into `other`. This is tailor's table,
# for the LIDs tailor meets: py3langid (caption_lang: ISO 639-1 where a language has one, else ISO 639-3),
# CLD3 (LAION-5B's LANGUAGE column: 639-1 with legacy codes such as `iw`, and `-Latn` variants), and
# ISO 639-3 LIDs (fastText/NLLB style `eng_Latn`, GlotLID): the script or region part is dropped by
# `metadata_language` when the full code has no list.
#
# ISO 639-2/T, 639-2/B and 639-3 three-letter codes of the languages that have a 639-1 code -> that code
# (generated from the ISO 639 tables as pycountry ships them).
_ISO639_3_TO_1 = dict(pair.split(":") for pair in """
aar:aa abk:ab afr:af aka:ak alb:sq amh:am ara:ar arg:an arm:hy asm:as ava:av ave:ae aym:ay aze:az bak:ba
bam:bm baq:eu bel:be ben:bn bis:bi bod:bo bos:bs bre:br bul:bg bur:my cat:ca ces:cs cha:ch che:ce chi:zh
chu:cu chv:cv cor:kw cos:co cre:cr cym:cy cze:cs dan:da deu:de div:dv dut:nl dzo:dz ell:el eng:en epo:eo
est:et eus:eu ewe:ee fao:fo fas:fa fij:fj fin:fi fra:fr fre:fr fry:fy ful:ff geo:ka ger:de gla:gd gle:ga
glg:gl glv:gv gre:el grn:gn guj:gu hat:ht hau:ha hbs:sh heb:he her:hz hin:hi hmo:ho hrv:hr hun:hu hye:hy
ibo:ig ice:is ido:io iii:ii iku:iu ile:ie ina:ia ind:id ipk:ik isl:is ita:it jav:jv jpn:ja kal:kl kan:kn
kas:ks kat:ka kau:kr kaz:kk khm:km kik:ki kin:rw kir:ky kom:kv kon:kg kor:ko kua:kj kur:ku lao:lo lat:la
lav:lv lim:li lin:ln lit:lt ltz:lb lub:lu lug:lg mac:mk mah:mh mal:ml mao:mi mar:mr may:ms mkd:mk mlg:mg
mlt:mt mon:mn mri:mi msa:ms mya:my nau:na nav:nv nbl:nr nde:nd ndo:ng nep:ne nld:nl nno:nn nob:nb nor:no
nya:ny oci:oc oji:oj ori:or orm:om oss:os pan:pa per:fa pli:pi pol:pl por:pt pus:ps que:qu roh:rm ron:ro
rum:ro run:rn rus:ru sag:sg san:sa sin:si slk:sk slo:sk slv:sl sme:se smo:sm sna:sn snd:sd som:so sot:st
spa:es sqi:sq srd:sc srp:sr ssw:ss sun:su swa:sw swe:sv tah:ty tam:ta tat:tt tel:te tgk:tg tgl:tl tha:th
tib:bo tir:ti ton:to tsn:tn tso:ts tuk:tk tur:tr twi:tw uig:ug ukr:uk urd:ur uzb:uz ven:ve vie:vi vol:vo
wel:cy wln:wa wol:wo xho:xh yid:yi yor:yo zha:za zho:zh zul:zu
""".split())

# Codes whose Wikipedia differs from the ISO code, legacy codes, and individual languages of a macrolanguage
# whose Wikipedia is the macrolanguage's.
_WIKI_CODES = {
    # Norwegian: Wikipedia `no` is Bokmål (MetaCLIP's wordnet_to_wiki: nob -> no); `nn` is Nynorsk
    "nb": "no", "nob": "no", "nor": "no",
    # legacy ISO 639-1 codes (CLD3 and Java locales still give iw, in, ji, jw), Moldavian, Filipino
    "iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro", "fil": "tl",
    # Chinese: Mandarin, and the varieties whose Wikipedias MetaCLIP 2 merges into zh
    "cmn": "zh", "yue": "zh", "lzh": "zh", "nan": "zh",
    # Arabic: Standard and dialects without a Wikipedia of their own (ary, arz have theirs)
    "arb": "ar", "acm": "ar", "acq": "ar", "aeb": "ar", "ajp": "ar", "apc": "ar", "ars": "ar", "ayl": "ar",
    # individual languages -> their macrolanguage's Wikipedia
    "zsm": "ms", "zlm": "ms", "pes": "fa", "prs": "fa", "ekk": "et", "lvs": "lv", "khk": "mn", "npi": "ne",
    "uzn": "uz", "uzs": "uz", "azj": "az", "plt": "mg", "swh": "sw", "swc": "sw", "ory": "or", "pbt": "ps",
    "pbu": "ps", "pst": "ps", "ydd": "yi", "kmr": "ku", "gaz": "om", "hae": "om", "quy": "qu", "quz": "qu",
    "ayr": "ay", "gug": "gn", "fuv": "ff", "fuc": "ff", "kng": "kg", "ike": "iu", "kpv": "kv", "bik": "bcl",
    "kok": "gom", "knn": "gom", "aln": "sq",
    "als": "sq",  # ISO 639-3 `als` is Tosk Albanian (NLLB's Albanian); Wikipedia `als` is Alemannic (gsw)
    # Wikipedias named otherwise than their language's ISO code
    "gsw": "als", "bho": "bh", "nrf": "nrm", "sgs": "bat_smg", "vro": "fiu_vro", "rup": "roa_rup",
    "cbk": "cbk_zam", "egl": "eml", "rgn": "eml",
    "be_tarask": "be",
}

LID_TO_WIKI: dict[str, str] = {**{k: _WIKI_CODES.get(v, v) for k, v in _ISO639_3_TO_1.items()}, **_WIKI_CODES}


def _normal_code(code: str) -> str:
    return code.strip().lower().replace("-", "_")


def metadata_language(code: str | None, languages: Iterable[str]) -> str | None:
    """The metadata language a caption of language ID `code` is matched in: the first of LID_TO_WIKI[code],
    code, LID_TO_WIKI[base], base (base: the code before `_`/`-`, e.g. `zh` of `zh-TW`, `eng` of `eng_Latn`)
    that has a list (codes compared case-insensitively, `-` as `_`); else `other` when the metadata has it;
    else None (the caption is matched in no list)."""
    return _Router(languages)(code)


class _Router:
    """metadata_language, memoised per distinct code, over one metadata's languages."""

    def __init__(self, languages: Iterable[str]):
        self.lookup = {_normal_code(lang): lang for lang in languages}
        self.other = self.lookup.get("other")
        self.memo: dict[str | None, str | None] = {}

    def __call__(self, code: str | None) -> str | None:
        if code in self.memo:
            return self.memo[code]
        found = self.other
        if code is not None and code.strip():
            normal = _normal_code(code)
            base = normal.split("_", 1)[0]
            for candidate in (LID_TO_WIKI.get(normal), normal, LID_TO_WIKI.get(base), base):
                if candidate is not None and candidate in self.lookup:
                    found = self.lookup[candidate]
                    break
        self.memo[code] = found
        return found


# ---------------------------------------------------------------- the worldwide matcher

DEFAULT_AUTOMATA_MB: int = MatchOptions.model_fields["max_automata_mb"].default


class WorldwideMatcher:
    """Callable operator: batch -> batch with `match_lang` and `metaclip_entries` (module docstring).

    `languages`: the metadata's language codes; `load(lang)`: that language's entry list, called when its
    automaton is first needed (and again if it was evicted). Automata are kept in an LRU whose sizes add up
    to at most `max_automata_mb` (one automaton larger than the budget is still built and used alone).
    """

    def __init__(self, languages: Iterable[str], load: Callable[[str], Sequence[str]],
                 punctuation: Punctuation = "faithful", caption_column: str = "caption",
                 language_column: str = "caption_lang", output_column: str = "metaclip_entries",
                 lang_column: str = "match_lang", max_automata_mb: float = DEFAULT_AUTOMATA_MB):
        if punctuation not in ("faithful", "fixed"):
            raise ValueError(f"punctuation must be 'faithful' or 'fixed', got {punctuation!r}")
        self.languages = sorted(languages)
        if not self.languages:
            raise ValueError("no metadata languages to match")
        self.load = load
        self.punctuation = punctuation
        self.caption_column = caption_column
        self.language_column = language_column
        self.output_column = output_column
        self.lang_column = lang_column
        self.budget = max_automata_mb * 2**20
        self.route = _Router(self.languages)
        self._automata: OrderedDict[str, MetaclipMatcher] = OrderedDict()  # least recently used first
        self._sizes: dict[str, int] = {}
        self.builds: Counter = Counter()  # automata built per language (more than 1: evicted and rebuilt)
        self.build_seconds = 0.0
        self._warned = False
        self._rebuilt = False

    @classmethod
    def from_lists(cls, lists: Mapping[str, Sequence[str]], **kwargs) -> WorldwideMatcher:
        """A matcher over in-memory lists: {lang: entries}."""
        return cls(list(lists), lists.__getitem__, **kwargs)

    @property
    def automata_bytes(self) -> int:
        return sum(self._sizes.values())

    def cached_languages(self) -> list[str]:
        return list(self._automata)

    def matcher(self, lang: str) -> MetaclipMatcher:
        """The automaton of `lang`: cached, or built now (evicting the least recently used over the budget)."""
        found = self._automata.get(lang)
        if found is not None:
            self._automata.move_to_end(lang)
            return found
        import time

        entries = self.load(lang)
        started = time.perf_counter()
        matcher = MetaclipMatcher(entries, self.punctuation, padding="worldwide")
        self.build_seconds += time.perf_counter() - started
        del entries
        self.builds[lang] += 1
        if self.builds[lang] == 2 and not self._rebuilt:
            self._rebuilt = True
            log.warning("worldwide matching: the automaton of %r was evicted and is built again: the languages "
                        "matched need more than match.max_automata_mb=%d (further rebuilds are not logged; "
                        "`builds` counts them)", lang, self.budget / 2**20)
        self._automata[lang] = matcher
        self._sizes[lang] = matcher.automaton_bytes
        while self.automata_bytes > self.budget and len(self._automata) > 1:
            oldest = next(iter(self._automata))
            del self._automata[oldest], self._sizes[oldest]
        return matcher

    def routed(self, codes: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> pa.Array:
        """The metadata language of each row (null where the metadata has no list for it, not even `other`)."""
        if isinstance(codes, pa.ChunkedArray):
            codes = codes.combine_chunks()
        elif not isinstance(codes, pa.Array):
            codes = pa.array(codes, pa.string())
        if not (pa.types.is_string(codes.type) or pa.types.is_large_string(codes.type)):
            codes = codes.cast(pa.string())
        encoded = codes.dictionary_encode()
        targets = pa.array([self.route(code) for code in encoded.dictionary.to_pylist()] + [self.route(None)],
                           pa.string())
        indices = pc.fill_null(encoded.indices, len(encoded.dictionary))  # a null code: the last target
        return targets.take(indices)

    def match(self, captions: pa.Array | pa.ChunkedArray | Sequence[str | None],
              codes: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> tuple[pa.Array, pa.ListArray]:
        """(match_lang, metaclip_entries) for each caption, given each caption's language code."""
        if isinstance(captions, pa.ChunkedArray):
            captions = captions.combine_chunks()
        elif not isinstance(captions, pa.Array):
            captions = pa.array(captions, pa.string())
        langs = self.routed(codes)
        n = len(captions)
        if len(langs) != n:
            raise ValueError(f"{n} captions but {len(langs)} language codes")
        if n == 0:
            return langs, pa.array([], ENTRIES_TYPE)
        encoded = langs.dictionary_encode()
        names = encoded.dictionary.to_pylist()
        group = pc.fill_null(encoded.indices, len(names)).to_numpy(zero_copy_only=False).astype(np.int64)
        order = np.argsort(group, kind="stable")
        bounds = np.searchsorted(group[order], np.arange(len(names) + 2))
        # languages whose automaton is cached first: the others may evict, but not before the cached are used
        todo = sorted(range(len(names)), key=lambda k: names[k] not in self._automata)
        parts_rows, parts = [], []
        for k in todo:
            rows = order[bounds[k]:bounds[k + 1]]
            parts_rows.append(rows)
            parts.append(self.matcher(names[k]).match(captions.take(pa.array(rows))))
        unrouted = order[bounds[len(names)]:bounds[len(names) + 1]]
        if unrouted.size:
            parts_rows.append(unrouted)
            parts.append(pa.ListArray.from_arrays(pa.array(np.zeros(unrouted.size + 1, np.int32)),
                                                  pa.array([], pa.int32())))
        rows = np.concatenate(parts_rows)
        position = np.empty(n, np.int64)
        position[rows] = np.arange(n)
        return langs, pa.concat_arrays(parts).take(pa.array(position))

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, (self.caption_column,), "metadata matching")
        if self.language_column not in batch.column_names:
            raise KeyError(f"worldwide metadata matching routes captions by language: no column "
                           f"{self.language_column!r} (columns: {', '.join(batch.column_names)}); annotate's text "
                           "stage writes caption_lang, or name a column with match.language_column")
        codes = batch.column(self.language_column)
        if not self._warned and batch.num_rows and codes.null_count == batch.num_rows \
                and batch.column(self.caption_column).null_count < batch.num_rows:
            self._warned = True
            log.warning("worldwide matching: column %r holds no language code in a batch of %d captions: they go "
                        "to `other` (is annotate's text.language_id off?)", self.language_column, batch.num_rows)
        langs, entries = self.match(batch.column(self.caption_column), codes)
        return replace_columns(batch, {self.lang_column: langs, self.output_column: entries})
