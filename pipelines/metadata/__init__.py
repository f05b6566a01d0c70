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

Worldwide metadata (MetaCLIP 2): a folder (local or fsspec URL) of one entry list per language,
named `<lang>.json` as MetaCLIP 2's `align_lid_to_wiki.py` writes `data/metadata/` (any of the
single-list formats above works per file: `<lang>.txt`, `<lang>.json.gz`, ...). `<lang>` is the
language's Wikipedia code (`en`, `zh`, `no`, `als`, ...) and `other.json`, when present, is the list
of captions whose language has no list of its own. Other files (MetaCLIP's `<lang>.pkl` automata,
hidden files, sub-folders) are ignored. `load_metadata(folder)` returns a `WorldwideMetadata`, which
lists the languages and reads a language's entries only when asked: a worker never holds the lists
it does not match against. Entry ids are positions within their language's list; (lang, entry_id)
names an entry.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
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


def load_metadata(source: str | Path = "default") -> Metadata | WorldwideMetadata:
    """Read metadata entries from 'default', a JSON list of strings, or a one-entry-per-line file; or, for a
    folder, the WorldwideMetadata of its per-language lists (see the module docstring)."""
    source = str(source)
    path = str(DEFAULT) if source == "default" else source
    if source != "default" and _is_folder(path):
        return WorldwideMetadata.open(source)
    return Metadata(read_entries(path), source)


def is_folder(source: str | Path) -> bool:
    """Whether `source` names a folder (worldwide metadata) rather than one list."""
    source = str(source)
    return source != "default" and _is_folder(source)


def _is_folder(path: str) -> bool:
    try:
        fs, inner = fsspec.core.url_to_fs(path)
        return bool(fs.isdir(inner))
    except Exception:  # unreachable stores and the like: read_entries says why in one line
        return False


def read_entries(path: str) -> list[str]:
    """One entry list: a JSON list of strings or one entry per line (optionally compressed)."""
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
    name = _without_compression(path.lower())
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
    return entries


_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")
_LIST_SUFFIXES = (".json", ".txt")
_LANG_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
OTHER = "other"  # the list of captions whose language has no list of its own (MetaCLIP 2)


def _without_compression(name: str) -> str:
    for suffix in _COMPRESSION:
        name = name.removesuffix(suffix)
    return name


# Fingerprint of a folder's listing -> (id, entries per language): the driver reads every list once to hash it
# (annotate's metadata check, then the match stage's setup), not once per caller.
_FOLDER_HASHES: dict[tuple, tuple[str, dict[str, int]]] = {}


@dataclass(frozen=True)
class WorldwideMetadata:
    """MetaCLIP 2 metadata: one entry list per language, read lazily from a folder (module docstring)."""

    source: str
    files: dict[str, str] = field(repr=False)  # language code -> file (a full path or URL)
    fingerprint: tuple = field(repr=False, compare=False, default=())

    @classmethod
    def open(cls, source: str) -> WorldwideMetadata:
        """List the folder's `<lang>.json` (or .txt, optionally compressed) files; read none of them."""
        try:
            fs, inner = fsspec.core.url_to_fs(source)
            listing = fs.ls(inner, detail=True)
        except Exception as err:
            text = " ".join(f"{type(err).__name__}: {err}".split())
            raise MetadataError(f"metadata folder {source} cannot be listed: {text}") from None
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        files: dict[str, str] = {}
        stamps = []
        for item in sorted(listing, key=lambda i: i["name"]):
            name = item["name"].rstrip("/").rsplit("/", 1)[-1]
            if item.get("type") != "file" or name.startswith((".", "_")):
                continue
            if not _without_compression(name.lower()).endswith(_LIST_SUFFIXES):
                continue  # MetaCLIP's <lang>.pkl automata, notes, ...
            lang = name.split(".", 1)[0]
            if not _LANG_CODE.match(lang):
                raise MetadataError(f"metadata folder {source}: {name!r} does not name a language code")
            if lang in files:
                raise MetadataError(f"metadata folder {source}: two lists for language {lang!r} "
                                    f"({files[lang].rsplit('/', 1)[-1]}, {name})")
            files[lang] = item["name"] if protocol in ("file", "local") else fs.unstrip_protocol(item["name"])
            stamps.append((name, item.get("size"), str(item.get("mtime") or item.get("LastModified")
                                                       or item.get("ETag") or item.get("created") or "")))
        if not files:
            raise MetadataError(f"metadata folder {source} holds no <lang>.json entry lists")
        return cls(source, files, (protocol, inner, tuple(stamps)))  # the same folder, however named

    @property
    def languages(self) -> list[str]:
        """The language codes, sorted (`other` among them when the folder has it)."""
        return sorted(self.files)

    def entries_of(self, lang: str) -> list[str]:
        """One language's entries (read now, not kept)."""
        return read_entries(self.files[lang])

    def _hash(self) -> tuple[str, dict[str, int]]:
        cached = _FOLDER_HASHES.get(self.fingerprint) if self.fingerprint else None
        if cached is not None:
            return cached
        digest = hashlib.sha256(b"metaclip2-worldwide\x00")
        sizes = {}
        for lang in self.languages:
            entries = self.entries_of(lang)
            sizes[lang] = len(entries)
            digest.update(lang.encode() + b"\x01")
            for entry in entries:
                digest.update(entry.encode("utf-8", "surrogatepass"))
                digest.update(b"\x00")
            digest.update(b"\x02")
        result = (digest.hexdigest()[:16], sizes)
        if self.fingerprint:
            _FOLDER_HASHES[self.fingerprint] = result
        return result

    @property
    def id(self) -> str:
        """Content hash over every language's list (reads them all once per process and listing)."""
        return self._hash()[0]

    @property
    def sizes(self) -> dict[str, int]:
        """Entries per language."""
        return self._hash()[1]

    @property
    def n_entries(self) -> int:
        return sum(self.sizes.values())

    def tables(self) -> Iterator[pa.Table]:
        """lang (string), entry_id (int32), entry (string), one table per language in code order: the
        (lang, entry_id) -> entry mapping that worldwide match lists refer to."""
        for lang in self.languages:
            entries = self.entries_of(lang)
            yield pa.table({"lang": pa.array([lang] * len(entries), pa.string()),
                            "entry_id": pa.array(range(len(entries)), pa.int32()),
                            "entry": pa.array(entries, pa.string())})

    def table(self) -> pa.Table:
        """All of tables() in one table (small metadata; save_metadata streams them instead)."""
        return pa.concat_tables(self.tables())


ID_SCHEMA_WORLDWIDE = pa.schema([("lang", pa.string()), ("entry_id", pa.int32()), ("entry", pa.string())])
