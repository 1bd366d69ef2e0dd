"""The optional extras: every module a command imports comes with the base install or with the extra
jobs.cli.EXTRA_MODULES names, and a command run without its extra says which one to install."""

import ast
import importlib.metadata
import shutil
import subprocess
import sys

import pytest
from packaging.utils import canonicalize_name
from offline_venv import REPOSITORY, offline_pip_install, requirement_closure, seed_venv, venv_environment

from jobs.cli import EXTRA_MODULES
from pipeline.exit_status import ExitStatus

PACKAGES = ("emerdiff", "pipeline", "jobs", "schemas")


def imported_modules() -> set[str]:
    """Top-level names of the third-party modules the installed packages import, lazily or not."""
    names = set()
    for package in PACKAGES:
        for path in (REPOSITORY / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.partition(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names.add(node.module.partition(".")[0])
    return names - set(sys.stdlib_module_names) - set(PACKAGES) - {"__future__"}


def test_every_imported_module_comes_with_the_base_install_or_its_named_extra():
    providers = importlib.metadata.packages_distributions()
    base = set(requirement_closure("emerdiff"))
    imported = imported_modules()
    for module in sorted(imported):
        distributions = {canonicalize_name(name) for name in providers.get(module, ())}
        assert distributions, f"{module} is imported but installed by no distribution"
        if module in EXTRA_MODULES:
            extra = EXTRA_MODULES[module]
            assert distributions & set(requirement_closure(f"emerdiff[{extra}]")), (module, extra)
            assert not distributions & base, f"{module} comes with the base install; drop it from EXTRA_MODULES"
        else:
            assert distributions & base, f"{module} is not a base dependency: name its extra in jobs.cli.EXTRA_MODULES"
    assert set(EXTRA_MODULES) <= imported, "EXTRA_MODULES names modules nothing imports"


@pytest.fixture(scope="module")
def pipeline_only(tmp_path_factory):
    """A copy of the repository installed with `pip install -e '.[pipeline]'` alone, in a fresh venv."""
    root = tmp_path_factory.mktemp("slim")
    copy = root / "emerdiff"
    shutil.copytree(REPOSITORY, copy, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", "*.egg-info"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    seed_venv(venv, "emerdiff[pipeline]", root / "links")
    install = offline_pip_install([str(venv / "bin" / "pip"), "install", "--quiet", "-e", ".[pipeline]"])
    subprocess.run(install, cwd=copy, env=venv_environment(venv), check=True)
    return copy, venv


@pytest.mark.timeout(600)
@pytest.mark.parametrize("command, module", [
    (["evaluate", "out", "--gt", "shards", "--classes", "2"], "scipy"),
    (["export", "out", "--format", "coco", "--out", "coco"], "pycocotools"),
])
def test_a_tool_without_its_extra_names_the_extra_to_install(pipeline_only, command, module):
    copy, venv = pipeline_only
    run = subprocess.run([venv / "bin" / "emerdiff", *command], cwd=copy, env=venv_environment(venv),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == ExitStatus.FAILED, run.stderr  # could not run here: fix the install
    assert f"this command needs {module}, which the 'tools' extra installs" in run.stderr
    assert "pip install -e '.[tools]'" in run.stderr and "Traceback" not in run.stderr
