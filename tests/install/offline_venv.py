"""Fresh virtual environments that pip fills offline from the distributions installed here.

What proves an install line such as ``pip install -e '.[all]'``: that what it names is enough.
So a fresh venv gets exactly the installed distributions its requirement needs (the extras and
their dependencies, resolved from the installed metadata, transitively), and nothing else; pip
then runs the line with ``--no-index --no-build-isolation`` and must find every requirement met.
An extra that leaves out a package a command imports leaves it out of the venv too, and the
command fails. That the same requirements resolve from the package index is proved by the
install of ``.[test]`` (a superset) that CI runs before the tests.

The distributions are not copied (torch alone is a gigabyte): a folder outside the venv holds a
symbolic link per top-level file of each, and a ``.pth`` file puts that folder on the venv's path.
pip counts what lies there as installed, and does not uninstall a distribution that lies outside
the environment it installs into, so the links never lead it to this venv's files.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPOSITORY = Path(__file__).resolve().parents[2]
with open(REPOSITORY / "pyproject.toml", "rb") as _file:
    PYPROJECT = tomllib.load(_file)
PROJECT = PYPROJECT["project"]
LINKS_PTH = "_offline_links.pth"


def requirement_closure(requirement: str) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions ``requirement`` needs, by canonical name.

    The project's own requirements come from pyproject.toml, so that an edit counts before any
    reinstall; the project itself is not in the result. Raises LookupError naming a needed
    distribution that is not installed, or not at a version the requirement accepts.
    """
    found: dict[str, importlib.metadata.Distribution] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    pending = [Requirement(requirement)]
    while pending:
        wanted = pending.pop()
        name, extras = canonicalize_name(wanted.name), frozenset(wanted.extras)
        if (name, extras) in done:
            continue
        done.add((name, extras))
        if name == PROJECT["name"]:
            texts = [*PROJECT["dependencies"], *(text for extra in extras for text in PROJECT["optional-dependencies"][extra])]
        else:
            try:
                found[name] = found.get(name) or importlib.metadata.distribution(wanted.name)
            except importlib.metadata.PackageNotFoundError:
                raise LookupError(f"{wanted} is needed but not installed in {sys.prefix}") from None
            if not wanted.specifier.contains(found[name].version, prereleases=True):
                raise LookupError(f"{wanted} is needed but {name} {found[name].version} is installed in {sys.prefix}")
            texts = found[name].requires or ()
        for text in texts:
            needed = Requirement(text)
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras | {""}):
                pending.append(needed)
    return found


def venv_environment(venv: Path) -> dict[str, str]:
    """os.environ for commands run in ``venv``: its bin/ first on PATH, no pip configuration or
    index, no user site, no other venv, no Ray cluster to join."""
    here = Path(sys.prefix) / "bin"
    path = [str(venv / "bin"), *(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != here)]
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("PIP_") and key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "RAY_ADDRESS")}
    environment.update(PATH=os.pathsep.join(path), PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1",
                       PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1")
    return environment


def seed_venv(venv: Path, requirement: str, links: Path) -> list[str]:
    """Give the fresh ``venv`` the installed distributions that ``requirement`` and the project's
    build need, through links in ``links``; returns their names.

    The venv's own copies of those distributions (setuptools from ensurepip) are uninstalled
    first, so that the linked ones are what pip and the build see.
    """
    needed = requirement_closure(requirement)
    for build in PYPROJECT["build-system"]["requires"]:  # pip builds the project without isolation
        needed.update(requirement_closure(build))
    site_packages = Path(subprocess.check_output(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    own = [canonicalize_name(path.name.split("-")[0]) for path in site_packages.glob("*.dist-info")]
    if replaced := [name for name in own if name in needed]:
        subprocess.run([venv / "bin" / "python", "-m", "pip", "uninstall", "--yes", "--quiet", *replaced],
                       env=venv_environment(venv), check=True)
    link_distributions(needed.values(), links)
    (site_packages / LINKS_PTH).write_text(f"{links}\n")
    return sorted(needed)


def link_distributions(distributions, folder: Path) -> None:
    """A symbolic link in ``folder`` to each top-level file and folder of each distribution."""
    folder.mkdir(parents=True, exist_ok=True)
    for distribution in distributions:
        root = Path(distribution.locate_file(""))
        if not distribution.files:
            raise LookupError(f"{distribution.metadata['Name']} has no RECORD of its files; reinstall it with pip")
        # Scripts are recorded as ../../../bin/...: the README runs only the venv's own `emerdiff`.
        tops = {Path(file).parts[0] for file in distribution.files if Path(file).parts[0] != ".."}
        for top in sorted(tops):
            link = folder / top
            if not link.is_symlink():  # a namespace folder shared by two distributions is linked once
                link.symlink_to(root / top)


def offline_pip_install(argv: list[str]) -> list[str]:
    """A ``pip install`` command line with what makes it run offline on linked distributions."""
    at = argv.index("install") + 1
    return [*argv[:at], "--no-index", "--no-build-isolation", *argv[at:]]
