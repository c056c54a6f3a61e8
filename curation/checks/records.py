"""The records a scan reads: the training records, in record-id order, through an Arrow file.

A scan used to fetch every training record from DuckDB row by row while DuckDB still held its sorted result: both
at once, 1.9 GB at 1M records. Now the rows go batch by batch into an uncompressed Arrow IPC file in the workspace's
``scratch/`` folder, which is mapped and unlinked at once (nothing is left behind, even by a killed scan; the mapping
stays valid until it is closed). Then:

* up to :data:`IN_MEMORY_RECORDS` records, they are read into memory from the mapping, which is dropped: DuckDB's
  sort and the records are never in memory together, and checks read a list;
* past it, they stay in the mapped file (:class:`RecordTable` ``mapped``): the texts are pages of the page cache,
  which the kernel reclaims under pressure, and a :class:`ScanRecord` exists only while a check looks at it.
  Iterating goes block by block; indexing reads single records until a block has been visited often, then
  materialises the block (a few blocks are cached); slicing returns a list. Each pass over the records costs about
  5 us a record, so a mapped scan is slower but its heap does not grow with the texts.

Checks read a :class:`RecordTable` as the ``Sequence[ScanRecord]`` they always took.
"""

from __future__ import annotations

import bisect
import hashlib
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import pyarrow as pa
import pyarrow.ipc as ipc

from curation.checks.spec import ScanRecord
from curation.executors import release_freed_memory
from curation.similarity.exact import KeepRank
from schemas.catalog import Catalog

#: Up to this many records, a scan reads them all into memory (0.8 KB each for records of 450 characters: a block
#: read once per pass over the records costs about 5 us a record, which at 1M records and 20 passes is 100 s);
#: past it they stay in the mapped file and are read a block at a time.
IN_MEMORY_RECORDS = 2_000_000
#: Rows per Arrow batch of the file, and per block of materialised records.
BLOCK_ROWS = 16_384
#: Blocks of materialised records kept for indexing (about 16 MB each for records of 1 KB).
CACHED_BLOCKS = 8
#: Look-ups of single records in a block before the whole block is materialised: a single record costs about
#: 10 us, a block about 15 ms, so random look-ups stay singles and a run through the block pays once.
SINGLES_PER_BLOCK = 256

TRAINING_RECORDS_SQL = """
    WITH first_source AS (
        SELECT s.record_id,
               min(struct_pack(t := strftime(b.started_at, '%Y-%m-%dT%H:%M:%S.%f'), r := s.row,
                               i := s.sub_index)) AS first
        FROM source_rows s JOIN ingest_batches b USING (batch_id)
        WHERE b.purpose = 'train'
        GROUP BY s.record_id
    )
    SELECT r.record_id, r.prompt, r.response, r.label, f.first.t AS first_t, f.first.r AS first_row,
           f.first.i AS first_sub
    FROM records r JOIN first_source f USING (record_id)
    ORDER BY r.record_id
"""

_COLUMNS = ("record_id", "prompt", "response", "label", "first_t", "first_row", "first_sub")


def _record(rid: str, prompt: str, response: str, label: str | None, t: str, row: int, sub: int) -> ScanRecord:
    """One row of :data:`TRAINING_RECORDS_SQL` (in :data:`_COLUMNS` order) as the record a check reads."""
    return ScanRecord(rid, prompt, response, label, KeepRank(1, 0.0, (t, int(row), int(sub)), rid))


class RecordTable(Sequence[ScanRecord]):
    """The training records of a scan (see the module docstring), with the hash of their ids."""

    def __init__(self, batches: list[pa.RecordBatch], records_hash: str, source: pa.MemoryMappedFile | None) -> None:
        self._batches = batches
        self._starts = [0]
        for batch in batches:
            self._starts.append(self._starts[-1] + batch.num_rows)
        self.records_hash = records_hash  # sha256 of the ids joined by newlines: what a scan id hashes
        self._source = source
        self._blocks: OrderedDict[int, list[ScanRecord]] = OrderedDict()
        self._singles: dict[int, int] = {}  # block -> single records read from it since it was last materialised
        self._all: list[ScanRecord] | None = None  # every record, once :meth:`load` ran

    @property
    def mapped(self) -> bool:
        """True while the records are read from the file, False once they are all in memory."""
        return self._all is None

    def load(self) -> None:
        """Read every record into memory (as fast to read as a list) and drop the mapping (and its pages)."""
        if self._all is None:
            self._all = [record for j in range(len(self._batches)) for record in self._block(j)]
            self._blocks.clear()
            self._batches = []
            if self._source is not None:
                self._source.close()
                self._source = None

    def __len__(self) -> int:
        return self._starts[-1]

    def _block(self, j: int) -> list[ScanRecord]:
        columns = [self._batches[j].column(name).to_pylist() for name in _COLUMNS]
        return [_record(*row) for row in zip(*columns, strict=True)]

    def _cached(self, j: int) -> list[ScanRecord]:
        block = self._blocks.get(j)
        if block is None:
            block = self._blocks[j] = self._block(j)
            if len(self._blocks) > CACHED_BLOCKS:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(j)
        return block

    def _one(self, j: int, offset: int) -> ScanRecord:
        batch = self._batches[j]
        return _record(*(batch.column(name)[offset].as_py() for name in _COLUMNS))

    @overload
    def __getitem__(self, index: int) -> ScanRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[ScanRecord]: ...
    def __getitem__(self, index: int | slice) -> ScanRecord | list[ScanRecord]:
        if self._all is not None:
            return self._all[index]
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            return self._run(start, stop) if step == 1 else [self[i] for i in range(start, stop, step)]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        j = bisect.bisect_right(self._starts, index) - 1
        offset = index - self._starts[j]
        if j in self._blocks:
            return self._cached(j)[offset]
        singles = self._singles.get(j, 0) + 1
        if singles > SINGLES_PER_BLOCK:
            del self._singles[j]
            return self._cached(j)[offset]
        self._singles[j] = singles
        return self._one(j, offset)

    def _run(self, start: int, stop: int) -> list[ScanRecord]:
        """Records ``start`` to ``stop``, block by block (a shard of a per-record check: no single look-ups)."""
        out: list[ScanRecord] = []
        j = bisect.bisect_right(self._starts, start) - 1
        while start < stop:
            lo, hi = self._starts[j], self._starts[j + 1]
            block = self._blocks.get(j)
            if block is None:
                block = self._block(j)
            out.extend(block[start - lo : min(stop, hi) - lo])
            start, j = hi, j + 1
        return out

    def __iter__(self) -> Iterator[ScanRecord]:
        if self._all is not None:
            yield from self._all
            return
        for j in range(len(self._batches)):
            block = self._blocks.get(j)
            yield from block if block is not None else self._block(j)

    def close(self) -> None:
        """Drop the records and the mapping (nothing is readable afterwards)."""
        self._all = None
        self._blocks.clear()
        self._batches = []
        self._starts = [0]
        if self._source is not None:
            self._source.close()
            self._source = None


def scratch_folder(catalog: Catalog) -> Path:
    """Where a scan writes its temporary files: ``scratch/`` beside the catalog (never in a backup)."""
    return catalog.path.parent / "scratch"


def _remove_leftovers(folder: Path) -> None:
    """Files of scans killed between writing and unlinking (their pid is in the name and no longer runs)."""
    for leftover in folder.glob(".records-*.arrow*"):
        pid = leftover.name.split("-")[1].split(".")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            leftover.unlink(missing_ok=True)


def read_training_records(catalog: Catalog, in_memory: int | None = None) -> RecordTable:
    """Write the training records (those with a training source row) with the rank that picks kept members into a
    scratch Arrow file, map it and unlink it; then, for up to ``in_memory`` records (default
    :data:`IN_MEMORY_RECORDS`), read them all into memory and drop the mapping. Memory while reading: DuckDB's sort
    of the rows, then (separately) the records; never both at once."""
    folder = scratch_folder(catalog)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    path = folder / f".records-{os.getpid()}.arrow"
    digest = hashlib.sha256()
    first = True
    try:
        with catalog.read() as con:
            reader = con.sql(TRAINING_RECORDS_SQL).to_arrow_reader(BLOCK_ROWS)
            with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, reader.schema) as writer:
                for batch in reader:
                    if batch.num_rows == 0:
                        continue
                    ids = "\n".join(batch.column("record_id").to_pylist())
                    digest.update((ids if first else "\n" + ids).encode("utf-8"))
                    first = False
                    writer.write_batch(batch)
        source = pa.memory_map(str(path), "r")
    finally:
        path.unlink(missing_ok=True)  # the mapping keeps the pages; the name goes now
    file = ipc.open_file(source)
    batches = [file.get_batch(j) for j in range(file.num_record_batches)]
    table = RecordTable(batches, digest.hexdigest(), source)
    if len(table) <= (IN_MEMORY_RECORDS if in_memory is None else in_memory):
        table.load()
    release_freed_memory()  # DuckDB's batches went through Arrow's allocator
    return table
