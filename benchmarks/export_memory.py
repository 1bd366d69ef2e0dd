"""Peak memory of `emerdiff export` as the output grows: it streams one shard at a time, so the peak
must stay flat from 1 shard to many.

    OMP_NUM_THREADS=1 python -m benchmarks.export_memory --shards 1 20 --json export_memory.json

Makes ``max(--shards)`` input shards of ``--images-per-shard`` JPEG photos (the sample photos,
``--width`` pixels wide), labels the first N of them for each N of ``--shards``, each into its own
output, with the real driver and per-shard labeller (local executor) and a stand-in model that
returns striped segmentations at once (``scale_sim.SleepingSegmenter`` without sleep). Then it runs
each format's export of each output in a child process and reads that child's peak RSS (``VmHWM`` of
``/proc/self/status``, read by the child as it ends; Linux only), with its wall time and the
bytes it wrote. Every photo differs from the others (a stamp of its index), so no format's
encoding can store a repeated one once.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image
from webdataset import TarWriter

from benchmarks.report import run_and_report
from benchmarks.scale_sim import SleepingSegmenter
from emerdiff import EmerDiffConfig
from pipeline.config import LabelJobConfig
from pipeline.driver import run_job

PHOTOS = Path(__file__).resolve().parents[1] / "samples/photos"
FORMATS = ("png", "coco", "hf", "webdataset")
# `emerdiff export ARGS`, then the process's peak RSS in KiB on stdout. VmHWM counts this program
# since its exec; getrusage's maxrss would include the benchmark's RSS at the fork.
_EXPORT_THEN_PEAK = """
import os, sys
from jobs.cli import main
code = main(["--log-level", "WARNING", "export", *sys.argv[1:]])
with open("/proc/self/status") as status:
    print(next(line.split()[1] for line in status if line.startswith("VmHWM:")), flush=True)
os._exit(code)  # as jobs.cli.exit_cleanly: no interpreter teardown
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 20], help="Outputs of this many shards each.")
    parser.add_argument("--images-per-shard", type=int, default=40)
    parser.add_argument("--width", type=int, default=1024, help="Width of the photos in pixels (height 2/3 of it).")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    args = parser.parse_args(argv)
    for name in ("images_per_shard", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if min(args.shards) < 1:
        parser.error(f"--shards must all be >= 1, got {args.shards}")
    return args


def write_input_shards(folder: Path, shards: int, images: int, width: int) -> list[str]:
    """``shards`` tars of ``images`` JPEGs each (the sample photos in turn, each stamped); their paths."""
    photos = [Image.open(path).convert("RGB").resize((width, width * 2 // 3)) for path in sorted(PHOTOS.glob("*.jpg"))]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(shards):
        path = folder / f"shard-{shard:06d}.tar"
        with TarWriter(str(path)) as writer:
            for index in range(images):
                photo = _stamped(photos[(shard + index) % len(photos)], shard, index)
                writer.write({"__key__": f"photo{index:04d}", "jpg": photo})
        paths.append(str(path))
    return paths


def _stamped(photo: Image.Image, shard: int, index: int) -> bytes:
    photo = photo.copy()
    photo.paste((shard * 37 % 256, index * 53 % 256, 128), (0, 0, 32, 32))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def label(shards: list[str], output: Path) -> None:
    method = EmerDiffConfig(num_masks=8)
    job = LabelJobConfig(inputs=tuple(shards), output=str(output), model="simulated", method=method, executor="local")
    summary = run_job(job, segmenter=SleepingSegmenter(method, 0.0))
    if summary.failed:
        raise RuntimeError(f"labelling {output} failed: {summary.failed}")


def measure_export(output: Path, fmt: str, destination: Path) -> dict:
    """Run one export in a child process; its peak RSS, wall time and what it wrote."""
    arguments = [str(output), "--format", fmt, "--out", str(destination)]
    started = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", _EXPORT_THEN_PEAK, *arguments], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    if child.returncode != 0:
        raise RuntimeError(f"emerdiff export {' '.join(arguments)} exited with {child.returncode}")
    files = [path for path in destination.rglob("*") if path.is_file()]
    return {"peak_rss_mib": int(child.stdout.split()[-1]) / 1024, "wall_seconds": time.perf_counter() - started,
            "rows": json.loads((destination / "export.json").read_text())["rows"],
            "files": len(files), "bytes_written": sum(path.stat().st_size for path in files)}


def run(args: argparse.Namespace) -> dict:
    report = {"images_per_shard": args.images_per_shard, "width": args.width, "cpu_count": os.cpu_count(),
              "load_average_at_start": os.getloadavg()[0], "exports": {}}
    with tempfile.TemporaryDirectory(prefix="export-memory-") as folder:
        root = Path(folder)
        inputs = write_input_shards(root / "in", max(args.shards), args.images_per_shard, args.width)
        report["input_bytes_per_shard"] = os.path.getsize(inputs[0])
        for count in args.shards:
            output = root / f"out-{count}"
            label(inputs[:count], output)
            report["exports"][str(count)] = {
                fmt: measure_export(output, fmt, root / f"export-{count}-{fmt}") for fmt in args.formats
            }
    return report


def print_table(report: dict) -> None:
    counts = list(report["exports"])
    print(f"\nexport peak RSS (MiB), {report['images_per_shard']} photos of {report['width']} px a shard "
          f"({report['input_bytes_per_shard'] / 2**20:.1f} MiB a shard), {report['cpu_count']} CPUs "
          f"(load {report['load_average_at_start']:.1f} at start)")
    print(f"{'format':<12}" + "".join(f"{f'{count} shard(s)':>16}" for count in counts) + f"{'written, last':>16}")
    for fmt in report["exports"][counts[0]]:
        peaks = "".join(f"{report['exports'][count][fmt]['peak_rss_mib']:>16.0f}" for count in counts)
        written = report["exports"][counts[-1]][fmt]["bytes_written"] / 2**20
        print(f"{fmt:<12}{peaks}{written:>13.0f} MiB")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_and_report(run, print_table, parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
