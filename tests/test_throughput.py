"""Per-stage throughput read from Ray Data's stats text (as RUN/logs/ray_data_stats.txt holds it)."""

from __future__ import annotations

import pytest

from pipelines.core.throughput import StatsFormatError, stage_throughput

# an excerpt of a real demo run's Dataset.stats() (Ray 2.60): decode, preprocess and the model fused into one task
STATS = """Operator 0 FromItems: 1 tasks executed, 16 blocks produced in 0.03s
* Remote wall time: 970.13us min, 4.99ms max, 1.52ms mean, 24.35ms total
* Operator throughput:
\t* Total input num rows: 0 rows
\t* Total output num rows: 16 rows

Operator 2 MapBatches(download_batch): 13 tasks executed, 13 blocks produced in 14.34s
* Remote wall time: 85.01ms min, 4.54s max, 1.82s mean, 23.64s total
* Operator throughput:
\t* Total input num rows: 1000 rows
\t* Total output num rows: 1000 rows
\t* Ray Data throughput: 69.74602238985838 rows/s

Operator 3 MapBatches(decode_batch)->MapBatches(preprocess_batch)->MapBatches(ClipEmbedder): 13 tasks executed, \
13 blocks produced in 10.38s
* Remote wall time: 492.36ms min, 1.49s max, 791.5ms mean, 10.29s total
* Operator throughput:
\t* Total input num rows: 1000 rows
\t* Total output num rows: 1000 rows

Operator 4 MapBatches(write_parts): 13 tasks executed, 13 blocks produced in 9.37s
* Remote wall time: 12.14ms min, 565.22ms max, 121.04ms mean, 1.57s total
* Operator throughput:
\t* Total input num rows: 1000 rows
\t* Total output num rows: 16 rows

Dataset throughput:
\t* Ray Data throughput: 0.7847888590935338 rows/s
"""


def test_stage_throughput_from_ray_data_stats():
    found = stage_throughput(STATS)
    assert set(found) == {"download", "decode", "preprocess", "embed", "write"}  # FromItems is no stage
    assert found["download"] == {"rows": 1000, "wall_s": 14.34, "rows_per_s": 69.7, "task_s": 23.64,
                                 "rows_per_task_s": 42.3}
    assert found["decode"]["fused_with"] == ["preprocess", "embed"] and found["embed"]["rows_per_task_s"] == 97.2
    assert found["write"]["rows"] == 1000  # rows through the stage, not the part-metadata rows it emits
    assert stage_throughput("") == {}


def test_text_the_parser_cannot_read_fails_loudly():
    with pytest.raises(StatsFormatError, match="no 'Operator N"):
        stage_throughput("not Ray Data stats")
    garbled = STATS.replace("* Remote wall time: 85.01ms min, 4.54s max, 1.82s mean, 23.64s total", "* wall: ?")
    with pytest.raises(StatsFormatError, match="download_batch"):
        stage_throughput(garbled)


@pytest.mark.slow
def test_this_ray_versions_stats_parse_completely(demo_run):
    """The stats text of a live run (this Ray version, not a frozen excerpt) yields every stage the pipeline
    ran, each with rows, wall time and task time."""
    summary, run, _ = demo_run
    found = stage_throughput((run / "logs" / "ray_data_stats.txt").read_text(), summary["rows_in"])
    assert {"load", "fetch", "preprocess", "embed", "write"} <= set(found)
    assert found == summary["stage_throughput"]
    for stage in found.values():
        assert stage["rows"] == summary["rows_in"] and stage["wall_s"] > 0 and stage["task_s"] > 0
