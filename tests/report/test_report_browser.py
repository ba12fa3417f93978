"""The report in headless Chromium: it renders, every section is there, every image decodes,
and the browser logs no error.

Chromium and its driver are Debian packages (``chromium``, ``chromium-driver``) that
``make test`` installs (target ``browser``); selenium is pinned in the ``dev`` extra. The
driver is named explicitly so that selenium never tries to download one. Without the
packages the test is skipped locally and fails under CI, where the set-up must have run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SECTION_TITLES

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        message = "chromium / chromium-driver not installed; `make browser` installs them"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_report_renders_in_chromium(browser: Any, tiny_report: tuple[Path, Path]) -> None:
    html_path, _ = tiny_report
    browser.get(html_path.resolve().as_uri())
    assert browser.title == "utilgen report"
    headings = browser.execute_script(
        "return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)"
    )
    assert headings == list(SECTION_TITLES)
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])"
    )
    assert len(images) > 40  # figures plus the two generating runs' sample grids
    broken = [alt for complete, width, alt in images if not complete or width <= 0]
    assert broken == []
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_the_checks_catch_a_broken_image_and_a_console_error(browser: Any, tmp_path: Path) -> None:
    """The checks above can fail: an undecodable image has no natural width, and an error
    on the console reaches the log."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"><title>t</title></head>'
        '<body><img alt="bad" src="data:image/png;base64,AAAA">'
        '<script>console.error("boom")</script></body></html>'
    )
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(page.as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])"
    )
    assert images == [[True, 0, "bad"]]
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert any("boom" in message for message in errors), errors
