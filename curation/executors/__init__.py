"""Where a scan's heavy stages run: in this process (``local``, the default) or as tasks on a Ray cluster (``ray``).

A stage hands the executor a function and a list of shards (each a plain, picklable value: a list of texts, a list of
records); the executor returns the results in shard order, so a stage's output never depends on where it ran. Only
the driver (the ``refinery scan`` process) writes the catalog: workers return arrays and findings, never open DuckDB.
See docs/SCALE.md.
"""

from curation.executors.base import (
    Executor,
    ExecutorConfig,
    ExecutorError,
    ExecutorUnavailable,
    PrivateMemoryWatch,
    StageStats,
    open_executor,
    release_freed_memory,
    shards_of,
)

__all__ = [
    "Executor",
    "ExecutorConfig",
    "ExecutorError",
    "ExecutorUnavailable",
    "PrivateMemoryWatch",
    "StageStats",
    "open_executor",
    "release_freed_memory",
    "shards_of",
]
