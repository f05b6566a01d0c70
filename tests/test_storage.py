"""RunPaths: where every pass's outputs live, how a run folder is named to Ray workers, and RUN/config.yaml."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest
import yaml

from pipelines.core.config import ConfigError
from pipelines.core.storage import RunPaths, SubsetError, check_name


def test_absolute_makes_local_paths_absolute_and_leaves_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert RunPaths.absolute("run") == os.path.join(str(tmp_path), "run")
    assert RunPaths.absolute(tmp_path / "run") == str(tmp_path / "run")
    assert RunPaths.absolute("s3://bucket/run") == "s3://bucket/run"


def test_pass_outputs_are_under_the_run(tmp_path):
    paths = RunPaths(str(tmp_path))
    root = str(tmp_path)
    assert paths.metadata("abc") == f"{root}/metadata/abc.parquet"
    assert (paths.match, paths.match_info) == (f"{root}/match", f"{root}/match/_match.json")
    assert paths.match_shard("00001") == f"{root}/match/shards/00001.parquet"
    assert paths.entry_counts == f"{root}/match/entry_counts.parquet"
    assert paths.subset("basic").folder == f"{root}/subsets/basic"
    assert paths.subset("basic").manifest == f"{root}/subsets/basic/manifest.parquet"
    assert paths.subset("basic").stats == f"{root}/subsets/basic/stats.json"
    assert paths.fetch_input("basic", "2026-12-07T10:00:00+00:00") == \
        f"{root}/fetch-inputs/basic-20261207T1000000000.parquet"
    assert paths.dedup("semdedup.parquet") == f"{root}/dedup/semdedup.parquet"
    assert paths.captions("basic.short").folder == f"{root}/captions/basic.short"
    assert paths.audit("demo").tags("00001") == f"{root}/audit/demo/tags/00001.parquet"
    assert paths.evaluation("default").summary == f"{root}/evaluate/default/summary.json"
    assert RunPaths("s3://bucket/run").subset("x").manifest == "bucket/run/subsets/x/manifest.parquet"
    assert RunPaths("s3://bucket/run").subset("x").url == "s3://bucket/run/subsets/x"


def test_an_artifact_is_complete_once_its_last_file_is_written_and_is_replaced_whole(tmp_path):
    paths = RunPaths(str(tmp_path))
    subset = paths.subset("kept")
    paths.write_parquet(pa.table({"key": ["a"]}), subset.manifest)  # a select stopped before its stats
    assert subset.exists and not subset.complete and paths.subsets() == []
    with pytest.raises(SubsetError, match="has no subset 'kept' .subsets: none yet"):
        paths.complete_subset("kept")
    with pytest.raises(ConfigError, match="subsets/kept exists; pick another --name or pass --overwrite"):
        subset.replace(overwrite=False)
    paths.write_json({"kept": 1}, subset.stats)
    assert [s.name for s in paths.subsets()] == ["kept"] and paths.complete_subset("kept").info() == {"kept": 1}
    subset.replace(overwrite=True)
    assert not subset.exists
    (tmp_path / "subsets" / "not a name").mkdir(parents=True)  # not one of ours: listed as nothing
    assert paths.subsets() == []
    with pytest.raises(ConfigError, match="not a valid audit name"):
        paths.audit("../up")


def test_read_config(tmp_path):
    paths = RunPaths(str(tmp_path))
    assert paths.read_config() is None
    (tmp_path / "config.yaml").write_text("")
    assert paths.read_config() == {}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"decode": {"encode_format": "webp"}}))
    assert paths.read_config() == {"decode": {"encode_format": "webp"}}


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "a b", "../up"])
def test_check_name_refuses_what_is_not_a_plain_folder_name(name):
    with pytest.raises(ConfigError, match="not a valid subset name"):
        check_name(name)
    assert check_name("mix.0=8+x_y-z") == "mix.0=8+x_y-z"
