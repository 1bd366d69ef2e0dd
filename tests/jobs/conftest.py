"""A small labelling output shared by the tools' tests (written directly, no labelling run)."""

import pytest

from output_builder import build_small_output


@pytest.fixture
def small_output(tmp_path):
    """(output URL, key -> label map) of a fresh small output under tmp_path."""
    url = str(tmp_path / "out")
    return url, build_small_output(url)
