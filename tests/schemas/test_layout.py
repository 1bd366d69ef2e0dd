"""Where an output keeps its files (schemas.layout)."""

from schemas.layout import OutputLayout


def test_layout_names_every_file_and_hides_the_bookkeeping(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"))
    assert layout.data_path("s3://b/shard-1.tar").endswith("/out/data/shard-1.parquet")
    assert layout.marker_path("shard-1").endswith("/out/_markers/shard-1.json")
    for path in (layout.manifest_path, layout.job_path, layout.success_path, layout.markers_dir):
        assert path.rsplit("/", 1)[-1].startswith("_")
    assert layout.list_markers() == []
    layout.fs.makedirs(layout.markers_dir)
    for name in ("b", "a"):
        layout.fs.pipe_file(layout.marker_path(name), b"{}")
    assert layout.list_markers() == ["a", "b"]
