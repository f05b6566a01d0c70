"""notebooks/concept_coverage.ipynb runs top to bottom on the session's demo run (nbclient)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import write_manifest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "concept_coverage.ipynb"


@pytest.mark.slow
def test_concept_coverage_notebook_executes(demo_run, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from pipelines.demo.web.world import CONCEPTS

    _, run, _ = demo_run
    keys = pq.read_table(run / "annotations", columns=["key"]).column("key").to_pylist()
    write_manifest(run, "audit-notebook", keys[::2])
    accuracy = tmp_path / "accuracy.csv"
    accuracy.write_text("concept,accuracy\n" + "".join(f"{c},{0.9 - 0.005 * i}\n" for i, c in enumerate(CONCEPTS)))
    monkeypatch.setenv("TAILOR_AUDIT_RUN", str(run))
    monkeypatch.setenv("TAILOR_AUDIT_CONCEPTS", "demo")
    monkeypatch.setenv("TAILOR_AUDIT_SUBSET", "audit-notebook")
    monkeypatch.setenv("TAILOR_AUDIT_ACCURACY", str(accuracy))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}},
                   env=dict(os.environ)).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "tail concepts" in text and "pearson_r" in text and "tail_concepts_lost" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # rank-frequency, delta, log-linear
    assert (run / "audit" / "demo" / "subsets" / "audit-notebook.parquet").exists()
