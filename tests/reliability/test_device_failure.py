"""A broken CUDA context never produces committed error rows: the attempt fails, the worker is replaced.

After a CUDA fault (an illegal memory access, a kernel that traps) every later kernel of the
process fails. Rows for the rest of the shard would all be errors, committed under a marker, and
the next shard likewise. Here a stage raises what torch raises then, ``torch.AcceleratorError``.
"""

import logging
import sys

import pytest
import torch
from label_helpers import write_shards

from pipeline.distributors import JobError, LabelActor, run_on_ray
from pipeline.driver import run_job
from pipeline.labeler import ShardLabeler
from pipeline.tasks import ShardTask, WorkerReady
from schemas.layout import OutputLayout
from schemas.reading import iter_rows, read_markers

FAULT = "CUDA error: an illegal memory access was encountered"


def _broken_decode(*args, **kwargs):
    raise torch.AcceleratorError(FAULT)


def test_the_attempt_fails_with_no_marker_and_no_data_file(tmp_path, make_job, make_samples, fast_segmenter, monkeypatch):
    [url] = write_shards(str(tmp_path / "in"), {"shard-000000.tar": make_samples(0, 3)})
    job = make_job([url], tmp_path / "out")
    monkeypatch.setattr(fast_segmenter, "_decode", _broken_decode)
    with pytest.raises(torch.AcceleratorError, match="illegal memory access"):
        ShardLabeler(fast_segmenter, job)(ShardTask(url))
    layout = OutputLayout(job.output)
    assert layout.list_markers() == [] and layout.list_data_files() == [] and layout.list_temp_files() == []


def test_the_local_loop_stops_and_a_rerun_labels_the_shard(tmp_path, make_job, make_samples, fast_segmenter, monkeypatch):
    """One process cannot replace itself: the job stops, nothing of the shard committed, and says how to go on."""
    urls = write_shards(str(tmp_path / "in"), {f"shard-{i:06d}.tar": make_samples(i, 1) for i in range(2)})
    job = make_job(urls, tmp_path / "out", executor="local")
    with monkeypatch.context() as patch:
        patch.setattr(fast_segmenter, "_decode", _broken_decode)
        with pytest.raises(JobError, match=r"the device failed while labelling shard shard-000000 \(AcceleratorError: "
                                           r"CUDA error: an illegal memory access.*Run the same command again"):
            run_job(job, segmenter=fast_segmenter)
    assert OutputLayout(job.output).list_markers() == []

    summary = run_job(job, segmenter=fast_segmenter)
    assert (summary.exit_code, summary.labelled) == (0, 2)
    assert {row["status"] for row in iter_rows(job.output, columns=["status"])} == {"ok"}


class FaultyDeviceActor(LabelActor):
    """A Ray actor whose device faults in the decodes of every first attempt; it also reports its allocator setting."""

    def ready(self) -> dict:
        import os

        return {**super().ready(), "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}

    def label(self, task):
        if task.attempt == 1:
            self.labeler.segmenter._decode = _broken_decode
        yield from super().label(task)


@pytest.mark.timeout(240)
def test_the_actor_ends_and_its_replacement_commits_the_shard(ray_session, tmp_path, make_job, make_samples, caplog,
                                                              monkeypatch):
    import ray.cloudpickle

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)  # a driver's own setting would be passed on

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import tests/
    [url] = write_shards(str(tmp_path / "in"), {"shard-000000.tar": make_samples(0, 2)})
    job = make_job([url], tmp_path / "out", executor="ray", accelerator="gpu", num_actors=1)
    ready = []

    def distribute(queue, on_progress):
        for event in run_on_ray(queue, job, on_progress, actor_class=FaultyDeviceActor):
            if isinstance(event, WorkerReady):
                ready.append(event.model_info)
            yield event

    with caplog.at_level(logging.WARNING, logger="pipeline"):
        summary = run_job(job, distribute=distribute)

    assert (summary.exit_code, summary.labelled) == (0, 1)
    [marker] = read_markers(job.output)
    assert marker.attempt == 2 and marker.stats.errors == 0  # no error row from the broken device
    assert [info["worker"] for info in ready][1] == marker.worker != ready[0]["worker"]  # a fresh process
    assert any("a labelling actor died" in record.getMessage() for record in caplog.records)  # counted as a death
    assert {info["alloc_conf"] for info in ready} == {"expandable_segments:True"}  # GPU actors' allocator
