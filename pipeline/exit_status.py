"""What every ``emerdiff`` command's exit status means: one class of outcome each.

Callers (schedulers, ``ray job submit``, CI) decide from it alone whether to rerun, fix the
command, or fix the environment; docs/operations.md shows the same table. A leaf that imports
nothing of the project, so that even an install without the pipeline's extras can say why it stops.
"""

import enum


class ExitStatus(enum.IntEnum):
    OK = 0  # everything asked for is done
    PARTIAL = 1  # some shards (label) or images (segment) failed after their retries; the rest is done, a rerun retries only those
    USAGE = 2  # refused before any work: a bad flag or value, an input or model that cannot be used as given
    REFUSED = 3  # the output is not this job's to write: made with another model or config, or held by a running job
    TAKEN_OVER = 4  # another job took the output over mid-run: this one stopped without committing more
    FAILED = 5  # could not run here: an extra not installed, Ray did not start, the model did not load, actors kept dying
    INTERRUPTED = 130  # Ctrl-C or SIGTERM: committed shards stay, a rerun resumes
