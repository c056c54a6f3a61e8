"""The executor contract, its configuration and the local (in-process) executor."""

from __future__ import annotations

import ctypes
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import Failure, InputError

T = TypeVar("T")
R = TypeVar("R")
P = TypeVar("P")


class ExecutorError(Failure):
    """A stage could not finish on the executor: a task lost its worker more often than it may be retried (exit 1)."""


class ExecutorUnavailable(InputError):
    """The executor asked for cannot be used: Ray is not installed, or the cluster cannot be started or reached."""


class ExecutorConfig(BaseModel):
    """Where the heavy scan stages run (``refinery scan --executor``, or the ``executor`` key of ``--config``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local", "ray"] = Field("local", description="local: this process; ray: tasks on a Ray cluster.")
    ray_address: str | None = Field(
        None,
        description="Ray: None starts a private Ray instance on this machine for the scan (stopped after); 'auto' "
        "joins the cluster this machine belongs to (`ray start`); 'ray://HOST:10001' a remote one (Ray Client).",
    )
    num_cpus: int | None = Field(
        None, ge=1, description="Ray, private instance only: CPUs it may use (default: every core)."
    )
    shard_records: int = Field(20_000, ge=1, description="Records per task: a worker holds one shard at a time.")
    max_retries: int = Field(
        3, ge=0, description="Ray: times a task is rerun when its worker dies (a killed process, a lost node)."
    )
    max_in_flight: int | None = Field(
        None, ge=1, description="Ray: tasks submitted ahead of the results read (default: 2 per cluster CPU)."
    )


@dataclass
class StageStats:
    """What an executor measured of one stage: tasks, their wall time and the largest worker peak RSS."""

    tasks: int = 0
    seconds: float = 0.0
    worker_peak_rss_mb: float = 0.0
    worker_peak_private_mb: float | None = None  # the largest task's peak own memory (PrivateMemoryWatch)
    workers: set[str] = field(default_factory=set)

    def add(self, worker: str, rss_mb: float, private_mb: float | None) -> None:
        """One task done on ``worker`` whose process's peak RSS was ``rss_mb`` and its own memory ``private_mb``."""
        self.tasks += 1
        self.workers.add(worker)
        self.worker_peak_rss_mb = max(self.worker_peak_rss_mb, rss_mb)
        if private_mb is not None:
            self.worker_peak_private_mb = max(self.worker_peak_private_mb or 0.0, private_mb)

    def to_json(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "seconds": round(self.seconds, 3),
            "workers": len(self.workers),
            "worker_peak_rss_mb": round(self.worker_peak_rss_mb, 1),
            "worker_peak_private_mb": None
            if self.worker_peak_private_mb is None
            else round(self.worker_peak_private_mb, 1),
        }


class Executor(Protocol):
    kind: str
    shard_records: int  # records per shard of the stages that cut their own shards
    stats: dict[str, StageStats]

    def map(self, fn: Callable[[T], R], shards: Sequence[T], *, stage: str) -> Iterator[R]:
        """``fn(shard)`` for every shard, the results in shard order."""
        ...

    def pin(self, shards: list[T]) -> list[T]:
        """Keep ``shards`` where the workers read them (Ray: the object store, once) for several stages to map over;
        returns them (pass them to :meth:`map` as they are)."""
        ...

    def map_actors(
        self, factory: Callable[[], Any], method: str, shards: Sequence[T], *, stage: str, pool: int | None = None
    ) -> Iterator[Any]:
        """``getattr(factory(), method)(shard)`` for every shard, on a pool of long-lived workers that each build
        ``factory()`` once (a model loaded once per worker); the results in shard order."""
        ...

    def shuffle(
        self,
        map_fn: Callable[[T], Sequence[P]],
        shards: Sequence[T],
        reduce_fn: Callable[[list[P]], R],
        *,
        partitions: int,
        stage: str,
        on_map: Callable[[int], object] | None = None,
        partition_data: Sequence[Any] | None = None,
    ) -> Iterator[R]:
        """A shuffle: ``map_fn(shard)`` cuts each shard's output into ``partitions`` parts; ``reduce_fn`` gets part
        ``p`` of every shard, in shard order, and its results come back in partition order. On Ray the parts go from
        the map tasks to the reduce tasks through the object store, never through the driver (stages
        ``STAGE:map`` and ``STAGE:reduce``). ``on_map(index)`` is called as each map task ends (progress). With
        ``partition_data``, reduce task ``p`` gets ``[partition_data[p], *parts]`` (what the driver knows of it)."""
        ...

    def close(self) -> None: ...


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (Linux reports KB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl)
        return None
    trim: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)
    return trim


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand the memory this process has freed back to the system: Arrow's allocator (mimalloc or jemalloc) and
    glibc's keep freed pages for reuse, so without this a scan's memory grows from one check to the next (at 1M
    records, Arrow alone kept 470 MB after storing one check's findings)."""
    pa.default_memory_pool().release_unused()
    if _MALLOC_TRIM is not None:  # glibc only
        _MALLOC_TRIM(0)


class PrivateMemoryWatch:
    """Peak anonymous memory (``RssAnon``: the process's own, without the shared object-store pages a Ray worker maps)
    while a block runs, sampled every ``interval`` seconds from ``/proc/self/status`` by a thread. ``peak_mb`` is
    None where there is no ``/proc`` (macOS). A spike shorter than the interval can be missed."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def current_mb() -> float | None:
        try:
            with open("/proc/self/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def _sample(self) -> None:
        while True:
            now = self.current_mb()
            if now is not None:
                self.peak_mb = max(self.peak_mb or 0.0, now)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PrivateMemoryWatch:
        if self.current_mb() is not None:
            self._thread = threading.Thread(target=self._sample, name="memory-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        now = self.current_mb()
        if now is not None:
            self.peak_mb = max(self.peak_mb or 0.0, now)


def shards_of(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut into consecutive shards of at most ``size``."""
    return [items[lo : lo + size] for lo in range(0, len(items), size)]


class LocalExecutor:
    """Runs every shard in this process, one after the other: the default, and the reference the Ray executor's
    results are compared with."""

    kind = "local"

    def __init__(self, config: ExecutorConfig | None = None) -> None:
        self.shard_records = (config or ExecutorConfig()).shard_records
        self.stats: dict[str, StageStats] = {}

    def map(self, fn: Callable[[T], R], shards: Sequence[T], *, stage: str) -> Iterator[R]:
        stats = self.stats.setdefault(stage, StageStats())
        for shard in shards:
            started = time.monotonic()
            with PrivateMemoryWatch() as watch:
                result = fn(shard)
            stats.add("local", peak_rss_mb(), watch.peak_mb)
            stats.seconds += time.monotonic() - started
            yield result

    def pin(self, shards: list[T]) -> list[T]:
        return shards

    def map_actors(
        self, factory: Callable[[], Any], method: str, shards: Sequence[T], *, stage: str, pool: int | None = None
    ) -> Iterator[Any]:
        actor = factory()
        yield from self.map(getattr(actor, method), shards, stage=stage)

    def shuffle(
        self,
        map_fn: Callable[[T], Sequence[P]],
        shards: Sequence[T],
        reduce_fn: Callable[[list[P]], R],
        *,
        partitions: int,
        stage: str,
        on_map: Callable[[int], object] | None = None,
        partition_data: Sequence[Any] | None = None,
    ) -> Iterator[R]:
        columns: list[list[Any]] = [[] if partition_data is None else [partition_data[p]] for p in range(partitions)]
        for index, parts in enumerate(self.map(map_fn, shards, stage=f"{stage}:map")):
            if len(parts) != partitions:
                raise ValueError(f"stage {stage}: a map task gave {len(parts)} parts, not {partitions}")
            for column, part in zip(columns, parts, strict=True):
                column.append(part)
            if on_map is not None:
                on_map(index)
        reduce = self.map(reduce_fn, columns, stage=f"{stage}:reduce")
        del columns  # each column goes as its reduce task ends
        yield from reduce

    def close(self) -> None:
        return None


@contextmanager
def open_executor(config: ExecutorConfig | None) -> Iterator[Executor]:
    """The executor ``config`` names, closed (a private Ray instance stopped) when the block ends."""
    config = config or ExecutorConfig()
    executor: Executor
    if config.kind == "ray":
        from curation.executors.ray_cluster import RayExecutor

        executor = RayExecutor(config)
    else:
        executor = LocalExecutor(config)
    try:
        yield executor
    finally:
        executor.close()
