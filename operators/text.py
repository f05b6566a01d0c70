"""Caption text features that select's SQL filters need: language, word and character counts.

Columns in: `caption` (string, may be null). Columns added, for every row (they need no image):
- `caption_lang`: language code from py3langid (an offline langid.py model of 142 languages: ISO 639-1 codes
  where a language has one, else ISO 639-3, e.g. `pcm`; `zxx` for no linguistic content) with a prior for
  English (below), null for a null or blank caption;
- `caption_lang_score`: its probability (0-1): py3langid's normalised probability, the prior included;
- `caption_words`: whitespace-separated tokens of the caption (DataComp's "more than 2 words");
- `caption_chars`: characters of the stripped caption (DataComp's "more than 5 characters").

Language ID on alt-text is hard: a short English caption carries few character n-grams, and py3langid
alone, which holds every language equally likely, gives many of them to a language that happens to share
them: "exotic fishes in an aquarium" -> la, "empty armchair in a room" -> ga, on real alt-texts `pcm`, `la`,
`lb`, `bcl` (hand-checked: four in five of py3langid's non-English labels on real alt-texts are English).
So English gets a prior: ENGLISH_PRIOR is added to English's log score (py3langid's class prior, `nb_pc`),
the log odds of a caption being English against any one other language (were half of the captions English
and the rest spread evenly over the 139 other languages: ln 139 ~ 4.9). It weighs on short texts, whose
scores are close, and hardly on long ones. Measured by benchmarks/lid.py (issue 30): English labelled English on COCO's
captions cut to 3 and 4 words 74.2% -> 96.4% and 93.9% -> 98.4% (whole: 100% either way), on the 10k real
alt-texts 73% -> 93% (estimated from a hand-labelled sample); on short non-English texts of 83 languages
(gettext catalogues) mean accuracy 0.8997 -> 0.8985, labelled English 0.2% -> 0.8%. It costs no time.
`languages` restricts the candidates (e.g. the languages a crawl can hold); the prior holds there too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import tempfile
from functools import cache
from pathlib import Path

import pyarrow as pa
from pydantic import Field, field_validator

from operators.options import Options
from operators.table import replace_columns, require_columns


class TextOptions(Options):
    language_id: bool = Field(
        True, description="compute caption_lang / caption_lang_score (py3langid, with a prior for English)")
    languages: list[str] | None = Field(
        None, description="restrict language ID to these codes of py3langid's (default: all 142 of them)")

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, languages: list[str] | None) -> list[str] | None:
        """At config time, before any worker starts: a code py3langid lacks would fail every text batch."""
        if languages:
            known = language_identifier(None).nb_classes  # the cached model
            unknown = sorted(set(languages) - set(known))
            if unknown:
                raise ValueError(f"unknown to py3langid: {unknown} ({_CODES})")
        return languages


_CODES = "its codes: ISO 639-1 where a language has one, e.g. en, de, zh; else ISO 639-3"

# Added to English's log score (natural log): the prior odds of a caption being English against any one other
# language. Chosen on benchmarks/lid.py's measurements (3: too few short English captions found, 8: more
# short non-English texts taken for English); see the module's doc.
ENGLISH_PRIOR = 5.0


@cache
def language_identifier(languages: tuple[str, ...] | None):
    """py3langid's model with the English prior, loaded once per process (far more work than classifying a
    batch); restricted to `languages` where given."""
    identifier = _load_identifier()
    if languages:
        unknown = sorted(set(languages) - set(identifier.nb_classes))
        if unknown:
            raise ValueError(f"text.languages: unknown to py3langid: {unknown} ({_CODES})")
        identifier.set_languages(list(languages))
    return with_english_prior(identifier)


def with_english_prior(identifier, prior: float = ENGLISH_PRIOR):
    """The identifier with `prior` added to English's class prior (its log score for any text), on its own
    copy of the prior vector: set_languages keeps restricting the unaltered model. One addition once, so
    classifying costs what it did."""
    import numpy as np

    if "en" in identifier.nb_classes and prior:
        class_prior = np.array(identifier.nb_pc, copy=True)
        class_prior[[i for i, c in enumerate(identifier.nb_classes) if c == "en"]] += prior
        identifier.nb_pc = class_prior
    return identifier


def cache_dir() -> Path:
    """Where tailor keeps what it can rebuild (TAILOR_CACHE_DIR, else XDG_CACHE_HOME/tailor or ~/.cache/tailor)."""
    if os.environ.get("TAILOR_CACHE_DIR"):
        return Path(os.environ["TAILOR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tailor"


def _load_identifier():
    """py3langid's model: its LZMA file takes about 0.7 CPU-seconds to unpack and convert, paid by every worker
    process that runs the text stage, before its first row. The built identifier is kept once, pickled, in
    the cache folder (named by py3langid's version and a hash of the model file, written atomically);
    loading that takes under 0.1 s. A cache that cannot be read or written costs only the time."""
    import py3langid
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    model = Path(MODEL_FILE) if Path(MODEL_FILE).is_absolute() else Path(MODEL_DIR) / MODEL_FILE
    digest = hashlib.sha256(model.read_bytes()).hexdigest()[:16]  # 4.5 MB: a few ms; one file for every install
    cached = cache_dir() / f"py3langid-{py3langid.__version__}-{digest}.pickle"
    try:
        with open(cached, "rb") as f:
            identifier = pickle.load(f)
        if isinstance(identifier, LanguageIdentifier):
            return identifier
    except Exception:  # missing, partial or from another version: rebuilt below
        pass
    identifier = LanguageIdentifier.from_model_file(model, norm_probs=True)
    partial = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cached.parent, prefix=cached.name, delete=False) as f:
            partial = f.name
            pickle.dump(identifier, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, cached)
    except OSError:
        if partial is not None:
            with contextlib.suppress(OSError):
                os.remove(partial)
    return identifier


class CaptionText:
    """Batch in, batch out: adds caption_lang, caption_lang_score, caption_words, caption_chars."""

    def __init__(self, options: TextOptions | None = None):
        self.options = options or TextOptions()

    @property
    def identifier(self):
        languages = self.options.languages
        return language_identifier(tuple(languages) if languages else None)

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(batch, ("caption",), "caption text features")
        langs, scores, words, chars = [], [], [], []
        identifier = self.identifier if self.options.language_id else None
        for caption in batch.column("caption").to_pylist():
            text = (caption or "").strip()
            words.append(len(text.split()))
            chars.append(len(text))
            if identifier is not None and text:
                lang, score = identifier.classify(text)
                langs.append(lang)
                scores.append(round(float(score), 4))
            else:
                langs.append(None)
                scores.append(None)
        return replace_columns(batch, {
            "caption_lang": pa.array(langs, pa.string()),
            "caption_lang_score": pa.array(scores, pa.float32()),
            "caption_words": pa.array(words, pa.int32()),
            "caption_chars": pa.array(chars, pa.int32()),
        })
