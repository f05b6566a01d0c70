"""DuckDB over a run's Parquet tables, local or on any fsspec filesystem (s3:// included).

DuckDB's httpfs extension cannot be downloaded everywhere (not on air-gapped clusters, not here),
so remote runs are read through the run's own fsspec filesystem, registered with DuckDB: the same
`read_parquet('s3://...')` then works with the credentials and endpoint fsspec already uses.
SQL text lives in pipelines/sql/NAME.sql; user values are always bound as named parameters.
"""

from __future__ import annotations

import os
import uuid
from functools import cache
from pathlib import Path

import duckdb
import pyarrow as pa

from pipelines.storage import RunPaths

SQL = Path(__file__).parent / "sql"


@cache
def sql(name: str) -> str:
    """The text of pipelines/sql/NAME.sql."""
    return (SQL / f"{name}.sql").read_text()


def connect(threads: int | None = None, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    config: dict = {}
    if threads:
        config["threads"] = threads
    if memory_limit:
        config["memory_limit"] = memory_limit
    con = duckdb.connect(config=config)
    try:
        con.execute("SET enable_progress_bar = false")  # library code: no bars on the caller's terminal
    except duckdb.InvalidInputException:
        pass  # in Jupyter without ipywidgets DuckDB refuses the setting; there bars are off already
    return con


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
