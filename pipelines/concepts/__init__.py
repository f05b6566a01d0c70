"""Concept lists for the audit: built-in ones and user files.

Built-ins (files in this folder): `imagenet1k` (the 1,000 ImageNet class names of the OpenAI CLIP
notebook, in class order), `coco80` (COCO's 80 categories, with common synonyms), `demo` (the demo
web's 136 concepts). A user file, local or any fsspec URL, is either
- text: one concept per line (blank lines and lines starting with `#` are skipped), or
- YAML (`.yaml`/`.yml`): a mapping `concept: [synonym, ...]` (or `concept: synonym`, or `concept:`
  with nothing), or a list whose items are a name or `{name: ..., synonyms: [...]}`.
Concept ids are positions in the list.
"""

from __future__ import annotations

from pathlib import Path

import fsspec
import yaml

from operators.concepts import Concepts
from pipelines.core.config import ConfigError

HERE = Path(__file__).resolve().parent
BUILTIN = {"imagenet1k": HERE / "imagenet1k.txt", "coco80": HERE / "coco80.yaml", "demo": HERE / "demo.txt"}


def concept_list_name(spec: str) -> str:
    """A folder-safe name for a concept list: the built-in's name or the file's stem."""
    if spec in BUILTIN:
        return spec
    stem = spec.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem) or "concepts"


def load_concepts(spec: str) -> Concepts:
    """A built-in name or a path/URL to a text or YAML concept list."""
    path = str(BUILTIN.get(spec, spec))
    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, IsADirectoryError) as err:
        raise ConfigError(f"concepts: cannot read {spec!r} (a file, or one of {', '.join(BUILTIN)}): {err}") from err
    try:
        if path.endswith((".yaml", ".yml")):
            names, synonyms = _from_yaml(yaml.safe_load(text), spec)
        else:
            names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
            synonyms = [()] * len(names)
        if not names:
            raise ConfigError(f"concepts: {spec} lists no concepts")
        return Concepts(tuple(names), tuple(synonyms), source=spec)
    except (ValueError, yaml.YAMLError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"concepts: {spec}: {err}") from err


def _synonym_tuple(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"concepts: {where}: synonyms must be a string or a list of strings")


def _from_yaml(data: object, spec: str) -> tuple[list[str], list[tuple[str, ...]]]:
    names: list[str] = []
    synonyms: list[tuple[str, ...]] = []
    if isinstance(data, dict):
        for name, value in data.items():
            names.append(str(name))
            synonyms.append(_synonym_tuple(value, f"{spec} [{name}]"))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            if isinstance(item, str):
                names.append(item)
                synonyms.append(())
            elif isinstance(item, dict) and isinstance(item.get("name"), str) and set(item) <= {"name", "synonyms"}:
                names.append(item["name"])
                synonyms.append(_synonym_tuple(item.get("synonyms"), f"{spec} item {i}"))
            else:
                raise ConfigError(f"concepts: {spec} item {i}: expected a name or {{name: ..., synonyms: [...]}}")
    else:
        raise ConfigError(f"concepts: {spec}: expected a mapping concept -> synonyms, or a list")
    return names, synonyms
