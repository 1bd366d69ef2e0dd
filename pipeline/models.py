"""Model weights for the actors: a Hub id or local folder as is, an fsspec URL copied once per node.

Several actors on one node may start together: each downloads into its own temporary folder and
renames it into place; the rename is atomic, so the first one wins and the others reuse its copy.
The cache entry is named after the URL and the listing (sizes, ETags), so new weights at the same
URL get a new entry instead of a stale copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import fsspec

from pipeline.config import LabelJobConfig
from schemas.urls import is_remote, redact_url

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("EMERDIFF_MODEL_CACHE", Path.home() / ".cache" / "emerdiff" / "models"))


def local_model_source(model: str, storage_options: dict | None = None, cache_dir: str | Path | None = None) -> str:
    """``model`` itself unless it is a remote URL; then the path of its node-local copy."""
    if not is_remote(model):
        return model
    fs, root = fsspec.core.url_to_fs(model, **(storage_options or {}))
    root = root.rstrip("/")
    listing = fs.find(root, detail=True)
    if not listing:
        raise FileNotFoundError(f"model URL {redact_url(model)} holds no files; expected a diffusers folder")
    fingerprint = hashlib.sha256(redact_url(model).encode())
    for path in sorted(listing):
        info = listing[path]
        fingerprint.update(f"{path[len(root):]}:{info.get('size')}:{info.get('ETag') or info.get('etag') or info.get('mtime')}".encode())
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / f"{Path(root).name or 'model'}-{fingerprint.hexdigest()[:16]}"
    if target.exists():
        return str(target)
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".download-"))
    logger.info("copying model %s to %s", redact_url(model), target)
    try:
        for path in listing:
            local = staging / path[len(root):].lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(local))
        staging.rename(target)
    except OSError:
        if not target.exists():  # a real failure, not a lost race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def load_segmenter(job: LabelJobConfig):
    """The job's EmerDiffSegmenter, weights fetched to this node first when given as a URL."""
    import diffusers
    import transformers

    from emerdiff import EmerDiffSegmenter

    # A batch job has one progress bar, the driver's; loading bars from every actor only add noise.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    source = local_model_source(job.model, job.storage_options, job.model_cache_dir)
    return EmerDiffSegmenter.from_pretrained(
        source, config=job.method, device=job.device, dtype=job.dtype, allow_pickle=job.allow_pickle
    )


def load_clip(job: LabelJobConfig):
    """The job's SegmentCLIP next to its segmenter (same device and dtype), or None without --clip-model."""
    if job.clip_model is None:
        return None
    from emerdiff.clip import SegmentCLIP

    source = local_model_source(job.clip_model, job.storage_options, job.model_cache_dir)
    return SegmentCLIP.from_pretrained(source, resolution=job.clip_resolution, device=job.device, dtype=job.dtype,
                                       allow_pickle=job.allow_pickle)
