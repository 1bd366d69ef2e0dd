"""``emerdiff export``: a labelling output in the format training code reads, one module per format.

  png   ann_dir/<key>.png label maps (``export_png``)
  coco  annotations.json with an RLE mask per segment (``export_coco``)
  hf    a Hugging Face dataset: data/*.parquet and a dataset card (``export_huggingface``)
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Literal

from pipeline.config import option, output_option

# format -> (module, function); imported on use, each pulls in only what its format needs.
EXPORTERS = {
    "coco": ("jobs.tools.export_coco", "export_coco"),
    "hf": ("jobs.tools.export_huggingface", "export_huggingface"),
    "png": ("jobs.tools.export_png", "export_png"),
}


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    output: str = output_option()
    file_format: Literal["coco", "hf", "png"] = option(help="What to write.", name="--format")
    destination: str = option(help="Folder to write the export to.", name="--out", metavar="DIR")
    clusters: str | None = option(
        None, "Class table folder from `emerdiff cluster`: export dataset-wide classes, not segment ids.", metavar="DIR")
    # Embeddings are most of the bytes.
    embeddings: bool = option(True, "hf only: leave the segment embeddings out.", name="--no-embeddings")
    storage_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.file_format not in EXPORTERS:
            raise ValueError(f"file_format must be one of {sorted(EXPORTERS)}, got {self.file_format!r}")


def export(config: ExportConfig) -> int:
    """Write the export; returns how many rows (png, hf) or annotations (coco) it holds."""
    module, function = EXPORTERS[config.file_format]
    exporter = getattr(importlib.import_module(module), function)
    options = {"embeddings": config.embeddings} if config.file_format == "hf" else {}
    return exporter(config.output, config.destination, config.storage_options, config.clusters, **options)
