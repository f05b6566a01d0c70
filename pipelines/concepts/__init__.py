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


SHAPE = ("expected a mapping `concept: [synonym, ...]` (or `concept: synonym`, or `concept:`), or a list of "
         "names or `{name: ..., synonyms: [...]}`")


def load_concepts(spec: str) -> Concepts:
    """A built-in name or a path/URL to a text or YAML concept list.

    Every problem is one ConfigError line naming the file and, where there is one, the line."""
    path = str(BUILTIN.get(spec, spec))
    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, IsADirectoryError) as err:
        raise ConfigError(f"concepts: cannot read {spec!r} (a file, or one of {', '.join(BUILTIN)}): {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"concepts: {spec} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if path.endswith((".yaml", ".yml")):
        entries = _from_yaml(text, spec)
    else:
        entries = [(line.strip(), (), n) for n, line in enumerate(text.splitlines(), 1)
                   if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise ConfigError(f"concepts: {spec} lists no concepts")
    first: dict[str, int] = {}
    for name, _, line in entries:
        if name in first:
            raise ConfigError(f"concepts: {spec} line {line}: concept {name!r} is listed twice (first on line "
                              f"{first[name]})")
        first[name] = line
    try:
        return Concepts(tuple(e[0] for e in entries), tuple(e[1] for e in entries), source=spec)
    except ValueError as err:
        raise ConfigError(f"concepts: {spec}: {err}") from None


def _from_yaml(text: str, spec: str) -> list[tuple[str, tuple[str, ...], int]]:
    """(name, synonyms, line) per concept of a YAML list, read from the node tree so errors can name lines."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = err.problem or err.context or "unreadable"
        if err.context and err.problem and err.context_mark:
            problem += f" ({err.context} from line {err.context_mark.line + 1})"
        raise ConfigError(f"concepts: {spec}{where}: not valid YAML: {problem}; {SHAPE}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"concepts: {spec}: not valid YAML ({str(err).splitlines()[0]}); {SHAPE}") from None
    if root is None:
        return []

    def fail(node: yaml.Node, what: str) -> ConfigError:
        return ConfigError(f"concepts: {spec} line {node.start_mark.line + 1}: {what}; {SHAPE}")

    def name_of(node: yaml.Node) -> str:
        if not isinstance(node, yaml.ScalarNode) or _is_null(node) or not node.value.strip():
            raise fail(node, "a concept name must be a non-empty string")
        return node.value

    def synonyms_of(node: yaml.Node | None) -> tuple[str, ...]:
        if node is None or (isinstance(node, yaml.ScalarNode) and _is_null(node)):
            return ()
        if isinstance(node, yaml.ScalarNode):
            return (node.value,)
        if isinstance(node, yaml.SequenceNode) and all(isinstance(v, yaml.ScalarNode) and not _is_null(v)
                                                        for v in node.value):
            return tuple(v.value for v in node.value)
        raise fail(node, "synonyms must be a string or a list of strings")

    entries = []
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            entries.append((name_of(key), synonyms_of(value), key.start_mark.line + 1))
    elif isinstance(root, yaml.SequenceNode):
        for item in root.value:
            if isinstance(item, yaml.ScalarNode):
                entries.append((name_of(item), (), item.start_mark.line + 1))
                continue
            pairs = item.value if isinstance(item, yaml.MappingNode) else []
            fields = {k.value: v for k, v in pairs if isinstance(k, yaml.ScalarNode)}
            if len(fields) != len(pairs) or "name" not in fields or not set(fields) <= {"name", "synonyms"}:
                raise fail(item, "a list item must be a name or {name: ..., synonyms: [...]}")
            entries.append((name_of(fields["name"]), synonyms_of(fields.get("synonyms")), item.start_mark.line + 1))
    else:
        raise fail(root, "the file holds a single value")
    return entries


def _is_null(node: yaml.ScalarNode) -> bool:
    return node.tag == "tag:yaml.org,2002:null"
