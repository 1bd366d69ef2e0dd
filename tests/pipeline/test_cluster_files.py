"""The cluster files: Ray's own validation for ray_cluster.yaml, the contract for the RayJob manifest."""

import argparse
import copy
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from jobs import label

REPO = Path(__file__).resolve().parents[2]


def _ray_pin() -> str:
    return re.search(r'"ray==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)


def _parse_label_command(command: str):
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "jobs.label"], command
    parser = argparse.ArgumentParser()
    label.add_arguments(parser)
    return label.job_from_args(parser.parse_args(words[3:]))


def test_ray_cluster_yaml_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs before launching

    assert config["provider"]["type"] == "aws"
    assert config["docker"]["image"].startswith(f"rayproject/ray:{_ray_pin()}-")
    assert _ray_pin() == ray.__version__
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and "InstanceMarketOptions" not in head["node_config"]
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert all(w["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for w in workers)
    assert any("snapshot_download" in command for command in config["worker_setup_commands"])


def test_ray_cluster_yaml_documents_a_valid_submit_command():
    text = (REPO / "ray_cluster.yaml").read_text()
    submitted = re.search(r"ray job submit --working-dir \. -- \\\n(.*?)\n#   ray down", text, re.S).group(1)
    command = " ".join(line.lstrip("# ").rstrip("\\ ") for line in submitted.splitlines())
    job = _parse_label_command(command)
    assert job.accelerator == "gpu" and job.model == "/home/ray/models/sd14"


def test_rayjob_manifest_runs_the_label_entry_point_on_gpu_workers():
    manifest = yaml.safe_load((REPO / "deploy/kuberay/rayjob.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayJob")
    job = _parse_label_command(manifest["spec"]["entrypoint"])
    assert job.output.startswith("s3://") and job.accelerator == "gpu"
    cluster = manifest["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == _ray_pin()
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    [workers] = cluster["workerGroupSpecs"]
    [container] = workers["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert job.model.startswith(tuple(mounted))  # weights pre-fetched to the worker's local volume
    dockerfile = (REPO / "deploy/Dockerfile").read_text()
    assert f"FROM rayproject/ray:{_ray_pin()}-" in dockerfile


@pytest.mark.parametrize("path", ["ray_cluster.yaml", "deploy/kuberay/rayjob.yaml"])
def test_cluster_files_keep_secrets_out(path):
    text = (REPO / path).read_text().lower()
    assert "aws_secret_access_key" not in text and "password" not in text
