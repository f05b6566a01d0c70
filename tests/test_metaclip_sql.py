"""MetaCLIP counts and balancing SQL on small hand-made runs (no Ray): exact decisions, edge cases,
fsspec run folders, and errors that name what is wrong."""

from __future__ import annotations

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from match_oracle import reference_decisions

from operators.match import MetaclipMatcher
from pipelines.core.config import ConfigError
from pipelines.core.storage import RunPaths
from pipelines.metadata import Metadata
from pipelines.verbs.match import save_metadata
from pipelines.verbs.metaclip import MetaclipBalanceOptions, balance, balance_subset, entry_counts, sql

ENTRIES = ["dog", "hot dog", "cat", "tree", "rare bird", "unused"]
CAPTIONS = (["a dog"] * 40 + ["a hot dog"] * 10 + ["cat and dog"] * 5 + ["a cat"] * 30 + ["tree"] * 3
            + ["a rare bird in a tree"] * 2 + ["nothing here", None, ""])


def write_run(url: str, captions: list[str | None] = CAPTIONS, shards: int = 3) -> dict[str, list[int]]:
    """A run whose annotations carry match lists (as annotate with a `match:` section writes them)."""
    paths = RunPaths(url)
    metadata = Metadata(ENTRIES, "test")
    save_metadata(paths, metadata)
    lists = MetaclipMatcher(ENTRIES).match(captions)
    keys = [f"k{i:04d}" for i in range(len(captions))]
    sha = [f"img{i // 2}" if i < 20 else None for i in range(len(captions))]  # pairs of texts share an image
    table = pa.table({"key": keys, "caption": captions, "sha256": sha, "metaclip_entries": lists,
                      "metadata_id": [metadata.id] * len(captions)})
    step = -(-len(captions) // shards)
    for s in range(shards):
        paths.write_parquet(table.slice(s * step, step), paths.join("annotations", f"{s:05d}.parquet"))
    return dict(zip(keys, lists.to_pylist(), strict=True))


def decided(table: pa.Table) -> dict[str, str]:
    return dict(zip(table.column("key").to_pylist(), table.column("reason").to_pylist(), strict=True))


def test_entry_counts_count_captions_once_each(tmp_path):
    write_run(str(tmp_path))
    counts = {r["entry"]: r["count"] for r in entry_counts(str(tmp_path)).to_pylist()}
    assert counts == {"dog": 55, "hot dog": 10, "cat": 35, "tree": 5, "rare bird": 2, "unused": 0}


@pytest.mark.parametrize("t,seed", [(1, 0), (4, 1), (12, 2), (1000, 3), (0.5, 4)])
def test_balance_equals_the_rule(tmp_path, t, seed):
    lists = write_run(str(tmp_path))
    decisions = balance(str(tmp_path), t=t, seed=seed, text_only=True)  # a text-only run: nothing was fetched
    assert decisions.schema.names == ["key", "kept", "reason"]
    assert decisions.column("key").to_pylist() == sorted(lists)
    assert decided(decisions) == reference_decisions(lists, ENTRIES, t, seed)
    reasons = decided(decisions)
    assert all(reasons[k] == "no_match" for k in ("k0090", "k0091", "k0092"))
    if t >= 55:  # every entry is tail: everything that matched is kept
        assert set(reasons.values()) == {"kept", "no_match"}


def test_metaclip2_picks_one_text_per_image(tmp_path):
    lists = write_run(str(tmp_path))
    images = {k: (f"img{int(k[1:]) // 2}" if int(k[1:]) < 20 else None) for k in lists}
    for seed in range(3):
        decisions = balance(str(tmp_path), t=4, seed=seed, group_by="sha256", text_only=True)
        assert decided(decisions) == reference_decisions(lists, ENTRIES, 4, seed, images=images)
        assert list(decided(decisions).values()).count("other_text") == 10  # 10 images with two matched texts


def test_fsspec_run_folder_gives_the_same_decisions(tmp_path):
    lists = write_run(str(tmp_path))
    url = "memory://metaclip-sql-test/run"
    write_run(url)
    try:
        assert balance(url, t=4, seed=7, text_only=True) == balance(str(tmp_path), t=4, seed=7, text_only=True)
        stats = balance_subset(url, "s", MetaclipBalanceOptions(t=4, seed=7, text_only=True))
        fs = fsspec.filesystem("memory")
        with fs.open(f"{url}/subsets/s/manifest.parquet", "rb") as f:
            kept = set(pq.read_table(f).column("key").to_pylist())
        assert kept == {k for k, r in reference_decisions(lists, ENTRIES, 4, 7).items() if r == "kept"}
        assert stats["captions"]["kept"] == len(kept)
        assert fs.exists(f"{url}/subsets/s/entry_counts.png")
    finally:
        fsspec.filesystem("memory").rm("memory://metaclip-sql-test", recursive=True)


def test_by_default_only_rows_with_an_image_are_balanced(tmp_path):
    """Failed downloads are decided 'no_image', never kept, and left out of the entry counts."""
    lists = write_run(str(tmp_path), shards=1)
    paths = RunPaths(str(tmp_path))
    table = pq.read_table(paths.join("annotations", "00000.parquet"))
    status = ["ok" if i % 3 else "http_error" for i in range(table.num_rows)]
    paths.write_parquet(table.append_column("status", pa.array(status)), paths.join("annotations", "00000.parquet"))
    decisions = decided(balance(str(tmp_path), t=4, seed=1))
    failed = {k for k, s in zip(sorted(lists), status, strict=True) if s != "ok"}
    assert {k for k, r in decisions.items() if r == "no_image"} == failed and len(decisions) == len(lists)
    ok_lists = {k: v for k, v in lists.items() if k not in failed}
    assert {k: r for k, r in decisions.items() if k not in failed} == reference_decisions(ok_lists, ENTRIES, 4, 1)
    assert decided(balance(str(tmp_path), t=4, seed=1, text_only=True)) == reference_decisions(lists, ENTRIES, 4, 1)


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="no match lists"):
        balance(str(tmp_path), t=4, seed=0)
    write_run(str(tmp_path))
    with pytest.raises(ConfigError, match="t: must be > 0"):
        balance(str(tmp_path), t=0, seed=0)
    with pytest.raises(ConfigError, match="seed: must be an integer"):
        balance(str(tmp_path), t=4, seed="x")
    with pytest.raises(ConfigError, match="no matches"):
        balance(str(tmp_path), t=4, seed=0, source="match")
    with pytest.raises(ConfigError, match="name"):
        balance_subset(str(tmp_path), "../x", MetaclipBalanceOptions(t=4, seed=0))


def test_sql_files_bind_values_as_parameters():
    for name in ("metaclip_balance", "metaclip2_balance", "metaclip_entry_stats"):
        text = sql(name)
        assert "$t" in text and "{" not in text  # named parameters, nothing to format in
    assert "$seed" in sql("metaclip_balance") and "$seed" in sql("metaclip2_balance")


def test_balancing_onto_an_existing_subset_is_refused_and_overwrite_replaces_it_whole(tmp_path):
    """A subset NAME made by select (its recipe.yaml, decisions) is not silently mixed with a balanced one."""
    write_run(str(tmp_path))
    paths = RunPaths(str(tmp_path))
    options = MetaclipBalanceOptions(t=4, seed=0, text_only=True)
    balance_subset(str(tmp_path), "s", options, plot=False)
    paths.write_text("# select's recipe of an earlier subset s\n", paths.subset("s").recipe)
    with pytest.raises(ConfigError, match="subsets/s exists; pick another --name or pass --overwrite"):
        balance_subset(str(tmp_path), "s", options, plot=False)
    stats = balance_subset(str(tmp_path), "s", options.model_copy(update={"seed": 1}), plot=False, overwrite=True)
    assert not paths.exists(paths.subset("s").recipe)  # nothing of the old subset remains
    assert paths.complete_subset("s").info()["recipe"]["seed"] == 1 == stats["recipe"]["seed"]
