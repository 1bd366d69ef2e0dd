"""The labelling job: WebDataset shards in, one Parquet file of labels per shard out.

In the order the data flows: ``sources`` (shard URLs, streaming tars over fsspec) -> ``decode``
(bytes -> RGB, bad samples -> reasons) -> ``stages`` (read-ahead thread, batched segmentation ->
rows) -> ``writer`` (Parquet) -> ``shard`` (one shard end to end, marker last) -> ``distributors``
(local loop or Ray actors) -> ``job`` (plan, resume, manifest, summary). ``config`` holds the
job's options; the output contract itself lives in ``schemas``.
"""
