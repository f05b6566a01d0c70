"""Config: YAML + CLI overrides, and one clear line naming the field when something is wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import DEMO_CONFIG

from pipelines.core.config import ConfigError, load_config


def test_demo_config_loads_and_overrides_apply():
    config = load_config(DEMO_CONFIG, ["decode.image_size=128", "download.retries=0", "output=/tmp/x"])
    assert config.decode.image_size == 128
    assert config.download.retries == 0
    assert config.output == "/tmp/x"
    assert config.download.allow_networks == ["127.0.0.0/8"]


def test_fingerprint_tracks_results_not_placement():
    a = load_config(DEMO_CONFIG)
    assert a.fingerprint() == load_config(DEMO_CONFIG, ["output=elsewhere", "ray.batch_size=7"]).fingerprint()
    assert a.fingerprint() != load_config(DEMO_CONFIG, ["decode.image_size=128"]).fingerprint()
    speed = ["download.threads=4", "embed.batch_size=8", "embed.num_actors=2", "embed.cpus_per_actor=2"]
    assert a.fingerprint() == load_config(DEMO_CONFIG, speed).fingerprint()
    assert load_config(DEMO_CONFIG, ["text.languages=[en,pcm]"]).text.languages == ["en", "pcm"]


@pytest.mark.parametrize(
    "override,words",
    [
        ("decode.imagesize=128", "unknown field 'decode.imagesize'"),
        ("decode.resize_mode=stretch", "decode.resize_mode"),
        ("download.timeout=-1", "download.timeout"),
        ("download.allow_networks=[not-a-network]", "download.allow_networks"),
        ("input.rows_per_shard=zero", "input.rows_per_shard"),
        ("nonsense", "field.path=value"),
        ("text.languages=[en,xx]", "text.languages: unknown to py3langid: ['xx']"),
    ],
)
def test_bad_values_name_the_field(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO_CONFIG, [override])
    message = str(err.value)
    assert words in message and "\n" not in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="missing required field 'input'"):
        load_config(empty)


def test_cli_reports_one_line_and_exit_code_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "annotate", "--config", str(DEMO_CONFIG),
         "--set", "decode.resize_mode=stretch", "--output", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "decode.resize_mode" in lines[0], proc.stderr


def test_annotate_config_by_shipped_name(tmp_path, capsys):
    """`--config demo` is the shipped config, as `--recipe demo` is the shipped recipe; an unknown name
    lists the shipped ones."""
    from pipelines.cli import main

    assert main(["annotate", "--config", "nope", "--input", "x.parquet", "--output", str(tmp_path / "r")]) == 2
    assert "shipped: demo, laion-style" in capsys.readouterr().err
    assert main(["annotate", "--config", "demo", "--input", str(tmp_path / "missing.parquet"),
                 "--output", str(tmp_path / "r")]) == 2
    assert "input not found" in capsys.readouterr().err  # the config was found and read


def test_unreadable_s3_output_or_metadata_is_one_line_before_ray(tmp_path, capsys, monkeypatch):
    """No S3 credentials for the run folder or for the metadata file: exit 2 with one line naming it, and
    Ray never started (the user fixes the command in seconds, not after Ray's start-up)."""
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs

    from pipelines.cli import main

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # a client an earlier test made (with its moto endpoint) is cached
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup (a non-loopback address)
    urls = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.jpg"], "caption": ["a"]}), urls)
    ray_was_imported = "ray" in sys.modules and sys.modules["ray"].is_initialized()

    assert main(["annotate", "--config", "demo", "--input", str(urls), "--output", "s3://no-such-bucket/run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tailor: storage error: NoCredentialsError") and "s3://no-such-bucket/run" in err

    assert main(["annotate", "--config", "demo", "--input", str(urls), "--output", str(tmp_path / "run"),
                 "--set", "match.metadata=s3://no-such-bucket/metadata.json"]) == 2
    err = capsys.readouterr().err
    assert "metadata file s3://no-such-bucket/metadata.json cannot be read: NoCredentialsError" in err
    assert len(err.strip().splitlines()) == 1
    if not ray_was_imported:
        assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_the_demo_clip_on_other_images_is_named_once(tmp_path, caplog):
    """The demo config embeds with the demo CLIP, which knows only the demo web's shapes: a run over any
    other table says so; a demo web (a folder with truth.parquet), a text pass and embed=null do not."""
    from pipelines.verbs.annotate import _warn_demo_model

    web = tmp_path / "web"
    web.mkdir()
    (web / "truth.parquet").write_bytes(b"")
    cases = {"photos.parquet": True, "web/urls.parquet": False, "s3://bucket/urls.parquet": True}
    for path, warned in cases.items():
        caplog.clear()
        full = path if "://" in path else str(tmp_path / path)
        _warn_demo_model(load_config(DEMO_CONFIG, [f"input.path={full}", "output=/tmp/x"]))
        assert ("demo web's drawn shapes" in caplog.text) is warned, path
    for override in ("embed=null", "text_only=true", "embed.model=/models/clip-vit-b-32"):
        caplog.clear()
        _warn_demo_model(load_config(DEMO_CONFIG, [f"input.path={tmp_path}/photos.parquet", "output=/tmp/x", override]))
        assert "drawn shapes" not in caplog.text, override
