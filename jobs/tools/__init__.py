"""The code behind the subcommands other than ``label`` (segment, make-shards, preview, evaluate,
export, cluster, inspect), each with the config dataclass its flags are generated from. The
subcommand modules in ``jobs/`` only parse arguments and call into here.
"""
