"""DuckDB over a run's Parquet tables, local or on any fsspec filesystem (s3:// included).

DuckDB's httpfs extension cannot be downloaded everywhere (not on air-gapped clusters, not here),
so remote runs are read through the run's own fsspec filesystem, registered with DuckDB: the same
`read_parquet('s3://...')` then works with the credentials and endpoint fsspec already uses.
SQL text lives in pipelines/sql/NAME.sql; user values are always bound as named parameters.

Memory: DuckDB's own limit is 80% of the machine, which a select over tens of millions of rows reaches (sorts,
window partitions and joins grow with the rows). connect() sets DuckOptions' limit (default: a quarter of the
machine's or container's memory, at most 2 GB: pipelines/core/verb_options.py) and a spill folder, so past the limit
DuckDB writes to disk instead of growing; the results are the same.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import duckdb
import pyarrow as pa

from pipelines import PACKAGE
from pipelines.core.config import ConfigError
from pipelines.core.storage import RunPaths
from pipelines.core.verb_options import DEFAULT_MEMORY_CAP, DEFAULT_MEMORY_SHARE, DuckOptions

__all__ = ["DuckOptions", "connect", "machine_memory", "parquet_url", "resolved", "run_sql", "scan", "sql", "to_arrow",
           "within_memory", "write_query"]

SQL = PACKAGE / "sql"


@cache
def sql(name: str) -> str:
    """The text of pipelines/sql/NAME.sql."""
    return (SQL / f"{name}.sql").read_text()


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its container's (cgroup v2 or v1) if smaller."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def resolved(options: DuckOptions | None = None) -> dict:
    """DuckDB's config for `options`, the defaults filled in: memory_limit (DEFAULT_MEMORY_SHARE of machine_memory(),
    at most DEFAULT_MEMORY_CAP), temp_directory (the system temp folder's tailor-duckdb/), threads (DuckDB's: one
    per CPU) when not set."""
    options = options or DuckOptions()
    default = min(DEFAULT_MEMORY_CAP, int(machine_memory() * DEFAULT_MEMORY_SHARE))
    limit = options.memory_limit or f"{default // 10**6}MB"
    folder = options.temp_directory or os.path.join(tempfile.gettempdir(), "tailor-duckdb")
    config = {"memory_limit": limit, "temp_directory": folder}
    if options.threads:
        config["threads"] = options.threads
    return config


def connect(options: DuckOptions | int | None = None, *, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with DuckOptions' settings (resolved(): memory limit, spill folder, threads). A bare
    int, or `threads`, is DuckOptions(threads=...) (callers that set only the threads)."""
    if not isinstance(options, DuckOptions):
        options = DuckOptions(threads=options if options is not None else threads)
    config = resolved(options)
    folder = config["temp_directory"]
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"temp_directory {folder!r}: {err.strerror or err}") from None
    # a folder of this connection's own: DuckDB makes it when it first spills and removes it on close, and older
    # DuckDB names its spill files alike in every process
    config["temp_directory"] = os.path.join(folder, f"duckdb-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        con = duckdb.connect(config=config)
    except duckdb.Error as err:  # what the validator let through and DuckDB refused: one line, no traceback
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"DuckDB settings {config}: {message}") from None
    try:
        con.execute("SET enable_progress_bar = false")  # library code: no bars on the caller's terminal
    except duckdb.InvalidInputException:
        pass  # in Jupyter without ipywidgets DuckDB refuses the setting; there bars are off already
    return con


@contextmanager
def within_memory(options: DuckOptions | None = None) -> Iterator[None]:
    """What DuckDB cannot spill outgrowing its memory limit, as one ConfigError line naming the settings to change
    instead of a traceback."""
    try:
        yield
    except duckdb.OutOfMemoryException as err:
        first = str(err).splitlines()[0] if str(err) else "out of memory"
        raise ConfigError(f"DuckDB ran out of its memory limit ({resolved(options)['memory_limit']}): {first}; "
                          "raise --memory-limit, or lower --threads") from None


def _register_fs(con: duckdb.DuckDBPyConnection, paths: RunPaths) -> None:
    protocols = paths.fs.protocol if isinstance(paths.fs.protocol, tuple) else (paths.fs.protocol,)
    registered = {fs for fs in con.list_filesystems()}
    if not any(p in registered for p in protocols):
        con.register_filesystem(paths.fs)


def parquet_url(paths: RunPaths, path: str) -> str:
    """A path from RunPaths.join/list as DuckDB should read it (with the protocol when remote)."""
    if paths.is_local:
        return path
    protocol = paths.fs.protocol[0] if isinstance(paths.fs.protocol, tuple) else paths.fs.protocol
    return path if "://" in path else f"{protocol}://{path}"


def scan(con: duckdb.DuckDBPyConnection, paths: RunPaths, files: list[str]) -> duckdb.DuckDBPyRelation:
    """A relation over Parquet files of a run, local or remote (no DuckDB extension needed)."""
    if not files:
        raise ValueError("scan: no files")
    if not paths.is_local:
        _register_fs(con, paths)
    return con.read_parquet([parquet_url(paths, f) for f in files], union_by_name=True)


def run_sql(con: duckdb.DuckDBPyConnection, name: str, **params) -> pa.Table:
    """Run pipelines/sql/NAME.sql with its named parameters bound; the result as an Arrow table."""
    return to_arrow(con.sql(sql(name), params=params or None))


def to_arrow(rel: duckdb.DuckDBPyRelation) -> pa.Table:
    return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()  # duckdb < 1.4: arrow()


def write_query(con: duckdb.DuckDBPyConnection, paths: RunPaths, query: str, path: str) -> None:
    """Write a query's result as one Parquet file, atomically: DuckDB's parallel writer for a local run,
    Arrow through the run's filesystem otherwise."""
    if not paths.is_local:
        paths.write_parquet(to_arrow(con.sql(query)), path)
        return
    parent = path.rsplit("/", 1)[0]
    paths.fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}.parquet"
    try:
        target = tmp.replace("'", "''")  # a quote in the run's path is part of the path, not SQL
        con.execute(f"COPY ({query}) TO '{target}' (FORMAT parquet, COMPRESSION zstd)")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
