"""Shard URL lists as scripts write them (`--input-list`): blank lines, comments, CRLF, stray spaces,
a byte-order mark; on local disk and on S3, through the command line.

Without list files the same text passed to `--input` is refused or becomes failed shards
(tests/reliability/test_bad_shards.py).
"""

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import fsspec
import pytest
from label_helpers import write_shards

from jobs import label
from jobs.cli import run_module
from schemas.urls import read_list_file
from schemas.reading import iter_rows, read_manifest

REPO = Path(__file__).resolve().parents[2]
FAST = ["--resolution", "128", "--num-masks", "3", "--modulation-timestep", "61", "--batch-size", "1"]


def _messy_list(folder: str) -> bytes:
    """A list naming shards 0-3 of ``folder`` the way generated files look; shard 9 is commented out."""
    lines = [
        "\ufeff# shards written by make_shards.py",  # a BOM, as Windows editors save UTF-8
        "",
        f"   {folder}/shard-000000.tar   ",
        "\t# retired: " + f"{folder}/shard-000009.tar",
        f"{folder}/shard-000001.tar # second, with a trailing comment",
        "   ",
        f"{folder}/shard-00000{{2..3}}.tar",  # a brace pattern, expanded later like any --input
        f"{folder}/shard-000000.tar",  # listed twice: still one shard
        "# last line, no newline after it",
    ]
    return "\r\n".join(lines).encode("utf-8")


def _entries(folder: str) -> list[str]:
    return [f"{folder}/shard-000000.tar", f"{folder}/shard-000001.tar", f"{folder}/shard-00000{{2..3}}.tar",
            f"{folder}/shard-000000.tar"]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    label.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def local_shards(tmp_path, make_samples):
    """Shards 0-3 and 9 (one sample each) under tmp_path/in, and the messy list naming 0-3 at tmp_path/urls.txt."""
    folder = str(tmp_path / "in")
    write_shards(folder, {f"shard-{i:06d}.tar": make_samples(i, 1) for i in (0, 1, 2, 3, 9)})
    (tmp_path / "urls.txt").write_bytes(_messy_list(folder))
    return folder, str(tmp_path / "urls.txt")


def _pending(stdout: str) -> list[str]:
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("  pending")]


@pytest.mark.timeout(30)
def test_a_messy_list_gives_its_urls_in_order(local_shards):
    folder, urls = local_shards
    assert read_list_file(urls) == _entries(folder)


@pytest.mark.timeout(30)
def test_a_hash_inside_a_url_is_kept_and_only_one_after_a_space_starts_a_comment(tmp_path):
    (tmp_path / "urls.txt").write_text("https://host/a.tar#part\nhttps://host/b.tar\t# note\n/data/c#1.tar # x # y\n")
    assert read_list_file(str(tmp_path / "urls.txt")) == ["https://host/a.tar#part", "https://host/b.tar", "/data/c#1.tar"]


@pytest.mark.timeout(30)
def test_inputs_come_first_then_each_list_in_order(local_shards, tmp_path):
    folder, urls = local_shards
    (tmp_path / "more.txt").write_text("# more\nextra-{0..1}.tar\n")
    args = _parse(["--input", "first.tar", "--input-list", urls, "--input-list", str(tmp_path / "more.txt"),
                   "--output", str(tmp_path / "out")])
    assert label.job_from_args(args).inputs == ("first.tar", *_entries(folder), "extra-{0..1}.tar")


@pytest.mark.timeout(60)
def test_dry_run_from_a_local_list_plans_exactly_the_listed_shards(local_shards, tmp_path, capsys):
    folder, urls = local_shards
    code = run_module("jobs.label", ["--input", f"{folder}/shard-000009.tar", "--input-list", urls,
                                     "--output", str(tmp_path / "out"), "--dry-run"])
    assert code == 0
    out = capsys.readouterr().out
    assert "5 input shard(s), 0 done, 5 pending" in out
    assert _pending(out) == ["shard-000009", "shard-000000", "shard-000001", "shard-000002", "shard-000003"]


@pytest.mark.timeout(120)
def test_dry_run_from_a_list_on_s3_naming_shards_on_s3(s3_bucket, s3_storage_options, make_samples, tmp_path, capsys):
    folder = f"{s3_bucket}/shards"
    write_shards(folder, {f"shard-{i:06d}.tar": make_samples(i, 1) for i in (0, 1, 2, 3, 9)}, s3_storage_options)
    write_shards(folder, {f"more-{i}.tar": make_samples(10 + i, 1) for i in (0, 1)}, s3_storage_options)
    text = _messy_list(folder) + f"\r\n  {folder}/more-*.tar  \r\n".encode()  # a glob, listed on S3
    with fsspec.open(f"{s3_bucket}/lists/urls.txt", "wb", **s3_storage_options) as file:
        file.write(text)
    code = run_module("jobs.label", ["--input-list", f"{s3_bucket}/lists/urls.txt", "--output", str(tmp_path / "out"),
                                     "--storage-options", json.dumps(s3_storage_options), "--dry-run"])
    assert code == 0
    out = capsys.readouterr().out
    assert _pending(out) == ["shard-000000", "shard-000001", "shard-000002", "shard-000003", "more-0", "more-1"]
    assert f"pending  shard-000001  {folder}/shard-000001.tar\n" in out  # the comment is not part of the URL


@pytest.mark.timeout(240)
def test_labelling_from_a_list_labels_every_listed_shard_once_and_nothing_else(local_shards, tmp_path, tiny_model):
    folder, urls = local_shards
    output = tmp_path / "out"
    code = run_module("jobs.label", ["--input-list", urls, "--output", str(output), "--model", str(tiny_model),
                                     "--executor", "local", *FAST])
    assert code == 0
    statuses = {row["shard"]: row["status"] for row in read_manifest(str(output)).to_pylist()}
    assert statuses == {f"shard-{i:06d}": "done" for i in range(4)}  # not shard-000009, commented out
    assert Counter(row["key"] for row in iter_rows(str(output), columns=["key"])) == Counter(
        {f"s{i:02d}-000": 1 for i in range(4)})
    # _job.json records the shard URLs the list held, not the list, so a rerun without it can resume.
    assert json.loads((output / "_job.json").read_text())["job"]["inputs"] == _entries(folder)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("content, message", [
    (None, "does not exist; check the path given to --input-list"),
    (b"\xef\xbb\xbf# nothing yet\r\n\r\n   \r\n  # still nothing\r\n", "has no URLs (only blank lines and # comments)"),
    (b"\xff\xd8\xff\xe0 a JPEG, not a list", "is not UTF-8 text"),
], ids=["missing", "only-comments", "not-text"])
def test_an_unusable_list_is_refused_with_the_reason_before_any_work(tmp_path, caplog, content, message):
    urls = tmp_path / "urls.txt"
    if content is not None:
        urls.write_bytes(content)
    assert run_module("jobs.label", ["--input-list", str(urls), "--output", str(tmp_path / "out"), "--executor", "local"]) == 2
    assert f"URL list {urls} {message}" in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(60)
def test_a_missing_list_on_s3_is_refused(s3_bucket, s3_storage_options, tmp_path, caplog):
    argv = ["--input-list", f"{s3_bucket}/lists/none.txt", "--output", str(tmp_path / "out"),
            "--storage-options", json.dumps(s3_storage_options), "--dry-run"]
    assert run_module("jobs.label", argv) == 2
    assert f"URL list {s3_bucket}/lists/none.txt does not exist" in caplog.text


@pytest.mark.timeout(30)
def test_a_folder_given_as_list_is_refused_with_what_to_do(tmp_path, caplog):
    assert run_module("jobs.label", ["--input-list", str(tmp_path), "--output", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "is a folder" in caplog.text and "use --input 'FOLDER/*.tar'" in caplog.text


@pytest.mark.timeout(120)
def test_neither_input_nor_input_list_exits_2_with_one_line_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jobs.label", "--output", str(tmp_path / "out"), "--dry-run"],
                            cwd=REPO, capture_output=True, text=True, timeout=100)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.endswith("no input shards: pass --input URL [URL ...], --input-list URL, or both")
