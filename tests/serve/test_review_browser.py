"""The review page in a real browser: headless Chromium drives a real ``greyanom serve`` process.

Skips with a reason where Chromium, chromedriver or selenium is missing; CI installs
Debian's ``chromium`` and ``chromium-driver`` (see ``.ci/run``).
"""

import shutil
import sqlite3
import tempfile
import time

import pytest
from serve_support import models, normal_images, png_bytes, to_uint8  # noqa: F401
from test_server import _start, _stop

httpx = pytest.importorskip("httpx")

CHROMEDRIVER = "/usr/bin/chromedriver"
REVIEW_TOKEN = "tok-browser-review-0123456789abcdef"
INSPECT_TOKEN = "tok-browser-inspect-0123456789abcd"


def _browser_or_skip():
    pytest.importorskip("selenium", reason="selenium is not installed (the 'test' extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium browser installed (apt-get install chromium chromium-driver)")
    driver = CHROMEDRIVER if shutil.which(CHROMEDRIVER) else shutil.which("chromedriver")
    if driver is None:
        pytest.skip("no chromedriver installed (apt-get install chromium-driver)")
    return chromium, driver


@pytest.fixture
def browser():
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="greyanom-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(condition, timeout=10.0, what="the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_review_page_in_chromium(models, tmp_path, browser):
    from selenium.webdriver.common.by import By

    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"{REVIEW_TOKEN} review alice\n{INSPECT_TOKEN} inspect camera\n")
    tokens.chmod(0o600)
    db = tmp_path / "records.db"
    # every inspection in the queue (audit sample 1), so the test does not depend on the decision
    proc, url = _start(*models["padim"], db, "--token-file", str(tokens), "--audit-sample", "1")
    try:
        image = normal_images(1, 42)[0]
        image[10:20, 10:20] = 1.0
        r = httpx.post(f"{url}/api/v1/inspect", params={"wafer_id": "BROWSER-1", "inspection_point": 7},
                       content=png_bytes(to_uint8(image)), headers={"Authorization": f"Bearer {INSPECT_TOKEN}"},
                       timeout=30)
        assert r.status_code == 200, r.text
        inspection_id = r.json()["id"]

        browser.get(f"{url}/review")  # not signed in: the login form
        browser.find_element(By.ID, "token").send_keys(REVIEW_TOKEN)
        browser.find_element(By.ID, "login").click()
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "tr.row"), what="the queue")
        assert "alice (review)" in browser.page_source
        cookie = browser.get_cookie("greyanom_session")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert browser.execute_script("return document.cookie") == ""  # invisible to scripts
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.row")
        assert rows[0].get_attribute("data-id") == str(inspection_id)
        # the first row is selected: its image and heatmap load
        for element_id, path in (("heatmap", f"/api/v1/heatmaps/{inspection_id}.png"),
                                 ("image", f"/api/v1/inspections/{inspection_id}/image.png")):
            _wait(lambda: browser.execute_script(
                f"const i = document.getElementById('{element_id}'); return i.complete && i.naturalWidth > 0;"),
                what=f"the {element_id}")
            assert browser.find_element(By.ID, element_id).get_attribute("src").endswith(path)
        browser.find_element(By.TAG_NAME, "body").send_keys("d")  # the verdict key
        status = _wait(lambda: "saved:" in (text := browser.find_element(By.ID, "status").text) and text,
                       what="the saved review")
        assert f"inspection {inspection_id} defect by alice" in status
    finally:
        _stop(proc)
    with sqlite3.connect(db) as conn:
        reviews = conn.execute("SELECT inspection_id, inspector, verdict FROM reviews").fetchall()
        audit = conn.execute("SELECT actor, role, action, target FROM audit ORDER BY id").fetchall()
    assert reviews == [(inspection_id, "alice", "defect")]
    assert audit == [("alice", "review", "login", "review-page"),
                     ("alice", "review", "review", f"inspection:{inspection_id}")]
