"""An actor that dies mid-shard leaves its attempt's hidden temp file; the job that finishes removes it."""

import pytest
from crashing import Crash
from label_helpers import write_shards

from pipeline.driver import run_job
from schemas.reading import read_manifest, read_markers


@pytest.mark.timeout(240)
def test_after_an_actor_dies_mid_shard_data_holds_one_parquet_file_per_shard_and_nothing_else(
        ray_session, tmp_path, make_job, make_samples):
    urls = write_shards(str(tmp_path / "in"), {f"shard-{i:06d}.tar": make_samples(i, 2) for i in range(2)})
    output = tmp_path / "out"
    # The actor process exits (as on OOM or preemption) once rows of shard 1 are written into its
    # temp file, before the commit; a replacement actor labels the shard again.
    crash = Crash(shard="shard-000001", after_rows=1, mode="exit", attempts=1)
    job = make_job(urls, output, executor="ray", accelerator="gpu", rows_per_row_group=1)

    summary = run_job(job, distribute=crash.on_ray(job.with_absolute_paths()))

    assert (summary.exit_code, summary.labelled) == (0, 2)
    assert read_manifest(str(output)).column("attempts").to_pylist() == [1, 2]  # the crash did happen
    assert {m.shard: m.attempt for m in read_markers(str(output))} == {"shard-000000": 1, "shard-000001": 2}
    assert sorted(p.name for p in (output / "data").iterdir()) == ["shard-000000.parquet", "shard-000001.parquet"]
    assert sorted(p.name for p in (output / "_markers").iterdir()) == ["shard-000000.json", "shard-000001.json"]
    assert (output / "_SUCCESS").exists()
