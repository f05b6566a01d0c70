"""MetaCLIP metadata: the list of entries captions are matched against.

`load_metadata("default")` is the offline list shipped with tailor (`default.txt.gz`, rebuilt by
`build_default.py`): WordNet 3.0 synset head names, frequent English unigrams (wordfreq), and the
numbers 0-99. MetaCLIP's own 500k list adds Wikipedia bigrams (PMI >= 30) and popular Wikipedia
titles, which cannot be derived offline; pass its `metadata.json` (or any list) instead:

    load_metadata("s3://bucket/metaclip/metadata.json")

Accepted files (local or fsspec URL, optionally compressed, by extension): a JSON list of strings
(MetaCLIP's metadata.json; a .json name or a leading '['), or one entry per line. The entry id is
the position in the list, as in MetaCLIP; blank lines of a text file are skipped, a JSON list is
taken as it is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pyarrow as pa

DEFAULT = Path(__file__).parent / "default.txt.gz"


class MetadataError(ValueError):
    """The metadata file is missing or not a list of strings; the message names the file."""


@dataclass(frozen=True)
class Metadata:
    entries: list[str] = field(repr=False)
    source: str

    @property
    def id(self) -> str:
        """Content hash: equal ids, equal entries in equal order."""
        digest = hashlib.sha256()
        for entry in self.entries:
            digest.update(entry.encode("utf-8", "surrogatepass"))
            digest.update(b"\x00")
        return digest.hexdigest()[:16]

    def table(self) -> pa.Table:
        """entry_id (int32), entry (string): the id -> entry mapping that match lists refer to."""
        return pa.table({"entry_id": pa.array(range(len(self.entries)), pa.int32()),
                         "entry": pa.array(self.entries, pa.string())})


def load_metadata(source: str | Path = "default") -> Metadata:
    """Read metadata entries from 'default', a JSON list of strings, or a one-entry-per-line file."""
    source = str(source)
    path = str(DEFAULT) if source == "default" else source
    try:
        with fsspec.open(path, "rt", encoding="utf-8", compression="infer") as f:
            text = f.read()
    except FileNotFoundError:
        raise MetadataError(f"metadata file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise MetadataError(f"metadata file {path} is not UTF-8 text: {err}") from None
    except Exception as err:  # a refused or unreachable store (no S3 credentials, 403, no such bucket): one line
        text = " ".join(f"{type(err).__name__}: {err}".split())
        raise MetadataError(f"metadata file {path} cannot be read: {text}") from None
    name = path.lower().removesuffix(".gz").removesuffix(".bz2").removesuffix(".xz").removesuffix(".zst")
    if name.endswith(".json") or text.lstrip().startswith("["):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as err:
            raise MetadataError(f"metadata file {path} looks like JSON but does not parse: {err}") from None
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise MetadataError(f"metadata file {path} must hold a JSON list of strings")
    else:
        lines = (line.removesuffix("\r") for line in text.split("\n"))
        entries = [line for line in lines if line.strip()]
    if not entries:
        raise MetadataError(f"metadata file {path} holds no entries")
    return Metadata(entries, source)
