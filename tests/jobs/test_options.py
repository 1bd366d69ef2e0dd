"""One way from a config dataclass to flags (jobs.options), used by every subcommand."""

import argparse
import dataclasses

import pytest

from emerdiff.config import EmerDiffConfig
from jobs.cli import SUBCOMMANDS, build_parser
from jobs.options import add_config_arguments, config_values, flag_fields
from jobs.tools.clustering import ClusterJob
from jobs.tools.evaluation import EvaluationConfig
from jobs.tools.export import ExportConfig
from jobs.tools.gallery import PreviewConfig
from jobs.tools.image_shards import ShardsConfig
from jobs.tools.kmeans import KMeansConfig
from jobs.tools.naming import NameConfig
from jobs.tools.segment_files import SegmentFilesConfig
from jobs.tools.summary import InspectConfig
from pipeline.config import LabelJobConfig

CONFIGS = {
    "label": [LabelJobConfig, EmerDiffConfig],
    "segment": [SegmentFilesConfig, EmerDiffConfig],
    "make-shards": [ShardsConfig],
    "preview": [PreviewConfig],
    "evaluate": [EvaluationConfig],
    "export": [ExportConfig],
    "cluster": [ClusterJob, KMeansConfig],
    "inspect": [InspectConfig],
    "name": [NameConfig],
}


def test_every_subcommand_is_covered():
    assert set(CONFIGS) == set(SUBCOMMANDS)


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_flag_field_of_the_command_s_configs_is_an_argument(command):
    parser = build_parser([command])
    sub = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices[command]
    destinations = {action.dest for action in sub._actions}
    for cls in CONFIGS[command]:
        assert flag_fields(cls), cls
        for field in flag_fields(cls):
            assert field.name in destinations, (command, cls.__name__, field.name)


def _parse(cls, *argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    return config_values(cls, parser.parse_args(argv))


def test_only_given_flags_are_values_and_booleans_take_an_optional_value():
    assert _parse(LabelJobConfig) == {}
    assert _parse(LabelJobConfig, "--overwrite", "--batch-size", "2") == {"overwrite": True, "batch_size": 2}
    assert _parse(EmerDiffConfig, "--channels-last", "false", "--attention-injection", "no") == {
        "channels_last": False, "attention_injection": False}
    assert _parse(LabelJobConfig, "--image-extensions", ".png,jpg") == {"image_extensions": ("png", "jpg")}
    with pytest.raises(SystemExit):
        _parse(LabelJobConfig, "--executor", "slurm")  # choices come from the Literal


def test_names_positionals_negations_and_repeats_come_from_the_field_metadata():
    assert _parse(PreviewConfig, "out/", "--out", "g.html", "--n", "3", "--no-images") == {
        "output": "out/", "destination": "g.html", "num_samples": 3, "with_images": False}
    assert _parse(EvaluationConfig, "out/", "--gt", "s/", "--classes", "4", "--protocol", "per-image-hungarian") == {
        "output": "out/", "ground_truth": "s/", "num_classes": 4, "protocols": ("per-image-hungarian",)}
    with pytest.raises(SystemExit):
        _parse(EvaluationConfig, "out/")  # --gt is required: the field has no default


def test_the_help_shows_each_default_once():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, KMeansConfig)
    text = " ".join(parser.format_help().split())
    assert "Embeddings per k-means update (default: 4096)." in text
    assert [f.name for f in dataclasses.fields(KMeansConfig) if "help" not in f.metadata] == []


def _subcommand_actions(command):
    parser = build_parser([command])
    sub = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices[command]
    return [action for action in sub._actions if action.option_strings]


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_boolean_flag_takes_an_optional_value_and_numbers_name_their_kind(command):
    for action in _subcommand_actions(command):
        flag = action.option_strings[0]
        # store_true would refuse "--flag false"; only --no- negations take no value.
        assert not isinstance(action, argparse._StoreTrueAction), flag
        if isinstance(action, argparse._StoreFalseAction):
            assert flag.startswith("--no-"), flag
        if action.type is float:
            assert action.metavar != "N", f"{flag} takes a fraction, not a count"


def test_allow_pickle_reads_like_the_other_boolean_flags():
    args = build_parser(["label"]).parse_args
    base = ["label", "--input", "x.tar", "--output", "out"]
    assert args(base).allow_pickle is False
    assert args([*base, "--allow-pickle"]).allow_pickle is True
    assert args([*base, "--allow-pickle", "false"]).allow_pickle is False
    assert args([*base, "--allow-pickle", "yes"]).allow_pickle is True


def test_seconds_are_named_seconds():
    metavars = {action.option_strings[0]: action.metavar for action in _subcommand_actions("label")}
    assert metavars["--lease-wait"] == metavars["--lease-seconds"] == "SECONDS"
    assert metavars["--cpus-per-actor"] == "CPUS"
