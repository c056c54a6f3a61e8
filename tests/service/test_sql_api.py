"""``POST /sql`` on the real server: the analyst SQL of `refinery sql` (``Catalog.analyst_query``) as JSON, an Arrow
IPC stream or Parquet, with a row limit and a time limit; SQL that would write or read a file, reach the network,
load an extension or change a setting is a 400 with one line, and nothing is written."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.cli import run_cli
from tests.support.require import require_module
from tests.support.service import Service, running_service

N_RECORDS = 30
#: Never ends within a test's patience: 10^12 pairs.
SLOW = "SELECT sum(a.range * b.range) AS s FROM range(1000000) a, range(1000000) b"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    require_module("fastapi", "pip install 'refinery[service]'")
    folder = tmp_path_factory.mktemp("sql-api")
    data = folder / "data.jsonl"
    rows = [json.dumps({"instruction": f"say {i}", "output": f"answer {i}"}) for i in range(N_RECORDS)]
    data.write_text("\n".join(rows) + "\n")
    run_cli(folder / "ws", "ingest", str(data))
    with running_service(folder / "ws") as running:
        yield running


@pytest.fixture(scope="module")
def http(service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.base_url, headers=service.headers("viewer"), timeout=120) as client:
        yield client


def _sql(http: httpx.Client, sql: str, **options: Any) -> httpx.Response:
    return http.post("/sql", json={"sql": sql, **options})


def _error(answer: httpx.Response) -> str:
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    return detail


def test_json_rows_with_a_limit_and_the_rest_counted(http: httpx.Client) -> None:
    answer = _sql(http, "SELECT record_id, prompt FROM records ORDER BY prompt", limit=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["columns"] == ["record_id", "prompt"] and body["row_count"] == 10 == len(body["rows"])
    assert body["more"] == N_RECORDS - 10 and body["more_exact"] is True
    assert all(row["record_id"].startswith("rec_") for row in body["rows"])
    everything = _sql(http, "SELECT count(*) AS n FROM records").json()
    assert everything["rows"] == [{"n": N_RECORDS}] and everything["more"] == 0


def test_values_json_lacks_become_text(http: httpx.Client) -> None:
    sql = (
        "SELECT '\\xAA\\xBB'::BLOB AS b, 'nan'::DOUBLE AS nan, 'inf'::DOUBLE AS inf, DATE '2024-01-02' AS d, "
        "1.50::DECIMAL(4, 2) AS dec, [1, 2] AS l, {'k': 'v'} AS s, MAP {1: 'one'} AS m"
    )
    (row,) = _sql(http, sql).json()["rows"]
    assert row == {
        "b": "aabb", "nan": "NaN", "inf": "Infinity", "d": "2024-01-02", "dec": "1.50", "l": [1, 2],
        "s": {"k": "v"}, "m": {"1": "one"},
    }  # fmt: skip


def test_arrow_and_parquet_hold_the_same_rows(http: httpx.Client) -> None:
    sql = "SELECT record_id, length(prompt) AS n FROM records ORDER BY record_id"
    expected = _sql(http, sql, limit=7).json()["rows"]
    arrow = _sql(http, sql, limit=7, format="arrow")
    assert arrow.status_code == 200 and arrow.headers["content-type"] == "application/vnd.apache.arrow.stream"
    assert arrow.headers["x-refinery-more-rows"] == str(N_RECORDS - 7)
    assert arrow.headers["x-refinery-more-exact"] == "true"
    table = pa.ipc.open_stream(arrow.content).read_all()
    assert table.to_pylist() == expected and pa.types.is_integer(table.schema.field("n").type)
    parquet = _sql(http, sql, limit=7, format="parquet")
    assert parquet.status_code == 200 and parquet.headers["content-type"] == "application/vnd.apache.parquet"
    assert pq.read_table(io.BytesIO(parquet.content)).to_pylist() == expected
    empty = _sql(http, "SELECT 1 AS a WHERE false", format="arrow")
    assert pa.ipc.open_stream(empty.content).read_all().num_rows == 0


def test_the_time_limit_stops_a_query(http: httpx.Client) -> None:
    started = time.monotonic()
    detail = _error(_sql(http, SLOW, timeout_s=1))
    assert "time limit of 1 s" in detail and time.monotonic() - started < 30


def test_copy_to_a_file_is_refused_and_writes_nothing(http: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    detail = _error(_sql(http, f"COPY records TO '{target}'"))
    assert "disabled" in detail or "read-only" in detail.lower()
    assert not target.exists()
    _error(_sql(http, f"COPY (SELECT 1) TO '{target}' (FORMAT parquet)"))
    _error(_sql(http, f"EXPORT DATABASE '{tmp_path / 'dump'}'"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/hostname')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM '/etc/hostname'",
        "SELECT * FROM glob('/etc/*')",
        "ATTACH '/tmp/other.duckdb' AS other",
        "INSTALL httpfs",
        "SET enable_external_access = true",
        "INSERT INTO records SELECT * FROM records LIMIT 1",
    ],
)
def test_file_network_extension_settings_and_writes_are_refused(http: httpx.Client, sql: str) -> None:
    answer = _sql(http, sql)
    _error(answer)
    hostname = Path("/etc/hostname").read_text().strip() if Path("/etc/hostname").is_file() else ""
    assert not hostname or hostname not in answer.text


def test_bad_sql_and_bad_options(http: httpx.Client) -> None:
    assert "SQL error" in _error(_sql(http, "SELEC 1"))
    assert "no SQL statement" in _error(_sql(http, "  ;  "))
    assert _sql(http, "SELECT 1", format="csv").status_code == 422
    assert _sql(http, "SELECT 1", limit=-1).status_code == 422
    assert _sql(http, "SELECT 1", timeout_s=0).status_code == 422
    assert http.post("/sql", json={"sql": "SELECT 1", "unknown": 1}).status_code == 422


def test_sql_runs_beside_other_reads(http: httpx.Client, service: Service) -> None:
    """Analyst connections and the server's own reads use different DuckDB settings; threads take turns."""
    import concurrent.futures

    def one(i: int) -> int:
        if i % 2:
            return _sql(http, "SELECT count(*) AS n FROM records").status_code
        return http.get("/snapshots").status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(80)))
    assert codes == [200] * 80


def test_a_long_query_holds_up_no_other_read(http: httpx.Client) -> None:
    """The analyst query runs in a worker process: while it runs, the server's own reads answer at once."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_sql, http, SLOW, timeout_s=6)
        time.sleep(1.5)
        started = time.monotonic()
        for _ in range(3):
            assert http.get("/snapshots").status_code == 200
        assert time.monotonic() - started < 4 and not slow.done()
        assert "time limit of 6 s" in _error(slow.result())
