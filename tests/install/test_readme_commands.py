"""Every command the README shows, run as a newcomer runs them: in a fresh copy of the repository,
in the fresh venv that the README's own install line makes, offline, on a CPU.

The commands are read from README.md's code blocks, in order, so a command added there runs here
too. Each runs as written but for these rules, which are all that stand between the README and an
offline CPU machine:

1. `python3 -m venv DIR` runs with this test's interpreter, and before the `pip install` line
   that follows it DIR gets the installed distributions that line asks for and nothing else; pip
   runs with --no-index --no-build-isolation (offline_venv.py says why this proves the line).
2. `emerdiff label` and `emerdiff segment` without --model get the model flags of the README's own
   tiny-model example (--model tiny --resolution 128 --num-masks 4).
3. `[...]` in a synopsis (optional flags) is left out.
4. The names the README gives your own data exist (make_your_data): photo.jpg, shards/ (the sample
   photos with ground truth in 27 classes) and out/ (those shards labelled by the tiny model with
   10 masks, so that `--classes 27` has enough segments to cluster, and with the tiny CLIP's
   embeddings, so that `emerdiff name` can name them). Write new README commands on these names
   and they run here unchanged.
5. The commands SKIPPED names do not run, for the reason beside each.

Then the quick start runs a second time, as someone resuming would, and must succeed without
writing anything new.
"""

import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from offline_venv import REPOSITORY, offline_pip_install, seed_venv, venv_environment
from PIL import Image

README = REPOSITORY / "README.md"
VENV = ".venv"  # where the README's lines make the venv, relative to the repository
# A part of a README command -> why the command does not run here.
SKIPPED = {
    "python -m pytest": "the test suite, which this test is part of; .ci/run runs that very line",
    "--input 'shards/shard-{000000..000099}.tar'": "a hundred placeholder shards; the quick start runs this command on two",
    "s3://my-bucket/": "needs a bucket; tests/jobs/test_tools_on_s3.py and tests/reliability/ run these flags on moto's S3",
    "EmerDiffSegmenter.from_pretrained(": "the library's API with names you supply (image, images, coarse); "
                                          "tests/emerdiff/ call each of them on the tiny model",
}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


@dataclasses.dataclass(frozen=True)
class Snippet:
    language: str  # "bash" or "python"
    text: str  # one command line, continuations joined (bash), or the whole block (python)

    @property
    def skipped(self) -> str | None:
        return next((why for part, why in SKIPPED.items() if part in self.text), None)


def readme_snippets() -> list[Snippet]:
    snippets = []
    for language, body in FENCE.findall(README.read_text()):
        if language == "bash":
            snippets += [Snippet("bash", line.strip()) for line in body.replace("\\\n", " ").splitlines()
                         if shlex.split(line, comments=True)]
        elif language == "python":
            snippets.append(Snippet("python", body))
    return snippets


def quick_start(snippets: list[Snippet]) -> Snippet:
    return next(s for s in snippets if "pip install" in s.text and " label " in s.text)


def tiny_flags(snippets: list[Snippet]) -> list[str]:
    """Rule 2: the model flags of the README's tiny-model example, from --model on."""
    words = shlex.split(next(s.text for s in snippets if "--model tiny" in s.text), comments=True)
    return words[words.index("--model"):]


def test_what_is_skipped_is_still_in_the_readme_and_ci_runs_its_test_line():
    snippets = readme_snippets()
    for part in SKIPPED:
        assert any(part in snippet.text for snippet in snippets), f"SKIPPED names {part!r}, which the README no longer shows"
    (test_line,) = [snippet.text for snippet in snippets if "python -m pytest" in snippet.text]
    assert test_line in (REPOSITORY / ".ci/run").read_text()
    assert quick_start(snippets).skipped is None and tiny_flags(snippets)[:2] == ["--model", "tiny"]


class Newcomer:
    """Runs README commands in a copy of the repository, by the rules above."""

    def __init__(self, copy: Path, links: Path, tiny: list[str]):
        self.copy, self.links, self.tiny = copy, links, tiny
        self.environment = venv_environment(copy / VENV)
        self.seeded = False

    def run(self, snippet: Snippet) -> str | None:
        """None when the snippet succeeded, else what went wrong."""
        if snippet.language == "python":
            return self._call([str(self.copy / VENV / "bin" / "python"), "-c", snippet.text], snippet.text)
        words = _without_optional_parts(shlex.split(snippet.text, comments=True))
        for command in _split_chain(words):
            if problem := self._call(self._as_run_here(command), snippet.text):
                return problem
        return None

    def _as_run_here(self, command: list[str]) -> list[str]:
        if command[:3] == ["python3", "-m", "venv"]:  # rule 1
            return [sys.executable, *command[1:]]
        if Path(command[0]).name == "pip" and "install" in command:  # rule 1
            if not self.seeded:
                seed_venv(self.copy / VENV, _requirement(command), self.links)
                self.seeded = True
            return offline_pip_install(self._executable(command))
        if Path(command[0]).name == "emerdiff" and command[1:2] in (["label"], ["segment"]) and "--model" not in command:
            return self._executable(command) + self.tiny  # rule 2
        return self._executable(command)

    def _executable(self, command: list[str]) -> list[str]:
        program = command[0]
        found = str(self.copy / program) if "/" in program else shutil.which(program, path=self.environment["PATH"])
        return [found or program, *command[1:]]

    def _call(self, argv: list[str], text: str) -> str | None:
        done = subprocess.run(argv, cwd=self.copy, env=self.environment, capture_output=True, text=True, timeout=600)
        if done.returncode == 0:
            return None
        return f"$ {text}\n  ran {shlex.join(argv)}\n  exit {done.returncode}\n{(done.stdout + done.stderr)[-3000:]}"


def _without_optional_parts(words: list[str]) -> list[str]:
    """Rule 3: `segment photo.jpg --out results/ [--model SRC] [...]` -> `segment photo.jpg --out results/`."""
    kept, depth = [], 0
    for word in words:
        depth += word.startswith("[")
        if not depth:
            kept.append(word)
        depth -= word.endswith("]") and depth > 0
    return kept


def _split_chain(words: list[str]) -> list[list[str]]:
    commands = [[]]
    for word in words:
        if word == "&&":
            commands.append([])
        else:
            commands[-1].append(word)
    return [command for command in commands if command]


def _requirement(pip_install: list[str]) -> str:
    """`pip install -e '.[all]'` -> `emerdiff[all]`."""
    target = pip_install[pip_install.index("-e") + 1]
    return "emerdiff" + target.removeprefix(".")


def make_your_data(newcomer: Newcomer) -> None:
    """Rule 4: photo.jpg, shards/ with ground truth, out/ labelled from them."""
    copy = newcomer.copy
    photos = sorted((copy / "samples/photos").glob("*.jpg"))
    shutil.copy(photos[0], copy / "photo.jpg")
    truth = copy / "runs/ground-truth"
    truth.mkdir(parents=True)
    for photo in photos:
        width, height = Image.open(photo).size
        bands = (np.arange(height) * 27 // height).astype(np.uint8)  # 27 horizontal classes
        Image.fromarray(np.repeat(bands[:, None], width, axis=1)).save(truth / f"{photo.stem}.png")
    for command in (
        "emerdiff make-shards samples/photos --gt runs/ground-truth --output shards --maxcount 2",
        "emerdiff label --input 'shards/*.tar' --output out --model tiny --resolution 128 --num-masks 10 "
        "--clip-model tiny --clip-resolution 64",
    ):
        assert newcomer.run(Snippet("bash", command)) is None, command


def shards_and_labels(copy: Path) -> dict[str, int]:
    """The quick start's shards, data files and markers (a rerun rewrites only the manifest and
    the job's other bookkeeping), with their modification times."""
    files = [*(copy / "runs/shards").glob("*.tar"), *(copy / "runs/labels").glob("[!_]*/*"),
             *(copy / "runs/labels/_markers").iterdir()]
    return {str(p.relative_to(copy)): p.stat().st_mtime_ns for p in files}


@pytest.mark.timeout(1200)
def test_every_readme_command_runs_in_a_fresh_install(tmp_path):
    copy = tmp_path / "emerdiff"
    shutil.copytree(REPOSITORY, copy, ignore=shutil.ignore_patterns(
        ".venv", ".git", "runs", "__pycache__", "*.egg-info", ".pytest_cache"))
    snippets = readme_snippets()
    newcomer = Newcomer(copy, tmp_path / "links", tiny_flags(snippets))

    first = quick_start(snippets)
    assert (problem := newcomer.run(first)) is None, problem
    make_your_data(newcomer)
    problems = [newcomer.run(s) for s in snippets if s is not first and s.skipped is None]
    assert not any(problems), "README commands failed:\n\n" + "\n\n".join(p for p in problems if p)

    before = shards_and_labels(copy)
    assert len(before) == 2 + 2 + 2
    assert (problem := newcomer.run(first)) is None, f"the quick start failed when run again:\n{problem}"
    assert shards_and_labels(copy) == before  # nothing rewritten
