"""The contract of a labelling output: row schema, file layout, markers, manifest, readers.

Light on purpose (pyarrow, fsspec, Pillow; no torch): every tool that reads an output imports it.
"""
