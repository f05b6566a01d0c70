"""Small helpers for the pyarrow tables operators pass around."""

import pyarrow as pa


def replace_columns(batch: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    """Set (add or overwrite) columns on a table, keeping the others in place."""
    for name, values in columns.items():
        if name in batch.column_names:
            batch = batch.set_column(batch.column_names.index(name), name, values)
        else:
            batch = batch.append_column(name, values)
    return batch


def require_columns(batch: pa.Table, names: tuple[str, ...], operator: str) -> None:
    """Raise a KeyError naming the columns `operator` needs that the batch lacks, and those it has."""
    missing = [n for n in names if n not in batch.column_names]
    if missing:
        raise KeyError(f"{operator} needs column(s) {', '.join(missing)} (columns: {', '.join(batch.column_names)})")
