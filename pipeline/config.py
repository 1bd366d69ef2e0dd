"""LabelJobConfig: every option of the labelling job in one frozen, validated, serialisable object.

The method's own knobs live in ``EmerDiffConfig`` (field ``method``); this object adds how the job
runs: where shards come from and go, how many actors, batches, retries. ``jobs/label.py`` builds it
from flags, the Ray actors receive it whole, and ``_job.json`` records it (storage options left out:
they may hold credentials).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

from emerdiff.config import DEFAULT_MODEL, EmerDiffConfig, positive_int_problem
from schemas.urls import has_scheme, is_pipe, redact_url

PIL_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold


def option(default: Any = dataclasses.MISSING, help: str = "", **flag: Any) -> Any:
    """A config field that is also a command-line flag (``jobs.options`` builds the flags).

    ``help`` is the flag's help text; ``flag`` overrides what is derived from the field:
    ``name`` ("--out", "--no-images" for a field that defaults to True, or a bare name for a
    positional argument) and any ``argparse`` setting (metavar, choices, action, type).
    """
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag})


def output_option() -> Any:
    """The positional OUTPUT of the tools that read a labelling output."""
    return option(help="Labelling output folder (local path or fsspec URL).", name="output", metavar="OUTPUT")


@dataclasses.dataclass(frozen=True)
class LabelJobConfig:
    # Where from, where to, with what: set by the CLI's own flags (--input, --output, model and
    # storage flags, EmerDiffConfig flags), not generated from the options below.
    inputs: tuple[str, ...]  # shard URLs, brace patterns ({000000..000099}) or globs, on any fsspec store
    output: str  # output folder URL; see schemas.layout
    model: str = DEFAULT_MODEL  # Hub id, local diffusers folder, fsspec URL of one, .safetensors, or "tiny"
    method: EmerDiffConfig = dataclasses.field(default_factory=EmerDiffConfig)
    device: str | None = None  # torch device inside each actor; default CUDA when present
    dtype: str | None = None  # default float16 on CUDA, float32 on CPU
    allow_pickle: bool = False  # .ckpt/.bin checkpoints can run code when loaded
    storage_options: dict = dataclasses.field(default_factory=dict)  # fsspec options; never written anywhere

    # Names for segments (docs/method.md): one MaskCLIP embedding per segment, computed next to the labels.
    clip_model: str | None = option(
        None, "Also store one CLIP embedding per segment (segments.clip_embedding), for `emerdiff name`: a Hub id "
              "(openai/clip-vit-base-patch16), a local transformers folder, an fsspec URL of one, or 'tiny'. "
              "Default: none.", metavar="SRC")
    clip_resolution: int = option(448, "Side of the square the image is resized to for CLIP (a multiple of its patch size).")

    # Job options: one flag each, generated from this metadata.
    batch_size: int = option(4, "Images per segment_batch call. Larger batches share the feature pass; 4-8 is plenty on a GPU.")
    # Each is a full-size decoded picture (a 12 MP photo is 36 MB); the model takes seconds per image.
    prefetch: int = option(8, "Decoded images a reader thread keeps ready ahead of the model, so it never waits on I/O.")
    rows_per_row_group: int = option(128, "Rows per Parquet row group (a row is ~100 KB with SD's 1280-d embeddings).")
    max_image_pixels: int = option(
        PIL_MAX_IMAGE_PIXELS,
        "Images with more pixels become error rows, checked from the header before decoding (decompression bombs).")
    image_extensions: tuple[str, ...] = option(
        ("jpg", "jpeg", "png", "webp"), "Sample members tried as the image, in order (comma-separated).", metavar="EXT,EXT")
    executor: Literal["ray", "local"] = option(
        "ray", "ray: Ray actors, one model each. local: one in-process loop without Ray (debugging).", choices=["ray", "local"])
    address: str | None = option(
        None, "Ray cluster to join (e.g. ray://head:10001 or auto). Default: $RAY_ADDRESS, else a local Ray without dashboard.")
    num_actors: int | None = option(None, "Labelling actors (one model each). Default: one per GPU in the cluster, or 1 without GPUs.")
    accelerator: Literal["auto", "gpu", "cpu"] = option(
        "auto", "gpu: each actor takes one GPU; cpu: CPU-only actors; auto: gpu if the cluster has GPUs now. "
                "Use gpu on autoscaling clusters whose GPU nodes are not up yet.", choices=["auto", "gpu", "cpu"])
    cpus_per_actor: float | None = option(
        None, "CPUs reserved per actor. Default: 1 for GPU actors; the CPUs split evenly for CPU actors.", metavar="CPUS")
    max_attempts: int = option(3, "Tries per shard (errors and dead actors both count) before it is reported as failed.")
    model_cache_dir: str | None = option(
        None, "Node-local folder where a --model given as URL is copied once. Default: $EMERDIFF_MODEL_CACHE or ~/.cache/emerdiff/models.")
    allow_pipe: bool = option(False, "Allow 'pipe:COMMAND' inputs, which run a shell command per shard.")
    lease_seconds: float = option(
        120.0, "The job holds OUTPUT/_lease.json, renewed every quarter of this; if its driver dies, another job may "
               "take the output over this long after the last renewal.", metavar="SECONDS")
    lease_wait: float = option(
        0.0, "Seconds to wait for another job writing the same --output to finish (or its lease to expire) instead of refusing at once.",
        metavar="SECONDS")
    overwrite: bool = option(False, "Delete an existing output in --output (whatever made it) and label every shard again.")
    dry_run: bool = option(False, "List pending and done shards and exit: no model is loaded, no Ray started.")

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise ValueError("Invalid labelling job options: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["method"] = self.method.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LabelJobConfig:
        values = dict(values)
        values["inputs"] = tuple(values["inputs"])
        values["image_extensions"] = tuple(values.get("image_extensions", cls.image_extensions))
        values["method"] = EmerDiffConfig.from_dict(values.get("method", {}))
        return cls(**values)

    def public_dict(self) -> dict[str, Any]:
        """What ``_job.json`` records: no storage options, URLs redacted."""
        values = self.to_dict()
        del values["storage_options"]
        values["inputs"] = [redact_url(url) for url in self.inputs]
        values["output"] = redact_url(self.output)
        values["model"] = redact_url(self.model)
        values["clip_model"] = redact_url(self.clip_model) if self.clip_model else None
        values["address"] = redact_url(self.address) if self.address else None
        return values

    def replace(self, **changes: Any) -> LabelJobConfig:
        return dataclasses.replace(self, **changes)

    def with_absolute_paths(self) -> LabelJobConfig:
        """Local paths made absolute: rows record where a shard really was, and actors started
        elsewhere than the driver's folder find the same files."""
        return self.replace(
            inputs=tuple(_absolute(url) for url in self.inputs),
            output=_absolute(self.output),
            model=_absolute(self.model) if os.path.exists(self.model) else self.model,
            clip_model=_absolute(self.clip_model) if self.clip_model and os.path.exists(self.clip_model) else self.clip_model,
        )

    def clip_record(self) -> dict | None:
        """What an output keeps the same across runs about its CLIP embeddings (None without them)."""
        if self.clip_model is None:
            return None
        return {"clip_model": redact_url(self.clip_model), "clip_resolution": self.clip_resolution}


def _absolute(url: str) -> str:
    if has_scheme(url) or is_pipe(url):
        return url
    return os.path.abspath(os.path.expanduser(url))


def _problems(job: LabelJobConfig):
    if isinstance(job.inputs, str) or not job.inputs:
        yield f"inputs must be a non-empty list of shard URLs or patterns, got {job.inputs!r}"
    elif any(not url.strip() for url in job.inputs):  # a blank would become the current folder
        yield f"inputs must not contain blank entries (a stray empty line in a URL list?), got {list(job.inputs)!r}"
    elif not job.allow_pipe and any(is_pipe(url) for url in job.inputs):
        yield "inputs contain 'pipe:' URLs, which run shell commands; pass --allow-pipe if you mean it"
    if not job.output:
        yield "output must be a folder URL or path"
    if job.clip_model is not None and (not isinstance(job.clip_model, str) or not job.clip_model.strip()):
        yield f"clip_model must be a CLIP model source or unset, got {job.clip_model!r}"
    for name in ("batch_size", "prefetch", "rows_per_row_group", "max_image_pixels", "max_attempts", "clip_resolution"):
        if problem := positive_int_problem(name, getattr(job, name)):
            yield problem
    if job.num_actors is not None and positive_int_problem("num_actors", job.num_actors):
        yield f"num_actors must be a positive integer or unset, got {job.num_actors!r}"
    if isinstance(job.lease_seconds, bool) or not isinstance(job.lease_seconds, (int, float)) or not job.lease_seconds > 0:
        yield f"lease_seconds must be a number of seconds > 0, got {job.lease_seconds!r}"
    if isinstance(job.lease_wait, bool) or not isinstance(job.lease_wait, (int, float)) or not job.lease_wait >= 0:
        yield f"lease_wait must be a number of seconds >= 0, got {job.lease_wait!r}"
    if job.cpus_per_actor is not None and not job.cpus_per_actor > 0:
        yield f"cpus_per_actor must be > 0 or unset, got {job.cpus_per_actor!r}"
    if job.executor not in ("ray", "local"):
        yield f"executor must be 'ray' or 'local', got {job.executor!r}"
    if job.accelerator not in ("auto", "gpu", "cpu"):
        yield f"accelerator must be 'auto', 'gpu' or 'cpu', got {job.accelerator!r}"
    if not job.image_extensions or any(not ext or ext.startswith(".") for ext in job.image_extensions):
        yield f"image_extensions must be extensions without the dot, such as ('jpg', 'png'), got {job.image_extensions!r}"
    if not isinstance(job.method, EmerDiffConfig):
        yield f"method must be an EmerDiffConfig, got {type(job.method).__name__}"
    if not isinstance(job.storage_options, dict):
        yield f"storage_options must be a dict of fsspec options, got {type(job.storage_options).__name__}"
