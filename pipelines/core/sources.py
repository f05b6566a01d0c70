"""Input: find the input files, cut them into resumable shards, and load a shard's rows.

A URL table (parquet, csv, tsv, jsonl; optionally .gz; local or any fsspec URL) is cut into
shards of `rows_per_shard` rows written as Parquet under `RUN/input/`, with the canonical
columns `key`, `url`, `caption` first and every other input column passed through. A folder
of img2dataset output (webdataset tars or parquet) is used in place: one shard per
img2dataset shard, read when the pipeline gets to it.

Keys are `FFFFFRRRRRRRRRR`: the input file's index (files sorted by path) and the row's
index in that file, so the same input always gives the same keys, whatever the shard size.
A `key_column` in the config takes the keys from the input instead.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import tarfile
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

import fsspec
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

from operators import status as st
from pipelines.core.config import InputConfig
from pipelines.core.storage import RunPaths

log = logging.getLogger(__name__)

TABLE_SUFFIXES = {
    ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
}
# columns the annotate stages add (download, decode, embed, match); an input column of the same name
# would be silently overwritten, so it is refused. Probe columns are `probe_NAME`.
RESERVED_COLUMNS = {
    "shard", "status", "error", "http_status", "n_bytes", "image", "original_width", "original_height",
    "width", "height", "sha256", "phash", "pixel_values", "input_ids", "attention_mask", "image_emb", "text_emb",
    "clip_score", "clip_model", "metaclip_entries", "metadata_id",
    "caption_lang", "caption_lang_score", "caption_words", "caption_chars",
}
RESERVED_PREFIX = "probe_"


class InputError(ValueError):
    """The input cannot be read as configured; the message names the file and the problem."""


@dataclass(frozen=True)
class Shard:
    id: str
    rows: int
    kind: str           # "table" (planned Parquet under RUN/input) or "img2dataset"
    path: str           # the planned shard file, or the img2dataset tar/parquet
    source: str         # the input file the rows come from
    meta_path: str | None = None  # img2dataset: the per-shard parquet listing every row

    def to_dict(self) -> dict:
        return asdict(self)


def table_format(path: str, configured: str) -> str:
    if configured != "auto":
        return configured
    name = PurePosixPath(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = PurePosixPath(name).suffix
    if suffix not in TABLE_SUFFIXES:
        raise InputError(f"cannot tell the format of {path} from its name; set input.format")
    return TABLE_SUFFIXES[suffix]


def list_input_files(config: InputConfig) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The input files in a stable order: a file, a folder (its table files), a glob, or a list."""
    paths = config.path if isinstance(config.path, list) else [config.path]
    fs, _ = fsspec.core.url_to_fs(paths[0])
    found: list[str] = []
    for path in paths:
        fs_path = fs._strip_protocol(path)
        if any(ch in path for ch in "*?["):
            found.extend(fs.glob(fs_path))
        elif fs.isdir(fs_path):
            for entry in fs.find(fs_path):
                name = PurePosixPath(entry).name
                if name.startswith(("_", ".")):
                    continue
                stem = name[:-3] if name.endswith(".gz") else name
                if config.format == "img2dataset":
                    if name.endswith(".tar") or (name.endswith(".parquet") and not _has_sibling_tar(fs, entry)):
                        found.append(entry)
                elif PurePosixPath(stem).suffix in TABLE_SUFFIXES:
                    found.append(entry)
        elif fs.exists(fs_path):
            found.append(fs_path)
        else:
            raise InputError(f"input not found: {path}")
    if not found:
        raise InputError(f"no input files under {config.path}")
    return fs, sorted(dict.fromkeys(found))


def _has_sibling_tar(fs: fsspec.AbstractFileSystem, parquet_path: str) -> bool:
    return fs.exists(parquet_path[: -len(".parquet")] + ".tar")


# ---------------------------------------------------------------- URL tables, read exactly
#
# CSV and TSV are read line by line in Python (the csv module where values are quoted), so that every
# problem is reported with its line number and no line is ever merged into another or dropped unseen:
#
# - a line ends with "\n" or "\r\n"; a UTF-8 byte-order mark at the start is dropped; blank lines (nothing
#   but the line end) are skipped and counted (`blank_lines` in RUN/input/_plan.json); any other line is
#   exactly one row, with exactly as many values as there are columns, or the file is refused naming the line;
# - TSV is plain by default: values are split at every tab and nothing else is special (a '"' is kept as it
#   is; a value cannot hold a tab or a line break). `input.quoting: true` reads quoted TSV;
# - CSV is quoted (RFC 4180, strictly: a quoted value ends with a '"' followed by the delimiter or the line
#   end, '""' is a quote inside it); a quoted value that runs over a line break is refused unless
#   `input.multiline: true` (then that record takes several lines, and the plan says how many lines it read);
# - JSONL is read by Arrow and checked afterwards: the rows must equal the non-blank lines, else the first line
#   that is not exactly one JSON object is named.

READ_BLOCK = 1 << 20
MAX_LINE_BYTES = 64 << 20
_FORMAT_OPTIONS = ("header", "columns", "quoting", "multiline")


def _excerpt(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _physical_lines(f, path: str):
    """(line number, bytes without the "\\n") for each line of a binary stream."""
    pending: list[bytes] = []
    pending_bytes = 0
    number = 0
    while True:
        block = f.read(READ_BLOCK)
        if not block:
            break
        if b"\n" not in block:
            pending.append(block)
            pending_bytes += len(block)
            if pending_bytes > MAX_LINE_BYTES:
                raise InputError(f"{path}: line {number + 1} is longer than {MAX_LINE_BYTES >> 20} MiB; "
                                 "is this a text table?")
            continue
        lines = block.split(b"\n")
        if pending:
            lines[0] = b"".join([*pending, lines[0]])
        tail = lines.pop()
        pending, pending_bytes = [tail], len(tail)
        for line in lines:
            number += 1
            yield number, line
    if pending_bytes:
        yield number + 1, b"".join(pending)


def _text_lines(f, path: str):
    """(line number, text) of each line, decoded as UTF-8 (a byte-order mark at the start dropped)."""
    for number, raw in _physical_lines(f, path):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            problem = f"{path}: line {number}: not UTF-8 text (byte {err.start + 1} of the line is {raw[err.start]:#x})"
        else:
            yield number, text
            continue
        raise InputError(problem)


def _plain_records(lines, delimiter: str):
    """(line number, values, or None for a blank line): split at every delimiter, nothing quoted."""
    for number, text in lines:
        if text.endswith("\r"):
            text = text[:-1]
        yield number, (text.split(delimiter) if text else None)


class _OneLineFeed:
    """Feeds the csv module one line at a time; without `multiline`, a record that asks for a second line
    (a quoted value still open at the line end) is refused at once, naming the line it started on."""

    def __init__(self, lines, path: str, multiline: bool):
        self.lines, self.path, self.multiline = lines, path, multiline
        self.last = 0      # the number of the last line handed out
        self.taken = 0     # lines handed out for the record being read
        self.current = ""  # the last line handed out

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.taken and not self.multiline:
            raise InputError(f"{self.path}: line {self.last}: a quoted value does not end on this line (a '\"' "
                             f"opened in it is not closed); fix the quoting, or set input.multiline: true if values "
                             f"hold line breaks: {_excerpt(self.current)}")
        number, text = next(self.lines)
        self.last, self.taken, self.current = number, self.taken + 1, text
        return text + "\n"


def _quoted_records(lines, delimiter: str, path: str, multiline: bool):
    """(first line number, values, or None for a blank line), RFC 4180 quoting, strictly."""
    feed = _OneLineFeed(lines, path, multiline)
    reader = csv.reader(feed, delimiter=delimiter, quotechar='"', doublequote=True, strict=True)
    while True:
        feed.taken = 0
        start = feed.last + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            text = str(err)
            if "new-line character" in text:
                text = "a carriage return (\\r) inside an unquoted value"
            elif "field larger than field limit" in text:
                text = f"a value longer than {csv.field_size_limit()} characters (a '\"' never closed?)"
            elif "unexpected end of data" in text:
                problem = f"{path}: line {start}: a '\"' opened on this line is never closed (the file ends inside it)"
                break
            elif "expected after" in text:
                text = (f"{text}: a quoted value must end at the delimiter or the line end, and a '\"' inside it "
                        "is written '\"\"'")
            where = f"line {feed.last}" + (f" (in the record that starts on line {start})" if start < feed.last else "")
            problem = f"{path}: {where}: {text}: {_excerpt(feed.current)}"
        else:
            yield start, (values or None)
            continue
        raise InputError(problem)
    raise InputError(problem)


class _TableFile:
    """One URL table: its column names (read when opened) and its rows as string record batches."""

    names: list[str]
    lines: int | None = None   # text formats: lines read (header included)
    blank_lines: int = 0

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, fmt: str, config: InputConfig):
        self.fs, self.path, self.fmt, self.config = fs, path, fmt, config
        if fmt not in ("csv", "tsv"):
            defaults = InputConfig.model_fields
            changed = [name for name in _FORMAT_OPTIONS if getattr(config, name) != defaults[name].default]
            if changed:
                raise InputError(f"input.{changed[0]} applies to CSV and TSV files only; {path} is {fmt}")
        if fmt not in ("parquet", "csv", "tsv", "jsonl"):
            raise InputError(f"unsupported input format {fmt!r} for {path}")
        self.file = fs.open(path, "rb", compression="infer")
        try:
            self._open()
        except BaseException:
            self.file.close()
            raise

    def __enter__(self) -> _TableFile:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def _open(self) -> None:
        if self.fmt == "parquet":
            self.parquet = pq.ParquetFile(self.file)
            self.names = self.parquet.schema_arrow.names
        elif self.fmt == "jsonl":
            self.counter = _LineCounter(self.file)
            try:
                self.json = pajson.open_json(self.counter, read_options=pajson.ReadOptions(block_size=1 << 22))
            except pa.ArrowInvalid as err:
                if "Empty JSON" not in str(err):
                    raise
                self.json, self.names = None, []
            else:
                self.names = self.json.schema.names
        else:
            self._open_text()

    def _open_text(self) -> None:
        config, path = self.config, self.path
        delimiter = "," if self.fmt == "csv" else "\t"
        self.quoting = config.quoting if config.quoting is not None else self.fmt == "csv"
        lines = self._count_lines(_text_lines(self.file, path))
        self.records = (_quoted_records(lines, delimiter, path, config.multiline) if self.quoting
                        else _plain_records(lines, delimiter))
        self.first_row_checked = False
        if not config.header:
            self.names = list(config.columns)
            return
        first = next(self.records, None)
        if first is None:
            raise InputError(f"{path}: the file is empty, without even a header line "
                             "(a file without a header: set input.header: false and input.columns)")
        number, names = first
        if names is None:
            raise InputError(f"{path}: line {number} is blank; the header must be the first line "
                             "(a file without a header: set input.header: false and input.columns)")
        if number != 1:  # only a quoted header can take several lines
            raise InputError(f"{path}: the header runs over lines 1-{number}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InputError(f"{path}: bad header: column {repeated[0]!r} appears more than once (line 1: "
                             f"{_excerpt(delimiter.join(names))})")
        if not self.quoting and all(len(n) >= 2 and n[0] == n[-1] == '"' for n in names):
            raise InputError(f"{path}: the header's names are in quotes (line 1: {_excerpt(delimiter.join(names))}); "
                             f"this {self.fmt.upper()} quotes its values: set input.quoting: true")
        self.names = names

    def _count_lines(self, lines):
        self.lines = 0
        for number, text in lines:
            self.lines = number
            yield number, text

    def batches(self, rows: int):
        """Record batches of at most `rows` rows; afterwards `lines` and `blank_lines` are final."""
        if self.fmt == "parquet":
            yield from self.parquet.iter_batches(batch_size=rows)
        elif self.fmt == "jsonl":
            yield from self._json_batches()
        else:
            yield from self._text_batches(rows)

    def _text_batches(self, rows: int):
        width = len(self.names)
        pending: list[list[str]] = []
        for number, values in self.records:
            if values is None:
                self.blank_lines += 1
                continue
            if len(values) != width:
                self._refuse_row(number, values)
            if not self.first_row_checked:
                self._check_first_row(number, values)
            pending.append(values)
            if len(pending) == rows:
                yield self._batch(pending)
                pending = []
        if pending:
            yield self._batch(pending)

    def _batch(self, rows: list[list[str]]) -> pa.RecordBatch:
        columns = [pa.array(column, pa.string()) for column in zip(*rows, strict=True)]
        return pa.RecordBatch.from_arrays(columns, names=self.names)

    def _refuse_row(self, number: int, values: list[str]) -> None:
        delimiter = "," if self.fmt == "csv" else "\t"
        hint = ""
        if not self.quoting and len(values) > len(self.names):
            what = "comma" if self.fmt == "csv" else "tab"
            hint = f"; a value holding a {what} needs quoting (input.quoting: true)"
        elif not self.quoting:
            hint = "; a value cannot hold a line break without quoting (input.quoting: true)"
        raise InputError(f"{self.path}: line {number}: {len(values)} value{'s' * (len(values) != 1)}, expected "
                         f"{len(self.names)} ({', '.join(self.names)}){hint}: {_excerpt(delimiter.join(values))}")

    def _check_first_row(self, number: int, values: list[str]) -> None:
        """A TSV read without quoting whose values are quoted would keep the quotes in every url: refuse it."""
        self.first_row_checked = True
        url_column = self.config.url_column
        if self.quoting or url_column not in self.names:
            return
        url = values[self.names.index(url_column)]
        if len(url) >= 2 and url[0] == url[-1] == '"':
            raise InputError(f"{self.path}: line {number}: the url is in quotes ({_excerpt(url)}); this "
                             f"{self.fmt.upper()} quotes its values: set input.quoting: true")

    def _json_batches(self):
        if self.json is None:
            self.lines = self.counter.lines
            return
        rows = 0
        try:
            for batch in self.json:
                rows += batch.num_rows
                yield batch
        except pa.ArrowInvalid as err:
            problem = _first_bad_json_line(self.fs, self.path)
            raise InputError(problem or f"cannot read {self.path} as jsonl: {err}".splitlines()[0]) from None
        self.lines, self.blank_lines = self.counter.lines, self.counter.lines - self.counter.filled
        if rows != self.counter.filled:
            problem = _first_bad_json_line(self.fs, self.path)
            raise InputError(problem or f"{self.path}: {rows} rows read from {self.counter.filled} non-blank lines")


class _LineCounter:
    """A binary file that counts the lines (and the non-blank ones) of what is read through it."""

    def __init__(self, f):
        self.f, self.lines, self.filled, self.tail, self.closed = f, 0, 0, b"", False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        if data:
            parts = (self.tail + data).split(b"\n")
            self.tail = parts.pop()
            self.lines += len(parts)
            self.filled += sum(1 for p in parts if p.strip(b" \t\r"))
        elif self.tail:
            self.lines += 1
            self.filled += bool(self.tail.strip(b" \t\r"))
            self.tail = b""
        return data

    def close(self) -> None:
        self.closed = True


def _first_bad_json_line(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """The first line of a JSONL file that is not exactly one JSON object, as an error message."""
    with fs.open(path, "rb", compression="infer") as f:
        for number, text in _text_lines(f, path):
            if not text.strip(" \t\r"):
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                return f"{path}: line {number}: not one JSON object per line ({err.msg}, column {err.colno}): " \
                       f"{_excerpt(text)}"
            if not isinstance(value, dict):
                return f"{path}: line {number}: a JSON {type(value).__name__}, not an object: {_excerpt(text)}"
    return None


READ_ERRORS = (pa.ArrowInvalid, OSError, UnicodeDecodeError, csv.Error, EOFError)


def _read_guarded(make, path: str, fmt: str):
    """Call make(); a failure to read becomes one InputError line naming the file (raised outside the handler,
    so that no OSError hangs on it: storage_errors would take that for a failure of the run folder)."""
    try:
        return make()
    except InputError:
        raise
    except READ_ERRORS as err:
        problem = f"cannot read {path} as {fmt}: {err}".splitlines()[0]
    raise InputError(problem)


def _guarded_batches(table: _TableFile, rows: int):
    batches = table.batches(rows)
    while True:
        batch = _read_guarded(lambda: next(batches, None), table.path, table.fmt)
        if batch is None:
            return
        yield batch


def check_columns(names: list[str], config: InputConfig, path: str) -> None:
    """The configured url/caption/key columns exist, and no other column collides with an annotation column."""
    shown = ", ".join(names) if len(names) <= 12 else ", ".join(names[:12]) + f", … ({len(names)} columns)"
    for role, column in (("url", config.url_column), ("caption", config.caption_column), ("key", config.key_column)):
        if column is not None and column not in names:
            hint = ""
            if any("://" in n for n in names) and config.header:
                hint = ("; the first line looks like data, not a header: for a file without a header set "
                        "input.header: false and input.columns (e.g. [caption, url])")
            raise InputError(f"{path}: no {role} column {column!r} (columns: {shown}){hint}")
    canonical = {config.url_column, config.caption_column, config.key_column}
    clash = sorted(n for n in names if n not in canonical and
                   (n in RESERVED_COLUMNS | {"key", "url", "caption"} or n.startswith(RESERVED_PREFIX)))
    if clash:
        raise InputError(f"{path}: input column(s) {clash} collide with annotation columns; rename them")


SAMPLE_ROWS = 1000


def check_column_roles(sample: pa.RecordBatch, config: InputConfig, path: str) -> None:
    """The url column holds URLs and the caption column does not, on a sample of the first rows: swapped or
    misnamed columns are told before a text pass runs language ID on the URLs (a download run would find out
    only afterwards, every row invalid_url). Refused when fewer than half the sampled urls can be requested,
    or when most captions are URLs and the url column holds fewer."""
    from operators.download import is_url

    names = sample.schema.names
    if config.url_column not in names or sample.num_rows == 0:
        return
    urls = [v for v in sample.column(names.index(config.url_column)).to_pylist() if v is not None]
    url_share = sum(is_url(str(v)) for v in urls) / max(len(urls), 1)
    caption_share, captions = 0.0, []
    if config.caption_column in names:
        captions = [v for v in sample.column(names.index(config.caption_column)).to_pylist() if v]
        caption_share = sum(is_url(str(v)) for v in captions) / max(len(captions), 1)
    if url_share >= 0.5 and (caption_share <= 0.5 or caption_share <= url_share):
        return
    where = ("input.columns names the columns of a file without a header (e.g. [caption, url])"
             if not config.header and table_format(path, config.format) in ("csv", "tsv")
             else "input.url_column and input.caption_column name them")
    example = next((str(v) for v in urls if not is_url(str(v))), urls[0] if urls else None)
    said = (f"the url column {config.url_column!r} does not hold URLs: {url_share:.0%} of the first "
            f"{sample.num_rows} values are http(s) URLs" + (f" (e.g. {_excerpt(example, 60)})" if example else ""))
    if caption_share > 0.5:
        said += f", while {caption_share:.0%} of the caption column {config.caption_column!r} are: are they swapped?"
    raise InputError(f"{path}: {said}; {where}")


def open_table(config: InputConfig, fs: fsspec.AbstractFileSystem, path: str) -> _TableFile:
    """Open a URL table and read its column names (the header, the schema), checked against the config."""
    fmt = table_format(path, config.format)
    table = _read_guarded(lambda: _TableFile(fs, path, fmt, config), path, fmt)
    try:
        if table.names or table.fmt != "jsonl":
            check_columns(table.names, config, path)
    except InputError:
        table.file.close()
        raise
    return table


def iter_table_batches(config: InputConfig, fs: fsspec.AbstractFileSystem, path: str, rows: int):
    """Record batches of a URL table file, streamed (the whole file is never in memory)."""
    with open_table(config, fs, path) as table:
        yield from _guarded_batches(table, rows)


def check_input(config: InputConfig, max_files: int = 32, read_whole_below: int = 16 << 20) -> list[str]:
    """What can be checked in a moment, before anything is started or written: the input files exist, and
    the first table's header or schema names the configured columns; the first table with a row is looked
    for among the first `max_files` files (an input without a row is refused). A text table smaller than
    `read_whole_below` bytes is read whole, so that a bad line in it is told at once too. Returns the files."""
    fs, files = list_input_files(config)
    if config.format == "img2dataset":
        return files
    for path in files[:max_files]:
        with open_table(config, fs, path) as table:
            if table.fmt == "parquet":
                if table.parquet.metadata.num_rows:
                    check_column_roles(next(_guarded_batches(table, SAMPLE_ROWS)), config, path)
                    return files
                continue
            batches = _guarded_batches(table, SAMPLE_ROWS)
            first = next(batches, None)
            if first is not None and first.num_rows:
                check_column_roles(first, config, path)
            if fs.size(path) < read_whole_below:
                for _ in batches:
                    pass
            if first is not None and first.num_rows:
                return files
    if len(files) <= max_files:
        raise InputError(f"the input {config.path} has no rows")
    return files


PANDAS_INDEX = re.compile(r"__index_level_\d+__")


def _canonical(batch: pa.RecordBatch, config: InputConfig, file_idx: int, first_row: int) -> pa.Table:
    table = pa.Table.from_batches([batch])
    names = table.column_names
    canonical = {config.url_column, config.caption_column, config.key_column}
    # every other column passes through, but pandas' stored index (`__index_level_0__`, what to_parquet writes
    # for a filtered or re-indexed frame) is the writer's row numbering, not data: it is left out
    extra = [n for n in names if n not in canonical and not PANDAS_INDEX.fullmatch(n)]
    if config.key_column:
        keys = table.column(config.key_column).cast(pa.string())
    else:
        keys = pa.array([f"{file_idx:05d}{first_row + i:010d}" for i in range(table.num_rows)], pa.string())
    columns = {
        "key": keys,
        "url": table.column(config.url_column).cast(pa.string()),
        "caption": table.column(config.caption_column).cast(pa.string()),
    }
    columns.update({n: table.column(n) for n in extra})
    return pa.table(columns)


def _rebatch(batches, rows: int):
    """Re-cut a stream of record batches into tables of exactly `rows` rows (the last may be short)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == rows:
                yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
                pending, count = [], 0
    if count:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def plan_table_file(config: InputConfig, fs: fsspec.AbstractFileSystem, path: str, file_idx: int,
                    paths: RunPaths) -> tuple[list[Shard], dict]:
    """Cut one URL table into shard files under RUN/input/; return their descriptions and what was read
    (`rows`; for text files also `lines` and the `blank_lines` skipped)."""
    shards: list[Shard] = []
    first_row = 0
    with open_table(config, fs, path) as table:
        for chunk_idx, batch in enumerate(_rebatch(_guarded_batches(table, config.rows_per_shard),
                                                   config.rows_per_shard)):
            if chunk_idx == 0:  # each file's columns, as check_input did the first file's before Ray started
                check_column_roles(batch.slice(0, SAMPLE_ROWS), config, path)
            canonical = _canonical(batch, config, file_idx, first_row)
            shard_id = f"{file_idx:05d}_{chunk_idx:05d}"
            target = paths.input_shard(shard_id)
            paths.write_parquet(canonical, target)  # a failure here is the run folder's, not the input's
            shards.append(Shard(shard_id, canonical.num_rows, "table", target, path))
            first_row += canonical.num_rows
    read = {"path": path, "rows": first_row}
    if table.lines is not None:
        read |= {"lines": table.lines, "blank_lines": table.blank_lines}
        if table.blank_lines:
            log.warning("%s: skipped %d blank lines", path, table.blank_lines)
    if not shards:
        log.warning("input file %s has no rows", path)
    return shards, read


# ---------------------------------------------------------------- img2dataset output as input

_I2D_OWN = {"key", "url", "caption", "status", "error_message", "width", "height", "original_width",
            "original_height", "exif", "sha256", "md5", "jpg", "png", "webp", "txt", "json"}


def plan_img2dataset_file(fs: fsspec.AbstractFileSystem, path: str, file_idx: int) -> Shard:
    """One img2dataset shard; its rows are read from the tar (or parquet) when processed."""
    meta = path[: -len(".tar")] + ".parquet" if path.endswith(".tar") else path
    meta_path = meta if fs.exists(meta) else None
    if meta_path is not None:
        rows = pq.ParquetFile(fs.open(meta_path, "rb")).metadata.num_rows
    else:
        rows = len(_read_tar_samples(fs, path))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    full = path if protocol in ("file", "local") else f"{protocol}://{path}"
    full_meta = None if meta_path is None else (meta_path if protocol in ("file", "local")
                                                else f"{protocol}://{meta_path}")
    return Shard(f"{file_idx:05d}_00000", rows, "img2dataset", full, full, full_meta)


def _read_tar_samples(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = PurePosixPath(member.name).name
            key, _, ext = name.partition(".")
            data = tar.extractfile(member).read()
            samples.setdefault(key, {})[ext] = data
    return samples


def _img2dataset_status(i2d_status: str | None, message: str | None) -> tuple[str, str | None]:
    """Map img2dataset's status and message to our vocabulary, keeping its message as the error."""
    if i2d_status == "success":
        return st.OK, None
    text = message or i2d_status or "failed in img2dataset"
    low = text.lower()
    rules = [("x-robots-tag", st.OPTED_OUT), ("timed out", st.TIMEOUT), ("timeout", st.TIMEOUT),
             ("http error", st.HTTP_ERROR), ("too small", st.TOO_SMALL), ("aspect ratio", st.BAD_ASPECT_RATIO),
             ("area too large", st.TOO_LARGE), ("unknown url type", st.INVALID_URL),
             ("decoding error", st.DECODE_ERROR)]
    for needle, status in rules:
        if needle in low:
            return status, f"img2dataset: {text}"
    if i2d_status == "failed_to_resize":
        return st.DECODE_ERROR, f"img2dataset: {text}"
    return st.CONNECTION_ERROR, f"img2dataset: {text}"


def load_img2dataset_shard(shard: Shard) -> pa.Table:
    """Rows of one img2dataset shard with status/error mapped and image bytes attached (ok rows)."""
    fs, path = fsspec.core.url_to_fs(shard.path)
    samples = _read_tar_samples(fs, path) if path.endswith(".tar") else {}
    if shard.meta_path is not None:
        meta_fs, meta_path = fsspec.core.url_to_fs(shard.meta_path)
        meta = pq.read_table(meta_fs.open(meta_path, "rb"))
        if not path.endswith(".tar"):  # parquet output format: the image is a column
            image_col = next((c for c in ("jpg", "png", "webp") if c in meta.column_names), None)
            images = meta.column(image_col).to_pylist() if image_col else [None] * meta.num_rows
            samples = {k: {"jpg": v} for k, v in zip(meta.column("key").to_pylist(), images, strict=True) if v}
        records = meta.to_pylist()
    else:
        records = [json.loads(s.get("json", b"{}")) | {"key": k} for k, s in sorted(samples.items())]
    keys, urls, captions, statuses, errors, images = [], [], [], [], [], []
    extra: dict[str, list] = {}
    for record in records:
        key = str(record["key"])
        sample = samples.get(key, {})
        data = next((sample[e] for e in ("jpg", "png", "webp") if e in sample), None)
        status, error = _img2dataset_status(record.get("status", "success" if data else None),
                                            record.get("error_message"))
        if status == st.OK and data is None:
            status, error = st.DECODE_ERROR, "img2dataset lists the row as a success but its image is missing"
        caption = record.get("caption")
        if caption is None and "txt" in sample:
            caption = sample["txt"].decode("utf-8", "replace")
        keys.append(key)
        urls.append(record.get("url"))
        captions.append(caption)
        statuses.append(status)
        errors.append(error)
        images.append(data if status == st.OK else None)
        for name, value in record.items():
            if name not in _I2D_OWN and name not in RESERVED_COLUMNS and not name.startswith(RESERVED_PREFIX):
                extra.setdefault(name, []).append(value)
    columns = {"key": pa.array(keys, pa.string()), "url": pa.array(urls, pa.string()),
               "caption": pa.array(captions, pa.string())}
    columns.update({n: pa.array(v) for n, v in extra.items() if len(v) == len(keys)})
    columns.update({
        "status": pa.array(statuses, pa.string()),
        "error": pa.array(errors, pa.string()),
        "http_status": pa.nulls(len(keys), pa.int32()),
        "n_bytes": pa.array([len(d) if d else None for d in images], pa.int64()),
        "image": pa.array(images, pa.binary()),
    })
    return pa.table(columns)
