"""`lorareg serve` in a real browser (issue 16 item 7): headless Chromium from the distribution's packages,
driven by Selenium, against the app serving a scanned ComfyUI-style folder. The grid renders with previews,
filters and search narrow it, the copy button puts the trigger words on the clipboard, the detail page shows
findings, the compatibility view groups by outcome. Screenshots are saved in the test's tmp folder.

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the PyPI package ``selenium``; skipped with a
reason where they are missing (``.ci/run`` installs them, so CI runs it).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from loraregistry.registry import Registry

from .test_serve import build_library

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the [dev] extra)")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="chromium and chromium-driver (Debian packages) are not installed")


@pytest.fixture
def server(tmp_path):
    """The app on a free port of 127.0.0.1, in a thread, stopped at the end."""
    import uvicorn

    from loraregistry.serve import create_app

    lib = build_library(tmp_path / "ComfyUI" / "models" / "loras")
    with Registry.open(tmp_path / "reg") as reg:
        reg.scan([lib])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(tmp_path / "reg"), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def submit(driver, element) -> None:
    """Submit a form (or click a link) and wait for the next page: Selenium does not wait for it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    if element.tag_name in ("a", "button"):
        element.click()
    else:
        element.submit()
    WebDriverWait(driver, 15).until(expected_conditions.staleness_of(old))
    WebDriverWait(driver, 15).until(lambda d: d.execute_script("return document.readyState") == "complete")


def card_names(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return sorted(e.text for e in driver.find_elements(By.CSS_SELECTOR, "article.card h2.name a"))


def test_grid_filters_search_copy_detail_and_compat_in_chromium(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    shots = tmp_path / "screenshots"
    shots.mkdir()
    browser.get(server + "/")
    assert card_names(browser) == ["Illustrious Ink", "Pixel Cat", "Pony Sketch", "Xl Plain"]
    # previews load as images (decoded by the browser: a broken image has naturalWidth 0)
    widths = browser.execute_script(
        "return Array.from(document.querySelectorAll('article.card img')).map(i => i.complete && i.naturalWidth)")
    assert widths == [64, 64, 64]
    browser.save_screenshot(str(shots / "grid.png"))

    # filter by a finer base through the form
    Select(browser.find_element(By.NAME, "base")).select_by_value("Pony")
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]"))
    assert card_names(browser) == ["Pony Sketch"]
    assert "base=Pony" in browser.current_url

    # search box over the full-text index (trigger words from an A1111 sidecar)
    browser.get(server + "/")
    box = browser.find_element(By.NAME, "q")
    box.send_keys("pxlcat")
    submit(browser, box)
    assert card_names(browser) == ["Pixel Cat"]
    browser.save_screenshot(str(shots / "search.png"))

    # loader filter: peft loads none of these kohya files
    browser.get(server + "/")
    Select(browser.find_element(By.NAME, "loader")).select_by_value("peft")
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]"))
    assert card_names(browser) == []
    assert browser.find_element(By.CSS_SELECTOR, "p.count").text == "0 adapters"

    # copy the trigger words: the clipboard holds them afterwards
    browser.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": server, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    browser.get(server + "/?q=pxlcat")
    button = browser.find_element(By.CSS_SELECTOR, "article.card button.copy")
    button.click()
    deadline = time.monotonic() + 5
    while button.text != "copied" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert button.text == "copied"
    pasted = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.clipboard.readText().then(done, e => done('ERROR ' + e));")
    assert pasted == "pxlcat, pixel art"

    # the detail page shows the findings with codes, and the loader verdicts
    browser.get(server + "/?base=Pony")
    submit(browser, browser.find_element(By.CSS_SELECTOR, "article.card h2.name a"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Pony Sketch"
    rows = [tuple(td.text for td in row.find_elements(By.TAG_NAME, "td")[:3])
            for row in browser.find_elements(By.CSS_SELECTOR, "table.findings tbody tr")]
    assert ("peft", "LRG601", "error") in rows
    assert "civitai-info" in browser.find_element(By.CSS_SELECTOR, "table.imported").text
    browser.save_screenshot(str(shots / "detail.png"))

    # compatibility view: SDXL adapters that load fully in ComfyUI
    browser.get(server + "/compat")
    Select(browser.find_element(By.NAME, "base")).select_by_value("sdxl-base")
    Select(browser.find_element(By.NAME, "tool")).select_by_value("comfyui")
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]"))
    section = browser.find_element(By.CSS_SELECTOR, "section.outcome[data-outcome=loads]")
    assert sorted(a.text for a in section.find_elements(By.CSS_SELECTOR, "h2.name a")) == [
        "Illustrious Ink", "Pony Sketch", "Xl Plain"]
    browser.save_screenshot(str(shots / "compat.png"))
    assert all((shots / f"{n}.png").stat().st_size > 1000 for n in ("grid", "search", "detail", "compat"))
