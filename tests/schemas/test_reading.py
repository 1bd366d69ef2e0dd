"""Reading an output back from its URL, committed shards only (schemas.reading)."""

from schemas.layout import OutputLayout


def test_committed_data_files_are_full_urls_of_done_shards_only(tmp_path):
    from schemas.reading import committed_data_files

    layout = OutputLayout(str(tmp_path / "out"))
    layout.fs.makedirs(layout.markers_dir)
    layout.fs.makedirs(layout.data_dir)
    for name in ("b", "a", "pending"):
        layout.fs.pipe_file(layout.data_path(name), b"")
    for name in ("b", "a"):
        layout.fs.pipe_file(layout.marker_path(name), b"{}")
    assert committed_data_files(str(tmp_path / "out")) == [
        f"file://{tmp_path}/out/data/a.parquet", f"file://{tmp_path}/out/data/b.parquet",
    ]
