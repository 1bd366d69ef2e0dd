"""LabelJobConfig: validation, round trip, what _job.json may record."""

import pytest

from pipeline.config import LabelJobConfig


def test_pipe_inputs_need_an_explicit_flag():
    with pytest.raises(ValueError, match="--allow-pipe"):
        LabelJobConfig(inputs=("pipe:cat x.tar",), output="out")
    assert LabelJobConfig(inputs=("pipe:cat x.tar",), output="out", allow_pipe=True).allow_pipe


def test_job_config_validates_round_trips_and_hides_secrets():
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        LabelJobConfig(inputs=("a.tar",), output="o", batch_size=0)
    with pytest.raises(ValueError, match="accelerator"):
        LabelJobConfig(inputs=("a.tar",), output="o", accelerator="tpu")
    job = LabelJobConfig(inputs=("https://h/a.tar?sig=s3cr3t",), output="s3://u:p@b/o", max_attempts=5,
                         storage_options={"secret": "s3cr3t"})
    assert LabelJobConfig.from_dict(job.to_dict()) == job
    public = str(job.public_dict())
    assert "s3cr3t" not in public and "u:p" not in public and "storage_options" not in public
