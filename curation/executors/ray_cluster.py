"""The Ray executor: each shard is a Ray task (or a call on a pool of actors), retried when its worker dies.

Results come back in shard order, with at most ``max_in_flight`` tasks submitted ahead, so the driver's memory is
bounded by the shards in flight, not by the stage. A task that raises (a bug, bad data) fails the stage with its own
exception, as it would locally; a task whose worker died more than ``max_retries`` times fails it with
:class:`ExecutorError`. Ray is the ``scale`` extra (``pip install 'refinery[scale]'``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from curation.executors.base import (
    ExecutorConfig,
    ExecutorError,
    ExecutorUnavailable,
    PrivateMemoryWatch,
    StageStats,
    peak_rss_mb,
)
from curation.executors.faults import KillOnce, planned_kill
from schemas.progress import log

T = TypeVar("T")
R = TypeVar("R")


Info = tuple[str, float, float | None]  # a task's worker, that process's peak RSS, the task's peak own memory


def _task(fn: Callable[[T], R], shard: T, stage: str, index: int, kill: KillOnce | None) -> tuple[R, Info]:
    """What runs on a worker: the fault hook, the function, and where it ran and the memory it took."""
    if kill is not None:
        kill.strike(stage, index)
    with PrivateMemoryWatch() as watch:
        result = fn(shard)
    return result, (f"{socket.gethostname()}:{os.getpid()}", peak_rss_mb(), watch.peak_mb)


def _map_task(
    fn: Callable[[T], Sequence[Any]], shard: T, partitions: int, stage: str, index: int, kill: KillOnce | None
) -> tuple[Any, ...]:
    """A shuffle's map task: its ``partitions`` parts (each its own object), then where it ran and its memory."""
    parts, info = _task(fn, shard, stage, index, kill)
    if len(parts) != partitions:
        raise ValueError(f"stage {stage}: a map task gave {len(parts)} parts, not {partitions}")
    return (*parts, info)


def _reduce_task(
    fn: Callable[[list[Any]], R], stage: str, index: int, kill: KillOnce | None, *parts: Any
) -> tuple[R, Info]:
    """A shuffle's reduce task: Ray resolves the parts (top-level arguments) from the object store."""
    return _task(fn, list(parts), stage, index, kill)


class _Worker:
    """An actor: builds its object once (a model loaded once per worker), then serves calls."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.target = factory()

    def call(self, method: str, shard: Any, stage: str, index: int, kill: KillOnce | None) -> tuple[Any, Info]:
        return _task(getattr(self.target, method), shard, stage, index, kill)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once when nothing listens at ``HOST:PORT`` (or ``ray://HOST:PORT``): ``ray.init`` would wait for
    minutes. ``auto`` is left to Ray (it reads the address of the cluster this machine started)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorUnavailable(f"--ray-address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ExecutorUnavailable(
            f"cannot reach Ray at {address}: nothing answers there ({exc.strerror or exc})"
        ) from exc


class RayExecutor:
    kind = "ray"

    def __init__(self, config: ExecutorConfig) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ExecutorUnavailable("the ray executor needs Ray: pip install 'refinery[scale]'") from exc
        self.ray = ray
        self.config = config
        self.shard_records = config.shard_records
        self.stats: dict[str, StageStats] = {}
        self.owns = False
        self._pinned: dict[int, tuple[Any, Any]] = {}  # id(shard) -> (shard, its object ref)
        # Ray's driver prints what its raylets and workers report (a worker that died, a task retried) on stdout,
        # from a thread of its own; stdout is the CLI's result (--json), so while Ray runs those lines go to stderr
        self._quiet_stdout = contextlib.redirect_stdout(sys.stderr)
        self._quiet_stdout.__enter__()
        try:
            self._connect(ray, config)
        except BaseException:
            self._quiet_stdout.__exit__(None, None, None)
            raise
        remote = ray.remote(num_cpus=1, max_retries=config.max_retries, retry_exceptions=False)
        self._remote: Any = remote(_task)
        self._map_remote: Any = remote(_map_task)
        self._reduce_remote: Any = remote(_reduce_task)

    def _connect(self, ray: Any, config: ExecutorConfig) -> None:
        if not ray.is_initialized():
            started = time.monotonic()
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": "ERROR",
                "namespace": "refinery",
            }
            if config.ray_address is None:  # "local": a new instance, never a cluster left running or RAY_ADDRESS
                options["address"] = "local"
                options["num_cpus"] = config.num_cpus
            else:
                _check_reachable(config.ray_address)
                options["address"] = config.ray_address
            try:
                ray.init(**options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = config.ray_address or "a private instance"
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
                hint = ""
                if config.ray_address not in (None, "auto") and not os.environ.get("RAY_AUTH_MODE"):
                    hint = (
                        " (a cluster with token authentication needs RAY_AUTH_MODE=token and its token: docs/SCALE.md)"
                    )
                raise ExecutorUnavailable(f"cannot start or reach Ray at {where}: {first}{hint}") from exc
            self.owns = True
            log(f"ray: {self.cpus()} CPUs ready in {time.monotonic() - started:.1f} s")

    def cpus(self) -> int:
        return int(self.ray.cluster_resources().get("CPU", 1))

    def _in_flight(self) -> int:
        return self.config.max_in_flight or 2 * self.cpus()

    def _get(self, ref: Any, stage: str, index: int) -> Any:
        """``ray.get(ref)``: a task that raised raises its own exception; one whose worker died on every try fails
        the stage with :class:`ExecutorError`."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the function raised: the stage fails with its exception
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            raise cause from None
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.ActorDiedError, ray.exceptions.NodeDiedError,
                ray.exceptions.ObjectLostError, ray.exceptions.RaySystemError) as exc:  # fmt: skip
            raise ExecutorError(
                f"scan stage {stage}: shard {index} lost its worker on each of its {self.config.max_retries + 1} "
                f"tries ({exc.__class__.__name__}); nothing of the scan was stored, rerun it"
            ) from exc

    def _collect(self, ref: Any, stage: str, index: int, stats: StageStats) -> Any:
        result, info = self._get(ref, stage, index)
        stats.add(*info)
        return result

    def pin(self, shards: list[T]) -> list[T]:
        for shard in shards:
            if id(shard) not in self._pinned:
                self._pinned[id(shard)] = (shard, self.ray.put(shard))
        return shards

    def _ref(self, shard: Any) -> Any:
        """The shard's object ref when pinned (sent to the object store once), else the shard (sent with the task)."""
        pinned = self._pinned.get(id(shard))
        return pinned[1] if pinned is not None and pinned[0] is shard else shard

    def map(self, fn: Callable[[T], R], shards: Sequence[T], *, stage: str) -> Iterator[R]:
        stats = self.stats.setdefault(stage, StageStats())
        kill = planned_kill()
        started = time.monotonic()
        pending: deque[tuple[int, Any]] = deque()
        for index, shard in enumerate(shards):
            pending.append((index, self._remote.remote(fn, self._ref(shard), stage, index, kill)))
            while len(pending) >= self._in_flight():
                i, ref = pending.popleft()
                yield self._collect(ref, stage, i, stats)
        while pending:
            i, ref = pending.popleft()
            yield self._collect(ref, stage, i, stats)
        stats.seconds += time.monotonic() - started

    def shuffle(
        self,
        map_fn: Callable[[T], Sequence[Any]],
        shards: Sequence[T],
        reduce_fn: Callable[[list[Any]], R],
        *,
        partitions: int,
        stage: str,
        on_map: Callable[[int], object] | None = None,
        partition_data: Sequence[Any] | None = None,
    ) -> Iterator[R]:
        map_stage, reduce_stage = f"{stage}:map", f"{stage}:reduce"
        map_stats = self.stats.setdefault(map_stage, StageStats())
        kill = planned_kill()
        started = time.monotonic()
        # every map task's parts stay in the object store (spilled to disk when it fills) until the reducers read
        # them; the driver holds their refs only, and waits on each task's last return (where it ran, its memory)
        # with at most max_in_flight tasks submitted ahead (a shard sent with its task waits in the store meanwhile)
        outputs: list[list[Any]] = []
        done = 0
        for index, shard in enumerate(shards):
            refs = self._map_remote.options(num_returns=partitions + 1).remote(
                map_fn, self._ref(shard), partitions, map_stage, index, kill
            )
            outputs.append(list(refs))
            while len(outputs) - done >= self._in_flight():
                map_stats.add(*self._get(outputs[done][-1], map_stage, done))
                if on_map is not None:
                    on_map(done)
                done += 1
        for index in range(done, len(outputs)):
            map_stats.add(*self._get(outputs[index][-1], map_stage, index))
            if on_map is not None:
                on_map(index)
        map_stats.seconds += time.monotonic() - started
        reduce_stats = self.stats.setdefault(reduce_stage, StageStats())
        started = time.monotonic()
        pending: deque[tuple[int, Any]] = deque()
        for p in range(partitions):
            parts = [refs[p] for refs in outputs]
            if partition_data is not None:
                parts.insert(0, partition_data[p])
            pending.append((p, self._reduce_remote.remote(reduce_fn, reduce_stage, p, kill, *parts)))
            while len(pending) >= self._in_flight():
                i, ref = pending.popleft()
                yield self._collect(ref, reduce_stage, i, reduce_stats)
        del outputs
        while pending:
            i, ref = pending.popleft()
            yield self._collect(ref, reduce_stage, i, reduce_stats)
        reduce_stats.seconds += time.monotonic() - started

    def map_actors(
        self, factory: Callable[[], Any], method: str, shards: Sequence[T], *, stage: str, pool: int | None = None
    ) -> Iterator[Any]:
        ray = self.ray
        stats = self.stats.setdefault(stage, StageStats())
        kill = planned_kill()
        size = max(1, min(pool or self.cpus(), len(shards)))
        actor = ray.remote(num_cpus=1, max_restarts=self.config.max_retries, max_task_retries=self.config.max_retries)
        workers = [actor(_Worker).remote(factory) for _ in range(size)]
        started = time.monotonic()
        pending: deque[tuple[int, Any]] = deque()
        try:
            for index, shard in enumerate(shards):
                worker = workers[index % size]
                pending.append((index, worker.call.remote(method, shard, stage, index, kill)))
                while len(pending) >= 2 * size:
                    i, ref = pending.popleft()
                    yield self._collect(ref, stage, i, stats)
            while pending:
                i, ref = pending.popleft()
                yield self._collect(ref, stage, i, stats)
        finally:
            for worker in workers:
                ray.kill(worker)
        stats.seconds += time.monotonic() - started

    def close(self) -> None:
        self._pinned.clear()
        try:
            if self.owns and self.ray.is_initialized():
                self.ray.shutdown()
        finally:
            self._quiet_stdout.__exit__(None, None, None)
