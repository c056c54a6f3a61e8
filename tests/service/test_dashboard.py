"""The dashboard (/ui) of the real `refinery serve` in headless Chromium (Selenium and Debian's chromedriver, as
tests/curation/test_review_ui.py): no page without signing in, a wrong token is refused, a viewer token shows the
jobs, scans, snapshots, the adapter with its verdict and registry state and the review rounds; the jobs table
refreshes itself; lineage and report links lead where they say.

The workspace is made with the real CLI: ingest, scan, snapshot, a 3-step adapter of the tiny model, an eval that
fails the gate (its eval set repeats training prompts) and a forced promotion. Two review rounds are catalog rows
(no Argilla server here): one with an http address, one whose name and address are hostile.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from refinery.workspace import open_workspace
from schemas.catalog import utcnow
from tests.service.chain_support import build_chain
from tests.service.jobs_support import client, submit, wait_job
from tests.support.browser import saved_on_failure, selenium_chromium
from tests.support.service import Service, running_service

pytestmark = pytest.mark.slow

WAIT = 60.0
HOSTILE = "<img src=x onerror=document.body.setAttribute('data-pwned',1)>"


@pytest.fixture(scope="module")
def workspace_ids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    chain = build_chain(tmp_path_factory.mktemp("dashboard"), reason="dashboard test")
    catalog = open_workspace(chain["ws"]).catalog
    with catalog.write() as con:
        for name, url, dataset_id in (
            ("round-a", "http://argilla.example:6900", "3f1c2a"),
            (HOSTILE, "javascript:alert(1)", None),
        ):
            con.execute(
                "INSERT INTO review_rounds VALUES (?, ?, 'refinery', ?, ?, ?, NULL, 'exact', 1, 'majority', '{}', ?)",
                [name, f"refinery-{name}", dataset_id, url, chain["scan_id"], utcnow()],
            )
    return {key: chain[key] for key in ("ws", "scan_id", "snapshot_id", "adapter_id", "eval_id")}


@pytest.fixture(scope="module")
def served(workspace_ids: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The server, with two finished jobs: a snapshot job that succeeded and one that failed."""
    with running_service(workspace_ids["ws"]) as service:
        with client(service, "engineer") as http:
            jobs = {"ok": submit(http, "snapshot"), "bad": submit(http, "snapshot", parent="snap_doesnotexist")}
            for job_id in jobs.values():
                wait_job(http, job_id)
        yield {**workspace_ids, "service": service, "jobs": jobs}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium driven through /usr/bin/chromedriver (Selenium), with a fresh profile."""
    with selenium_chromium(tmp_path / "profile") as driver:
        yield driver


def _sign_in(driver: Any, wait: Any, token: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    box = wait.until(ec.presence_of_element_located((By.ID, "token")))
    box.clear()
    box.send_keys(token)
    driver.find_element(By.ID, "sign-in").click()


def test_dashboard_in_chromium(served: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    service: Service = served["service"]
    base, adapter_id, scan_id = service.base_url, served["adapter_id"], served["scan_id"]
    wait = WebDriverWait(browser, WAIT)

    def text(css: str) -> str:
        return str(browser.find_element(By.CSS_SELECTOR, css).text)

    with saved_on_failure(browser, tmp_path):
        # no page without signing in: every page leads to the form
        for page in ("/ui", f"/ui/lineage/{adapter_id}", f"/ui/jobs/{served['jobs']['ok']}"):
            browser.get(base + page)
            wait.until(ec.url_to_be(f"{base}/ui/login"))
        # a wrong token: an error, still on the form, no cookie
        _sign_in(browser, wait, "rfy_wrong-token")
        assert "not valid" in wait.until(ec.visibility_of_element_located((By.ID, "login-error"))).text
        assert browser.current_url == f"{base}/ui/login" and browser.get_cookies() == []

        # a viewer token: the overview; the cookie is HttpOnly and SameSite=Strict, scripts cannot read it
        _sign_in(browser, wait, service.token("viewer", "vera"))
        wait.until(ec.url_to_be(f"{base}/ui"))
        [cookie] = browser.get_cookies()
        assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == ("refinery_token", True, "Strict")
        assert "rfy_" not in browser.execute_script("return document.cookie")
        assert "vera (viewer)" in text("header")

        jobs = text("#jobs-table")
        ok, bad = served["jobs"]["ok"], served["jobs"]["bad"]
        assert ok in jobs and bad in jobs and "succeeded" in jobs and "failed" in jobs
        assert "snap_doesnotexist" in jobs  # the failed job's error, in one line
        assert scan_id in text("#scans-table")
        report = browser.find_element(By.CSS_SELECTOR, "#scans-table a.report").get_attribute("href")
        assert report == f"{base}/scans/{scan_id}/report"
        assert served["snapshot_id"] in text("#snapshots-table")
        adapters = text("#adapters-table")
        assert adapter_id in adapters and served["eval_id"] in adapters
        assert "promoted current" in adapters and "fail" in adapters
        rounds = text("#rounds-table")
        assert "round-a" in rounds and HOSTILE in rounds  # shown as text, never as markup
        assert browser.find_elements(By.CSS_SELECTOR, "#rounds-table img") == []
        links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#rounds-table a.argilla")]
        assert links == ["http://argilla.example:6900/dataset/3f1c2a/annotation-mode"]  # no javascript: link
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-pwned") is None

        # the jobs table refreshes itself (its script runs under the page's CSP): a new job shows without a reload
        browser.execute_script("window.notReloaded = true;")
        with client(service, "engineer") as http:
            fresh = submit(http, "snapshot")
            wait.until(ec.text_to_be_present_in_element((By.ID, "jobs-table"), fresh))
            assert browser.execute_script("return window.notReloaded === true;")
            wait_job(http, fresh)

        # a job's page: state, error and log
        browser.find_element(By.LINK_TEXT, bad).click()
        wait.until(ec.url_to_be(f"{base}/ui/jobs/{bad}"))
        assert "failed" in text("#job-facts") and "snap_doesnotexist" in text("#job-facts")
        assert "snap_doesnotexist" in text("#job-log")

        # the adapter's lineage: snapshot, scan, batch and source file under it, its verdict among its facts
        browser.get(f"{base}/ui")
        browser.find_element(By.CSS_SELECTOR, f'#adapters-table a[href="/ui/lineage/{adapter_id}"]').click()
        wait.until(ec.url_to_be(f"{base}/ui/lineage/{adapter_id}"))
        kinds = [li.get_attribute("data-kind") for li in browser.find_elements(By.CSS_SELECTOR, "#lineage li")]
        assert kinds[0] == "adapter" and {"snapshot", "scan", "batch", "file"} <= set(kinds)
        assert served["eval_id"] in text("#lineage") and "dashboard test" in text("#lineage")
        # follow it down: the snapshot's own page, then the scan's report
        browser.find_element(By.CSS_SELECTOR, f'li[data-kind="snapshot"] > a[href$="{served["snapshot_id"]}"]').click()
        wait.until(ec.url_to_be(f"{base}/ui/lineage/{served['snapshot_id']}"))
        assert browser.find_elements(By.CSS_SELECTOR, "#lineage > li")[0].get_attribute("data-kind") == "snapshot"
        browser.find_element(By.CSS_SELECTOR, 'li[data-kind="scan"] > a[href$="/report"]').click()
        wait.until(ec.title_contains("Refinery quality report"))
        assert scan_id in browser.title

        # an unknown id: the lineage page says so
        browser.get(f"{base}/ui/lineage/snap_doesnotexist")
        assert "snap_doesnotexist" in wait.until(ec.presence_of_element_located((By.ID, "lineage-error"))).text

        # log out: the cookie is gone and the pages lead to the form again
        browser.get(f"{base}/ui")
        browser.find_element(By.LINK_TEXT, "log out").click()
        wait.until(ec.url_to_be(f"{base}/ui/login"))
        assert browser.get_cookies() == []
        browser.get(f"{base}/ui")
        wait.until(ec.url_to_be(f"{base}/ui/login"))


def test_pages_headers_and_fragments_over_http(served: dict[str, Any]) -> None:
    service: Service = served["service"]
    with httpx.Client(base_url=service.base_url) as anonymous:
        for page in ("/ui", "/ui/lineage/x", "/ui/jobs/x"):
            answer = anonymous.get(page)
            assert (answer.status_code, answer.headers["location"]) == (303, "/ui/login"), page
        assert anonymous.get("/ui/fragments/jobs").status_code == 401
        # a bearer token alone opens no page: the dashboard reads its own cookie only
        assert anonymous.get("/ui", headers=service.headers("admin")).status_code == 303
        login = anonymous.get("/ui/login")
        policy = login.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'sha256-" in policy and "frame-ancestors 'none'" in policy
        assert login.headers["x-frame-options"] == "DENY" and login.headers["cache-control"] == "no-store"
        refused = anonymous.post("/ui/login", data={"token": "rfy_nope"})
        assert refused.status_code == 401 and "refinery_token" not in refused.headers.get("set-cookie", "")
    with httpx.Client(base_url=service.base_url, cookies={"refinery_token": service.token("viewer")}) as viewer:
        fragment = viewer.get("/ui/fragments/jobs")
        assert fragment.status_code == 200 and served["jobs"]["ok"] in fragment.text
        assert fragment.text.startswith('<div id="jobs"')
        job = viewer.get(f"/ui/fragments/jobs/{served['jobs']['ok']}")
        assert job.status_code == 200 and 'data-active="0"' in job.text  # a finished job stops refreshing
        assert viewer.get("/ui/jobs/job_doesnotexist").status_code == 404
