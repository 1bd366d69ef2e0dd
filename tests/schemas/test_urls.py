"""Redaction, remote and glob detection, list files (schemas.urls)."""

import pytest

from schemas.urls import glob_root, is_glob, is_remote, options_for, read_list_file, redact_url


def test_redact_url_drops_credentials_and_signatures():
    assert redact_url("https://user:pw@host/a.tar?sig=1&Expires=2#f") == "https://host/a.tar?REDACTED"
    assert redact_url("s3://bucket/a.tar") == "s3://bucket/a.tar"
    assert redact_url("/local/a.tar") == "/local/a.tar"
    assert "sig" not in redact_url("pipe:curl -s https://h/a.tar?sig=1")


def test_one_answer_to_remote_glob_and_pipe():
    assert is_remote("s3://b/a.tar") and is_remote("memory://x") and not is_remote("/data/a.tar")
    assert not is_remote("file:///data/a.tar") and not is_remote("pipe:curl -s https://h/a.tar")
    assert is_glob("s3://b/shard-*.tar") and is_glob("/d/shard-?.tar") and not is_glob("/d/shard-1.tar")
    assert not is_glob("https://h/a.tar?X-Amz-Signature=abc")  # a query string, not a wildcard
    assert glob_root("photos/2024/**/*.jpg") == "photos/2024"
    assert options_for("s3://b/x", {"anon": True}) == {"anon": True} and options_for("/x", {"anon": True}) == {}


def test_list_files_skip_blanks_and_comments_the_same_everywhere(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"\xef\xbb\xbf# header\r\na.tar  # note\r\n\r\n  b#1.tar\n")
    assert read_list_file(str(path)) == ["a.tar", "b#1.tar"]
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="image list .* has no image paths"):
        read_list_file(str(path), what="image list", flag="SRC", entries="image paths")
