"""The contract of a labelling output and of its inputs: URLs and shard names (``urls``, ``shards``),
row schema (``labels``), file layout (``layout``), markers and manifest (``markers``), readers
(``reading``).

Light on purpose (pyarrow, fsspec, Pillow, braceexpand; no torch): every tool that reads an output
imports it, and so does the driver.
"""
