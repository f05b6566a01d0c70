"""Typed pipeline configuration: pydantic models loaded from YAML, overridable from the CLI.

One object is passed down; operators receive the section they need. Unknown or invalid
fields fail with one line that names the field (`ConfigError`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator

from operators.decode import DecodeOptions
from operators.download import DownloadOptions
from operators.embed import EmbedOptions
from operators.match import MatchOptions
from operators.options import Options
from operators.text import TextOptions


class ConfigError(ValueError):
    """A configuration problem, phrased as one line naming the field."""


def shipped_or_path(name: str | Path, folder: Path, what: str) -> Path:
    """A shipped YAML by bare name (no `/`, no .yaml/.yml suffix: always FOLDER/NAME.yaml, whatever the
    working directory holds), else a path to the user's own file. `what` names the kind in errors."""
    text = str(name)
    shipped = sorted(p.stem for p in folder.glob("*.yaml"))
    if "/" not in text and os.sep not in text and not text.endswith((".yaml", ".yml")):
        if text not in shipped:
            raise ConfigError(f"{what} {text}: no shipped {what} of that name (shipped: {', '.join(shipped)}; "
                              f"a file is named by a path ending in .yaml, e.g. ./my-{what}.yaml)")
        return folder / f"{text}.yaml"
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"{what} {text}: no such file (shipped {what}s are named without a path: "
                          f"{', '.join(shipped)})")
    return path


class InputConfig(Options):
    path: str | list[str] = Field(description="file, folder, glob or fsspec URL (s3://...) of the URL table")
    format: Literal["auto", "parquet", "csv", "tsv", "jsonl", "img2dataset"] = "auto"
    url_column: str = "url"
    caption_column: str = "caption"
    key_column: str | None = None
    header: bool = Field(True, description="CSV/TSV: the first line names the columns; false: every line is a "
                         "row and `columns` names them")
    columns: list[str] | None = Field(None, validate_default=True, description="CSV/TSV without a header: the "
                                      "column names in file order, e.g. [caption, url] for CC3M's TSV")
    quoting: bool | None = Field(None, description="CSV/TSV: '\"' quotes values (RFC 4180: a quoted value may "
                                 "hold the delimiter, '\"\"' is a quote); default on for CSV, off for TSV (a '\"' "
                                 "is an ordinary character)")
    multiline: bool = Field(False, description="with quoting: a quoted value may run over several lines (captions "
                            "with line breaks); off, such a value is refused with its line number, so that every "
                            "line is exactly one row")
    rows_per_shard: int = Field(10_000, gt=0, description="input rows per resumable unit of work")

    @field_validator("columns")
    @classmethod
    def _columns_with_header(cls, columns: list[str] | None, info: ValidationInfo) -> list[str] | None:
        header = info.data.get("header", True)
        if header and columns is not None:
            raise ValueError("only for a CSV/TSV without a header line; set input.header: false as well")
        if not header and not columns:
            raise ValueError("input.header is false, so name the columns in file order, e.g. [caption, url]")
        if columns is not None and len(set(columns)) != len(columns):
            raise ValueError("a column name appears twice")
        return columns


class RayConfig(Options):
    address: str | None = Field(None, description="Ray cluster address; None starts or joins a local Ray")
    batch_size: int = Field(256, gt=0, description="rows per download/decode batch")
    fetch_cpus: float = Field(1.0, gt=0, description="CPUs reserved per fetch task (download + decode on "
                              "download.threads threads: one core busy decoding while the threads wait)")
    decode_cpus: float = Field(1.0, gt=0, description="CPUs reserved per decode task (img2dataset tar input) "
                               "and per embed preprocessing task")
    max_fetch_tasks: int | None = Field(None, gt=0, description="cap on concurrent fetch tasks (each opens up to "
                                        "download.threads connections at once)")
    max_decode_tasks: int | None = Field(None, gt=0, description="cap on concurrent decode tasks")


class AnnotateConfig(Options):
    input: InputConfig
    output: str = Field(description="run folder, local path or fsspec URL")
    download: DownloadOptions = DownloadOptions()
    decode: DecodeOptions = DecodeOptions()
    text: TextOptions = TextOptions()
    embed: EmbedOptions | None = Field(None, description="CLIP embeddings and scores; off when absent")
    match: MatchOptions | None = Field(None, description="MetaCLIP metadata matching of captions; off when absent")
    ray: RayConfig = RayConfig()
    text_only: bool = Field(False, description="a text pass: the text stages (and match) only, no network; every "
                            "row is not_fetched. `tailor fetch` later downloads a subset of it with this config")

    @field_validator("text_only")
    @classmethod
    def _text_only_needs_urls(cls, text_only: bool, info: ValidationInfo) -> bool:
        source = info.data.get("input")
        if text_only and source is not None and source.format == "img2dataset":
            raise ValueError("an img2dataset input has its images already; a text pass is for URL tables")
        return text_only

    # how fast a run goes, not what it writes: a run resumes after a change of these (and of `ray`)
    _SPEED_ONLY: ClassVar[dict] = {"download": {"threads"}, "embed": {"batch_size", "num_actors", "cpus_per_actor"}}

    def _relevant(self) -> dict[str, Any]:
        relevant = self.model_dump(mode="json", exclude={"output": True, "ray": True, **self._SPEED_ONLY})
        if not self.text_only:  # runs made before the field existed keep their fingerprint
            del relevant["text_only"]
        return relevant

    def fingerprint(self) -> str:
        """Hash of everything that changes annotation results (not where or how fast it runs)."""
        blob = json.dumps(self._relevant(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def differences(self, other: AnnotateConfig) -> list[str]:
        """The fields the fingerprint covers that differ, as `field: mine != other's`."""
        return differences(self._relevant(), other._relevant())


def differences(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """The fields (dotted, sorted, nested dicts followed) whose values differ, as `field: mine != other's`:
    one rule for every "made with the same settings?" check (annotate's config, pipelines/core/passes.py)."""
    found: list[str] = []
    _differences(mine, theirs, "", found)
    return found


def _differences(mine: Any, theirs: Any, prefix: str, found: list[str]) -> None:
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for name in sorted(mine.keys() | theirs.keys()):
            _differences(mine.get(name), theirs.get(name), f"{prefix}.{name}" if prefix else str(name), found)
    elif mine != theirs:
        found.append(f"{prefix}: {_short(mine)} != {_short(theirs)}")


def _short(value: Any, limit: int = 200) -> str:
    """A value as a refusal shows it: a string (a path, a name) whole, so the part that differs is in it;
    another value as JSON, cut at `limit` characters."""
    if isinstance(value, str):
        return value
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"config error: unknown field '{field}'"
    if first["type"] == "missing":
        return f"config error: missing required field '{field}'"
    got = first.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    message = first["msg"].removeprefix("Value error, ")
    return f"config error: {field}: {message}{got_text}"


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config error: cannot set '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`decode.image_size=128` -> ("decode.image_size", 128); values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"config error: override '{text}' is not of the form field.path=value")
    field, raw = text.split("=", 1)
    return field.strip(), yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None, model: type[Options] | None = None) -> Any:
    """Load a YAML config, apply `field.path=value` overrides, validate (as an AnnotateConfig unless `model`
    names another config class)."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config error: file not found: {path}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config error: {path} is not valid YAML: {err}".splitlines()[0]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config error: {path} must hold a mapping at the top level")
        data.update(loaded)
    for item in overrides or []:
        field, value = parse_override(item)
        _set_dotted(data, field, value)
    try:
        return (model or AnnotateConfig).model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_error(err)) from None
