"""The read endpoints of the real server over a workspace made by the real CLI: each answers what the CLI (or the
library it calls) says about the same catalog, and an unknown id is 404 with one line."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.cli import run_cli
from tests.support.service import Service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def http(chain_service: Service) -> Iterator[httpx.Client]:
    headers = chain_service.headers("viewer")
    with httpx.Client(base_url=chain_service.base_url, headers=headers, timeout=120) as client:
        yield client


def _ok(answer: httpx.Response) -> Any:
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_healthz_needs_no_token(chain_service: Service, chain: dict[str, Any]) -> None:
    health = _ok(httpx.get(f"{chain_service.base_url}/healthz"))
    assert health["status"] == "ok" and health["workspace"] == str(chain["ws"].resolve())
    assert health["catalog_version"] >= 11


def test_snapshots_are_what_the_cli_lists(http: httpx.Client, chain: dict[str, Any]) -> None:
    listed = _ok(http.get("/snapshots"))["snapshots"]
    cli = run_cli(chain["ws"], "snapshot", "list")["snapshots"]
    assert [s["snapshot_id"] for s in listed] == [s["snapshot_id"] for s in cli] == [chain["snapshot_id"]]
    assert {k: listed[0][k] for k in ("train", "validation", "test", "scan_id")} == {
        k: cli[0][k] for k in ("train", "validation", "test", "scan_id")
    }
    one = _ok(http.get(f"/snapshots/{chain['snapshot_id']}"))
    shown = run_cli(chain["ws"], "snapshot", "show", chain["snapshot_id"])
    assert one["manifest"]["files"] == shown["files"] and one["snapshot"]["snapshot_id"] == chain["snapshot_id"]
    assert one["policy"]["seed"] is not None
    assert any(e["check_name"] == "exact" and e["dropped"] == 1 for e in one["check_effects"])  # the duplicate


def test_scans_and_the_html_report(http: httpx.Client, chain: dict[str, Any]) -> None:
    (scan,) = _ok(http.get("/scans"))["scans"]
    assert scan["scan_id"] == chain["scan_id"] and scan["status"] == "complete" and scan["records"] == 41
    assert scan["summary"]["exact"]["duplicates"] == 1
    assert _ok(http.get(f"/scans/{chain['scan_id']}")) == scan
    page = http.get(f"/scans/{chain['scan_id']}/report")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Refinery quality report" in page.text and chain["scan_id"] in page.text
    again = http.get(f"/scans/{chain['scan_id']}/report")  # served from memory while the catalog is unchanged
    assert again.text == page.text

    # a write: the next request gets the page it had at once, and a background render replaces it soon after
    run_cli(chain["ws"], "token", "create", "--name", "report-refresh", "--role", "viewer")
    started = time.monotonic()
    stale = http.get(f"/scans/{chain['scan_id']}/report")
    assert stale.text == page.text  # not rendered for this request (a render stamps the time it was made)
    while time.monotonic() - started < 180:  # one render; minutes on a machine busy with other work
        fresh = http.get(f"/scans/{chain['scan_id']}/report")
        if fresh.text != page.text:
            break
        time.sleep(0.5)
    assert fresh.text != page.text and "Refinery quality report" in fresh.text  # generated again (its timestamp)


def test_adapters_registry_and_evals_match_the_cli(http: httpx.Client, chain: dict[str, Any]) -> None:
    (adapter,) = _ok(http.get("/adapters"))["adapters"]
    assert adapter["adapter_id"] == chain["adapter_id"] and adapter["status"] == "promoted"
    assert adapter["verdict"] == "fail" and adapter["is_current"] is True
    registry = _ok(http.get("/registry"))
    cli = run_cli(chain["ws"], "registry")
    assert registry["current"]["adapter_id"] == cli["current"] == chain["adapter_id"]
    assert registry["current"]["action"] == "force_promote" and registry["current"]["reason"] == "service test"
    assert [a["adapter_id"] for a in registry["adapters"]] == [a["adapter_id"] for a in cli["adapters"]]
    (run,) = _ok(http.get("/evals"))["evals"]
    assert run["eval_id"] == chain["eval_id"] and run["verdict"] == "fail" and "contaminated" in run["reason"]
    assert _ok(http.get("/evals", params={"adapter_id": "adp_none"}))["evals"] == []
    detail = _ok(http.get(f"/evals/{chain['eval_id']}"))
    assert detail["eval"] == run and detail["checks"]["contamination_status"] == "contaminated"
    assert detail["comparisons"] and all(c["eval_id"] == chain["eval_id"] for c in detail["comparisons"])
    assert sum(c["is_strongest"] for c in detail["comparisons"]) == 1
    one = _ok(http.get(f"/adapters/{chain['adapter_id']}"))
    assert one["adapter"] == adapter and [e["eval_id"] for e in one["evals"]] == [chain["eval_id"]]
    assert [p["event_id"] for p in one["promotions"]] == [chain["event_id"]]


def test_lineage_is_the_cli_json(http: httpx.Client, chain: dict[str, Any]) -> None:
    for identifier in (chain["eval_id"], chain["adapter_id"], chain["snapshot_id"], chain["batch_id"]):
        tree = _ok(http.get(f"/lineage/{identifier}"))
        cli = run_cli(chain["ws"], "lineage", identifier)
        assert tree == json.loads(json.dumps(cli, default=str)), identifier
    tree = _ok(http.get(f"/lineage/{chain['adapter_id']}"))
    snapshot = tree["parents"][0]
    assert snapshot["kind"] == "snapshot" and snapshot["id"] == chain["snapshot_id"]


@pytest.mark.parametrize(
    "path",
    ["/snapshots/snap_0000", "/scans/scan_0000", "/scans/scan_0000/report", "/adapters/adp_0000",
     "/evals/eval_0000", "/lineage/adp_0000", "/lineage/nothing"],
)  # fmt: skip
def test_an_unknown_id_is_404_in_one_line(http: httpx.Client, path: str) -> None:
    answer = http.get(path)
    assert answer.status_code == 404, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail


def test_an_id_with_odd_characters_is_refused_before_any_query(http: httpx.Client) -> None:
    answer = http.get("/lineage/adp_1'%20OR%201=1")
    assert answer.status_code == 422
