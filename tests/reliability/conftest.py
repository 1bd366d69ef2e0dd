"""The labelling job's fixtures (tests/pipeline/conftest.py) and shard builders, reused as they are."""

import importlib.util
import sys
from pathlib import Path

_PIPELINE_TESTS = Path(__file__).resolve().parents[1] / "pipeline"
if str(_PIPELINE_TESTS) not in sys.path:
    sys.path.insert(0, str(_PIPELINE_TESTS))  # for `from label_helpers import ...`

_spec = importlib.util.spec_from_file_location("pipeline_test_fixtures", _PIPELINE_TESTS / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

photo_jpegs = _fixtures.photo_jpegs
make_samples = _fixtures.make_samples
fast_config = _fixtures.fast_config
fast_segmenter = _fixtures.fast_segmenter
make_job = _fixtures.make_job
