"""Every tool subcommand answers --help, and runs as `python -m jobs.<name>` too."""

import subprocess
import sys

import pytest

from jobs.cli import main

TOOLS = ["make-shards", "preview", "evaluate", "export", "cluster", "inspect", "name"]


@pytest.mark.parametrize("name", TOOLS)
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: emerdiff {name}" in text and "--storage-options" in text


def test_module_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jobs.inspect", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "is not a labelling output" in result.stderr
