"""The live decision view in a real headless browser (Debian's chromium + chromedriver).

dockgate runs with a policy (the monitoring preset) in front of the real daemon and
``--admin-live yes`` on a loopback admin listener. The test opens the page, makes
requests through the proxy, and checks what an operator sees: decisions within a
second, filters, a denial with its reason and the grant that would allow it, a
suggested policy that downloads and parses, and a target with ``<script>`` shown as
text. It writes a screenshot to tests/artifacts/ (gitignored).
"""

from __future__ import annotations

import http.client
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from conftest import DockgateProcess, StartDockgate, free_port, wait_for_port
from dockgate import liveview, settings
from dockgate.errors import ConfigError

pytestmark = pytest.mark.daemon

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
XSS = "/containers/%3Cscript%3Ealert(1)/json"


def request(proxy: DockgateProcess, method: str, target: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        connection.request(method, target)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.fixture
def browser() -> Iterator[tuple[WebDriver, Path]]:
    """Headless chromium with a fresh profile and a download directory; quit afterwards."""
    profile = Path(tempfile.mkdtemp(prefix="dg-chromium-"))
    downloads = profile / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver, downloads
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def rows(driver: WebDriver) -> list[dict[str, str]]:
    found = []
    for tr in driver.find_elements(By.CSS_SELECTOR, "#decisions tbody tr"):
        cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        found.append({"id": tr.get_attribute("data-id") or "", "request": cells[2],
                      "operation": cells[3], "decision": cells[4]})
    return found


def test_live_view_streams_filters_explains_and_suggests_in_a_browser(
        start_dockgate: StartDockgate, browser: tuple[WebDriver, Path]) -> None:
    """An operator watches decisions arrive, filters, opens a denial, downloads a policy."""
    driver, downloads = browser
    admin = free_port()
    proxy = start_dockgate(args=["--policy", "preset:monitoring", "--admin-listen",
                                 f"127.0.0.1:{admin}", "--admin-live", "yes"])
    wait_for_port(admin)
    driver.get(f"http://127.0.0.1:{admin}/live")
    WebDriverWait(driver, 5).until(
        lambda d: d.find_element(By.ID, "status").text == "live")

    started = time.monotonic()
    assert request(proxy, "GET", "/_ping") == 200
    WebDriverWait(driver, 1.0, poll_frequency=0.05).until(lambda d: len(rows(d)) == 1)
    assert time.monotonic() - started < 1.0
    assert request(proxy, "GET", "/containers/json") == 200
    assert request(proxy, "GET", "/images/json") == 403
    assert request(proxy, "GET", XSS) == 403
    WebDriverWait(driver, 1.0, poll_frequency=0.05).until(lambda d: len(rows(d)) == 4)

    shown = rows(driver)
    assert [r["decision"] for r in shown] == ["deny", "deny", "allow", "allow"]
    assert shown[0]["request"] == "GET /containers/<script>alert(1)/json"
    assert driver.find_elements(By.CSS_SELECTOR, "#decisions script") == []
    assert driver.execute_script("return document.scripts.length") == 1

    counts = driver.find_element(By.CSS_SELECTOR, "#counts tbody tr")
    assert [td.text for td in counts.find_elements(By.TAG_NAME, "td")][1:] == ["2", "2"]

    Select(driver.find_element(By.ID, "filter-decision")).select_by_value("deny")
    assert {r["decision"] for r in rows(driver)} == {"deny"}
    driver.find_element(By.ID, "filter-op").send_keys("image")
    assert [r["operation"] for r in rows(driver)] == ["image.list"]

    driver.find_element(By.CSS_SELECTOR, "#decisions tbody tr").click()
    WebDriverWait(driver, 3).until(
        lambda d: "policies:" in d.find_element(By.ID, "detail-grant").text)
    assert re.search(r"- allow: \[.*image\.list", driver.find_element(By.ID,
                                                                     "detail-grant").text)
    assert "image.list is not granted by policy 'monitoring'" in driver.find_element(
        By.ID, "detail-reason").text

    driver.find_element(By.ID, "suggest-show").click()
    WebDriverWait(driver, 3).until(
        lambda d: "policies:" in d.find_element(By.ID, "suggest-yaml").text)
    driver.find_element(By.ID, "suggest-download").click()
    WebDriverWait(driver, 5).until(lambda d: (downloads / "suggested-policy.yaml").exists())
    policy = yaml.safe_load((downloads / "suggested-policy.yaml").read_text())
    granted = {op for body in policy["policies"].values() for grant in body["grants"]
               for op in grant["allow"]}
    assert {"system.ping", "container.list", "image.list"} <= granted

    ARTIFACTS.mkdir(exist_ok=True)
    driver.find_element(By.ID, "filter-op").clear()
    Select(driver.find_element(By.ID, "filter-decision")).select_by_value("")
    assert driver.save_screenshot(str(ARTIFACTS / "liveview.png"))


def test_live_view_is_on_the_admin_listener_only_and_checks_host_and_token(
        start_dockgate: StartDockgate, tmp_path: Path) -> None:
    """The API port does not serve /live; a foreign Host or a missing token gets 403."""
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123\n")
    admin = free_port()
    proxy = start_dockgate(args=["--policy", "preset:monitoring", "--admin-listen",
                                 f"127.0.0.1:{admin}", "--admin-live", "yes",
                                 "--admin-token-file", str(token)])
    wait_for_port(admin)
    assert request(proxy, "GET", "/live") == 404

    def get(target: str, headers: dict[str, str]) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
        try:
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheader("Set-Cookie") or ""
        finally:
            connection.close()

    assert get("/live", {})[0] == 403
    assert get("/live", {"Authorization": "Bearer wrong-token-xxxxxxxx"})[0] == 403
    assert get("/live", {"Authorization": "Bearer 0123456789abcdef0123"})[0] == 200
    status, cookie = get("/live?token=0123456789abcdef0123", {})
    assert status == 200
    assert "HttpOnly" in cookie
    assert get("/live", {"Cookie": cookie.split(";", 1)[0]})[0] == 200
    assert get("/live", {"Authorization": "Bearer 0123456789abcdef0123",
                         "Host": "rebound.example:80"})[0] == 403
    assert get("/healthz", {})[0] == 200


def test_live_view_settings_refuse_what_it_cannot_do_safely(tmp_path: Path) -> None:
    """No admin listener, several workers, a network address without a token: errors."""
    with pytest.raises(ConfigError, match="add --admin-listen"):
        settings.load(None, {"DOCKGATE_ADMIN_LIVE": "yes"})
    with pytest.raises(ConfigError, match="one worker only"):
        settings.load(None, {"DOCKGATE_ADMIN_LIVE": "1", "DOCKGATE_WORKERS": "2",
                             "DOCKGATE_ADMIN_LISTEN": "127.0.0.1:9102"})
    exposed = settings.load(None, {"DOCKGATE_ADMIN_LIVE": "1",
                                   "DOCKGATE_ADMIN_LISTEN": "0.0.0.0:9102"})
    with pytest.raises(ConfigError, match="not a loopback address, needs --admin-token-file"):
        liveview.configure(exposed)
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        liveview.configure(settings.load(None, {
            "DOCKGATE_ADMIN_LIVE": "1", "DOCKGATE_ADMIN_LISTEN": "0.0.0.0:9102",
            "DOCKGATE_ADMIN_TOKEN_FILE": str(short)}))
    liveview.configure(settings.load(None, {}))
    assert not liveview.enabled()
