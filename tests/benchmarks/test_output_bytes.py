"""benchmarks/output_bytes.py on an output the job wrote: the figures the README's cost section quotes."""

import json

from label_helpers import write_shards

from benchmarks.output_bytes import main
from pipeline.driver import run_job
from schemas.reading import iter_rows


def test_bytes_per_image_as_written_and_at_sd_width(tmp_path, make_job, make_samples, fast_segmenter, capsys):
    urls = write_shards(str(tmp_path / "in"), {"shard-000000.tar": make_samples(0, 3)})
    assert run_job(make_job(urls, tmp_path / "out", executor="local"), segmenter=fast_segmenter).exit_code == 0
    assert main([str(tmp_path / "out"), "--embedding-width", "640", "--json", str(tmp_path / "bytes.json")]) == 0
    report = json.loads((tmp_path / "bytes.json").read_text())
    written, wide, coarse = (report[name]["bytes_per_row"] for name in ("as written", "sd width", "sd width, coarse labels"))
    assert report["rows"] == 3
    # Random float16 values do not compress: each value added to an embedding costs its 2 bytes, and
    # at this small size a share of a dictionary page too (in a shard of real size, 2.0 bytes).
    tiny_width = len(next(iter_rows(str(tmp_path / "out"), columns=["segments"]))["segments"][0]["embedding"])
    added = report["mean_segments"] * (640 - tiny_width)
    assert 1.9 * added < wide["segments"] - written["segments"] < 3.5 * added
    assert wide["labels"] == written["labels"] and coarse["labels"] < written["labels"]
    assert report["sd width"]["gb_per_million_images"] == wide["file"] / 1000
    assert "GB per million" in capsys.readouterr().out
