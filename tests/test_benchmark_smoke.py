"""The benchmark's CI smoke run: it finishes and writes a JSON with every figure the README quotes."""

import json

from benchmarks.segment_bench import main


def test_smoke_benchmark_writes_the_report(tmp_path, capsys):
    report_path = tmp_path / "bench.json"
    assert main(["--smoke", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    production, reference = report["production"], report["reference"]
    # K = 2: 1 feature pass + 15 reference steps + 2K x 15 modulated steps; 2K decodes.
    assert production["unet_evaluations"] == 1 + 15 + 4 * 15
    assert production["vae_decodes"] == reference["vae_decodes"] == 4
    for path in (production, reference):
        assert path["seconds_per_image"] > 0 and path["flops"] > 0 and path["host_peak_mib"] > 0
        assert set(path["flops_per_stage"]) == {"features", "reference run", "modulated runs", "decodes"}
    assert report["label_agreement"]["float32"] >= 0.999
    assert report["ratios"]["flops"] == production["flops"] / reference["flops"]
    assert "production/reference" in capsys.readouterr().out
