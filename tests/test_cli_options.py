"""Command-line options built from an Options model: types, defaults and help from it; a bad value is one line."""

from __future__ import annotations

import argparse
from typing import Literal

import pytest
from pydantic import Field

from operators.options import Options
from pipelines.core.cli_options import add_options, options_from
from pipelines.core.config import ConfigError


class Example(Options):
    rate: float = Field(0.5, ge=0, le=1, description="a share")
    count: int | None = Field(None, gt=0, description="how many (default: all)")
    mode: Literal["fast", "slow"] = Field("fast", description="speed")
    label: str = "x"
    verbose: bool = Field(False, description="say more")
    cache: bool = Field(True, description="keep results")


def parser(flags=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    add_options(p, Example, flags)
    return p


def test_unset_options_keep_the_model_defaults():
    assert options_from(parser().parse_args([]), Example) == Example()


def test_each_kind_of_field_parses():
    args = parser().parse_args(["--rate", "0.25", "--count", "3", "--mode", "slow", "--label", "y", "--verbose",
                                "--no-cache"])
    assert options_from(args, Example) == Example(rate=0.25, count=3, mode="slow", label="y", verbose=True,
                                                  cache=False)


def test_help_shows_descriptions_and_model_defaults():
    text = parser().format_help()
    assert "a share (default 0.5)" in text and "{fast,slow}" in text and "speed (default fast)" in text
    assert "--no-cache" in text and "--verbose" in text


def test_renamed_flag_and_a_refused_value_is_one_line_naming_the_flag():
    p = parser({"count": "n"})
    assert options_from(p.parse_args(["--n", "2"]), Example, {"count": "n"}).count == 2
    with pytest.raises(ConfigError, match=r"^option error: --n: Input should be greater than 0 \(got 0\)$"):
        options_from(p.parse_args(["--n", "0"]), Example, {"count": "n"})
    with pytest.raises(SystemExit):  # not a number: argparse's own error, as for any typed option
        p.parse_args(["--rate", "high"])


def test_semdedup_cli_options_and_select_step_share_one_model():
    from pipelines.cli import build_parser
    from pipelines.core.verb_options import SemdedupOptions
    from pipelines.verbs.select import parse_recipe

    args = build_parser().parse_args(["semdedup", "run", "--clusters", "7"])
    assert options_from(args, SemdedupOptions, {"n_clusters": "clusters"}) == SemdedupOptions(n_clusters=7)
    step = parse_recipe({"steps": [{"step": "semdedup", "eps": 0.01}]}).steps[0]
    assert isinstance(step, SemdedupOptions) and step.max_cluster_size == SemdedupOptions().max_cluster_size
    with pytest.raises(ConfigError, match="eps"):
        parse_recipe({"steps": [{"step": "semdedup", "eps": 5}]})


def test_decontaminate_cli_negative_is_off_and_eval_is_required(capsys):
    from pipelines.cli import main

    assert main(["decontaminate", "run", "--eval", "e", "--max-cosine", "-1", "--max-hamming", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "tailor: option error: set max_cosine, max_hamming or both"
    assert main(["decontaminate", "run", "--eval", "e", "--max-hamming", "65"]) == 2
    assert "--max-hamming: Input should be less than or equal to 64 (got 65)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["decontaminate", "run"])


def test_materialize_cli_flags_as_before():
    from pipelines.cli import build_parser
    from pipelines.core.verb_options import MaterializeOptions

    args = build_parser().parse_args(["materialize", "run", "sub", "--out", "o", "--no-parquet", "--skip-missing",
                                      "--samples-per-shard", "5", "--captions", "c", "--mix", "0.5", "--mix-seed", "2"])
    assert options_from(args, MaterializeOptions) == MaterializeOptions(
        parquet=False, skip_missing=True, samples_per_shard=5, captions="c", mix=0.5, mix_seed=2)
    assert options_from(build_parser().parse_args(["materialize", "run", "sub", "--out", "o"]),
                        MaterializeOptions) == MaterializeOptions()
    with pytest.raises(SystemExit):  # Python-only hooks stay off the command line
        build_parser().parse_args(["materialize", "run", "sub", "--out", "o", "--window", "2"])


def test_match_cli_flags_from_match_options():
    from operators.match import MatchOptions
    from pipelines.cli import build_parser

    parser = build_parser()
    assert options_from(parser.parse_args(["match", "run"]), MatchOptions) == MatchOptions()
    args = parser.parse_args(["match", "run", "--metadata", "m.txt", "--punctuation", "fixed", "--actors", "2"])
    assert options_from(args, MatchOptions) == MatchOptions(metadata="m.txt", punctuation="fixed")
    assert args.actors == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["match", "run", "--punctuation", "loose"])


def test_building_the_parser_imports_no_numpy_pyarrow_or_ray():
    import subprocess
    import sys

    code = ("import sys; from pipelines.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('numpy', 'pyarrow', 'ray', 'duckdb', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_metaclip_balance_cli_flags_from_its_options():
    from pipelines.cli import build_parser
    from pipelines.core.verb_options import MetaclipBalanceOptions

    parser = build_parser()
    args = parser.parse_args(["metaclip-balance", "run", "--t", "8", "--name", "s"])
    assert options_from(args, MetaclipBalanceOptions) == MetaclipBalanceOptions(t=8)
    args = parser.parse_args(["metaclip-balance", "run", "--t", "8", "--seed", "3", "--name", "s", "--group-by",
                              "sha256", "--source", "match", "--text-only", "--threads", "2"])
    assert options_from(args, MetaclipBalanceOptions) == MetaclipBalanceOptions(
        t=8, seed=3, group_by="sha256", source="match", text_only=True, threads=2)
    with pytest.raises(ConfigError, match=r"^option error: --t: Input should be greater than 0"):
        options_from(parser.parse_args(["metaclip-balance", "run", "--t", "0", "--name", "s"]), MetaclipBalanceOptions)
    with pytest.raises(SystemExit):  # --t is required, as before
        parser.parse_args(["metaclip-balance", "run", "--name", "s"])



def test_metaclip_balance_overwrite_reaches_balance_subset(monkeypatch, capsys):
    import pipelines.verbs.metaclip
    from pipelines.cli import main

    calls = []

    def balance_subset(run, name, options, **kwargs):
        calls.append(kwargs)
        return {"recipe": {"rows": "ok rows"}, "captions": {"kept": 1, "total": 2, "by_reason": {}},
                "entries": {"head": 0}, "before": {"tail_share_of_matches": 0.5},
                "after": {"tail_share_of_matches": 0.6}}

    monkeypatch.setattr(pipelines.verbs.metaclip, "balance_subset", balance_subset)
    assert main(["metaclip-balance", "run", "--name", "s", "--t", "2"]) == 0
    assert main(["metaclip-balance", "run", "--name", "s", "--t", "2", "--overwrite"]) == 0
    assert calls == [{"overwrite": False}, {"overwrite": True}]
    assert "kept 1/2 captions" in capsys.readouterr().out


# the verbs' required arguments, and the shared flags each takes (parent parsers in pipelines/cli.py)
VERBS = {"annotate": ["--config", "c"], "fetch": ["run", "--subset", "s", "--out", "o"], "demo": [], "match": ["run"],
         "metaclip-balance": ["run", "--name", "n", "--t", "2"], "materialize": ["run", "n", "--out", "o"],
         "select": ["run", "--recipe", "r", "--name", "n"], "semdedup": ["run"],
         "decontaminate": ["run", "--eval", "e"], "audit": ["run", "--concepts", "demo"], "recaption": ["run",
         "--subset", "s"], "evaluate": ["run", "--subsets", "a", "--eval", "e"]}
SHARED = {"--overwrite": ["annotate", "fetch", "demo", "match", "metaclip-balance", "materialize", "select",
                          "semdedup", "decontaminate"],
          "--no-progress": ["annotate", "fetch", "demo", "match", "materialize", "audit", "recaption", "evaluate"],
          "--no-retry": ["annotate", "fetch"]}


@pytest.mark.parametrize("flag", sorted(SHARED))
def test_shared_flags_on_the_verbs_that_take_them_and_no_other(flag):
    from pipelines.cli import build_parser

    parser, dest = build_parser(), flag.removeprefix("--").replace("-", "_")
    for verb, argv in VERBS.items():
        if verb in SHARED[flag]:
            assert getattr(parser.parse_args([verb, *argv, flag]), dest) is True, verb
            assert getattr(parser.parse_args([verb, *argv]), dest) is False, verb
        else:
            with pytest.raises(SystemExit):
                parser.parse_args([verb, *argv, flag])


def test_a_shared_flag_keeps_the_help_of_each_verb(capsys):
    from pipelines.cli import build_parser

    parser = build_parser()
    helps = {}
    for verb in ("annotate", "select", "demo"):
        with pytest.raises(SystemExit):
            parser.parse_args([verb, "--help"])
        helps[verb] = " ".join(capsys.readouterr().out.split())
    assert "--overwrite delete the run folder first instead of resuming" in helps["annotate"]
    assert "--overwrite replace an existing subset of that name" in helps["select"]
    assert "finished demo run of the same settings (else kept)" in helps["demo"]
    assert "--no-progress no progress bars" in helps["annotate"].split("common options:")[1]
    assert "--no-progress no progress bars" in helps["demo"].split("common options:")[1]

def test_audit_cli_flags_from_audit_options_with_the_old_names():
    from pipelines.cli import AUDIT_FLAGS, build_parser
    from pipelines.core.verb_options import AuditOptions

    parser = build_parser()
    args = parser.parse_args(["audit", "run", "--concepts", "demo"])
    assert options_from(args, AuditOptions, AUDIT_FLAGS) == AuditOptions(concepts="demo")
    args = parser.parse_args(["audit", "run", "--concepts", "demo", "--bag", "--template", "a {}.", "--template",
                              "an {}.", "--tagger", "cosine", "--image-threshold", "0.4", "--temperature", "50",
                              "--frequency", "matched", "--tail-fraction", "0.3", "--tail-floor", "2", "--engine",
                              "local", "--subset", "s", "--accuracy", "a.csv"])
    assert options_from(args, AuditOptions, AUDIT_FLAGS) == AuditOptions(
        concepts="demo", nested=False, templates=["a {}.", "an {}."], tagger="cosine", image_threshold=0.4,
        temperature=50, frequency="matched", tail_fraction=0.3, tail_floor=2, engine="local")
    assert (args.subset, args.accuracy) == ("s", "a.csv")
    with pytest.raises(ConfigError, match=r"^option error: --tail-fraction: Input should be less than or equal to 1"):
        options_from(parser.parse_args(["audit", "run", "--concepts", "demo", "--tail-fraction", "2"]), AuditOptions,
                     AUDIT_FLAGS)
    with pytest.raises(SystemExit):  # --concepts stays required, though the model has a default
        parser.parse_args(["audit", "run"])


def test_evaluate_cli_flags_from_evaluate_options():
    from pipelines.cli import EVALUATE_FLAGS, build_parser
    from pipelines.core.verb_options import EvaluateOptions

    parser = build_parser()
    args = parser.parse_args(["evaluate", "run", "--subsets", "a,b", "--eval", "e"])
    assert options_from(args, EvaluateOptions, EVALUATE_FLAGS) == EvaluateOptions(eval_path="e")
    assert options_from(args, EvaluateOptions, EVALUATE_FLAGS).concepts == "demo"
    args = parser.parse_args(["evaluate", "run", "--subsets", "a", "--eval", "e", "--concepts", "coco80", "--name",
                              "n", "--set", "samples_seen=10"])
    assert options_from(args, EvaluateOptions, EVALUATE_FLAGS) == EvaluateOptions(eval_path="e", concepts="coco80",
                                                                                   name="n")
    assert args.set == ["samples_seen=10"]
    with pytest.raises(SystemExit):  # --eval is required, as before
        parser.parse_args(["evaluate", "run", "--subsets", "a"])


def test_list_fields_are_repeatable_options_and_a_whole_flag_name_is_kept():
    class Lists(Options):
        names: list[str] = Field(["a"], description="names")
        sizes: list[int] | None = None
        strict: bool = Field(True, description="strict rule")

    p = argparse.ArgumentParser(prog="t")
    add_options(p, Lists, {"names": "name", "strict": "--loose"})
    assert options_from(p.parse_args([]), Lists) == Lists()
    args = p.parse_args(["--name", "x", "--name", "y", "--sizes", "3", "--loose"])
    assert options_from(args, Lists) == Lists(names=["x", "y"], sizes=[3], strict=False)
    assert "(repeatable) (default a)" in p.format_help()
