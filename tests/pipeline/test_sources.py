"""Reading one shard (pipeline.sources): how ShardStream turns tar members into samples (webdataset's
grouping, one outcome per sample), the few ways a tar as a whole fails (with how many whole samples
were read before), and shard_info."""

import gzip
import io
import logging
import random
import tarfile

import fsspec
import pytest
from label_helpers import tar_bytes, write_shards

from pipeline.decode import decode_samples
from pipeline.sources import (
    DUPLICATE_MEMBER, NOT_A_FILE, RESERVED_NAME, SAMPLE_ERROR, UNDECODABLE_NAME, ShardReadError, ShardStream, shard_info,
)


def _tar(members, encoding="utf-8"):
    """Tar bytes (GNU format: names as raw bytes) with these (TarInfo or name, bytes) members, in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, encoding=encoding) as tar:
        for member, data in members:
            info = member if isinstance(member, tarfile.TarInfo) else tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _special(name, kind, target=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _read(tmp_path, data, name="shard.tar"):
    (tmp_path / name).write_bytes(data)
    stream = ShardStream(str(tmp_path / name))
    return stream, list(stream)


def _outcomes(samples):
    return [(s["__key__"], str(s[SAMPLE_ERROR]) if SAMPLE_ERROR in s else sorted(k for k in s if not k.startswith("__")))
            for s in samples]


def test_members_are_grouped_as_webdataset_groups_them(tmp_path):
    members = [
        ("images/", b""),  # folder entries are structure, not members
        ("images/train/000123.jpg", b"1"), ("images/train/000123.JSON", b"{}"),  # extensions in lower case
        ("a.jpg", b"2"), ("b.jpg", b"3"), ("a.json", b"{}"),  # interleaved: a comes back as another sample
        ("../up.jpg", b"4"), ("a..b.jpg", b"5"),  # the key ends at the file name's first dot
    ]
    members[0] = (_special("images", tarfile.DIRTYPE), b"")
    _, samples = _read(tmp_path, _tar(members))
    assert _outcomes(samples) == [
        ("images/train/000123", ["jpg", "json"]), ("a", ["jpg"]), ("b", ["jpg"]), ("a", ["json"]),
        ("../up", ["jpg"]), ("a", [".b.jpg"]),
    ]
    assert samples[0]["jpg"] == b"1" and samples[0]["__url__"] == str(tmp_path / "shard.tar")


def test_a_sample_that_cannot_be_read_as_one_holds_its_error_and_the_next_ones_are_whole(tmp_path):
    members = [
        ("k.jpg", b"1"), ("k.jpg", b"2"),
        ("m.jpg", b"1"), ("m.JPG", b"2"), ("m.txt", b"x"),
        ("t.jpg", b"1"), ("t.jpg", b"2"), ("t.jpg", b"3"),
        (_special("link.jpg", tarfile.SYMTYPE, "/etc/passwd"), b""),
        ("r.__key__", b"forged"), ("r.jpg", b"1"),
        ("fine.jpg", b"ok"),
    ]
    stream, samples = _read(tmp_path, _tar(members))
    assert _outcomes(samples) == [
        ("k", f"{DUPLICATE_MEMBER}: k.jpg appears twice"),
        ("m", f"{DUPLICATE_MEMBER}: m.jpg, m.JPG are one member (extensions are compared in lower case)"),
        ("t", f"{DUPLICATE_MEMBER}: t.jpg appears 3 times"),
        ("link", f"{NOT_A_FILE}: link.jpg is a symbolic link"),
        ("r", f"{RESERVED_NAME}: r.__key__: extensions of the form __name__ are WebDataset's own fields"),
        ("fine", ["jpg"]),
    ]
    assert stream.samples == 6
    # The error travels to the row unchanged; the good sample after it is decoded as usual.
    decoded = list(decode_samples(samples, ("jpg",), 10**6))
    assert [d.error for d in decoded[:5]] == [str(s[SAMPLE_ERROR]) for s in samples[:5]]
    assert decoded[5].error.startswith("undecodable image")  # b"ok" is no JPEG: its own reason, not the tar's


def test_a_name_that_is_not_utf8_gives_a_printable_key(tmp_path):
    _, samples = _read(tmp_path, _tar([("caf\xe9.jpg", b"1"), ("next.jpg", b"2")], encoding="latin-1"))
    assert _outcomes(samples) == [
        ("caf\\xe9", f"{UNDECODABLE_NAME}: caf\\xe9.jpg is not UTF-8 (key stored as caf\\xe9)"),
        ("next", ["jpg"]),
    ]
    assert samples[0]["__key__"].encode("utf-8")  # Parquet can store it


def test_members_without_a_key_belong_to_no_sample_and_are_reported(tmp_path, caplog):
    members = [("._a.jpg", b"mac"), ("a.jpg", b"1"), ("README", b"r"), ("a.json", b"{}")]
    with caplog.at_level(logging.WARNING, logger="pipeline.sources"):
        stream, samples = _read(tmp_path, _tar(members))
    assert _outcomes(samples) == [("a", ["jpg", "json"])]  # as webdataset: they do not split sample a
    assert stream.ignored == ["._a.jpg", "README"]
    assert "2 member(s) without a <key>.<extension> name" in caplog.text and "'._a.jpg'" in caplog.text


_MEMBER = 512 + 1024  # a header block and 1000 bytes of data padded to two blocks
_WHOLE = _tar([(f"s{i}.jpg", random.Random(i).randbytes(1000)) for i in range(4)])  # gzip cannot shrink it


@pytest.mark.parametrize(("data", "whole_samples", "detail"), [
    (_WHOLE[: 2 * _MEMBER + 512 + 100], 2, "unexpected end of data"),  # inside s2's bytes
    (_WHOLE[: 2 * _MEMBER - 10], 1, "unexpected end of data"),  # in s1's padding: s1 may not be all of its sample
    (_WHOLE[: 2 * _MEMBER + 200], 2, "truncated header at byte 3072"),
    (_WHOLE[: 2 * _MEMBER], 2, "the file ends at byte 3072 between two members, without the end-of-archive blocks"),
    (_WHOLE[: 2 * _MEMBER] + b"x" * 512 + _WHOLE[2 * _MEMBER + 512:], 2, "at byte 3072"),  # a corrupt header
    (_WHOLE[: 4 * _MEMBER + 300], 4, "truncated header at byte 6144"),  # cut in the end-of-archive blocks
    (gzip.compress(_WHOLE, mtime=0)[:3000], 2, "unexpected end of data"),  # inside s2, decompressed
], ids=["in-data", "in-padding", "in-header", "between-members", "corrupt-header", "in-end-blocks", "gzip"])
def test_a_cut_tar_fails_saying_how_many_whole_samples_were_read(tmp_path, data, whole_samples, detail):
    (tmp_path / "cut.tar").write_bytes(data)
    stream = ShardStream(str(tmp_path / "cut.tar"))
    with pytest.raises(ShardReadError) as error:
        list(stream)
    message = str(error.value)
    assert f"cut.tar is cut off or damaged after {whole_samples} whole sample(s): " in message and detail in message
    assert stream.samples == whole_samples


def test_only_the_tar_itself_fails_a_shard(tmp_path):
    for name, data in {"zero.tar": b"", "page.tar": b"<html>Access denied</html>" * 40}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ShardReadError, match=f"{name} is not a tar archive: "):
            list(ShardStream(str(tmp_path / name)))
    with pytest.raises(ShardReadError, match="cannot open shard .*missing.tar"):
        list(ShardStream(str(tmp_path / "missing.tar")))
    # Whole archives, plain or compressed, and an empty one, read to their end.
    (tmp_path / "whole.tar.gz").write_bytes(gzip.compress(_WHOLE))
    assert [s["__key__"] for s in ShardStream(str(tmp_path / "whole.tar.gz"))] == ["s0", "s1", "s2", "s3"]
    assert _read(tmp_path, _tar([]), "empty.tar")[1] == []


# -- on an object store ----------------------------------------------------------------------------


def test_shard_stream_reads_object_store_urls_through_fsspec(memory_dir, make_samples):
    [url] = write_shards(memory_dir, {"shard-000000.tar": make_samples(0, 3)})
    stream = ShardStream(url)
    samples = list(stream)
    assert [s["__key__"] for s in samples] == ["s00-000", "s00-001", "s00-002"]
    assert set(samples[0]) >= {"jpg", "txt", "__url__"}
    assert stream.bytes_read > 0
    assert shard_info(url).size == len(tar_bytes(make_samples(0, 3)))


def test_truncated_or_missing_shards_fail_as_a_whole(memory_dir, make_samples):
    data = tar_bytes(make_samples(0, 3))
    [truncated] = write_shards(memory_dir, {"cut.tar": []})
    fsspec.filesystem("memory").pipe_file(truncated.removeprefix("memory://"), data[: len(data) // 2 + 100])
    with pytest.raises(ShardReadError, match="cut.tar"):
        list(ShardStream(truncated))
    with pytest.raises(ShardReadError, match="does not exist"):
        shard_info(f"{memory_dir}/missing.tar")
    with pytest.raises(ShardReadError, match="missing.tar"):
        list(ShardStream(f"{memory_dir}/missing.tar"))
