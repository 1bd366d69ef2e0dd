"""emerdiff inspect: the summary of an output, from its own files."""

import json

from jobs.cli import main
from output_builder import segmentation, write_output

from schemas.labels import SCHEMA_VERSION

LABELS = [[0, 0, 1, 1], [0, 0, 1, 1]]


def test_summary_counts_shards_rows_errors_and_speed(tmp_path, capsys):
    url = str(tmp_path / "out")
    ok = segmentation(LABELS, {0: [1.0, 0], 1: [0, 1.0]})
    write_output(
        url,
        {
            "shard-000000": [("a", ok), ("b", "undecodable image: cannot identify image file <_io.BytesIO>"),
                             ("c", "undecodable image: truncated"), ("d", ok)],
            "shard-000001": [("e", ok), ("f", "image too large: 100000x100000")],
        },
        failed={"shard-000002": "ShardReadError: cannot read shard: unexpected end of data"},
        interrupted={"shard-000003": [("g", ok)]},
        inputs=[f"{url}-inputs/shard-00000{i}.tar" for i in range(5)],
        wall_seconds=4.0,
    )
    report = tmp_path / "summary.json"
    assert main(["inspect", url, "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(report.read_text())
    # Done 0 and 1; failed 2; 3 has a data file but no marker; 3 and 4 are still to do.
    assert summary["shards"] == {"done": 2, "failed": 1, "interrupted": 1, "pending": 2}
    assert summary["rows"] == {"total": 6, "ok": 3, "error": 3}
    assert summary["error_reasons"][0] == {
        "reason": "undecodable image", "count": 2, "example": "undecodable image: cannot identify image file <_io.BytesIO>",
    }
    assert summary["error_reasons"][1]["reason"] == "image too large"
    assert summary["model"] == "tiny" and summary["schema_version"] == SCHEMA_VERSION and summary["config"] == {"num_masks": 4, "seed": 0}
    assert [line["images_per_second"] for line in summary["per_shard"]] == [4 / 4.0, 2 / 4.0]
    assert "incomplete: no _SUCCESS yet" in printed
    assert summary["clip"] is None and "clip       none: segments carry no CLIP embeddings" in printed
    assert "2 done, 1 failed, 2 pending (1 interrupted mid-shard)" in printed
    assert "3 ok, 3 error (50.0%)" in printed
    assert "shard-000002: ShardReadError: cannot read shard" in printed


def test_a_folder_that_is_not_an_output_is_an_argument_error(tmp_path, caplog):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "is not a labelling output" in caplog.text
