"""Command-line flags shared by the subcommands that run the method.

The flags are generated from ``EmerDiffConfig``'s fields (kebab-case) so the two never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from emerdiff.config import EmerDiffConfig

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def _flag_type(field: dataclasses.Field):
    hint = typing.get_type_hints(EmerDiffConfig)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
    if base is bool:
        return _parse_bool
    if typing.get_origin(base) is typing.Literal:
        return str
    return base


def _choices(field: dataclasses.Field):
    hint = typing.get_type_hints(EmerDiffConfig)[field.name]
    return list(typing.get_args(hint)) if typing.get_origin(hint) is typing.Literal else None


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("method (EmerDiffConfig; flags override --config)")
    group.add_argument("--config", metavar="FILE", help="JSON or YAML file with any of the fields below.")
    for field in dataclasses.fields(EmerDiffConfig):
        group.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=f"config_{field.name}",
            type=_flag_type(field),
            choices=_choices(field),
            default=None,
            metavar="BOOL" if _flag_type(field) is _parse_bool else None,
            help=f"{field.metadata['help']} (default: {field.default})",
        )


def config_from_args(args: argparse.Namespace) -> EmerDiffConfig:
    """Defaults, then the --config file, then individual flags; raises ValueError on bad values."""
    config = EmerDiffConfig.from_file(args.config) if args.config else EmerDiffConfig()
    overrides = {
        field.name: getattr(args, f"config_{field.name}")
        for field in dataclasses.fields(EmerDiffConfig)
        if getattr(args, f"config_{field.name}") is not None
    }
    return config.replace(**overrides)


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
    group.add_argument("--allow-pickle", action="store_true",
                       help="Allow pickle-based checkpoints (.ckpt/.bin), which can run code when loaded. Only for trusted files.")


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-options", type=_parse_json_object, default={}, metavar="JSON",
        help='fsspec options for remote paths, as JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\' '
             "for an S3-compatible store. Credentials are better left to the store's usual environment variables.",
    )


def _parse_json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"anon\": true}}', got {text!r}")
    return value
