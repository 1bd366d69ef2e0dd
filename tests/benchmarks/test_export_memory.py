"""The export memory benchmark's CI smoke run: a few tiny shards, every format, each export measured."""

import json

from benchmarks.export_memory import FORMATS, main


def test_smoke_run_measures_every_format_for_each_output(tmp_path, capsys):
    report_path = tmp_path / "export_memory.json"
    assert main(["--shards", "1", "2", "--images-per-shard", "3", "--width", "48", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert list(report["exports"]) == ["1", "2"]
    for count, exports in report["exports"].items():
        assert set(exports) == set(FORMATS)
        for measured in exports.values():
            assert measured["rows"] == 3 * int(count)
            assert measured["peak_rss_mib"] > 0 and measured["bytes_written"] > 0
    # Every image of the 2-shard output is in its png export, beside its label map (and export.json).
    assert report["exports"]["2"]["png"]["files"] == 2 * 6 + 1
    assert "export peak RSS" in capsys.readouterr().out
