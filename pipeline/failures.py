"""What an error raised while labelling decides: an error row, a retried shard, or a fresh worker.

The one place that maps an exception to what happens next (the batch stage, the Ray actor and the
local loop all ask ``failure_action``):

- ``ERROR_ROW``: a failure confined to the images it was computing: a ``RuntimeError`` or
  ``ValueError`` from the model (an odd picture, a NaN), or out of device memory that halving the
  segmenter's chunks down to 1 did not avoid (``EmerDiffSegmenter._shrinking_on_oom`` tries that
  first). A failed batch is retried one image at a time; an image that still fails becomes a row
  with the reason, and the shard is committed.
- ``END_WORKER``: the device itself is broken, a CUDA error other than out-of-memory (after an
  illegal memory access every later kernel of the process fails too). The shard attempt fails
  with no marker and the worker process ends, so that Ray starts a fresh one, with a fresh CUDA
  context, and the shard is retried there; it counts against the job's actor deaths like a crash.
- ``RETRY_SHARD``: anything else (the tar, the store, the writer): the attempt fails, its data
  file is removed, and the shard is retried, up to ``max_attempts``.
"""

from __future__ import annotations

from typing import Literal

import torch

ERROR_ROW = "error row"
RETRY_SHARD = "retry shard"
END_WORKER = "end worker"
FailureAction = Literal["error row", "retry shard", "end worker"]

# Exit status of a worker that ends itself after a device failure (EX_SOFTWARE).
DEVICE_FAILURE_EXIT_CODE = 70


def failure_action(error: BaseException) -> FailureAction:
    if isinstance(error, torch.OutOfMemoryError):
        return ERROR_ROW
    if is_device_failure(error):
        return END_WORKER
    if isinstance(error, (RuntimeError, ValueError)):
        return ERROR_ROW
    return RETRY_SHARD


def is_device_failure(error: BaseException) -> bool:
    """A CUDA error that leaves the process's device unusable (out-of-memory is not one).

    torch raises ``torch.AcceleratorError`` for a failed CUDA call; cuBLAS and cuDNN failures come
    as plain RuntimeErrors whose message starts with "CUDA error" or "cuDNN error".
    """
    if isinstance(error, torch.OutOfMemoryError):
        return False
    if isinstance(error, torch.AcceleratorError):
        return True
    return isinstance(error, RuntimeError) and str(error).startswith(("CUDA error", "cuDNN error"))
