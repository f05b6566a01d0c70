"""The paper's log-linear analysis (pipelines/verbs/loglinear.py, `tailor loglinear`): fast, no Ray."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.core.config import ConfigError
from pipelines.verbs.loglinear import analyse, read_points, run_points


def paper(count: np.ndarray, accuracy: np.ndarray) -> dict:
    """The authors' released code: linspace(min, max, 12) edges of ln(count), digitize(right=True), bins 1..10."""
    x = np.log(np.where(count == 0, 1, count))
    edges = np.linspace(x.min(), x.max(), num=12)
    which = np.digitize(x, edges, right=True)
    rows = np.bincount(which, minlength=12)
    means = np.array([accuracy[which == b].mean() if rows[b] else np.nan for b in range(12)])
    stds = np.array([np.std(accuracy[which == b]) if rows[b] else np.nan for b in range(12)])
    used = np.zeros(12, bool)
    used[1:11] = rows[1:11] > 0
    r = np.corrcoef(edges[used], means[used])[0, 1]
    slope, intercept = np.polyfit(edges[used], means[used], 1)
    return {"edges": np.exp(edges), "rows": rows, "means": means, "stds": stds, "pearson_r": r, "slope": slope,
            "intercept": intercept, "bins_used": int(used.sum())}


def synthetic(seed: int = 3, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy = 0.1 + 0.05 ln(count) + noise; several zero counts (x = min) and a tie at the maximum."""
    rng = np.random.default_rng(seed)
    count = np.concatenate([[0, 0, 0, 1, 60000, 60000], np.round(np.exp(rng.uniform(0, 11, n - 6)))])
    accuracy = np.clip(0.1 + 0.05 * np.log(np.maximum(count, 1)) + rng.normal(0, 0.03, n), 0, 1)
    return count.astype(np.int64), accuracy


def write_csv(path, count, accuracy, datasets=None) -> None:
    head = "dataset,concept,count,accuracy\n" if datasets is not None else "concept,count,accuracy\n"
    lines = [(f"{datasets[i]}," if datasets is not None else "") + f"c{i},{c},{float(a)!r}\n"
             for i, (c, a) in enumerate(zip(count, accuracy, strict=True))]
    path.write_text(head + "".join(lines))


def none_to_nan(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def test_matches_the_papers_numpy_code(tmp_path):
    count, accuracy = synthetic()
    path = tmp_path / "acc.csv"
    write_csv(path, count, accuracy)
    s = analyse(read_points(str(path), "test"), source=str(path)).summary()
    want = paper(count, accuracy)

    assert np.allclose(s["edges"], want["edges"], rtol=1e-12)
    assert s["edges"][0] == pytest.approx(1) and s["edges"][-1] == pytest.approx(60000)
    assert s["rows"] == want["rows"].tolist()
    assert s["rows"][0] == int((count <= 1).sum()) > 4  # bin 0 holds only x = min: the zero counts and the 1s
    assert s["rows"][-1] >= 2  # the tie at the maximum is in the last bin (right-closed), not past it
    assert np.allclose(none_to_nan(s["means"]), want["means"], equal_nan=True)
    assert np.allclose(none_to_nan(s["stds"]), want["stds"], equal_nan=True)
    assert s["bins_used"] == want["bins_used"] == 10
    assert s["pearson_r"] == pytest.approx(want["pearson_r"], abs=1e-9)
    assert s["slope"] == pytest.approx(want["slope"], abs=1e-9)
    assert s["intercept"] == pytest.approx(want["intercept"], abs=1e-9)
    assert s["slope"] == pytest.approx(0.05, abs=0.005)  # the law the data was drawn from
    assert s["fit_bins"] == [1, 10] and s["points"] == len(count)


def test_empty_bins_are_left_out_of_the_fit():
    """Counts in a few clusters: empty middle bins have no mean and do not enter r."""
    count = np.array([1] * 5 + [20] * 5 + [400] * 5 + [3000] * 5 + [100000] * 5)
    accuracy = np.linspace(0.1, 0.9, len(count))
    points = pa.table({"concept": [f"c{i}" for i in range(len(count))], "count": count.astype(float),
                       "accuracy": accuracy, "dataset": pa.nulls(len(count), pa.string())})
    s = analyse(points.select(["dataset", "concept", "count", "accuracy"])).summary()
    want = paper(count, accuracy)
    assert s["rows"] == want["rows"].tolist()
    assert s["means"].count(None) == int(np.isnan(want["means"]).sum()) > 0
    assert s["bins_used"] == want["bins_used"] == 3
    assert s["pearson_r"] == pytest.approx(want["pearson_r"], abs=1e-9)


def test_every_count_zero_is_a_clear_error(tmp_path, capsys):
    from pipelines.cli import main

    path = tmp_path / "zeros.csv"
    write_csv(path, np.zeros(20, np.int64), np.linspace(0, 1, 20))
    with pytest.raises(ConfigError, match="needs at least 3 non-empty bins.*every count is 0 or 1"):
        analyse(read_points(str(path), "test"))
    assert main(["loglinear", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tailor: ") and "every count is 0 or 1" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "loglinear.json").exists()


def test_too_few_bins_and_bad_files_are_clear_errors(tmp_path):
    two = pa.table({"dataset": pa.nulls(4, pa.string()), "concept": list("abcd"), "count": [1.0, 10, 10, 1000],
                    "accuracy": [0.1, 0.2, 0.3, 0.4]})
    with pytest.raises(ConfigError, match="fill 1"):
        analyse(two)
    with pytest.raises(ConfigError, match="no row has both"):
        analyse(two.slice(0, 0))
    missing = tmp_path / "nocount.csv"
    missing.write_text("concept,accuracy\na,0.5\n")
    with pytest.raises(ConfigError, match="lacks column.*count"):
        read_points(str(missing), "loglinear")
    assert read_points(str(missing), "--accuracy", count_required=False).column_names == [
        "dataset", "concept", "accuracy"]
    with pytest.raises(ConfigError, match="cannot read"):
        read_points(str(tmp_path / "nope.csv"), "loglinear")
    words = tmp_path / "words.csv"
    words.write_text("concept,count,accuracy\na,many,0.5\n")
    with pytest.raises(ConfigError, match="must be numbers"):
        read_points(str(words), "loglinear")
    twice = tmp_path / "per_subset.csv"  # evaluate's per_concept table: one row per subset, no dataset column
    twice.write_text("subset,concept,accuracy\nraw,dog,0.5\ndemo,dog,0.6\n")
    with pytest.raises(ConfigError, match="lists concept 'dog' 2 times; give one row per concept"):
        read_points(str(twice), "--accuracy", count_required=False)


def test_same_concept_in_two_datasets_stays_two_rows(tmp_path):
    count, accuracy = synthetic(seed=5, n=120)
    datasets = ["imagenet" if i % 2 else "cifar" for i in range(len(count))]
    path = tmp_path / "two.csv"
    lines = ["dataset,concept,count,accuracy\n"]
    for i, (c, a) in enumerate(zip(count, accuracy, strict=True)):
        lines.append(f"{datasets[i]},concept{i // 2},{c},{float(a)!r}\n")  # each concept name in both datasets
    path.write_text("".join(lines))
    points = read_points(str(path), "test")
    result = analyse(points)
    s = result.summary()
    assert result.points.num_rows == len(count) and sum(s["rows"]) == len(count) and s["datasets"] == 2
    assert s["rows"] == paper(count, accuracy)["rows"].tolist()
    assert s["pearson_r"] == pytest.approx(paper(count, accuracy)["pearson_r"], abs=1e-9)

    # the audit: with a count column the file's counts are used; without, the run's joined per row
    run_counts = pa.table({"concept_id": pa.array([0, 1], pa.int32()), "concept": ["concept0", "concept1"],
                           "frequency": pa.array([7, 9], pa.int64())})
    assert run_points(run_counts, points).num_rows == len(count)
    joined = run_points(run_counts, points.drop_columns(["count"]))
    assert sorted(zip(joined.column("dataset").to_pylist(), joined.column("count").to_pylist(), strict=True)) == [
        ("cifar", 7.0), ("cifar", 9.0), ("imagenet", 7.0), ("imagenet", 9.0)]


@pytest.mark.parametrize("suffix", [".tsv", ".parquet", ".jsonl"])
def test_other_formats(tmp_path, suffix):
    count, accuracy = synthetic(seed=7, n=80)
    table = pa.table({"concept": [f"c{i}" for i in range(len(count))], "count": count, "accuracy": accuracy})
    path = tmp_path / f"acc{suffix}"
    if suffix == ".parquet":
        pq.write_table(table, path)
    elif suffix == ".tsv":
        path.write_text("concept\tcount\taccuracy\n" + "".join(
            f"c{i}\t{c}\t{float(a)!r}\n" for i, (c, a) in enumerate(zip(count, accuracy, strict=True))))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    s = analyse(read_points(str(path), "test")).summary()
    assert s["rows"] == paper(count, accuracy)["rows"].tolist()
    assert s["pearson_r"] == pytest.approx(paper(count, accuracy)["pearson_r"], abs=1e-9)


def test_cli_writes_json_and_plot(tmp_path, capsys):
    from pipelines.cli import main

    count, accuracy = synthetic()
    path = tmp_path / "acc.csv"
    write_csv(path, count, accuracy, datasets=["d1"] * len(count))
    out = tmp_path / "out"
    assert main(["loglinear", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Pearson r" in printed and "bins 1..10" in printed
    s = json.loads((out / "loglinear.json").read_text())
    assert {"edges", "rows", "means", "stds", "pearson_r", "slope", "intercept"} <= set(s)
    want = paper(count, accuracy)
    assert len(s["edges"]) == 12 and np.allclose(s["edges"], want["edges"])
    assert s["rows"] == want["rows"].tolist()
    assert s["pearson_r"] == pytest.approx(want["pearson_r"], abs=1e-9)
    assert (out / "loglinear.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def make_run(run, captions: list[str], status: str):
    """A minimal finished run (one annotation shard, no embeddings): audited in-process, no Ray."""
    (run / "annotations").mkdir(parents=True)
    (run / "_done").mkdir()
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(len(captions))], "caption": captions,
                             "status": [status] * len(captions)}), run / "annotations" / "00000.parquet")
    (run / "_done" / "00000.json").write_text(json.dumps({"shard": "00000", "rows": len(captions)}))
    return run


def test_audit_accuracy_without_ok_rows_and_with_a_count_column(tmp_path, capsys):
    """A run with no ok row: the audit prints a sane tail line; --accuracy against the run's counts is one
    clear line (exit 2); an accuracy file with its own count column is analysed with those counts."""
    from pipelines.cli import main
    from pipelines.demo.web.world import CONCEPTS

    run = make_run(tmp_path / "run", [f"a photo of a {c}" for c in CONCEPTS[:20]], "download_error")
    assert main(["audit", str(run), "--concepts", "demo", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "None" not in out.splitlines()[0] and "no concept has a text mention" in out

    count, accuracy = synthetic(seed=11, n=len(CONCEPTS))
    plain = tmp_path / "acc.csv"
    plain.write_text("concept,accuracy\n" + "".join(f"{c},{float(a)!r}\n" for c, a in zip(CONCEPTS, accuracy,
                                                                                         strict=True)))
    assert main(["audit", str(run), "--concepts", "demo", "--accuracy", str(plain), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tailor: --accuracy") and "every count is 0 or 1" in err and len(err.splitlines()) == 1

    counted = tmp_path / "counted.csv"
    counted.write_text("concept,count,accuracy\n" + "".join(
        f"{c},{n},{float(a)!r}\n" for c, n, a in zip(CONCEPTS, count, accuracy, strict=True)))
    assert main(["audit", str(run), "--concepts", "demo", "--accuracy", str(counted), "--no-progress"]) == 0
    assert "log-linear: Pearson r" in capsys.readouterr().out
    s = json.loads((run / "audit" / "demo" / "_audit.json").read_text())["summary"]["loglinear"]
    want = paper(count, accuracy)
    assert s["counts"] == "file" and s["rows"] == want["rows"].tolist()
    assert s["pearson_r"] == pytest.approx(want["pearson_r"], abs=1e-9)
    assert (run / "audit" / "demo" / "report" / "loglinear.png").exists()
