"""An annotator reviews a flagged pair in Argilla's own web UI (headless Chromium, Selenium) on a REAL local
server, and `refinery review pull` turns the click into a decision in the catalog.

Selectors come from argilla-server 2.8.0's bundled UI (a Nuxt app): the sign-in form's ``Username`` and
``Password`` inputs, the home page's ``.dataset-card__title``, a label question's ``label[for=<question>_<label>]``
(``label-active`` when chosen), ``button.button--submit``, and the annotator's own counter
``.my-progress__status .status-counter__counter``. Every wait is explicit (WebDriverWait); on a failure the page's
screenshot and HTML are saved next to the test's tmp_path and named in the error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from curation.review.connection import resolve_connection
from curation.review.push import push
from refinery.cli import app
from tests.curation.review_support import NEEDS_SERVER, ReviewEnv, annotator_key
from tests.support.browser import saved_on_failure, selenium_chromium

pytestmark = NEEDS_SERVER

WAIT = 90.0  # seconds for any one thing to appear (a cold Nuxt app on 2 busy cores)
ANNOTATOR, PASSWORD = "uma", "uma-pass-1234"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium driven through /usr/bin/chromedriver (Selenium), with a fresh profile."""
    with selenium_chromium(tmp_path / "profile") as driver:
        yield driver


def test_annotator_rejects_a_flagged_pair_in_the_web_ui(review_env: ReviewEnv, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    catalog, url = review_env.catalog, review_env.url
    connection = resolve_connection(review_env.ws)
    pushed = push(catalog, connection, round_name="ui", checks=["exact"])
    assert pushed.queued == 1 and pushed.pushed == 1
    dup = catalog.scalar("SELECT record_id FROM records WHERE prompt = 'where is my  CARD'")
    kept = catalog.scalar("SELECT record_id FROM records WHERE prompt = 'Where is my card?'")
    annotator_key(url, connection.client(), ANNOTATOR, "refinery", PASSWORD)
    wait = WebDriverWait(browser, WAIT)

    def chosen(label: str) -> bool:
        element = browser.find_element(By.CSS_SELECTOR, f"label[for=decision_{label}]")
        return "label-active" in (element.get_attribute("class") or "")

    with saved_on_failure(browser, tmp_path):
        # sign in with the annotator's user name and password
        browser.get(f"{url}/sign-in")
        wait.until(ec.presence_of_element_located((By.NAME, "Username"))).send_keys(ANNOTATOR)
        browser.find_element(By.NAME, "Password").send_keys(PASSWORD)
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "button[type=submit]"))).click()
        # the home page lists the round's dataset: open it
        card = (By.XPATH, "//*[contains(@class, 'dataset-card__title') and normalize-space() = 'refinery-ui']")
        wait.until(ec.element_to_be_clickable(card)).click()
        wait.until(ec.url_contains("/annotation-mode"))
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "label[for=decision_reject]")))
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Why it was flagged"))

        # the flagged record, why it was flagged (check, score, reason) and the other record of the pair
        page = browser.find_element(By.TAG_NAME, "body").text
        assert "where is my  CARD" in page and "card_lost" in page
        assert f"exact (score 1.000): exact duplicate (normalised text) of {kept}" in page
        assert "Other record: prompt" in page and "Where is my card?" in page
        assert "GUIDELINES" in page.upper()

        # the suggestion (reject, by the exact check) is preselected: choose approve, then reject, so the
        # decision sent is the one clicked; each click must show in the form before the next
        assert chosen("reject")
        browser.find_element(By.CSS_SELECTOR, "label[for=decision_approve]").click()
        wait.until(lambda _: chosen("approve") and not chosen("reject"))
        browser.find_element(By.CSS_SELECTOR, "label[for=decision_reject]").click()
        wait.until(lambda _: chosen("reject") and not chosen("approve"))
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "button.button--submit"))).click()
        wait.until(
            ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".my-progress__status .status-counter__counter"), "1")
        )
        wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".wrapper--empty")))  # queue done

    run = CliRunner().invoke(
        app, ["--workspace", str(review_env.ws), "--quiet", "review", "pull", "--round", "ui", "--json"]
    )
    assert run.exit_code == 0, run.output
    [pulled] = json.loads(run.stdout)["rounds"]
    assert pulled["fetched"] == 1 and pulled["new_decisions"] == 1
    [response] = catalog.query("SELECT * FROM review_responses WHERE round_name = 'ui'")
    assert response["record_id"] == dup and response["annotator"] == ANNOTATOR
    assert response["status"] == "submitted" and response["decision"] == "reject"
    [decision] = catalog.query("SELECT * FROM record_decisions WHERE round_name = 'ui'")
    assert decision["record_id"] == dup and decision["decision"] == "reject"
    assert decision["actor"] == ANNOTATOR and decision["source"] == "argilla"
    assert json.loads(decision["external_ids_json"])["response_ids"] == [response["response_id"]]
