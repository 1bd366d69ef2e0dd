"""The benchmark's CI smoke run: it finishes and writes a JSON with every figure the docs quote."""

import json

from benchmarks.segment_bench import STAGES, main


def test_smoke_benchmark_writes_the_report(tmp_path, capsys):
    report_path = tmp_path / "bench.json"
    assert main(["--smoke", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    production, reference = report["production"], report["reference"]
    for path in (production, reference):
        assert path["best_seconds_per_image"] > 0 and path["best_cpu_seconds_per_image"] > 0 and path["host_peak_mib"] > 0
        assert set(path["stage_seconds_per_image"]) == {*STAGES, "other"}
    assert report["label_agreement"]["float32"] >= 0.999
    assert report["ratios"]["seconds_best"] == production["best_seconds_per_image"] / reference["best_seconds_per_image"]

    # --smoke: N = 2 feature passes, K = 2, t_m = 61 (4 steps): N + 4 inversion + 2K x 4 modulated passes, 2K decodes.
    counts = report["counts"]
    for path in (*counts["production"], counts["reference"]):
        assert path["unet_passes"] == {"features": 2, "inversion": 4, "modulated runs": 16}
        assert path["vae_decodes"] == {"decodes": 4}
        assert set(path["flops"]) == {"features", "inversion", "modulated runs", "decodes"}
        assert all(flops > 0 for flops in path["flops"].values())
    production_flops = counts["production"][0]
    assert production_flops["flops_ratio_to_reference"] == production_flops["flops_total"] / counts["reference"]["flops_total"]
    # --smoke: the tiny CLIP at 64 px (an 8 x 8 grid) on the timed images.
    clip = report["clip"]
    assert (clip["shape"], clip["grid"]) == ("tiny", 8) and clip["best_seconds_per_image"] > 0 and clip["flops"] > 0
    assert clip["share_of_image_flops"] == clip["flops"] / (production_flops["flops_total"] + clip["flops"])
    printed = capsys.readouterr().out
    assert "production/reference" in printed and "CLIP stage (tiny at 64 px" in printed
