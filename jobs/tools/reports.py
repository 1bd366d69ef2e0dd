"""Writing a tool's report next to where a person asked for it."""

from __future__ import annotations

import json

import fsspec

from schemas.urls import options_for


def write_json(url: str, document: dict, storage_options: dict) -> None:
    """Write ``document`` as indented JSON to a local path or fsspec URL."""
    # Store options (an S3 endpoint, say) describe the output's store; a plain path is a local file.
    with fsspec.open(url, "w", **options_for(url, storage_options)) as file:
        json.dump(document, file, indent=2)
