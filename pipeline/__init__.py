"""The labelling job: WebDataset shards in, one Parquet file of labels per shard out.

In the order the data flows: ``sources`` (one shard's samples, streamed over fsspec) -> ``decode``
(bytes -> RGB, bad samples -> reasons) -> ``stages`` (read-ahead thread, batched segmentation ->
rows) -> ``writer`` (Parquet) -> ``labeler`` (one shard end to end) -> ``commit`` (data file, then
marker; manifest and _SUCCESS) -> ``distributors`` (local loop or Ray actors) -> ``driver`` (plan,
resume, summary). ``tasks`` holds the messages between them, ``config`` the job's options,
``storage`` the all-or-nothing writes, ``lease`` the one-job-per-output lock. Shard names, shard
listing, URLs and the output contract live in ``schemas``.
"""
