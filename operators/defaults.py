"""Operator options and defaults that the command line reads when it builds its flags
(pipelines/core/cli_options.py), kept free of numpy, pyarrow and Ray: building `tailor`'s parser imports
pydantic only. Their operators re-export them: MatchOptions (operators/match.py), DEFAULT_TEMPLATES
(operators/clip.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from operators.options import Options

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)  # CLIP zero-shot prompts: one {} for the class name

Punctuation = Literal["faithful", "fixed"]


class MatchOptions(Options):
    """MetaCLIP metadata matching (operators/match.py): annotate's `match:` section and `tailor match`'s options."""

    metadata: str = Field(
        "default",
        description="metadata entries: 'default' (the offline list shipped with tailor), or a path/fsspec URL "
        "of MetaCLIP's metadata.json, a JSON list of strings, or one entry per line (.gz ok); or a folder of "
        "per-language lists <lang>.json (MetaCLIP 2 worldwide matching: adds match_lang)",
    )
    punctuation: Punctuation = Field(
        "faithful",
        description="'faithful': as MetaCLIP, entries holding , . ; : ? ! or ` never match; "
        "'fixed': entries get the caption's punctuation spacing, so they can",
    )
    language_column: str = Field(
        "caption_lang",
        description="worldwide metadata: the column of language codes that routes each caption to a language's "
        "list (caption_lang: annotate's language ID; or an input column such as LAION-5B's LANGUAGE)",
    )
    max_automata_mb: int = Field(
        6144, ge=1,
        description="worldwide metadata: memory (MB, pyahocorasick's count; RSS ~1.3x) for the per-language "
        "automata each matcher keeps, an LRU: an evicted language is rebuilt when it comes back. The default "
        "holds all of a 300-language MetaCLIP 2-sized metadata (~17M entries, ~5 GB)",
    )
