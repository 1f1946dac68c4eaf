"""The dashboard in real headless Chromium (Debian's chromium + chromedriver, driven by Selenium).

The ``board`` daemon (tests/conftest.py) runs on a pretend Orin NX near its thermal limit (a fake
tegrastats prints the throttled fixture every 0.5 s) with an API key. The browser logs in with the key
as HTTP Basic; the page must load with no console errors and no request leaving the daemon, the charts
must move with the live stream, and screenshots (desktop and phone) go to tests/artifacts/.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import BOARD_KEY, REPO, Daemon

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the [dev] extra")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

KEY = BOARD_KEY
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), "scripts/setup --dev installs chromium"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(
        service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")), options=options
    )
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def chart_state(driver: Any) -> dict[str, Any]:
    return dict(
        js(
            driver,
            """
            const c = document.getElementById('chart-temp');
            const p = document.getElementById('chart-power');
            return {
              samples: window.zoeDashboard.samples,
              seq: Number(document.body.dataset.seq || 0),
              tempPoints: Number(c.dataset.points || 0),
              tempLast: JSON.parse(c.dataset.last || '{}'),
              powerLast: JSON.parse(p.dataset.last || '{}'),
              tempPixels: c.toDataURL(),
              powerPixels: p.toDataURL(),
              tempNow: document.getElementById('temp-now').textContent,
              powerNow: document.getElementById('power-now').textContent,
            };
            """,
        )
    )


def screenshot(driver: Any, name: str, width: int) -> Path:
    driver.set_window_size(width, 1000)
    height = js(driver, "return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 140, 6000))
    time.sleep(0.6)  # a resize redraws the charts; let the next sample land too
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path))
    return path


def test_dashboard_live_in_chromium(board: Daemon, browser: Any) -> None:
    port = urlsplit(board.url).port
    # a page load cannot send a bearer token: the key goes as HTTP Basic, the browser reuses it for the stream
    browser.get(f"http://owner:{KEY}@127.0.0.1:{port}/dashboard")
    WebDriverWait(browser, 20).until(lambda d: js(d, "return window.zoeDashboard && window.zoeDashboard.samples >= 2"))
    first = chart_state(browser)
    # the history came first (GET /api/telemetry), then the live samples
    assert js(browser, "return window.zoeDashboard.historyLoaded") is True
    assert "history unavailable" not in browser.find_element("tag name", "footer").text
    assert first["tempPoints"] > 0 and set(first["tempLast"]) >= {"tj", "cpu", "gpu"}
    assert re.fullmatch(r"tj 96\.[18]°C", first["tempNow"]), first["tempNow"]
    assert first["powerNow"] in ("24.9 W", "21.0 W")

    # the stream keeps coming: at 2 Hz, three more samples take about 1.5 s
    WebDriverWait(browser, 15).until(lambda d: js(d, "return window.zoeDashboard.samples") >= first["samples"] + 3)
    later = chart_state(browser)
    assert later["seq"] > first["seq"] and later["tempPoints"] > first["tempPoints"]
    # the canvas itself was redrawn with the new points, not just the numbers beside it
    assert later["tempPixels"] != first["tempPixels"] and later["powerPixels"] != first["powerPixels"]
    assert later["tempLast"]["tj"] in (96.125, 96.75) and later["powerLast"]["total"] in (24.89, 21.04)

    page = browser.find_element("tag name", "body").text
    assert "tegrastats" in page and "smollm2-135m" in page
    assert "GPU layers" in page and "tok/s" in page
    warnings = js(browser, "return [...document.querySelectorAll('#warnings .warning')].map(w => w.dataset.kind)")
    assert "thermal" in warnings
    assert "soft limit 85 C" in browser.find_element("id", "warnings").text
    assert "thermal soft" in browser.find_element("id", "thermal-pill").text
    assert "local:smollm2-135m" in browser.find_element("id", "requests").text
    # the scheduler's side of the queue: nothing waits at any priority, nothing is paused
    assert browser.find_element("id", "queue-by-priority").text == "none"
    assert browser.find_element("id", "sched-suspended").text == "nothing"
    assert browser.find_element("id", "sched-suspensions").text.startswith("0 paused, 0 resumed, 0 refused")
    assert "queued request" in browser.find_element("id", "sched-prediction").text or "|error|" in (
        browser.find_element("id", "sched-prediction").text
    )
    assert "→ smollm2-135m" in browser.find_element("id", "swaps").text
    assert "12" in browser.find_element("id", "ram-text").text and "GB" in browser.find_element("id", "ram-text").text
    cores = js(browser, "return [...document.querySelectorAll('#cores .core')].map(c => c.classList.contains('off'))")
    assert cores == [False] * 6 + [True, True]

    desktop = screenshot(browser, "dashboard-desktop.png", 1280)
    phone = screenshot(browser, "dashboard-phone.png", 390)
    # on a phone the page is one column and nothing runs off the side
    assert js(browser, "return document.documentElement.scrollWidth <= window.innerWidth + 1")
    for path in (desktop, phone):
        assert path.stat().st_size > 20_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert hashlib.sha256(desktop.read_bytes()).digest() != hashlib.sha256(phone.read_bytes()).digest()

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    requested = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requested.add(message["params"]["request"]["url"])
    assert any(u.endswith("/api/telemetry/stream") for u in requested), requested
    # chrome:// pages are the browser's own start page, not network requests
    network = [urlsplit(u) for u in requested if urlsplit(u).scheme in ("http", "https", "ws", "wss", "ftp")]
    outside = [u.geturl() for u in network if (u.hostname, u.port) != ("127.0.0.1", port)]
    assert network and outside == [], outside


def test_dashboard_without_the_key_asks_for_it(board: Daemon) -> None:
    r = httpx.get(board.url + "/dashboard", timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="zoe-edge", charset="UTF-8"'
    token = base64.b64encode(f"anyone:{KEY}".encode()).decode()
    r = httpx.get(board.url + "/dashboard", headers={"Authorization": f"Basic {token}"}, timeout=10)
    assert r.status_code == 200 and "<canvas" in r.text
