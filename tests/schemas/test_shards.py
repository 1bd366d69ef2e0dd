"""Shard names and shard listing (schemas.shards)."""

import pytest

from label_helpers import write_shards
from schemas.shards import expand_shards, shard_name


@pytest.mark.parametrize("url, name", [
    ("s3://bucket/a/shard-000001.tar", "shard-000001"),
    ("/mnt/x/shard-000001.tar", "shard-000001"),
    ("https://host/p/shard-7.tar.gz?X-Amz-Signature=secret", "shard-7"),
    ("gs://b/shard weird+name.tgz", "shard_weird_name"),
    ("az://c/_hidden.tar", "hidden"),
    ("pipe:aws s3 cp s3://b/shard-3.tar -", "shard-3"),
    ("shard-000001", "shard-000001"),
])
def test_shard_names_are_stable_and_safe(url, name):
    assert shard_name(url) == name
    assert shard_name(shard_name(url)) == name


@pytest.mark.parametrize("url", ["s3://b/..", "s3://b/.tar", "/x/../"])
def test_shard_names_cannot_escape_or_vanish(url):
    with pytest.raises(ValueError, match="cannot derive"):
        shard_name(url)


def test_expand_inputs_braces_globs_and_order(memory_dir, make_samples):
    write_shards(memory_dir, {f"shard-{i:06d}.tar": make_samples(i, 1) for i in range(3)})
    braces = expand_shards([f"{memory_dir}/shard-{{000002..000000}}.tar"])
    assert [u.rsplit("/", 1)[-1] for u in braces] == ["shard-000002.tar", "shard-000001.tar", "shard-000000.tar"]
    globbed = expand_shards([f"{memory_dir}/shard-*.tar", f"{memory_dir}/shard-000000.tar"])
    assert globbed == [f"{memory_dir}/shard-{i:06d}.tar" for i in range(3)]  # sorted, duplicates dropped
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_shards([f"{memory_dir}/nothing-*.tar"])
