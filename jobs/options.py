"""From a config dataclass to command-line flags, the one way every subcommand uses.

A field becomes a flag when its metadata has ``help`` (``pipeline.config.option``; the method's
``EmerDiffConfig`` fields carry the same metadata): ``--kebab-case`` of its name unless the
metadata names it, its type and choices from the annotation, its default shown in the help.
Every flag defaults to None, so a flag not given leaves the dataclass default (or a ``--config``
file's value) in place: ``config_values`` returns only what was given. A field declared with
``nested()`` holds another such dataclass: its flags are added too, and ``build_config`` builds it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any

from emerdiff.config import DEFAULT_MODEL, EmerDiffConfig


# A field's metadata may name a better one (SECONDS); N is a count, never a fraction.
NUMBER_METAVARS = {int: "N", float: "FLOAT"}


def nested(title: str) -> Any:
    """A config field holding another config dataclass whose flags join the command's, under ``title``."""
    return dataclasses.field(metadata={"nested": title})


def add_config_arguments(parser, cls: type, title: str | None = None) -> None:
    """Add one argument per flag field of the dataclass ``cls`` (in a group when ``title`` is given),
    and those of its ``nested`` configs."""
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    for field in flag_fields(cls):
        names, settings = _argument(field, hints[field.name])
        group.add_argument(*names, **settings)
    for field, inner in _nested_fields(cls):
        add_config_arguments(parser, inner, title=field.metadata["nested"])


def flag_fields(cls: type) -> list[dataclasses.Field]:
    return [field for field in dataclasses.fields(cls) if "help" in field.metadata]


def build_config(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """``cls`` from the flags given in ``args`` (nested configs too), plus ``fixed`` values; raises
    ValueError (from the dataclasses' own checks) on bad values."""
    nested_values = {field.name: build_config(inner, args) for field, inner in _nested_fields(cls)}
    return cls(**config_values(cls, args), **nested_values, **fixed)


def _nested_fields(cls: type) -> list[tuple[dataclasses.Field, type]]:
    hints = typing.get_type_hints(cls)
    return [(field, hints[field.name]) for field in dataclasses.fields(cls) if "nested" in field.metadata]


def config_values(cls: type, args: argparse.Namespace) -> dict:
    """The values given on the command line for ``cls``'s flag fields (lists become tuples)."""
    values = {}
    for field in flag_fields(cls):
        value = getattr(args, field.name, None)
        if value is not None:
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return values


def _argument(field: dataclasses.Field, hint) -> tuple[list[str], dict]:
    flag = dict(field.metadata.get("flag", {}))
    name = flag.pop("name", "--" + field.name.replace("_", "-"))
    base, choices = _base_type(hint)
    settings: dict = {"help": _help(field, name)}
    if not name.startswith("-"):  # positional: argparse takes its destination from the name
        return [name], {**settings, "type": str if base is tuple else base, **flag}
    settings.update(dest=field.name, default=None)
    if _required(field):
        settings["required"] = True
    if base is bool and name.startswith("--no-"):
        settings["action"] = "store_false"
    elif base is bool:
        settings.update(BOOLEAN_FLAG)
    else:
        settings.update(type=_parse_comma_list if base is tuple else base, choices=choices)
        if base in NUMBER_METAVARS and not choices:
            settings["metavar"] = NUMBER_METAVARS[base]
    settings.update(flag)
    return [name], settings


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _help(field: dataclasses.Field, name: str) -> str:
    """The field's help with its default, "Seed (default: 0)."; none for required, positional and boolean flags."""
    text, default = field.metadata["help"], field.default
    if _required(field) or default is None or isinstance(default, bool) or not name.startswith("-"):
        return text
    shown = ",".join(default) if isinstance(default, tuple) else default
    return f"{text.removesuffix('.')} (default: {shown})."


def _base_type(hint) -> tuple[type, list | None]:
    """The argparse type of an annotation (Optional unwrapped) and its choices for a Literal."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        return str, list(typing.get_args(hint))
    return typing.get_origin(hint) or hint, None


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# --flag alone, or --flag true/false to override a --config file: every boolean flag but a --no-
# negation takes its value so.
BOOLEAN_FLAG = dict(nargs="?", const=True, type=_parse_bool, metavar="BOOL")


def _parse_comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip().lstrip(".") for part in text.split(",") if part.strip())


# -- the flags several subcommands share -----------------------------------------------------------


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and one flag per ``EmerDiffConfig`` field."""
    group = parser.add_argument_group("method (EmerDiffConfig; flags override --config)")
    group.add_argument("--config", metavar="FILE", help="JSON or YAML file with any of the fields below.")
    add_config_arguments(group, EmerDiffConfig)


def config_from_args(args: argparse.Namespace) -> EmerDiffConfig:
    """Defaults, then the --config file, then individual flags; raises ValueError on bad values."""
    config = EmerDiffConfig.from_file(args.config) if args.config else EmerDiffConfig()
    return config.replace(**config_values(EmerDiffConfig, args))


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", default=DEFAULT_MODEL,
        help="Hub id, local diffusers directory, single-file .safetensors checkpoint, fsspec URL of a "
             "diffusers directory, or 'tiny' (a random tiny model: a plumbing check, its masks mean nothing). "
             f"Default: {DEFAULT_MODEL}.",
    )
    group.add_argument("--device", default=None, help="torch device; default CUDA when present, else CPU.")
    group.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                       help="Weights' dtype; default float16 on CUDA, float32 on CPU.")
    group.add_argument("--allow-pickle", default=False, **BOOLEAN_FLAG,
                       help="Allow pickle-based checkpoints (.ckpt/.bin), which can run code when loaded. Only for trusted files.")


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-options", type=_parse_json_object, default={}, metavar="JSON",
        help='fsspec options for remote paths, as JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\' '
             "for an S3-compatible store. Credentials are better left to the store's usual environment variables.",
    )


def add_report_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", metavar="FILE", help=f"Also write the {what} as JSON (local path or fsspec URL).")


def _parse_json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"anon\": true}}', got {text!r}")
    return value
