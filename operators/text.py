"""Caption text features that select's SQL filters need: language, word and character counts.

Columns in: `caption` (string, may be null). Columns added, for every row (they need no image):
- `caption_lang`: ISO 639-1 code from py3langid (an offline langid.py model, 97 languages),
  null for a null or blank caption;
- `caption_lang_score`: its normalised probability (0-1);
- `caption_words`: whitespace-separated tokens of the caption (DataComp's "more than 2 words");
- `caption_chars`: characters of the stripped caption (DataComp's "more than 5 characters").

Language ID on alt-text is hard: one- and two-word captions ("octopus", "Dog") are often given a
wrong language with a low score. `languages` restricts the candidates (e.g. the languages a crawl
can hold), which helps short texts; the score lets a recipe ask for confidence.
"""

from __future__ import annotations

from functools import cache

import pyarrow as pa
from pydantic import Field

from operators.options import Options
from operators.table import replace_columns, require_columns


class TextOptions(Options):
    language_id: bool = Field(True, description="compute caption_lang / caption_lang_score (py3langid)")
    languages: list[str] | None = Field(
        None, description="restrict language ID to these ISO 639-1 codes (default: all 97 of py3langid)")


@cache
def language_identifier(languages: tuple[str, ...] | None):
    """py3langid's model, loaded once per process (about 0.3 s: far more than classifying a batch)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    if languages:
        unknown = sorted(set(languages) - set(identifier.nb_classes))
        if unknown:
            raise ValueError(f"text.languages: unknown to py3langid: {unknown}")
        identifier.set_languages(list(languages))
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
