"""The logic behind the tools that work on a labelling output (make-shards, preview, evaluate, export,
cluster, inspect). The subcommand modules in ``jobs/`` only parse arguments and call into here.
"""
