"""Command-line options built from an Options model, so a verb's defaults are written once (issue 18).

    add_options(parser, SemdedupOptions, flags={"n_clusters": "clusters"})
    ...
    options = options_from(args, SemdedupOptions)      # pydantic validates; a bad value is one ConfigError line

One `--field-name` per model field: the type from the annotation (int, float, str, bool, a Literal as
choices, any of them `| None`, or a list of one of them: a repeatable option), the help from the field's
description followed by its default, which is the model's. The argparse default is None (not given), so
the model's default applies: it is written nowhere else. A bool field defaulting to False is a `--name`
switch; one defaulting to True is `--no-name`. `flags` renames a field's option (`n_clusters` ->
`--clusters`), to keep a flag that existed before the option model; a name given with its dashes is the
whole option (`nested` -> `--bag`: for a bool, the switch that sets the opposite of its default).
`skip` leaves fields out (set from elsewhere, or not on the command line); `required` makes options of
fields that have a default required on the command line all the same.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from operators.options import Options

_SCALARS = (int, float, str)


def _option(model: type[Options], name: str, flags: dict[str, str] | None) -> str:
    """The option string of a field: `--name`, `--no-name` (a bool defaulting to True) or as `flags` says."""
    flag = (flags or {}).get(name, name.replace("_", "-"))
    if flag.startswith("--"):
        return flag
    field = model.model_fields[name]
    return f"--no-{flag}" if _scalar(field.annotation)[0] is bool and field.default is True else f"--{flag}"


def _dest(model: type[Options], name: str) -> str:
    return f"_{model.__name__}__{name}"  # no clash with the subcommand's other arguments


def _scalar(annotation: Any) -> tuple[type, list | None]:
    """(argparse type, choices) of an annotation, `X | None` and `list[X]` unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is list and len(typing.get_args(annotation)) == 1 and not _is_list(typing.get_args(annotation)[0]):
        return _scalar(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"cli_options: cannot make an option of {annotation}")
        return _scalar(args[0])
    if origin is Literal:
        choices = list(typing.get_args(annotation))
        return type(choices[0]), choices
    if annotation in (*_SCALARS, bool):
        return annotation, None
    raise TypeError(f"cli_options: cannot make an option of {annotation}")


def _is_list(annotation: Any) -> bool:
    """Whether the field is a list (`list[X]` or `list[X] | None`): a repeatable option."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(annotation))
    return typing.get_origin(annotation) is list


def add_options(parser: argparse.ArgumentParser, model: type[Options], flags: dict[str, str] | None = None,
                skip: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> None:
    """One option per field of `model` (see the module docs)."""
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        kind, choices = _scalar(field.annotation)
        has_default = field.default is not PydanticUndefined or field.default_factory is not None
        description = field.description or ""
        option, dest = _option(model, name, flags), _dest(model, name)
        if kind is bool and not _is_list(field.annotation):
            turns_off = field.default is True
            help_text = f"turn off (on by default): {description}" if turns_off and description else description
            parser.add_argument(option, dest=dest, action="store_const", const=not turns_off, default=None,
                                help=help_text or None)
            continue
        repeat = _is_list(field.annotation)
        if not has_default or name in required:
            shown = " (required)"
        else:
            default = field.get_default(call_default_factory=True)
            if repeat and default is not None:
                default = ", ".join(str(v) for v in default) or "none"
            shown = "" if default is None else f" (default {default})"
        if repeat:
            shown = f" (repeatable){shown}"
        parser.add_argument(option, dest=dest, type=kind, choices=choices, default=None,
                            required=not has_default or name in required, action="append" if repeat else "store",
                            metavar=None if choices else option.lstrip("-").replace("-", "_").upper(),
                            help=f"{description}{shown}".strip().replace("%", "%%"))


def given(args: argparse.Namespace, model: type[Options]) -> dict[str, Any]:
    """The fields of `model` whose options were given on the command line, as parsed (not validated)."""
    return {name: getattr(args, _dest(model, name)) for name in model.model_fields
            if getattr(args, _dest(model, name), None) is not None}


def options_from(args: argparse.Namespace, model: type[Options], flags: dict[str, str] | None = None,
                 **fields: Any):
    """The model from the options given on the command line, then `fields` (skipped ones, or values the
    command reads its own way); the rest keep the model's defaults. A value the model refuses is a
    one-line ConfigError naming the option."""
    from pipelines.core.config import ConfigError, format_error  # not at import: building the parser stays light

    values = given(args, model) | fields
    try:
        return model(**values)
    except ValidationError as err:
        loc = err.errors()[0]["loc"]
        name = str(loc[0]) if loc else ""
        message = format_error(err).removeprefix("config error: ").removeprefix("<root>: ")
        if name in values and name not in fields:
            message = _option(model, name, flags) + message.removeprefix(name)
        raise ConfigError(f"option error: {message}") from None
