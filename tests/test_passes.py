"""pipelines/core/passes.py: the one settings policy of the passes over a run (no Ray)."""

import pytest

from pipelines.core.config import ConfigError
from pipelines.core.passes import Pass


def test_a_rerun_with_a_changed_setting_is_refused_naming_the_field(tmp_path):
    this = Pass(str(tmp_path))
    info = this.paths.join("pass", "_info.json")
    settings = {"eps": 0.05, "generation": {"num_beams": 1, "max_new_tokens": 30}, "source": "a.txt"}
    first = this.settings(info, settings)
    assert first.previous is None and not first.same and first.differences() == []
    first.refuse("x", "never")  # nothing stored: nothing to refuse
    this.write_summary({"settings": settings, "summary": None}, info)

    again = Pass(str(tmp_path)).settings(info, dict(settings))
    assert again.same
    again.refuse("x", "never")

    changed = {**settings, "generation": {"num_beams": 2, "max_new_tokens": 30}, "source": "b.txt"}
    check = this.settings(info, changed)
    assert not check.same
    assert check.differences() == ["generation.num_beams: 1 != 2", "source: a.txt != b.txt"]
    with pytest.raises(ConfigError, match=r"^RUN/pass was made with other settings \(generation.num_beams: 1 != 2; "
                                          r"source: a.txt != b.txt; stored != now\); use --overwrite$"):
        check.refuse("RUN/pass", "use --overwrite")
    # only the fields that change the output are compared
    only = this.settings(info, changed, fields=("eps", "generation"))
    assert only.differences() == ["generation.num_beams: 1 != 2"]
    assert this.settings(info, changed, fields=("eps", "source")).differences(("eps",)) == []


def test_the_run_is_absolute_and_whole_files_can_hold_the_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    this = Pass("run")
    assert this.run == str(tmp_path / "run") and this.paths.url == this.run
    assert Pass("s3://bucket/run").run == "s3://bucket/run"
    info = this.paths.join("_settings.json")
    this.write_summary({"model": "m"}, info)
    assert this.settings(info, {"model": "m"}, key=None).same
    assert this.settings(info, {"model": "n"}, key=None).differences() == ["model: m != n"]
