"""RunPaths: where every pass's outputs live, how a run folder is named to Ray workers, and RUN/config.yaml."""

from __future__ import annotations

import os

import pytest
import yaml

from pipelines.config import ConfigError, check_name, subset_folder
from pipelines.storage import RunPaths


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
    assert paths.subset("basic") == f"{root}/{subset_folder('basic')}"
    assert paths.subset_manifest("basic") == f"{root}/subsets/basic/manifest.parquet"
    assert paths.subset("basic", "stats.json") == f"{root}/subsets/basic/stats.json"
    assert paths.dedup("semdedup.parquet") == f"{root}/dedup/semdedup.parquet"
    assert paths.captions("basic.short") == f"{root}/captions/basic.short"
    assert paths.audit("demo") == f"{root}/audit/demo"
    assert paths.evaluation("default") == f"{root}/evaluate/default"
    assert RunPaths("s3://bucket/run").subset_manifest("x") == "bucket/run/subsets/x/manifest.parquet"


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
