"""The quality report on a really ingested and scanned catalog, rendered in headless Chromium (WebDriver)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from curation.checks import CHECKS, CheckSpec, run_scan
from curation.checks.spec import CheckContext, CheckOutput
from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from curation.report.collect import ReportError, collect_report
from curation.report.embedding_map import pca_2d, sample_ids
from curation.report.page import TEXT_LIMIT, _map_section, _text, write_report
from refinery.cli import app
from schemas.catalog import Catalog
from tests.support.browser import CHROMEDRIVER, CHROMIUM, chromium_args, require_chromium

XSS = "<script>document.body.setAttribute('data-pwned','1')</script> what is <b>this</b>?"
XSS_IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\"> hello"
LONG = "a long answer " + "with many words " * 60 + "THE-END-MARKER"


def _chat(user: str, assistant: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


def _boom(records: Any, ctx: CheckContext) -> CheckOutput:
    raise RuntimeError("planted failure")


def _bag_of_words(catalog: Catalog) -> Any:
    """A real (if crude) embedding: hashed word counts of the prompt, 64 dimensions, unit length."""

    def embed(ids: list[str]) -> dict[str, np.ndarray]:
        rows = catalog.query("SELECT record_id, prompt FROM records WHERE record_id IN (SELECT unnest(?))", [ids])
        out = {}
        for row in rows:
            vector = np.zeros(64)
            for word in row["prompt"].lower().split():
                vector[zlib.crc32(word.encode()) % 64] += 1.0
            out[row["record_id"]] = vector / max(float(np.linalg.norm(vector)), 1e-9)
        return out

    return embed


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A workspace with planted defects, ingested and scanned for real by the registered checks (the embedding
    check ``inconsistency`` with the packaged all-MiniLM-L6-v2, the n-gram ``contamination`` check), plus a
    check that fails."""
    root = tmp_path_factory.mktemp("report")
    ws = root / "ws"
    catalog = Catalog(ws / "catalog.duckdb")
    catalog.migrate()
    # filler prompts that look alike carry one answer each, so the planted top-up pair is the only conflict
    lines = [_chat(f"question number {i} about topic {i % 7} and billing", "billing") for i in range(40)]
    lines += [_chat(f"how do I reset my password on device {i}", "reset") for i in range(20)]
    lines += [
        _chat("Where is my card?", "card_lost"),
        _chat("where is my  CARD", "card_lost"),  # exact duplicate after normalisation
        _chat("Has my top up gone through?", "pending_top_up"),
        _chat("Has my top up gone through?", "top_up_failed"),  # same prompt, other answer
        _chat("held out question about refunds today", "label_0"),  # also an eval item
        _chat(XSS, XSS_IMG),
        _chat(XSS.replace("what", "WHAT"), XSS_IMG),  # an exact duplicate: both sides shown in the examples
        _chat("tell me everything", LONG),
        _chat("Tell me everything", LONG),  # a duplicate with a long text: cut, the rest in <details>
        "{not json",  # quarantined
    ]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "eval.jsonl").write_text(
        _chat("held out question about refunds today", "label_0") + "\n" + _chat("unseen eval item", "x") + "\n",
        encoding="utf-8",
    )
    ingest(catalog, [root / "train.jsonl"], IngestOptions(name="train"))
    ingest(catalog, [root / "eval.jsonl"], IngestOptions(eval_set="heldout"))
    checks = ["exact", "exact_prompt", "near_dup", "near_dup_eval", "contamination", "inconsistency", "boom"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(CHECKS, "boom", CheckSpec("boom", _boom, higher_score="never runs to the end"))
        result = run_scan(catalog, checks)
    ids = {r["prompt"]: r["record_id"] for r in catalog.query("SELECT record_id, prompt FROM records")}
    top_a = catalog.query("SELECT record_id FROM records WHERE response = 'pending_top_up'")[0]["record_id"]
    top_b = catalog.query("SELECT record_id FROM records WHERE response = 'top_up_failed'")[0]["record_id"]
    return {
        "root": root,
        "ws": ws,
        "catalog": catalog,
        "scan_id": result.scan_id,
        "ids": ids,
        "top": (top_a, top_b),
        "leak": ids["held out question about refunds today"],  # a training record that is also an eval item
        "records": result.records,
    }


# ---------------------------------------------------------------------------------------------- pure parts


def test_pca_2d_finds_the_main_axes_with_a_fixed_sign() -> None:
    rng = np.random.default_rng(1)
    t = rng.normal(size=300)
    direction = rng.normal(size=20)
    direction /= np.linalg.norm(direction)
    cloud = np.outer(t, direction) * 10 + rng.normal(scale=0.1, size=(300, 20))
    coords, explained = pca_2d(cloud)
    assert coords.shape == (300, 2) and explained[0] > 0.95 and explained[0] + explained[1] <= 1.0 + 1e-9
    assert abs(np.corrcoef(coords[:, 0], t)[0, 1]) > 0.99
    again, _ = pca_2d(-cloud)  # mirrored data: same picture up to the sign convention, never flipped at random
    assert np.allclose(np.abs(again), np.abs(coords)) and np.allclose(pca_2d(cloud)[0], coords)
    assert pca_2d(np.ones((1, 5)))[0].tolist() == [[0.0, 0.0]]
    assert pca_2d(np.arange(4.0).reshape(4, 1))[0][:, 1].tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="2-D"):
        pca_2d(np.zeros(3))


def test_sample_ids_is_bounded_deterministic_and_keeps_order() -> None:
    ids = [f"rec_{i:05d}" for i in range(20_000)]
    first = sample_ids(ids, 5000)
    assert len(first) == len(set(first)) == 5000 and first == sorted(first) and first == sample_ids(ids, 5000)
    assert sample_ids(ids[:10], 5000) == ids[:10]


def test_record_text_is_escaped_and_long_text_is_cut_with_the_full_text_kept() -> None:
    short = _text(XSS)
    assert "<script>" not in short and "&lt;script&gt;" in short
    long_html = _text(LONG)
    assert "<details>" in long_html and long_html.count("THE-END-MARKER") == 1
    assert long_html.index("THE-END-MARKER") > long_html.index("<details>") and len(LONG) > TEXT_LIMIT


def test_no_complete_scan_and_unknown_scan_are_clear_errors(catalog: Catalog, scanned: dict[str, Any]) -> None:
    with pytest.raises(ReportError, match="no complete scan"):
        collect_report(catalog)
    with pytest.raises(ReportError, match="unknown scan 'scan_nope'"):
        collect_report(scanned["catalog"], "scan_nope")


# ---------------------------------------------------------------------------------------------- collection


def test_report_data_counts_thresholds_failures_and_examples(scanned: dict[str, Any]) -> None:
    catalog: Catalog = scanned["catalog"]
    data = collect_report(catalog, embeddings=_bag_of_words(catalog))
    checks = {c.name: c for c in data.checks}
    assert data.scan["scan_id"] == scanned["scan_id"]
    assert set(checks) == {
        "boom",
        "contamination",
        "exact",
        "exact_prompt",
        "inconsistency",
        "near_dup",
        "near_dup_eval",
    }
    assert data.failed == {"boom": "RuntimeError: planted failure"}
    assert data.dataset["quarantined_rows"] == 1 and data.quarantine[0]["reason"] == "malformed JSON"
    assert data.dataset["eval_items"] == 2 and data.dataset["training_records"] == scanned["records"]
    exact = checks["exact"]
    assert (exact.flagged, exact.records) == (3, scanned["records"]) and exact.flagged_pct == round(
        300 / scanned["records"], 2
    )
    assert sum(exact.hist_flagged) == 3 and sum(exact.hist_unflagged) == scanned["records"] - 3
    assert (checks["near_dup"].threshold, checks["near_dup"].threshold_source) == (0.7, "scan summary")
    # both sides of the planted conflict and nothing else, at score 1.0 (an exact prompt match)
    inconsistency = checks["inconsistency"]
    assert (inconsistency.flagged, inconsistency.threshold_source) == (2, "lowest flagged score")
    assert inconsistency.threshold == 1.0 and inconsistency.pairs == 1
    contamination = checks["contamination"]
    assert (contamination.flagged, contamination.threshold, contamination.threshold_source) == (1, 0.8, "scan summary")
    assert data.cluster_sizes["exact"] == {"2": 3} and data.cluster_sizes["exact_prompt"] == {"2": 4}

    top_a, top_b = scanned["top"]
    (pair,) = data.examples["inconsistency"]
    assert pair.right is not None and {pair.left.record_id, pair.right.record_id} == {top_a, top_b}
    assert pair.metrics["prompt similarity"] == 1.0 and pair.metrics["response similarity"] < 0.95
    assert {pair.left.response, pair.right.response} == {"pending_top_up", "top_up_failed"}
    (hit,) = data.examples["contamination"]  # the training record shown beside the eval item it contains
    assert hit.left.record_id == scanned["leak"] and hit.metrics == {"overlap": 1.0, "method": "full_prompt"}
    assert hit.right is not None and hit.right.record_id == scanned["leak"] and "heldout" in hit.right.title
    (leak,) = data.examples["near_dup_eval"]  # findings naming an eval item show it beside the record
    assert leak.right is not None and leak.right.prompt == leak.left.prompt
    dups = data.examples["exact"]
    assert len(dups) == 3 and all(d.right and d.right.title == "kept member" for d in dups)
    assert {d.left.response for d in dups} == {"card_lost", XSS_IMG, LONG} and dups[0].metrics["cluster size"] == 2
    assert "boom" not in data.examples

    emap = data.embedding_map
    assert emap is not None and len(emap.x) == scanned["records"] == emap.total
    assert emap.categories.count("not flagged") < len(emap.categories)
    assert "several checks" in emap.categories  # the exact duplicate is also flagged by exact_prompt


def test_embedding_map_is_capped_and_missing_embeddings_are_explained(scanned: dict[str, Any]) -> None:
    catalog: Catalog = scanned["catalog"]
    capped = collect_report(catalog, examples=0, max_points=20, embeddings=_bag_of_words(catalog))
    assert capped.embedding_map is not None and len(capped.embedding_map.x) == 20 and capped.examples == {}

    def broken(ids: list[str]) -> np.ndarray:
        return np.zeros((len(ids) - 1, 8))  # one vector short

    data = collect_report(catalog, embeddings=broken)
    assert data.embedding_map is None and "expected" in data.embedding_note and "vectors" in data.embedding_note
    section = _map_section(data)  # the section says why instead of failing the report
    assert 'class="note"' in section and "<img" not in section
    assert data.embedding_note.split(":")[0] in section.replace("&#x27;", "'")
    # by default the map uses the prompt embeddings the scan stored: the inconsistency check embedded them all
    default = collect_report(catalog)
    assert default.embedding_map is not None and default.embedding_map.total == scanned["records"]
    assert default.embedding_note == f"{scanned['records']} of {scanned['records']} scanned records"


# ---------------------------------------------------------------------------------------------- in a browser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WebDriver:
    """The few W3C WebDriver calls the test needs, over plain HTTP to /usr/bin/chromedriver."""

    def __init__(self, url: str, session: str) -> None:
        self.url, self.session = url, session

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import requests

        response = requests.request(method, f"{self.url}/session/{self.session}{path}", json=body, timeout=30)
        payload = response.json()
        assert response.ok, payload
        return payload["value"]

    def script(self, source: str) -> Any:
        return self.call("POST", "/execute/sync", {"script": source, "args": []})


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[WebDriver]:
    import requests

    require_chromium()
    port = _free_port()
    driver = subprocess.Popen(
        [str(CHROMEDRIVER), f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{url}/status", timeout=2).json()["value"]["ready"]:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "chromedriver did not start"
            time.sleep(0.1)
        args = chromium_args(profile, "1280,2000")
        caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": str(CHROMIUM), "args": args}}
        created = requests.post(f"{url}/session", json={"capabilities": {"alwaysMatch": caps}}, timeout=60).json()
        web = WebDriver(url, created["value"]["sessionId"])
        try:
            yield web
        finally:
            with contextlib.suppress(Exception):
                requests.delete(f"{url}/session/{web.session}", timeout=10)
    finally:
        driver.terminate()
        driver.wait(timeout=10)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(scanned: dict[str, Any], tmp_path: Path) -> None:
    catalog: Catalog = scanned["catalog"]
    path = tmp_path / "out" / "report.html"
    result = write_report(catalog, path, embeddings=_bag_of_words(catalog))
    page = path.read_text(encoding="utf-8")
    assert result.bytes == path.stat().st_size and result.scan_id == scanned["scan_id"]
    assert "<script>document.body" not in page  # the planted record is escaped...
    assert "http://" not in page and "https://" not in page and "<link" not in page and ' src="data:' in page
    with chromium(tmp_path / "profile") as web:
        web.call("POST", "/url", {"url": path.as_uri()})
        state = web.script(
            """
            const imgs = Array.from(document.images);
            return {
              title: document.title,
              images: imgs.length,
              loaded: imgs.filter(i => i.complete && i.naturalWidth > 100 && i.naturalHeight > 100).length,
              pwned: document.body.getAttribute('data-pwned'),
              text: document.body.innerText,
              checkRows: document.querySelectorAll('#table-checks tbody tr').length,
              pairs: document.querySelectorAll('#examples .pair').length,
              details: document.querySelectorAll('#examples details').length,
              sections: Array.from(document.querySelectorAll('section h2')).map(h => h.textContent),
            };
            """
        )
        # 6 checks with findings -> 6 histograms, the cluster sizes, the embedding map; every one decoded
        assert state["images"] == state["loaded"] == 8
        assert state["pwned"] is None and XSS in state["text"] and "<img src=x onerror=" in state["text"]
        assert scanned["scan_id"] in state["title"] and state["checkRows"] == 7
        assert "planted failure" in state["text"] and "malformed JSON" in state["text"]
        assert state["pairs"] >= 4 and state["details"] >= 1  # dup, conflict, contamination, leak; the long text
        assert state["sections"] == [
            "Summary",
            "Per-check counts",
            "What the snapshots did with it",
            "Score histograms",
            "Duplicate clusters",
            "Embedding map",
            "Top examples per check",
        ]
        # sort the per-check table by "flagged" (descending on the second click), then filter it
        header = web.call("POST", "/element", {"using": "css selector", "value": "#table-checks th:nth-child(3)"})
        element = next(iter(header.values()))
        web.call("POST", f"/element/{element}/click", {})
        web.call("POST", f"/element/{element}/click", {})
        flagged = web.script(
            "return Array.from(document.querySelectorAll('#table-checks tbody tr td:nth-child(3)'))"
            ".map(td => Number(td.getAttribute('data-sort')))"
        )
        assert flagged == sorted(flagged, reverse=True) and flagged[0] > flagged[-1]
        visible = web.script(
            """
            const box = document.querySelector('input[data-filter-for="table-checks"]');
            box.value = 'near_dup'; box.dispatchEvent(new Event('input'));
            return Array.from(document.querySelectorAll('#table-checks tbody tr'))
              .filter(r => r.style.display !== 'none').map(r => r.cells[0].textContent);
            """
        )
        assert sorted(visible) == ["near_dup", "near_dup_eval"]
        shot = base64.b64decode(web.call("GET", "/screenshot"))
    from matplotlib.image import imread

    pixels = imread(io.BytesIO(shot), format="png")
    assert pixels.shape[0] > 500 and float(pixels[..., :3].std()) > 0.05  # rendered, not a blank page


@pytest.mark.slow
def test_cli_report_json_default_path_and_errors(scanned: dict[str, Any], tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "r.html"
    base = ["--workspace", str(scanned["ws"]), "--quiet", "report"]
    result = runner.invoke(app, [*base, "--html", str(target), "--json", "--examples", "2"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"path", "scan_id", "checks", "bytes"} and payload["path"] == str(target.resolve())
    assert payload["bytes"] == target.stat().st_size and "exact" in payload["checks"]
    result = runner.invoke(app, base)  # default: the workspace's reports folder, named by the scan
    expected = scanned["ws"] / "reports" / f"{scanned['scan_id']}.html"
    assert result.exit_code == 0 and expected.exists() and "report written to" in result.stdout
    result = runner.invoke(app, [*base, "--scan", "scan_missing"])
    assert result.exit_code == 2 and "unknown scan" in result.stderr
