"""SemDeDup: planted near-duplicate groups are found, one kept per group; equal to a brute-force
all-pairs reference; deterministic; and on the demo run, the demo web's exact duplicates are flagged."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.semdedup import cluster_order, greedy_dedup, normalize, split_cluster


def brute_force(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rule written the slow way, with the full all-pairs matrix: (max_sim, dup_of, max_sim_any)."""
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    n = len(x)
    max_sim, max_any, dup_of = np.full(n, np.nan), np.full(n, np.nan), np.full(n, -1)
    kept: list[int] = []
    for i in range(n):
        if i:
            max_any[i] = sims[i, :i].max()
            j = kept[int(np.argmax(sims[i, kept]))]
            max_sim[i] = sims[i, j]
            if sims[i, j] > 1 - eps:
                dup_of[i] = j
                continue
        kept.append(i)
    return max_sim, dup_of, max_any


def planted(n_background: int, n_groups: int, dim: int, seed: int, blobs: int = 8, noise: float = 0.002):
    """Background points around a few well separated blob centres, plus groups of 2-4 near-copies."""
    rng = np.random.default_rng(seed)
    centres = normalize(rng.standard_normal((blobs, dim)))
    spread = rng.standard_normal((n_background, dim)) / np.sqrt(dim)  # about as long as a centre
    background = normalize(centres[rng.integers(0, blobs, n_background)] + spread)
    sizes = rng.integers(2, 5, n_groups)
    bases = background[rng.choice(n_background, n_groups, replace=False)]
    copies = np.repeat(bases, sizes, axis=0)
    copies = normalize(copies + noise * rng.standard_normal(copies.shape))
    vectors = np.concatenate([background, copies])
    group = np.concatenate([np.full(n_background, -1), np.repeat(np.arange(n_groups), sizes)])
    return vectors, group, bases  # (each base is a background point: its copies' group includes it)


def write_run(run, vectors: np.ndarray, shards: int = 3, seed: int = 0) -> list[str]:
    """A run folder holding only RUN/embeddings/*.parquet (float16, as annotate stores them)."""
    (run / "embeddings").mkdir(parents=True)
    keys = np.array([f"k{i:06d}" for i in range(len(vectors))])
    order = np.random.default_rng(seed).permutation(len(vectors))
    for s in range(shards):
        rows = order[s::shards]
        emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows].astype(np.float16).ravel()), vectors.shape[1])
        table = pa.table({"key": keys[rows].tolist(), "image_emb": emb})
        pq.write_table(table, run / "embeddings" / f"{s:05d}.parquet")
    return keys.tolist()


def groups_of(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Connected components of the 'cosine > threshold' graph (the truth for planted data)."""
    sims = vectors @ vectors.T
    label = np.arange(len(vectors))
    for i, j in zip(*np.nonzero(np.triu(sims > threshold, 1)), strict=True):
        a, b = label[i], label[j]
        if a != b:
            label[label == max(a, b)] = min(a, b)
    return label


# ---------------------------------------------------------------- the operator

@pytest.mark.parametrize("block_elements", [1 << 24, 4000, 64])
def test_greedy_dedup_equals_brute_force(block_elements):
    rng = np.random.default_rng(1)
    base = normalize(rng.standard_normal((60, 16)))
    x = normalize(np.repeat(base, 5, axis=0) + 0.08 * rng.standard_normal((300, 16)))[rng.permutation(300)]
    for eps in (0.02, 0.05, 0.2):
        result = greedy_dedup(x, eps, block_elements=block_elements)
        max_sim, dup_of, max_any = brute_force(x, eps)
        assert (result.dup_of == dup_of).all()
        np.testing.assert_allclose(result.max_sim, max_sim, atol=1e-5)
        np.testing.assert_allclose(result.max_sim_any, max_any, atol=1e-5)
        assert 0 < (~result.kept).sum() < len(x)  # the case is not trivial


def test_cluster_order_is_farthest_first_then_key():
    order = cluster_order(np.array([0.9, 0.1, 0.5, 0.1], dtype=np.float32), np.array(["d", "c", "a", "b"]))
    assert order.tolist() == [3, 1, 2, 0]


def test_split_cluster_bounds_parts():
    rng = np.random.default_rng(2)
    x = normalize(rng.standard_normal((1000, 8)))
    labels = split_cluster(x, 120, seed=0)
    assert np.bincount(labels).max() <= 120 and labels.max() >= 8
    assert (split_cluster(x, 120, seed=0) == labels).all()
    assert (split_cluster(x, 5000, seed=0) == 0).all()


# ---------------------------------------------------------------- the pass

@pytest.mark.slow
def test_semdedup_removes_planted_duplicates_one_per_group(ray_local, tmp_path):
    from pipelines.verbs.semdedup import SemdedupOptions, semdedup

    vectors, group, bases = planted(2000, 80, 32, seed=3)
    keys = write_run(tmp_path / "run", vectors)
    eps = 0.01
    truth = groups_of(normalize(vectors.astype(np.float16)), 1 - eps)
    path = semdedup(str(tmp_path / "run"), SemdedupOptions(eps=eps, n_clusters=8))
    table = pq.read_table(path).to_pandas().set_index("key").loc[keys]
    assert len(table) == len(vectors) and table.index.is_unique
    dropped = table.dup_of.notna().to_numpy()
    # every planted copy belongs to one truth group with its base; exactly one member of each is kept
    for label in np.unique(truth):
        members = np.flatnonzero(truth == label)
        assert (~dropped[members]).sum() == 1, members
        kept_key = keys[members[~dropped[members]][0]]
        assert set(table.dup_of.iloc[members[dropped[members]]]) <= {kept_key}
    assert dropped.sum() == len(vectors) - len(np.unique(truth))
    assert dropped.sum() >= group.max() + 1  # at least one copy per planted group was found
    info = pq.read_metadata(path)
    assert info.num_rows == len(vectors)


@pytest.mark.slow
def test_semdedup_equals_brute_force_reference(ray_local, tmp_path):
    from pipelines.verbs.semdedup import SemdedupOptions, semdedup

    vectors, _, _ = planted(500, 40, 16, seed=4, noise=0.05)
    keys = np.array(write_run(tmp_path / "run", vectors))
    stored = normalize(vectors.astype(np.float16))
    for n_clusters in (1, 5):
        path = semdedup(str(tmp_path / "run"), SemdedupOptions(eps=0.03, n_clusters=n_clusters))
        table = pq.read_table(path).to_pandas()
        centroids = np.stack(pq.read_table(tmp_path / "run" / "dedup" / "semdedup-centroids.parquet")
                             .column("centroid").to_numpy(zero_copy_only=False)).astype(np.float32)
        assert len(centroids) == n_clusters
        for cluster, rows in table.groupby("cluster"):
            row_of = {k: i for i, k in enumerate(keys)}
            idx = np.array([row_of[k] for k in rows.key])
            x = stored[idx]
            # the documented order: farthest from the centroid first, ties by key
            order = cluster_order(x @ centroids[cluster], keys[idx])
            assert (rows.iloc[order]["rank"].to_numpy() == np.arange(len(idx))).all()
            max_sim, dup_of, max_any = brute_force(x[order], 0.03)
            ordered = rows.iloc[order]
            expected = [None if j < 0 else keys[idx[order[j]]] for j in dup_of]
            assert ordered.dup_of.tolist() == expected
            np.testing.assert_allclose(ordered.max_sim.to_numpy(dtype=float), max_sim, atol=1e-5)
            np.testing.assert_allclose(ordered.max_sim_any.to_numpy(dtype=float), max_any, atol=1e-5)
        assert table.dup_of.notna().sum() > 0


@pytest.mark.slow
def test_semdedup_deterministic_and_reused(ray_local, tmp_path):
    from pipelines.verbs.semdedup import SemdedupOptions, semdedup

    vectors, _, _ = planted(1500, 60, 32, seed=5)
    write_run(tmp_path / "run", vectors)
    run = str(tmp_path / "run")
    settings = SemdedupOptions(eps=0.01, n_clusters=6, max_cluster_size=200, buckets=1)
    first = pq.read_table(semdedup(run, settings))
    json_path = tmp_path / "run" / "dedup" / "semdedup.json"
    stamp = json_path.stat().st_mtime_ns
    assert semdedup(run, settings).endswith("dedup/semdedup.parquet")
    assert json_path.stat().st_mtime_ns == stamp  # same settings: reused
    again = pq.read_table(semdedup(run, settings.model_copy(update={"buckets": 6}), overwrite=True))
    assert again.equals(first)  # another partition of the work, the same table
    assert pq.read_table(run + "/dedup/semdedup.parquet").column("part").to_numpy().max() > 0  # clusters were split
    other = pq.read_table(semdedup(run, SemdedupOptions(eps=0.2, n_clusters=6, max_cluster_size=200)))
    assert json_path.stat().st_mtime_ns != stamp
    assert json.loads(json_path.read_text())["counts"]["centroids_reused"]  # only eps changed
    assert other.select(["key", "cluster", "rank"]).equals(first.select(["key", "cluster", "rank"]))
    assert other.column("dup_of").null_count < first.column("dup_of").null_count  # looser eps: more duplicates


@pytest.mark.slow
def test_semdedup_flags_demo_exact_duplicates(demo_run):
    """On the demo run, copies of the same bytes (truth dup_kind 'exact' with their original) are
    duplicates of each other at a small eps, and nothing outside a duplicate group is flagged."""
    from pipelines.verbs.semdedup import SemdedupOptions, semdedup

    _, run, web = demo_run
    path = semdedup(str(run), SemdedupOptions(eps=1e-4))
    table = pq.read_table(path).to_pandas()
    annotations = pq.read_table(run / "annotations", columns=["key", "demo_id", "sha256"]).to_pandas()
    truth = pq.read_table(web / "truth.parquet", columns=["demo_id", "dup_group", "dup_kind"]).to_pandas()
    rows = table.merge(annotations, on="key").merge(truth, on="demo_id")
    assert len(rows) == len(table)
    group_of = dict(zip(rows.key, rows.dup_group, strict=True))
    exact = rows[rows.dup_kind.isin(["original", "exact"])]
    checked = 0
    for _, same_bytes in exact.groupby("sha256"):
        if len(same_bytes) < 2:
            continue
        checked += 1
        # at most one copy kept; each dropped copy names a kept member of its own duplicate group
        assert same_bytes.dup_of.isna().sum() <= 1
        kept_keys = set(rows.key[rows.dup_of.isna()])
        for dup in same_bytes.dup_of:
            if dup is not None:
                assert dup in kept_keys and group_of[dup] == same_bytes.dup_group.iloc[0]
    assert checked >= 10
    flagged = rows[rows.dup_of.notna()]
    assert flagged.dup_group.notna().all()  # no false positive outside the planted duplicate groups


@pytest.mark.slow
def test_semdedup_cli(ray_local, tmp_path, capsys):
    from pipelines.cli import main

    vectors, _, _ = planted(600, 20, 16, seed=6)
    write_run(tmp_path / "run", vectors)
    assert main(["semdedup", str(tmp_path / "run"), "--eps", "0.01", "--clusters", "4"]) == 0
    out = capsys.readouterr().out
    assert f"duplicates of {len(vectors)} points in 4 clusters" in out and "dedup/semdedup.parquet" in out
    assert main(["semdedup", str(tmp_path / "nowhere")]) == 2  # no embeddings: one line, exit 2
    assert "no image embeddings" in capsys.readouterr().err
